"""ComfyUI entry point of comfyui-ip2p.

ComfyUI imports this folder as a package from ``custom_nodes/``. The nodes are registered only for
a package import with ComfyUI's ``comfy`` importable, so the repository also imports cleanly
outside ComfyUI (headless use, packaging) and when a tool such as pytest loads this file as a
plain module.
"""

import importlib.util

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if __package__ and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
