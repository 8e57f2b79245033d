"""The latent cache (``data.cache=true``): the frozen VAE and text encoder run once per example, not per step.

Before training, every usable example is encoded: the edited image to its VAE posterior (mean and
std, so each step still draws its own posterior sample), the input image to its image latent
(posterior mode, scaled or not as the model family says), both at the centre crop and, when
``data.flip > 0``, mirrored too; each distinct instruction to its text embedding once. A training
step then costs only the UNet. What changes against the uncached stream: the crop is always the
centre one (random crops need the pixels), and examples the reader cannot use are dropped while
encoding, counted in one summary line.

The cache lives in memory: about ``examples × (1 + flip) × 3 × latent size × 4`` bytes plus one
embedding per distinct instruction (the toy world: 5,000 examples at 64 px, 31 MB).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ip2p.errors import IP2PError

from .data import PositionStream, centred_pair_tensors, draw_mirror, tokenize
from .model import encode_pairs

logger = logging.getLogger("ip2p.train")

ENCODE_BATCH = 32  # examples per VAE call while filling the cache


class EncodedStream(PositionStream):
    """Position -> ``{"position", "edited_mean", "edited_std", "image_latent", "text"}`` from the cache."""

    def __init__(self, latents: dict[str, torch.Tensor], text_index: torch.Tensor, texts: torch.Tensor, *,
                 flip: float, seed: int) -> None:  # fmt: skip
        super().__init__(len(text_index), seed)
        self.latents, self.text_index, self.texts, self.flip = latents, text_index, texts, flip

    def __getitem__(self, position: int) -> dict:
        index = self.index(position)
        view = int(draw_mirror(self.seed, position, self.flip)) if self.flip > 0 else 0
        sample = {key: value[index, view] for key, value in self.latents.items()}
        return {"position": position, **sample, "text": self.texts[self.text_index[index]]}


@torch.no_grad()
def encode_dataset(dataset: Sequence, model, *, resolution: int, flip: float, seed: int, device, dtype,
                   progress: bool = True) -> EncodedStream:  # fmt: skip
    """Encode every usable example of ``dataset`` with ``model``'s frozen VAE and text encoder."""
    from ip2p.datasets.reader import BadExampleError

    views = (False, True) if flip > 0 else (False,)
    chunks: dict[str, list[torch.Tensor]] = {"edited_mean": [], "edited_std": [], "image_latent": []}
    instructions: list[str] = []
    skipped: dict[str, int] = {}
    pending: list = []

    def flush() -> None:
        if not pending:
            return
        per_view = [
            [centred_pair_tensors(e.input_image, e.edited_image, resolution, m) for e in pending] for m in views
        ]
        outputs: dict[str, list[torch.Tensor]] = {key: [] for key in chunks}
        for pairs in per_view:
            source = torch.stack([p[0] for p in pairs]).to(device, dtype)
            edited = torch.stack([p[1] for p in pairs]).to(device, dtype)
            for key, latent in zip(outputs, encode_pairs(model, edited, source), strict=True):  # in `chunks` order
                outputs[key].append(latent.float().cpu())
        for key, tensors in outputs.items():
            chunks[key].append(torch.stack(tensors, dim=1))  # (n, views, C, h, w)
        instructions.extend(e.instruction for e in pending)
        pending.clear()

    bar = _progress(len(dataset), progress)
    for i in range(len(dataset)):
        try:
            pending.append(dataset[i])
        except BadExampleError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        if len(pending) == ENCODE_BATCH:
            flush()
        if bar is not None:
            bar.update()
    flush()
    if bar is not None:
        bar.close()
    if skipped:
        parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
        logger.warning("Skipped %d of %d examples while encoding: %s", sum(skipped.values()), len(dataset), parts)
    if not instructions:
        raise IP2PError(f"None of the dataset's {len(dataset)} examples is usable (see the warning above).")

    distinct = sorted(set(instructions))
    lookup = {text: i for i, text in enumerate(distinct)}
    embeddings = []
    for start in range(0, len(distinct), ENCODE_BATCH):
        ids = tokenize(model.tokenizer, distinct[start : start + ENCODE_BATCH]).to(device)
        embeddings.append(model.text_encoder(ids)[0].float().cpu())
    latents = {key: torch.cat(parts) for key, parts in chunks.items()}
    size_mb = (sum(t.numel() for t in latents.values()) + sum(e.numel() for e in embeddings)) * 4 / 2**20
    logger.info(
        "Cached %d examples (%d views each) and %d distinct instructions: %.0f MB",
        len(instructions), len(views), len(distinct), size_mb,
    )  # fmt: skip
    text_index = torch.tensor([lookup[t] for t in instructions], dtype=torch.long)
    return EncodedStream(latents, text_index, torch.cat(embeddings), flip=flip, seed=seed)


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with accelerate
        return None
    return tqdm(total=total, desc="encode", unit="example", disable=not enabled, leave=False)
