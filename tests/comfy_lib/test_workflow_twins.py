"""The workflows' nodes of this pack agree with the pack's own interfaces, checked without a server.

The server suite (tests/server/test_workflows.py) compares whole graphs with a real host's
/object_info and runs them; these checks need only ComfyUI's library, so a workflow whose input
names, link types or widget values drift from our nodes fails the default suite too. ComfyUI's own
nodes in a workflow are left to the server suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
API_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.api.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _name(path: Path) -> str:
    return path.name.removesuffix(".api.json")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _inputs(node) -> dict[str, tuple]:
    """Every input of a node class, required then optional, in the order the frontend stores them."""
    spec = node.INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def _is_widget(spec: tuple) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def test_every_workflow_has_its_ui_and_api_files():
    assert API_WORKFLOWS
    assert [_name(p) for p in API_WORKFLOWS] == sorted(
        p.stem for p in WORKFLOWS_DIR.glob("*.json") if not p.name.endswith(".api.json")
    )


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=_name)
def test_our_nodes_in_an_api_workflow_get_exactly_their_inputs_each_linked_to_an_output_of_its_type(pack, path):
    prompt, ours = _load(path), pack.nodes.NODE_CLASS_MAPPINGS
    for node_id, node in prompt.items():
        if node["class_type"] not in ours:
            continue
        cls = ours[node["class_type"]]
        inputs = _inputs(cls)
        assert set(cls.INPUT_TYPES()["required"]) <= set(node["inputs"]) <= set(inputs), node_id
        for name, value in node["inputs"].items():
            kind = inputs[name][0]
            if isinstance(value, list):
                source = prompt[value[0]]["class_type"]
                if source in ours:
                    assert ours[source].RETURN_TYPES[value[1]] == kind, f"{node_id}.{name}"
            elif isinstance(kind, list) and not node["class_type"].endswith("Loader"):  # loaders list the host's files
                assert value in kind, f"{node_id}.{name}"


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=_name)
def test_our_nodes_in_a_ui_workflow_store_the_api_twins_values_in_their_widget_order(pack, path):
    api, ours = _load(path), pack.nodes.NODE_CLASS_MAPPINGS
    ui = _load(path.with_name(_name(path) + ".json"))
    for node in ui["nodes"]:
        if node["type"] not in ours:
            continue
        twin = api[str(node["id"])]
        assert twin["class_type"] == node["type"]
        linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        assert linked == {name for name, value in twin["inputs"].items() if isinstance(value, list)}
        values = list(node.get("widgets_values", []))
        for name, spec in _inputs(ours[node["type"]]).items():
            if not _is_widget(spec):
                continue
            assert values.pop(0) == twin["inputs"][name], f"node {node['id']}.{name}"
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        assert not values, f"node {node['id']} has extra widget values {values}"
