"""ComfyUI entry point of comfyui-ip2p.

ComfyUI imports this folder as a package from ``custom_nodes/``. The nodes are registered only
when ComfyUI's ``comfy`` package is importable, so the repository also imports cleanly outside
ComfyUI (headless use, packaging, tests).
"""

try:
    import comfy  # noqa: F401
except ImportError:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
