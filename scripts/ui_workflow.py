"""Write a UI workflow (the frontend's format, version 0.4) from its API twin and a layout.

The API twin is the source of truth: the server suite checks that the UI file describes the same
graph, and scripts/screenshot_workflows.py that the real frontend posts exactly the twin. This
script saves writing the UI file's links and widget lists by hand. It needs a running ComfyUI
server with this pack (for ``/object_info``: input order, widget kinds, output names)::

    python scripts/ui_workflow.py workflows/ip2p_dataset_builder.api.json LAYOUT.json --url http://127.0.0.1:8188

LAYOUT.json: ``{"nodes": {"<api id>": {"pos": [x, y], "size": [w, h], "control": "increment"}}, "note": {"title": …, "text": …,
"pos": …, "size": …}, "ds": {"scale": …, "offset": […]}}``. Titles come from the twin's ``_meta``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
PACK_PREFIX = "IP2P"


def object_info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/object_info", timeout=60) as response:
        return json.load(response)


def input_specs(info: dict) -> list[tuple[str, object, dict, bool]]:
    """(name, kind, options, optional) of a node's inputs, in the server's order."""
    specs = []
    for group in ("required", "optional"):
        for name in info["input_order"].get(group, []):
            spec = info["input"][group][name]
            specs.append((name, spec[0], spec[1] if len(spec) > 1 else {}, group == "optional"))
    return specs


def is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO") and not options.get("forceInput")


def build(api: dict, layout: dict, info: dict, version: str) -> dict:
    ids = {api_id: number for number, api_id in enumerate(api, start=1)}
    nodes, links = [], []
    outputs: dict[tuple[int, int], list[int]] = {}
    for api_id, node in api.items():
        spec = info[node["class_type"]]
        placed = layout["nodes"][api_id]
        slots, widgets = [], []
        for name, kind, options, optional in input_specs(spec):
            value = node["inputs"].get(name)
            linked = isinstance(value, list)
            if is_widget(kind, options) and not linked:
                widgets.append(value)
                if options.get("control_after_generate"):
                    widgets.append(placed.get("control", "fixed"))
                if options.get("image_upload"):
                    widgets.append("image")
                continue
            slot = {"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": None}
            if optional:
                slot["shape"] = 7
            if linked:
                link_id = len(links) + 1
                source, source_slot = ids[value[0]], value[1]
                links.append(
                    [link_id, source, source_slot, ids[api_id], len(slots), spec_output_type(info, api, value)]
                )
                outputs.setdefault((source, source_slot), []).append(link_id)
                slot["link"] = link_id
            slots.append(slot)
        record = {
            "id": ids[api_id],
            "type": node["class_type"],
            "pos": placed["pos"],
            "size": placed["size"],
            "flags": {},
            "order": ids[api_id] - 1,
            "mode": 0,
            "inputs": slots,
            "outputs": [],
            "properties": {
                "Node name for S&R": node["class_type"],
                "cnr_id": "comfyui-ip2p" if node["class_type"].startswith(PACK_PREFIX) else "comfy-core",
                "ver": "0.1.0" if node["class_type"].startswith(PACK_PREFIX) else version,
            },
            "widgets_values": widgets,
        }
        title = node.get("_meta", {}).get("title")
        if title and title != spec["display_name"]:
            record["title"] = title
        nodes.append(record)
    for record in nodes:
        spec = info[record["type"]]
        for slot, (kind, name) in enumerate(zip(spec["output"], spec["output_name"], strict=True)):
            record["outputs"].append(
                {"name": name, "type": kind if isinstance(kind, str) else "COMBO", "slot_index": slot,
                 "links": outputs.get((record["id"], slot))}
            )  # fmt: skip
    if "note" in layout:
        note = layout["note"]
        nodes.append(
            {
                "id": len(nodes) + 1, "type": "MarkdownNote", "pos": note["pos"], "size": note["size"], "flags": {},
                "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": note["title"], "properties": {},
                "widgets_values": [note["text"]],
            }
        )  # fmt: skip
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))),
        "revision": 0,
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": layout["ds"]},
        "version": 0.4,
    }


def spec_output_type(info: dict, api: dict, value: list) -> str:
    kind = info[api[value[0]]["class_type"]]["output"][value[1]]
    return kind if isinstance(kind, str) else "COMBO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("api", type=Path, help="the API twin (workflows/NAME.api.json)")
    parser.add_argument("layout", type=Path, help="node positions and sizes, the note, the view")
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="a running ComfyUI server with this pack")
    parser.add_argument("--comfy-version", default="0.3.64", help="recorded as core nodes' 'ver'")
    args = parser.parse_args()
    api = json.loads(args.api.read_text(encoding="utf-8"))
    ui = build(api, json.loads(args.layout.read_text(encoding="utf-8")), object_info(args.url), args.comfy_version)
    out = args.api.with_name(args.api.name.removesuffix(".api.json") + ".json")
    out.write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(f"{out}\n")


if __name__ == "__main__":
    main()
