"""The headless backend: InstructPix2Pix on diffusers and transformers modules, no ComfyUI.

Loading (:mod:`.loading`), saving (:mod:`.export`), sampling (:mod:`.editor`, :mod:`.schedulers`)
and models built from configs (:mod:`.random_model`). Everything here needs the ``headless`` extra;
the rest of ``ip2p`` does not.
"""

from __future__ import annotations

from ..errors import IP2PError

INSTALL_HINT = "pip install '.[headless]' in the comfyui-ip2p folder"


def libraries():
    """``(diffusers, transformers)``, or a clear error naming the extra that provides them."""
    try:
        import diffusers
        import transformers
    except ImportError as exc:
        raise IP2PError(
            f"The headless backend needs diffusers and transformers ({exc}). Install them: {INSTALL_HINT}"
        ) from exc
    return diffusers, transformers
