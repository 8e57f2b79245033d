"""comfyui-ip2p core: InstructPix2Pix maths and I/O, free of any ComfyUI import.

The ComfyUI nodes (``nodes/``) and the headless command line (``ip2p.cli``) both stand on
this package, so the two sampling paths share one guidance formula and one set of checks.
"""

__version__ = "0.1.0"
