"""Prompt sources: files of triples, templates, a local LM and resuming all give keyed, deduplicated triples."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.prompts import (
    ANSWER_EMPTY_INSTRUCTION,
    ANSWER_EMPTY_OUTPUT,
    ANSWER_NO_SEPARATOR,
    ANSWER_REPEATS_CAPTION,
    ANSWER_RUNAWAY,
    ANSWER_SEPARATORS,
    ANSWER_UNCHANGED,
    ANSWER_UNFINISHED,
    FEW_SHOT_EXAMPLES,
    MalformedAnswer,
    PromptTriple,
    deduplicate,
    expand_templates,
    few_shot_prompt,
    generate_edits,
    load_llm,
    parse_answer,
    pending,
    read_prompts,
    read_templates,
    write_prompts,
)


def _texts(triples) -> list[tuple[str, str, str]]:
    """Exact texts (triples compare equal when they differ only in case or spacing)."""
    return [(t.input_caption, t.instruction, t.edited_caption) for t in triples]


def _jsonl(path, *records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


CAT = {"caption": "a cat on a sofa", "edit": "make it a dog", "output": "a dog on a sofa"}
BARN = {"input": "a red barn", "edit": "make it winter", "output": "a red barn in the snow"}

# ------------------------------------------------------------------------------------- the triple


def test_key_ignores_case_and_spacing_but_not_words():
    triple = PromptTriple("a cat", "make it a dog", "a dog")
    assert PromptTriple("A  Cat ", "make it a DOG", " a dog").key == triple.key
    assert PromptTriple("a cat", "make it a dog", "a big dog").key != triple.key


def test_key_depends_on_which_part_holds_which_text():
    assert PromptTriple("a", "b", "c").key != PromptTriple("b", "a", "c").key
    assert PromptTriple("a b", "c", "d").key != PromptTriple("a", "b c", "d").key


def test_key_is_pinned_so_resumed_runs_recognise_their_work():
    assert PromptTriple("a cat", "make it a dog", "a dog").key == "a81670c0b2e77633"


def test_as_prompt_uses_the_paper_keys_and_keeps_extra():
    triple = PromptTriple("a cat", "make it a dog", "a dog", {"url": "u", "edit": "ignored"})
    assert triple.as_prompt() == {"url": "u", "caption": "a cat", "edit": "make it a dog", "output": "a dog"}


def test_deduplicate_keeps_the_first_and_counts_the_rest():
    first = PromptTriple("a cat", "make it a dog", "a dog", {"n": 1})
    kept, dropped = deduplicate([first, PromptTriple("x", "y", "z"), PromptTriple("A cat", "Make it a dog", "a dog")])
    assert _texts(kept) == [("a cat", "make it a dog", "a dog"), ("x", "y", "z")] and kept[0].extra == {"n": 1}
    assert dropped == 1


# ----------------------------------------------------------------------------------------- JSONL


def test_jsonl_reads_both_paper_key_conventions(tmp_path):
    prompts = read_prompts(_jsonl(tmp_path / "p.jsonl", CAT, BARN))
    assert _texts(prompts) == [
        ("a cat on a sofa", "make it a dog", "a dog on a sofa"),
        ("a red barn", "make it winter", "a red barn in the snow"),
    ]


def test_jsonl_keeps_other_keys_in_extra(tmp_path):
    prompts = read_prompts(_jsonl(tmp_path / "p.jsonl", {**BARN, "url": "http://x", "score": 3}))
    assert prompts[0].extra == {"url": "http://x", "score": 3}


def test_malformed_jsonl_lines_are_skipped_and_named_by_line_number(tmp_path):
    path = _jsonl(
        tmp_path / "p.jsonl",
        CAT,
        "{not json",
        {"caption": "a cat", "output": "a dog"},
        {"caption": "a cat", "edit": 7, "output": "a dog"},
        {"caption": "a cat", "edit": "make it a dog", "output": "  "},
        "[1, 2]",
        BARN,
    )
    prompts = read_prompts(path)
    assert len(prompts) == 2
    assert [line for line, _ in prompts.malformed] == [2, 3, 4, 5, 6]
    reasons = dict(prompts.malformed)
    assert reasons[2].startswith("not JSON") and "'edit'" in reasons[3] and "int" in reasons[4]
    assert reasons[5] == "empty 'output'" and "list" in reasons[6]
    assert "line 3: missing 'edit'" in prompts.summary()


def test_blank_lines_are_neither_triples_nor_malformed(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(f"\n{json.dumps(CAT)}\n   \n{json.dumps(BARN)}\n\n", encoding="utf-8")
    prompts = read_prompts(path)
    assert len(prompts) == 2 and prompts.malformed == []


def test_skipped_lines_are_logged_as_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ip2p.prompts"):
        read_prompts(_jsonl(tmp_path / "p.jsonl", CAT, "oops"))
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "line 2" in caplog.records[0].getMessage()


def test_a_file_without_usable_triples_is_an_error_naming_file_and_lines(tmp_path):
    path = _jsonl(tmp_path / "empty.jsonl", {"caption": "a cat"}, "nope")
    with pytest.raises(IP2PError, match=r"empty\.jsonl holds no usable prompt triple.*line 1: missing 'edit'"):
        read_prompts(path)


def test_duplicate_lines_are_dropped_keeping_the_first_and_counted(tmp_path):
    prompts = read_prompts(_jsonl(tmp_path / "p.jsonl", {**CAT, "n": 1}, BARN, {**CAT, "n": 2}))
    assert [t.extra.get("n") for t in prompts] == [1, None]
    assert prompts.duplicates == 1 and "1 duplicate" in prompts.summary()


def test_columns_map_other_key_names(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", {"src": "a cat", "cmd": "make it a dog", "output": "a dog"})
    prompts = read_prompts(path, columns={"caption": "src", "edit": "cmd"})
    assert _texts(prompts) == [("a cat", "make it a dog", "a dog")] and prompts[0].extra == {}


def test_an_unknown_column_role_is_an_error_naming_the_roles(tmp_path):
    with pytest.raises(IP2PError, match=r"'instruction'.*caption, edit, output"):
        read_prompts(_jsonl(tmp_path / "p.jsonl", CAT), columns={"instruction": "cmd"})


def test_written_prompts_read_back_the_same(tmp_path):
    triples = [PromptTriple("a cat", "make it a dog", "a dog", {"url": "u"}), PromptTriple("é", "ü", "ß")]
    prompts = read_prompts(write_prompts(tmp_path / "out.jsonl", triples))
    assert _texts(prompts) == _texts(triples) and prompts[0].extra == {"url": "u"}


# ------------------------------------------------------------------------------------------- CSV


def test_csv_with_the_paper_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('input,edit,output,url\n"a cat, sleeping",make it a dog,"a dog, sleeping",u1\n', encoding="utf-8")
    prompts = read_prompts(path)
    assert _texts(prompts) == [("a cat, sleeping", "make it a dog", "a dog, sleeping")]
    assert prompts[0].extra == {"url": "u1"}


def test_tsv_is_read_with_tabs(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("caption\tedit\toutput\na cat, here\tmake it a dog\ta dog, here\n", encoding="utf-8")
    assert _texts(read_prompts(path)) == [("a cat, here", "make it a dog", "a dog, here")]


def test_csv_columns_map_other_header_names(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("before,instruction,after\na cat,make it a dog,a dog\n", encoding="utf-8")
    prompts = read_prompts(path, columns={"caption": "before", "edit": "instruction", "output": "after"})
    assert _texts(prompts) == [("a cat", "make it a dog", "a dog")]


def test_csv_without_a_needed_column_is_an_error_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("caption,instruction,output\na cat,make it a dog,a dog\n", encoding="utf-8")
    with pytest.raises(IP2PError, match=r"no 'edit' column.*'instruction'.*columns=\{'edit'"):
        read_prompts(path)


def test_csv_rows_with_the_wrong_number_of_fields_are_malformed_with_line_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("caption,edit,output\na cat,make it a dog\na,b,c,d\nx,y,z\n", encoding="utf-8")
    prompts = read_prompts(path)
    assert _texts(prompts) == [("x", "y", "z")]
    assert [line for line, _ in prompts.malformed] == [2, 3]
    assert "2 fields" in prompts.malformed[0][1] and "4 fields" in prompts.malformed[1][1]


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("caption,edit,output\na cat,make it a dog,a dog\n".encode("utf-8-sig"))
    assert len(read_prompts(path)) == 1


@pytest.mark.parametrize(
    ("name", "message"), [("p.txt", r"\.txt file.*\.jsonl"), ("missing.jsonl", "not found")], ids=["suffix", "missing"]
)
def test_unknown_suffixes_and_missing_files_are_errors(tmp_path, name, message):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("a cat\n")
    with pytest.raises(IP2PError, match=message):
        read_prompts(tmp_path / name)


# ------------------------------------------------------------------------------------- templates

ANIMALS = {"animal": ["cat", "dog"], "style": ["watercolor", "pixel art"]}


def test_templates_expand_to_the_cartesian_product_in_a_fixed_order():
    triples = expand_templates(
        ["a photo of a {animal}"],
        [{"instruction": "make it {style}", "output": "a {style} photo of a {animal}"}],
        ANIMALS,
    )
    assert _texts(triples) == [
        ("a photo of a cat", "make it watercolor", "a watercolor photo of a cat"),
        ("a photo of a cat", "make it pixel art", "a pixel art photo of a cat"),
        ("a photo of a dog", "make it watercolor", "a watercolor photo of a dog"),
        ("a photo of a dog", "make it pixel art", "a pixel art photo of a dog"),
    ]
    assert triples[1].extra == {"template_values": {"animal": "cat", "style": "pixel art"}}


def test_captions_come_before_edits_and_only_used_placeholders_multiply():
    triples = expand_templates(
        ["a {animal}", "a drawing"],
        [("make it {style}", "{caption}, {style}"), ("add a hat", "{caption} in a hat")],
        ANIMALS,
    )
    assert _texts(triples) == [
        ("a cat", "make it watercolor", "a cat, watercolor"),
        ("a cat", "make it pixel art", "a cat, pixel art"),
        ("a dog", "make it watercolor", "a dog, watercolor"),
        ("a dog", "make it pixel art", "a dog, pixel art"),
        ("a cat", "add a hat", "a cat in a hat"),
        ("a dog", "add a hat", "a dog in a hat"),
        ("a drawing", "make it watercolor", "a drawing, watercolor"),
        ("a drawing", "make it pixel art", "a drawing, pixel art"),
        ("a drawing", "add a hat", "a drawing in a hat"),
    ]


def test_double_braces_are_literal_braces():
    triples = expand_templates(["a {{json}} {animal}"], [("make it {style}", "a {style} {{x}}")], ANIMALS)
    assert triples[0].input_caption == "a {json} cat" and triples[0].edited_caption == "a watercolor {x}"


@pytest.mark.parametrize(
    ("captions", "edits", "message"),
    [
        (["a {animal}"], [("make it {colour}", "a {colour} {animal}")], r"unknown placeholder \{colour\}.*\{animal\}"),
        (["a {caption}"], [("x", "y")], r"unknown placeholder \{caption\}"),
        (["a {animal!r}"], [("x", "y")], "plain names"),
        (["a {}"], [("x", "y")], "plain names"),
        (["a {animal"], [("x", "y")], "unbalanced braces"),
        (["a {animal}"], [{"instruction": "make it red"}], "Edit template 0"),
        ([], [("x", "y")], "at least one caption"),
    ],
    ids=["unknown", "caption-in-caption", "conversion", "positional", "unbalanced", "no-output", "no-captions"],
)
def test_bad_templates_are_errors_that_name_the_problem(captions, edits, message):
    with pytest.raises(IP2PError, match=message):
        expand_templates(captions, edits, ANIMALS)


@pytest.mark.parametrize(
    "values",
    [{"animal": []}, {"animal": "cat"}, {"animal": [True]}, {"caption": ["x"]}],
    ids=["empty", "text", "bool", "reserved"],
)
def test_bad_value_lists_are_errors(values):
    with pytest.raises(IP2PError, match="animal|caption"):
        expand_templates(["a {animal}"], [("x", "y")], values)


def test_a_runaway_product_is_refused_before_expanding():
    values = {f"v{i}": [str(j) for j in range(10)] for i in range(6)}
    caption = " ".join(f"{{v{i}}}" for i in range(6))
    with pytest.raises(IP2PError, match="1,000,000 triples.*max_triples=100,000"):
        expand_templates([caption], [("x", "y")], values)


TEMPLATE = {
    "values": {"animal": ["cat", "dog"], "style": ["watercolor"]},
    "captions": ["a photo of a {animal}"],
    "edits": [{"instruction": "make it {style}", "output": "a {style} photo of a {animal}"}],
}
TEMPLATE_YAML = """\
values:
  animal: [cat, dog]
  style: [watercolor]
