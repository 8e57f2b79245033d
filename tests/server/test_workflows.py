"""Our workflows and nodes in a real ComfyUI server, driven through its HTTP API.

Every ``workflows/*.api.json`` is posted as users would post it, lowered to 2 steps and a
128 px long side and pointed at the random SD 1.5 InstructPix2Pix checkpoint; its saved images must
exist on disk at the size the resize policy promises. The UI workflows must describe the same graph
as their API twins, node for node, link for link, widget for widget.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from ip2p import grid, sizing

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
API_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.api.json"))
UI_WORKFLOWS = sorted(p for p in WORKFLOWS_DIR.glob("*.json") if not p.name.endswith(".api.json"))

# Permanent ids (saved workflows depend on them) and the pack's one category root.
NODE_IDS = {
    "IP2PCheckpointLoader",
    "IP2PDiffusersLoader",
    "IP2PKSampler",
    "IP2PConditioning",
    "IP2PDualCFGGuider",
    "IP2PGuidanceSweep",
    "IP2PPromptSource",
    "IP2PPairGenerator",
    "IP2PCLIPLoader",
    "IP2PCLIPFilter",
    "IP2PDatasetWriter",
    "IP2PTradeoffPlot",
    "IP2PAutoGuidance",
    "IP2PDINOLoader",
    "IP2PEvaluate",
}
CATEGORY_ROOT = "InstructPix2Pix"
PACK_MODULE = "custom_nodes.comfyui-ip2p"
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

TEST_STEPS = 2
TEST_MAX_SIDE = 128
TEST_PAIR_SIZE = 64
TEST_SAMPLES = 2
LOADERS = {"IP2PCheckpointLoader", "CheckpointLoaderSimple"}
KEEP_EVERY_PAIR = {"min_sim_0": -1.0, "min_sim_1": -1.0, "min_sim_dir": -1.0, "min_sim_image": -1.0}


def workflow_id(path: Path) -> str:
    return path.name.removesuffix(".api.json").removesuffix(".json")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def for_test(prompt: dict, models: dict[str, str], image: str, prompts: str = "") -> dict:
    """The workflow lowered for a CPU run: 2 steps, paper resize to 128 px, our models and input image.

    A workflow that generates pairs gets the base model (64 px, 2 pairs, every pair kept: the
    random CLIP's scores mean nothing); any other gets the InstructPix2Pix model.
    """
    prompt = copy.deepcopy(prompt)
    makes_pairs = any(node["class_type"] == "IP2PPairGenerator" for node in prompt.values())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in LOADERS:
            inputs["ckpt_name"] = models["base" if makes_pairs else "ip2p"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = image
        if node["class_type"] == "IP2PCLIPLoader":
            inputs["clip_model"] = models["clip"]
        if node["class_type"] == "IP2PPromptSource":
            inputs["prompts_file"] = prompts
        if node["class_type"] == "IP2PPairGenerator":
            inputs.update(size=TEST_PAIR_SIZE, samples=TEST_SAMPLES, seeds_per_call=TEST_SAMPLES)
        if node["class_type"] == "IP2PCLIPFilter":
            inputs.update(KEEP_EVERY_PAIR)
        if "steps" in inputs:
            inputs["steps"] = TEST_STEPS
        if "resize" in inputs:
            inputs["resize"], inputs["max_side"] = "paper", TEST_MAX_SIDE
    return prompt


def node_id_of(prompt: dict, class_type: str) -> str:
    ids = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type} node, found {ids}"
    return ids[0]


def execution_error(entry: dict) -> dict | None:
    for event, data in entry["status"].get("messages", []):
        if event == "execution_error":
            return data
    return None


def assert_succeeded(entry: dict) -> None:
    error = execution_error(entry)
    detail = "" if error is None else f"{error['node_type']}: {error['exception_message']}"
    assert entry["status"]["status_str"] == "success", f"the workflow failed: {detail}"


def saved_images(server, entry: dict, node_id: str) -> list[Image.Image]:
    """The images an output node wrote, opened from disk."""
    listed = entry["outputs"].get(node_id, {}).get("images", [])
    paths = [server.output_path(image) for image in listed]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"history lists images that are not on disk: {missing}"
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            images.append(image)
    return images


# --------------------------------------------------------------------------------------------
# What each workflow must save, given the input image's size. A flat image would mean NaNs or a
# dead branch somewhere (random weights give noise, never one colour).


def edit_size(input_size: tuple[int, int]) -> tuple[int, int]:
    return sizing.working_size(*input_size, "paper", TEST_MAX_SIDE)


def is_flat(image: Image.Image) -> bool:
    return all(low == high for low, high in image.getextrema())


def check_single_edit(server, entry: dict, prompt: dict, input_size: tuple[int, int]) -> None:
    (image,) = saved_images(server, entry, node_id_of(prompt, "SaveImage"))
    assert image.size == edit_size(input_size)
    assert not is_flat(image)


def check_sweep(server, entry: dict, prompt: dict, input_size: tuple[int, int]) -> None:
    sweep = prompt[node_id_of(prompt, "IP2PGuidanceSweep")]["inputs"]
    rows = len(grid.parse_scales(sweep["text_cfg_values"], "text_cfg_values"))
    cols = len(grid.parse_scales(sweep["image_cfg_values"], "image_cfg_values"))
    cell_w, cell_h = edit_size(input_size)
    (grid_image,) = saved_images(server, entry, node_id_of(prompt, "SaveImage"))
    assert grid_image.height == grid.LABEL_HEIGHT + rows * cell_h
    assert grid_image.width > cols * cell_w  # plus the label column
    edits = saved_images(server, entry, node_id_of(prompt, "PreviewImage"))
    assert [e.size for e in edits] == [(cell_w, cell_h)] * (rows * cols)
    assert not any(is_flat(e) for e in edits)


def check_dataset(server, entry: dict, prompt: dict, input_size: tuple[int, int]) -> None:
    """The first prompt's pairs are written, whole and marked done, and the dataset opens."""
    from ip2p.datasets.outputs import DONE_FILE
    from ip2p.datasets.reader import open_dataset

    writer = prompt[node_id_of(prompt, "IP2PDatasetWriter")]["inputs"]
    (summary,) = entry["outputs"][node_id_of(prompt, "IP2PDatasetWriter")]["text"]
    assert f"{TEST_SAMPLES} pair(s) of 1 prompt(s) written" in summary
    root = server.base / "output" / writer["dataset_folder"]
    assert (root / "0000000" / DONE_FILE).is_file()
    dataset = open_dataset(root)
    assert len(dataset) == TEST_SAMPLES
    assert {example.instruction for example in dataset} == {"make it a dog"}
    (preview,) = saved_images(server, entry, node_id_of(prompt, "PreviewImage"))
    assert preview.height == grid.LABEL_HEIGHT + TEST_SAMPLES * TEST_PAIR_SIZE
    assert not is_flat(preview)


def check_tradeoff(server, entry: dict, prompt: dict, input_size: tuple[int, int]) -> None:
    plot_node = prompt[node_id_of(prompt, "IP2PTradeoffPlot")]["inputs"]
    sweep = len(grid.parse_scales(plot_node["image_cfg_values"], "image_cfg_values"))
    (figure,) = saved_images(server, entry, node_id_of(prompt, "SaveImage"))
    assert figure.size == (768, 512) and not is_flat(figure)
    edits = saved_images(server, entry, node_id_of(prompt, "PreviewImage"))
    assert [e.size for e in edits] == [edit_size(input_size)] * sweep


def check_evaluate(server, entry: dict, prompt: dict, input_size: tuple[int, int]) -> None:
    """The table names the CLIP metrics and says why the target metrics were skipped; the sheet is one row,
    input | edit, each the edit's size enlarged by one whole factor, the labels beside them."""
    (table,) = entry["outputs"][node_id_of(prompt, "IP2PEvaluate")]["text"]
    assert {"directional", "image"} <= set(table.splitlines()[1].split())
    assert "skipped l1: no target_images connected" in table
    width, height = edit_size(input_size)
    (sheet,) = saved_images(server, entry, node_id_of(prompt, "SaveImage"))
    factor, rest = divmod(sheet.height - grid.LABEL_HEIGHT, height)
    assert factor >= 1 and rest == 0
    assert sheet.width > 2 * width * factor  # plus the label column
    assert not is_flat(sheet)


EXPECTED_OUTPUTS = {
    "ip2p_basic_edit": check_single_edit,
    "ip2p_custom_sampler": check_single_edit,
    "ip2p_dataset_builder": check_dataset,
    "ip2p_evaluate": check_evaluate,
    "ip2p_guidance_sweep": check_sweep,
    "ip2p_tradeoff_plot": check_tradeoff,
}


@pytest.fixture(scope="session")
def run_workflow(server, models: dict[str, str], input_image: tuple[str, tuple[int, int]], prompts_file: str):
    """Runs an API workflow once per session (tests share the result): (history entry, posted prompt)."""
    results: dict[str, tuple[dict, dict]] = {}

    def run(path: Path) -> tuple[dict, dict]:
        if path.name not in results:
            prompt = for_test(load_json(path), models, input_image[0], prompts_file)
            results[path.name] = (server.run(prompt), prompt)
        return results[path.name]

    return run


# --------------------------------------------------------------------------------------------
# Registration


def test_every_pack_node_is_registered(object_info: dict) -> None:
    assert NODE_IDS <= set(object_info), f"missing: {sorted(NODE_IDS - set(object_info))}"


def test_pack_registers_only_its_permanent_ids(object_info: dict) -> None:
    ours = {name for name, info in object_info.items() if info["python_module"] == PACK_MODULE}
    assert ours == NODE_IDS


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_pack_node_sits_under_the_pack_category(object_info: dict, node_id: str) -> None:
    category = object_info[node_id]["category"]
    assert category == CATEGORY_ROOT or category.startswith(CATEGORY_ROOT + "/")


# --------------------------------------------------------------------------------------------
# Workflow files


def test_every_ui_workflow_has_an_api_twin() -> None:
    assert UI_WORKFLOWS, f"no workflows in {WORKFLOWS_DIR}"
    assert [workflow_id(p) for p in UI_WORKFLOWS] == [workflow_id(p) for p in API_WORKFLOWS]


def test_every_api_workflow_has_its_expected_outputs_listed() -> None:
    assert sorted(EXPECTED_OUTPUTS) == [workflow_id(p) for p in API_WORKFLOWS]


def widget_inputs(info: dict) -> list[tuple[str, dict]]:
    """(name, options) of a node's widget inputs, in the order the frontend stores their values."""
    widgets = []
    for group in ("required", "optional"):
        for name in info["input_order"].get(group, []):
            spec = info["input"][group][name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput"):
                widgets.append((name, options))
    return widgets


def graph_of_ui_workflow(ui: dict, object_info: dict) -> dict:
    """The API-format graph a UI workflow describes; checks its links agree from both ends."""
    links = {link[0]: link for link in ui["links"]}
    nodes = {node["id"]: node for node in ui["nodes"]}
    graph = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES:
            continue
        info = object_info[node["type"]]
        inputs = {}
        for slot_index, slot in enumerate(node.get("inputs", [])):
            if slot.get("link") is None:
                continue
            _, source, source_slot, target, target_slot, link_type = links[slot["link"]]
            assert (target, target_slot) == (node["id"], slot_index), f"link {slot['link']} ends elsewhere"
            source_output = nodes[source]["outputs"][source_slot]
            assert slot["link"] in (source_output["links"] or []), f"link {slot['link']} unknown at its source"
            assert link_type == object_info[nodes[source]["type"]]["output"][source_slot]
            inputs[slot["name"]] = [str(source), source_slot]
        values = list(node.get("widgets_values", []))
        for name, options in widget_inputs(info):
            inputs[name] = values.pop(0)
            if options.get("control_after_generate"):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
            if options.get("image_upload"):
                values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}) has extra widget values {values}"
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=workflow_id)
def test_ui_workflow_describes_the_same_graph_as_its_api_twin(path: Path, object_info: dict) -> None:
    ui = load_json(path)
    assert ui["version"] == 0.4
    api = load_json(path.with_name(workflow_id(path) + ".api.json"))
    expected = {node_id: {"class_type": n["class_type"], "inputs": n["inputs"]} for node_id, n in api.items()}
    assert graph_of_ui_workflow(ui, object_info) == expected


