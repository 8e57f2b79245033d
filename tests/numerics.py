"""How a test compares two float computations: the rule, stated once (CONTRIBUTING.md, "Numerics").

float32 results depend on the kernels the processor selects: its instruction set (ATen's
``ATEN_CPU_CAPABILITY``, oneDNN's and MKL's own dispatch), the batch size and the thread count
change the order of floating-point sums. A tolerance tuned on one processor fails on another
(issue 21: batched against one-per-call images 7.3e-4 apart on an AVX-512 Xeon, 0 on an AVX2 EPYC).
So, where a test compares two computations:

- the same op sequence by construction (the same call twice, the same rows of one batch of the same
  shape, the same weights reloaded): exact, ``atol=0`` or ``torch.equal``;
- anything else is marked ``@pytest.mark.numerics`` (``scripts/test.sh kernels`` reruns those under
  every kernel setting) and compares one of:
  1. what users see: decoded images in [0, 1] within ``IMAGE_LEVEL``, one 8-bit level;
  2. float64 on both sides, within ``FLOAT64_ATOL``: the test checks algebra, not kernels;
  3. float32 within a tolerance at least ``WITHIN_MARGIN`` × the largest spread that bench/kernel_spread.py
     measured within any kernel setting and ``ACROSS_MARGIN`` × its spread across settings (each side
     under any setting: what another processor may pick), the figures in a comment; for predictions
     of a model, ``spread_atol`` scales the tolerance to their magnitude.
"""

from __future__ import annotations

import torch

IMAGE_LEVEL = 1 / 255  # one level of an 8-bit image in [0, 1]: a difference no saved image can show more of
FLOAT64_ATOL = 1e-10  # float64 rounding after a few hundred operations on values of order 10 is ~1e-13
WITHIN_MARGIN = 10  # least ratio of a float32 tolerance to the largest spread measured within one kernel setting
ACROSS_MARGIN = 2  # ... and to the spread across settings (an upper proxy: it includes torch.randn's own rounding)

# float32 model predictions (UNet outputs, denoised latents) of the same inputs, computed in another batch or
# with other kernels, differ by at most this fraction of their largest magnitude: measured 5e-7 (bench/
# kernel_spread.py: ComfyUI's tiny SD15_instructpix2pix, one branch at a time against three in one batch, every
# kernel setting of an AVX2 EPYC; issue 21's AVX-512 failures are the same size, 1.6e-4 on predictions of ~46).
PREDICTION_SPREAD = 1e-5


def spread_atol(*predictions: torch.Tensor, weight: float = 1.0) -> float:
    """The absolute tolerance for a float32 quantity built from ``predictions`` as a linear combination whose
    coefficients' magnitudes sum to ``weight`` (e.g. eq. 3 of the paper, u + s_T·(f − i) + s_I·(i − u):
    1 + 2·s_T + 2·s_I): each prediction may move by PREDICTION_SPREAD × the largest of their magnitudes."""
    scale = max(float(p.detach().abs().max()) for p in predictions)
    return PREDICTION_SPREAD * weight * scale