captions:
  - a photo of a {animal}
edits:
  - instruction: make it {style}
    output: a {style} photo of a {animal}
"""


def test_json_and_yaml_template_files_give_the_same_triples_through_read_prompts(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATE), encoding="utf-8")
    (tmp_path / "t.yaml").write_text(TEMPLATE_YAML, encoding="utf-8")
    from_json, from_yaml = read_prompts(tmp_path / "t.json"), read_prompts(tmp_path / "t.yaml")
    assert (
        _texts(from_json)
        == _texts(from_yaml)
        == [
            ("a photo of a cat", "make it watercolor", "a watercolor photo of a cat"),
            ("a photo of a dog", "make it watercolor", "a watercolor photo of a dog"),
        ]
    )


def test_columns_are_refused_for_a_template_file(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATE), encoding="utf-8")
    with pytest.raises(IP2PError, match="template file; columns="):
        read_prompts(tmp_path / "t.json", columns={"edit": "x"})


def test_a_template_file_with_an_unknown_key_is_an_error(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({**TEMPLATE, "caption": ["typo"]}), encoding="utf-8")
    with pytest.raises(IP2PError, match=r"unknown key\(s\) \['caption'\]"):
        read_templates(tmp_path / "t.json")


def test_a_template_file_error_names_the_file(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({**TEMPLATE, "captions": ["a {colour}"]}), encoding="utf-8")
    with pytest.raises(IP2PError, match=r"t\.json.*\{colour\}"):
        read_templates(tmp_path / "t.json")


# -------------------------------------------------------------------------------------- resuming

TRIPLES = [PromptTriple(f"c{i}", f"e{i}", f"o{i}") for i in range(5)]


def test_pending_skips_done_keys_and_keeps_the_original_indices():
    done = {TRIPLES[0].key, TRIPLES[3].key}
    assert [(i, t.input_caption) for i, t in pending(TRIPLES, done)] == [(1, "c1"), (2, "c2"), (4, "c4")]


def test_pending_starts_at_an_index():
    assert [i for i, _ in pending(TRIPLES, set(), start=3)] == [3, 4]


def test_pending_asks_a_callback_lazily_so_work_done_meanwhile_is_skipped():
    finished: set[str] = set()
    walked = []
    for index, triple in pending(TRIPLES, lambda t: t.key in finished):
        walked.append(index)
        finished.add(TRIPLES[index + 1].key if index + 1 < len(TRIPLES) else triple.key)  # another worker took the next
    assert walked == [0, 2, 4]


# ------------------------------------------------------------------------------- LLM: the format


def test_few_shot_prompt_is_the_papers_format_ending_where_the_model_writes():
    example = PromptTriple("a cat", "make it a dog", "a dog")
    assert (
        few_shot_prompt(" a  red\nbarn ", [example]) == "a cat\n##\nmake it a dog\n%%\na dog\nEND\n\na red barn\n##\n"
    )


def test_default_examples_are_well_formed_answers_to_their_own_captions():
    for example in FEW_SHOT_EXAMPLES:
        answer = f"{example.instruction}\n%%\n{example.edited_caption}\nEND"
        assert _texts([parse_answer(example.input_caption, answer)]) == _texts([example])


def test_a_well_formed_answer_is_parsed_and_the_rest_ignored():
    triple = parse_answer("a cat", " make it a dog\n%%\n a dog \nEND\n\na horse\n##\n")
    assert _texts([triple]) == [("a cat", "make it a dog", "a dog")]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("make it a dog\n%%\na dog", ANSWER_UNFINISHED),
        ("make it a dog\n%%\na dog END", ANSWER_UNFINISHED),
        ("make it a dog\na dog\nEND", ANSWER_NO_SEPARATOR),
        ("make it a dog\n%%\na dog\n%%\na fox\nEND", ANSWER_SEPARATORS),
        ("make it a dog\n%%\na dog\n\na fox\n##\nx\n%%\ny\nEND", ANSWER_RUNAWAY),
        ("  \n%%\na dog\nEND", ANSWER_EMPTY_INSTRUCTION),
        ("make it a dog\n%%\n\nEND", ANSWER_EMPTY_OUTPUT),
        ("A Cat\n%%\na dog\nEND", ANSWER_REPEATS_CAPTION),
        ("make it a dog\n%%\na  CAT\nEND", ANSWER_UNCHANGED),
    ],
    ids=[
        "no-end",
        "end-inline",
        "no-separator",
        "two-separators",
        "runaway",
        "empty-instruction",
        "empty-output",
        "repeats",
        "unchanged",
    ],
)
def test_malformed_answers_are_refused_with_their_reason(answer, reason):
    with pytest.raises(MalformedAnswer) as caught:
        parse_answer("a cat", answer)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "examples",
    [[], [PromptTriple("a cat", "%%", "a dog")], [PromptTriple("a cat", " ", "a dog")]],
    ids=["none", "marker", "empty"],
)
def test_unusable_few_shot_examples_are_refused(examples):
    with pytest.raises(IP2PError, match="example"):
        generate_edits(None, None, ["a cat"], examples=examples)


# ------------------------------------------------------------------------------ LLM: generation


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 1-layer GPT-2 and a byte-level BPE tokenizer trained here, saved as a local folder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([few_shot_prompt("a photo of a cat")] * 4, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    eos = fast.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(fast), n_positions=1024, n_embd=16, n_layer=1, n_head=2, bos_token_id=eos, eos_token_id=eos
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-lm")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


CAPTIONS = ["a photo of a cat", "a red barn", "a bowl of apples", "a city street at night", "a dog"]


def test_load_llm_refuses_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(IP2PError, match="no config.json"):
        load_llm(tmp_path)


def test_a_random_model_runs_through_every_caption_and_every_garbage_answer_is_counted(tiny_lm):
    model, tokenizer = load_llm(tiny_lm)
    seen = []
    result = generate_edits(
        model, tokenizer, CAPTIONS, batch_size=2, max_new_tokens=12, progress=lambda d, n: seen.append((d, n))
    )
    assert len(result.answers) == 5 and all(isinstance(a, str) and a for a in result.answers)
    assert result.triples == [] and [i for i, _ in result.dropped] == [0, 1, 2, 3, 4]
    assert sum(result.counts().values()) == 5 and "0 of 5" in result.summary()
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_generation_is_deterministic_for_a_seed_and_differs_for_another(tiny_lm):
    model, tokenizer = load_llm(tiny_lm)
    run = lambda seed: generate_edits(model, tokenizer, CAPTIONS, seed=seed, batch_size=3, max_new_tokens=12).answers  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_generation_leaves_the_callers_random_state_alone(tiny_lm):
    model, tokenizer = load_llm(tiny_lm)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_edits(model, tokenizer, CAPTIONS[:2], seed=7, max_new_tokens=4)
    assert torch.equal(torch.rand(3), expected)


def test_a_prompt_past_the_context_is_an_error_with_the_fix(tiny_lm):
    model, tokenizer = load_llm(tiny_lm)
    with pytest.raises(IP2PError, match="context of 1024.*max_new_tokens"):
        generate_edits(model, tokenizer, ["a cat"], max_new_tokens=1000)


class ScriptedLM:
    """Stands in for a model that writes given answers, to check the loop's decoding and parsing."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers = tokenizer, list(answers)
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(max_position_embeddings=None)
        self.calls = []

    def generate(self, input_ids, attention_mask, **settings):
        self.calls.append({**settings, "attention_mask": attention_mask})
        rows = [self.tokenizer(self.answers.pop(0), add_special_tokens=False)["input_ids"] for _ in input_ids]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        new = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


