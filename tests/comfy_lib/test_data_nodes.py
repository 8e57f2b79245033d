"""The data engine's nodes on ComfyUI's library: prompt source, Prompt-to-Prompt pair generator,
CLIP loader and filter, trade-off plot.

The pair generator must make what the headless generator makes from the same noise and schedule,
keep both captions' rows together however ComfyUI batches the conditioning (memory forced low
included), and refuse what would silently break a pair. Random SD 1.5-architecture weights: the
images mean nothing, the numbers between hosts must still agree.
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

STEPS = 3
SIZE = 64
CAPTIONS = ("a photo of a cat on a sofa", "a photo of a dog on a sofa")
TOLERANCE = 0.5 / 255  # per pixel, node vs headless (as the edit path's cross-backend check)


def _module(name):
    return importlib.import_module(f"comfyui_ip2p.nodes.{name}")


@pytest.fixture(scope="module")
def base_model(pack, sd15_base_checkpoint):
    import comfy.sd

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        str(sd15_base_checkpoint), output_vae=True, output_clip=True
    )[:3]
    return model, clip, vae


@pytest.fixture(scope="module")
def triple(pack):
    from comfyui_ip2p.ip2p.prompts import PromptTriple

    return PromptTriple(CAPTIONS[0], "make it a dog", CAPTIONS[1])


def _generate(base_model, triple, samples=2, seeds_per_call=2, sampler="euler_ancestral", p2p=(0.1, 0.9)):
    model, clip, vae = base_model
    return _module("pairs").IP2PPairGenerator.execute(
        model, clip, vae, [(0, triple)], samples, seeds_per_call, 0, STEPS, SIZE, sampler, "normal", *p2p, 7.5, 15.0
    )


@pytest.fixture(scope="module")
def node_pairs(base_model, triple):
    return _generate(base_model, triple)


@pytest.mark.numerics
def test_the_node_and_the_headless_generator_make_the_same_pairs(node_pairs, base_model, sd15_base_checkpoint):
    import comfy.samplers

    from ip2p.headless.loading import load_edit_model
    from ip2p.headless.p2p import generate_pairs

    images0, images1, pairs = node_pairs
    plan = [pair.metadata for pair in pairs]
    sigmas = comfy.samplers.KSampler(
        base_model[0], steps=STEPS, device="cpu", sampler="euler_ancestral", scheduler="normal"
    ).sigmas
    model = load_edit_model(sd15_base_checkpoint, require_edit=False)
    headless = generate_pairs(
        model, CAPTIONS[0], CAPTIONS[1], [p["seed"] for p in plan], [p["p2p_threshold"] for p in plan],
        [p["cfg_scale"] for p in plan], STEPS, SIZE, "euler_ancestral", sigmas=sigmas, progress=False,
    )  # fmt: skip
    for side, node_images in enumerate((images0, images1)):
        difference = (headless.images[:, side].movedim(1, -1) - node_images.float()).abs().max().item()
        assert difference <= TOLERANCE, f"image {side}: max per-pixel difference {difference * 255:.2f}/255"


def test_each_pair_records_its_prompt_seed_p_and_cfg_from_the_run_seed(node_pairs, triple):
    from comfyui_ip2p.ip2p.pairs import sample_plan

    _, _, pairs = node_pairs
    expected = sample_plan(triple.key, 2, run_seed=0, p2p_fraction=(0.1, 0.9), cfg=(7.5, 15.0))
    assert [pair.metadata for pair in pairs] == expected
    assert all(pair.prompt == triple and pair.prompt_index == 0 for pair in pairs)


@pytest.mark.numerics
def test_memory_forced_low_splits_cond_from_uncond_and_changes_no_pixel(node_pairs, base_model, triple, monkeypatch):
    import comfy.model_management

    p2p = _module("p2p")
    seen = []
    original_roles = p2p.chunk_roles

    def spy(state, extra_options, batch):
        seen.append(tuple(extra_options["cond_or_uncond"]))
        return original_roles(state, extra_options, batch)

    monkeypatch.setattr(p2p, "chunk_roles", spy)
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: 1024)
    images0, images1, _ = _generate(base_model, triple)
    assert seen and all(len(chunks) == 1 for chunks in seen), f"ComfyUI still batched cond and uncond: {set(seen)}"
    assert {chunks[0] for chunks in seen} == {0, 1}
    # cond and uncond in two UNet calls against one: other batches, float32; decoded images within the node-vs-headless
    # bar, under which no 8-bit pixel moves by more than one level (1e-5 held where measured, on two processors)
    torch.testing.assert_close(images0, node_pairs[0], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(images1, node_pairs[1], rtol=0, atol=TOLERANCE)


@pytest.mark.numerics
def test_one_seed_per_call_gives_the_pairs_of_a_batched_call(node_pairs, base_model, triple):
    images0, images1, _ = _generate(base_model, triple, seeds_per_call=1)
    # one seed per call against two in a batch, float32 decoded images: the bar of the headless twin
    # (test_p2p_generate, 7.3e-4 measured on AVX-512 there, issue 21) is one 8-bit level; this file's 0.5/255 holds
    torch.testing.assert_close(images0, node_pairs[0], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(images1, node_pairs[1], rtol=0, atol=TOLERANCE)


def test_identical_captions_give_identical_images(base_model, pack):
    from comfyui_ip2p.ip2p.prompts import PromptTriple

    same = PromptTriple(CAPTIONS[0], "leave it", CAPTIONS[0])
    images0, images1, _ = _generate(base_model, same, samples=1, seeds_per_call=1)
    assert torch.equal(images0, images1)


def test_captions_of_different_lengths_are_padded_to_the_same_chunks(base_model, pack):
    from comfyui_ip2p.ip2p.prompts import PromptTriple

    long_caption = " ".join(["a very long caption about a cat"] * 16)  # > 77 tokens: two chunks
    model, clip, _ = base_model
    cond = _module("pairs").encode_pair(clip, long_caption, CAPTIONS[1])[0][0]
    assert cond.shape[:2] == (2, 154)
    images0, images1, _ = _generate(base_model, PromptTriple(long_caption, "dog", CAPTIONS[1]), samples=1)
    assert images0.shape == images1.shape == (1, SIZE, SIZE, 3)


def test_an_edit_model_is_refused_where_a_base_model_is_needed(pack, sd15_ip2p_checkpoint, triple):
    model, clip, vae = pack.nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    with pytest.raises(pack.ip2p.errors.IP2PError, match="base text-to-image model"):
        _generate((model, clip, vae), triple)


def test_a_base_model_is_refused_where_an_edit_model_is_needed(pack, base_model, clip_scorer):
    model, clip, vae = base_model
    with pytest.raises(pack.ip2p.errors.IP2PError, match="not an InstructPix2Pix model"):
        _module("tradeoff").IP2PTradeoffPlot.execute(
            model, vae, torch.rand(1, SIZE, SIZE, 3), clip_scorer, "make it red", "a cat", "a red cat", 0, 2, "7.5",
            "1.0, 1.5", "euler", "normal", "keep", 512, clip=clip,
        )  # fmt: skip


def test_samplers_take_the_pair_noise_or_draw_none(pack, monkeypatch):
    import comfy.samplers

    p2p = _module("p2p")
    noise = p2p.PairNoise([1, 2], (4, 8, 8))
    ancestral = p2p.pair_sampler("euler_ancestral", noise)
    assert ancestral.extra_options["noise_sampler"] is noise
    assert "noise_sampler" not in p2p.pair_sampler("euler", noise).extra_options  # deterministic: nothing to share

    def own_noise_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0):
        return x + torch.randn_like(x)

    monkeypatch.setattr(comfy.samplers, "sampler_object", lambda name: comfy.samplers.KSAMPLER(own_noise_sampler))
    with pytest.raises(pack.ip2p.errors.IP2PError, match="draws its own random noise"):
        p2p.pair_sampler("own_noise", noise)


def test_the_pair_noise_is_shared_by_the_two_rows_of_a_pair_only(pack):
    draw = _module("p2p").PairNoise([5, 6], (4, 8, 8)).draw()
    assert torch.equal(draw[0], draw[1]) and torch.equal(draw[2], draw[3]) and not torch.equal(draw[0], draw[2])
    assert torch.equal(draw[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5)))


def test_a_model_with_another_attention_replacement_is_refused(pack, base_model):
    model = base_model[0].clone()
    model.set_model_attn1_replace(lambda q, k, v, extra: q, "input", 1, 0)
    with pytest.raises(pack.ip2p.errors.IP2PError, match="attention replacement"):
        _module("p2p").patch_model(model)


def test_the_patch_covers_every_transformer_block_of_sd15(pack, base_model):
    patched = _module("p2p").patch_model(base_model[0])
    replaced = patched.model_options["transformer_options"]["patches_replace"]
    assert len(replaced["attn1"]) == len(replaced["attn2"]) == 16  # SD 1.5: 6 down, 1 mid, 9 up
    assert not base_model[0].model_options.get("transformer_options", {}).get("patches_replace")  # a clone


# --- prompt source ---


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"caption": f"a photo of a cat {i}", "edit": "make it a dog", "output": f"a photo of a dog {i}"}
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_the_prompt_source_gives_the_triple_at_the_index(pack, prompt_file):
    source = _module("pairs").IP2PPromptSource
    prompts, caption, instruction, edited, count = source.execute(str(prompt_file), "one per run", 1)
    assert [index for index, _ in prompts] == [1]
    assert (caption, instruction, edited, count) == ("a photo of a cat 1", "make it a dog", "a photo of a dog 1", 3)


def test_the_prompt_source_gives_every_triple_in_all_mode(pack, prompt_file):
    prompts = _module("pairs").IP2PPromptSource.execute(str(prompt_file), "all", 0)[0]
    assert [index for index, _ in prompts] == [0, 1, 2]


def test_an_index_past_the_end_says_the_file_is_done(pack, prompt_file):
    with pytest.raises(pack.ip2p.errors.IP2PError, match="past the last prompt.*3 triple"):
        _module("pairs").IP2PPromptSource.execute(str(prompt_file), "one per run", 3)


def test_the_prompt_source_reruns_when_the_file_changes(pack, prompt_file):
    source = _module("pairs").IP2PPromptSource
    before = source.IS_CHANGED(str(prompt_file), "one per run", 0)
    prompt_file.write_text(prompt_file.read_text() + json.dumps({"caption": "a", "edit": "b", "output": "c"}) + "\n")
    assert source.IS_CHANGED(str(prompt_file), "one per run", 0) != before


# --- CLIP loader and filter ---


@pytest.fixture(scope="module")
def clip_scorer(pack, comfy_host):
    from ip2p.headless.random_model import save_random_clip

    folder = comfy_host.folder("ip2p_clip") / "tiny-clip"
    if not (folder / "config.json").is_file():
        save_random_clip(folder)
    loader = _module("clip").IP2PCLIPLoader
    assert "tiny-clip" in loader.INPUT_TYPES()["required"]["clip_model"][0]
    return loader.execute("tiny-clip", "")[0]


def test_the_filter_keeps_the_best_per_prompt_and_scores_as_the_core_does(pack, node_pairs, clip_scorer):
    from comfyui_ip2p.ip2p.clip_filter import FilterThresholds, select_samples

    images0, images1, pairs = node_pairs
    kept0, kept1, kept_pairs, preview, summary = _module("clip").IP2PCLIPFilter.execute(
        clip_scorer, images0, images1, -1.0, -1.0, -1.0, -1.0, 1, pairs=pairs
    )
    scores = clip_scorer.scorer.score(images0.movedim(-1, 1), images1.movedim(-1, 1), CAPTIONS[0], CAPTIONS[1])
    best = select_samples(scores, FilterThresholds(-1.0, -1.0, -1.0, -1.0, keep=1)).kept
    assert len(kept_pairs) == kept0.shape[0] == kept1.shape[0] == 1
    assert torch.equal(kept0[0], images0[best[0]]) and torch.equal(kept1[0], images1[best[0]])
    assert kept_pairs[0].metadata["clip_sim_dir"] == pytest.approx(float(scores.sim_dir[best[0]]))
    assert kept_pairs[0].metadata["seed"] == pairs[best[0]].metadata["seed"]
    assert preview.shape[0] == 1 and preview.shape[-1] == 3 and preview.shape[1] >= 2 * SIZE
    assert summary == "1 of 2 pair(s) kept; rejected 1 by rank"


def test_the_filter_rejects_by_the_first_threshold_missed(pack, node_pairs, clip_scorer):
    images0, images1, pairs = node_pairs
    kept0, _, kept_pairs, _, summary = _module("clip").IP2PCLIPFilter.execute(
        clip_scorer, images0, images1, 1.0, -1.0, -1.0, -1.0, 4, pairs=pairs
    )
    assert kept0.shape[0] == 0 and kept_pairs == []
    assert summary == "0 of 2 pair(s) kept; rejected 2 by clip_sim_0"


def test_the_filter_scores_pairs_from_elsewhere_with_typed_captions(pack, clip_scorer):
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    kept0, _, kept_pairs, _, _ = _module("clip").IP2PCLIPFilter.execute(
        clip_scorer, images, images.flip(0), -1.0, -1.0, -1.0, -1.0, 2,
        input_caption="a cat", instruction="make it a dog", edited_caption="a dog",
    )  # fmt: skip
    assert kept0.shape[0] == 2 and {p.prompt.instruction for p in kept_pairs} == {"make it a dog"}
    with pytest.raises(pack.ip2p.errors.IP2PError, match="carry no captions"):
        _module("clip").IP2PCLIPFilter.execute(clip_scorer, images, images, 0.2, 0.2, 0.2, 0.75, 4)
    with pytest.raises(pack.ip2p.errors.IP2PError, match="a pair needs one of each"):
        _module("clip").IP2PCLIPFilter.execute(clip_scorer, images, images[:2], 0.2, 0.2, 0.2, 0.75, 4, input_caption="a", edited_caption="b")  # fmt: skip


def test_a_missing_clip_model_says_where_to_put_one(pack):
    loader = _module("clip").IP2PCLIPLoader
    with pytest.raises(pack.ip2p.errors.IP2PError, match="models/ip2p_clip"):
        loader.execute("(use path)", "")
    with pytest.raises(pack.ip2p.errors.IP2PError, match="not found"):
        loader.execute("(use path)", "/nonexistent/clip")


# --- trade-off plot ---


def test_the_tradeoff_plot_scores_every_image_cfg(pack, sd15_ip2p_checkpoint, clip_scorer):
    model, clip, vae = pack.nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
    figure, edits, points = _module("tradeoff").IP2PTradeoffPlot.execute(
        model, vae, image, clip_scorer, "make it red", "a cat", "a red cat", 0, 2, "7.5", "1.0, 2.0", "euler",
        "normal", "keep", 512, clip=clip,
    )  # fmt: skip
    assert figure.shape[0] == 1 and figure.shape[-1] == 3
    assert edits.shape == (2, SIZE, SIZE, 3)
    lines = points.splitlines()
    assert len(lines) == 2 and lines[0].startswith("text_cfg 7.5, image_cfg 1: directional")
    scores = clip_scorer.scorer.score(image.movedim(-1, 1), edits[:1].movedim(-1, 1), "a cat", "a red cat")
    assert f"directional {float(scores.sim_dir[0]):.4f}" in lines[0]


# --- dataset writer ---


def _write(pack, images0, images1, folder, layout="paper", **inputs):
    result = _module("dataset").IP2PDatasetWriter.execute(images0, images1, str(folder), layout, **inputs)
    assert result["ui"]["text"] == list(result["result"])
    return result["result"][0]


@pytest.mark.parametrize("layout", ["paper", "parquet"])
def test_the_writer_writes_each_prompt_once_and_the_dataset_opens(pack, node_pairs, tmp_path, layout):
    from ip2p.datasets.reader import open_dataset

    images0, images1, pairs = node_pairs
    summary = _write(pack, images0, images1, tmp_path / "data", layout, pairs=pairs)
    assert "2 pair(s) of 1 prompt(s) written, 0 prompt(s) already done" in summary
    again = _write(pack, images0, images1, tmp_path / "data", layout, pairs=pairs)  # queued again: skipped
    assert "0 pair(s) of 0 prompt(s) written, 1 prompt(s) already done" in again
    dataset = open_dataset(tmp_path / "data")
    assert len(dataset) == 2
    assert {example.instruction for example in dataset} == {"make it a dog"}
    if layout == "parquet":
        import datasets

        rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "**" / "*.parquet"))["train"]
        assert sorted(rows["seed"]) == sorted(p.metadata["seed"] for p in pairs)


def test_typed_pairs_get_a_prompt_number_no_prompt_file_reaches(pack, tmp_path):
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    captions = {"input_caption": "a cat", "instruction": "make it a dog", "edited_caption": "a dog"}
    _write(pack, images, images.flip(0), tmp_path / "data", **captions)
    _write(pack, images, images.flip(0), tmp_path / "data", **captions)  # a second run: its own prompt
    folders = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["5000000", "5000001"]
    assert json.loads((tmp_path / "data" / "5000000" / "prompt.json").read_text())["edit"] == "make it a dog"


def test_an_empty_batch_writes_nothing(pack, tmp_path):
    empty = torch.zeros(0, 32, 32, 3)
    assert "nothing to write" in _write(pack, empty, empty, tmp_path / "data", pairs=[])
    assert not (tmp_path / "data").exists()