# --------------------------------------------------------------------------------------------
# Running them


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=workflow_id)
def test_workflow_runs_and_saves_its_images(
    path: Path, run_workflow, server, input_image: tuple[str, tuple[int, int]]
) -> None:
    entry, prompt = run_workflow(path)
    assert_succeeded(entry)
    EXPECTED_OUTPUTS[workflow_id(path)](server, entry, prompt, input_image[1])


def test_native_ip2p_graph_runs_on_the_random_checkpoint(
    server, models: dict[str, str], input_image: tuple[str, tuple[int, int]]
) -> None:
    """ComfyUI's own loader and InstructPix2Pix nodes accept the single file our tools write."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": models["ip2p"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "make it snow"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "LoadImage", "inputs": {"image": input_image[0]}},
        "5": {
            "class_type": "InstructPixToPixConditioning",
            "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0]},
        },
        "6": {
            "class_type": "DualCFGGuider",
            "inputs": {
                "model": ["1", 0],
                "cond1": ["5", 0],
                "cond2": ["5", 1],
                "negative": ["3", 0],
                "cfg_conds": 7.5,
                "cfg_cond2_negative": 1.5,
                "style": "regular",
            },
        },
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "8": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2, "denoise": 1.0},
        },
        "9": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "10": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["9", 0],
                "guider": ["6", 0],
                "sampler": ["7", 0],
                "sigmas": ["8", 0],
                "latent_image": ["5", 2],
            },
        },
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "native/edit"}},
    }
    entry = server.run(prompt)
    assert_succeeded(entry)
    (image,) = saved_images(server, entry, "12")
    assert image.size == input_image[1]  # the native nodes edit at the input size


def test_diffusers_folder_edits_exactly_like_the_same_single_file(
    server, run_workflow, models: dict[str, str], input_image: tuple[str, tuple[int, int]]
) -> None:
    """The same weights saved both ways give the same pixels (same seed, same deterministic CPU maths)."""
    basic = WORKFLOWS_DIR / "ip2p_basic_edit.api.json"
    single_entry, single_prompt = run_workflow(basic)
    assert_succeeded(single_entry)
    prompt = copy.deepcopy(single_prompt)
    loader_id = node_id_of(prompt, "IP2PCheckpointLoader")
    prompt[loader_id] = {"class_type": "IP2PDiffusersLoader", "inputs": {"model_path": models["ip2p_diffusers"]}}
    entry = server.run(prompt)
    assert_succeeded(entry)
    save_id = node_id_of(prompt, "SaveImage")
    (from_folder,) = saved_images(server, entry, save_id)
    (from_file,) = saved_images(server, single_entry, save_id)
    assert from_folder.size == edit_size(input_image[1])
    assert from_folder.tobytes() == from_file.tobytes()


def test_queueing_the_dataset_builder_again_skips_the_done_prompt_and_the_next_index_writes_the_next(
    server, run_workflow
) -> None:
    entry, prompt = run_workflow(WORKFLOWS_DIR / "ip2p_dataset_builder.api.json")
    assert_succeeded(entry)
    writer_id, source_id = node_id_of(prompt, "IP2PDatasetWriter"), node_id_of(prompt, "IP2PPromptSource")
    again = copy.deepcopy(prompt)
    again[node_id_of(again, "IP2PPairGenerator")]["inputs"]["steps"] = TEST_STEPS + 1  # not served from the cache
    (summary,) = server.run(again)["outputs"][writer_id]["text"]
    assert "0 pair(s) of 0 prompt(s) written, 1 prompt(s) already done" in summary
    following = copy.deepcopy(prompt)
    following[source_id]["inputs"]["index"] = 1  # what control_after_generate "increment" queues next
    entry = server.run(following)
    assert_succeeded(entry)
    (summary,) = entry["outputs"][writer_id]["text"]
    assert f"{TEST_SAMPLES} pair(s) of 1 prompt(s) written" in summary
    root = server.base / "output" / prompt[writer_id]["inputs"]["dataset_folder"]
    assert json.loads((root / "0000001" / "prompt.json").read_text())["edit"] == "make it winter"


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name", ["sampler_name", "scheduler"])
def test_unknown_sampler_or_scheduler_is_rejected_before_execution(
    server, models: dict[str, str], input_image: tuple[str, tuple[int, int]], name: str
) -> None:
    prompt = for_test(load_json(WORKFLOWS_DIR / "ip2p_basic_edit.api.json"), models, input_image[0])
    sampler_id = node_id_of(prompt, "IP2PKSampler")
    prompt[sampler_id]["inputs"][name] = "no_such_" + name
    response = server.queue(prompt)
    assert response.status == 400
    assert response.body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = response.body["node_errors"][sampler_id]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_in_list", name)]


def test_four_channel_checkpoint_is_refused_as_not_instructpix2pix(
    server, models: dict[str, str], input_image: tuple[str, tuple[int, int]]
) -> None:
    prompt = for_test(load_json(WORKFLOWS_DIR / "ip2p_basic_edit.api.json"), models, input_image[0])
    prompt[node_id_of(prompt, "IP2PCheckpointLoader")]["inputs"]["ckpt_name"] = models["base"]
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["node_type"] == "IP2PCheckpointLoader"
    assert "not an InstructPix2Pix model" in error["exception_message"]


# --------------------------------------------------------------------------------------------
# Host hygiene


def test_checkout_is_left_unchanged(
    server, run_workflow, comfyui_path: Path, checkout_before: str | None, checkout_state
) -> None:
    if checkout_before is None:
        pytest.skip(f"{comfyui_path} is not a git work tree, so its state cannot be compared")
    assert_succeeded(run_workflow(WORKFLOWS_DIR / "ip2p_basic_edit.api.json")[0])
    assert checkout_state(comfyui_path) == checkout_before
