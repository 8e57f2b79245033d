"""Every node's interface equals the committed snapshot, node_snapshot.json.

Saved UI workflows refer to a node by its id and store its widget values by position, so a node's
id, display name, category, inputs (names, types, order, options) and outputs must not change by
accident. Tooltips are left out: rewording one breaks no workflow. Host-dependent combo lists are
recorded by kind: the sampler and scheduler lists must be the host's own, the model lists lists.

After an intended interface change, rewrite the snapshot and review its diff:
``IP2P_WRITE_NODE_SNAPSHOT=1`` makes the run write it (and fail, so that it is never left on).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("node_snapshot.json")
MODEL_LISTS = {
    ("IP2PCheckpointLoader", "ckpt_name"),
    ("IP2PDiffusersLoader", "model_path"),
    ("IP2PCLIPLoader", "clip_model"),
    ("IP2PDINOLoader", "dino_model"),
}
OPTIONAL_ATTRIBUTES = ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_NODE", "OUTPUT_IS_LIST", "INPUT_IS_LIST")


def _input_type(node_id: str, name: str, kind) -> object:
    import comfy.samplers

    if not isinstance(kind, list):
        return kind
    if kind == comfy.samplers.KSampler.SAMPLERS:
        return {"combo": "comfy.samplers.KSampler.SAMPLERS"}
    if kind == comfy.samplers.KSampler.SCHEDULERS:
        return {"combo": "comfy.samplers.KSampler.SCHEDULERS"}
    if (node_id, name) in MODEL_LISTS:
        return {"combo": "model files"}
    return {"combo": list(kind)}


def _inputs(node) -> dict:
    record = {}
    for group, inputs in node.INPUT_TYPES().items():
        record[group] = [
            {
                "name": name,
                "type": _input_type(node.NODE_ID, name, spec[0]),
                "options": {
                    key: value for key, value in (spec[1] if len(spec) > 1 else {}).items() if key != "tooltip"
                },
            }
            for name, spec in inputs.items()
        ]
    return record


def interface(node) -> dict:
    """What a saved workflow depends on, in JSON types."""
    record = {
        "DISPLAY_NAME": node.DISPLAY_NAME,
        "CATEGORY": node.CATEGORY,
        "RETURN_TYPES": list(node.RETURN_TYPES),
        "INPUT_TYPES": _inputs(node),
    }
    for attribute in OPTIONAL_ATTRIBUTES:
        if hasattr(node, attribute):
            value = getattr(node, attribute)
            record[attribute] = list(value) if isinstance(value, tuple) else value
    return json.loads(json.dumps(record))  # tuples → lists, as the snapshot file holds them


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.nodes


@pytest.fixture(scope="module")
def snapshot(nodes) -> dict:
    if os.environ.get("IP2P_WRITE_NODE_SNAPSHOT"):
        current = {node.NODE_ID: interface(node) for node in nodes.NODES}
        SNAPSHOT.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.fail(f"wrote {SNAPSHOT.name}; review its diff and run again without IP2P_WRITE_NODE_SNAPSHOT")
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def test_the_pack_registers_exactly_the_snapshot_nodes(nodes, snapshot):
    assert [node.NODE_ID for node in nodes.NODES] == list(snapshot)


def test_model_lists_are_lists(nodes):
    for node_id, name in MODEL_LISTS:
        assert isinstance(nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"][name][0], list)


@pytest.mark.parametrize(
    "node_id",
    [
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
        "IP2PEvaluate",
        "IP2PDINOLoader",
    ],
)
def test_node_interface_equals_the_snapshot(nodes, snapshot, node_id):
    assert interface(nodes.NODE_CLASS_MAPPINGS[node_id]) == snapshot[node_id]