def test_model_answers_become_triples_and_bad_ones_are_dropped_by_reason(tiny_lm):
    _, tokenizer = load_llm(tiny_lm)
    answers = [
        "make it a dog\n%%\na photo of a dog\nEND",
        "make it winter\na red barn in snow\nEND",
        "add pears\n%%\na bowl of apples and pears\nEND\n\nnext",
        "make it day\n%%\na city street",
    ]
    model = ScriptedLM(tokenizer, answers)
    result = generate_edits(model, tokenizer, CAPTIONS[:4], batch_size=3, temperature=0, max_new_tokens=9)
    assert _texts(result.triples) == [
        ("a photo of a cat", "make it a dog", "a photo of a dog"),
        ("a bowl of apples", "add pears", "a bowl of apples and pears"),
    ]
    assert result.dropped == [(1, ANSWER_NO_SEPARATOR), (3, ANSWER_UNFINISHED)]
    assert result.answers[0] == answers[0]
    assert model.calls[0]["do_sample"] is False and model.calls[0]["max_new_tokens"] == 9
    assert model.calls[0]["stop_strings"] == ["END"]


def test_batches_are_padded_on_the_left_so_every_prompt_ends_where_the_model_writes(tiny_lm):
    _, tokenizer = load_llm(tiny_lm)
    tokenizer.padding_side = "right"
    model = ScriptedLM(tokenizer, ["x\n%%\ny\nEND"] * 2)
    generate_edits(model, tokenizer, ["a cat", "a very long caption of a cat on a sofa"], max_new_tokens=4)
    mask = model.calls[0]["attention_mask"]
    assert mask[0, 0] == 0 and bool(mask[:, -1].all())
    assert tokenizer.padding_side == "right"
