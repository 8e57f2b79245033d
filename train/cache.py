"""The latent cache (``data.cache``, on by default): the frozen VAE and text encoder run once per example and model.

Before training, every usable example is encoded: the edited image to its VAE posterior (mean and
std, so each step still draws its own posterior sample), the input image to its image latent
(posterior mode, scaled or not as the model family says), both at the centre crop and, when
``data.flip > 0``, mirrored too (flipping a latent is not the latent of the flipped image); each
distinct instruction to its text embedding once. A training step then costs only the UNet. What
changes against the uncached stream: the crop is always the centre one (random crops need the
pixels), and examples the reader cannot use are dropped while encoding, counted in one summary line.

On disk (``data.cache_dir``, by default ``~/.cache/ip2p/latents``: a shared folder beside the hub's
and the toolkit's other caches, not the run folder, so every run on the same data and model, in any
``output_dir``, reads one cache) the cache of one dataset and model is a folder named by a key: the
hash of the model's weights, the dataset's files (paths, sizes, modification times), split, column
mapping and row count, the resolution, the flip views, the model family's latent convention, the
tokenizer's length and the encoding precision. Another run with the same key reads it instead of
encoding; a changed model, dataset or setting gets a new folder (old ones are left for the user to delete).
Shards of :data:`SHARD_EXAMPLES` dataset rows are written atomically, so a killed run loses at most
the shard being encoded and the next run continues from there; ``manifest.json``, written last,
marks a finished cache. A dataset given as a Python sequence (no path) is cached in memory only.

In memory it takes about ``examples × views × 3 × latent size × 4`` bytes plus one embedding per
distinct instruction (the toy world: 5,000 examples at 64 px, 31 MB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ip2p.errors import IP2PError

from .data import PositionStream, centred_pair_tensors, draw_mirror, tokenize
from .model import encode_pairs

logger = logging.getLogger("ip2p.train")

ENCODE_BATCH = 32  # examples per VAE call while filling the cache
SHARD_EXAMPLES = 256  # dataset rows per shard file: the unit of resumption
FORMAT = 1  # bumped when the stored layout or the encoding changes: old caches are then not read
LATENTS = ("edited_mean", "edited_std", "image_latent")
MANIFEST = "manifest.json"
TEXT = "text.safetensors"


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


# --------------------------------------------------------------------------------------------
# Where a cache lives


def dataset_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a dataset's files (relative path, size, modification time): changes when any file does."""
    root = Path(path).expanduser().resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(model, data: dict, *, resolution: int, flip: float, dtype: torch.dtype) -> str:
    """The folder name of one dataset's cache for one model and one set of preprocessing settings."""
    inputs = {
        "format": FORMAT,
        "model": model.model_hash,
        "family": model.family.name,  # the image latent's convention (scaled or not)
        "scaling_factor": model.latent_scaling_factor,
        "max_length": model.tokenizer.model_max_length,
        "data": data,
        "resolution": resolution,
        "views": 2 if flip > 0 else 1,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# Encoding


def _encode_rows(dataset: Sequence, rows: range, model, *, resolution: int, views: tuple[bool, ...], device,
                 dtype) -> tuple[dict[str, torch.Tensor], list[str], dict[str, int]]:  # fmt: skip
    """Rows of ``dataset`` -> their latents (n, views, C, h, w) on the CPU, instructions and skip counts."""
    from ip2p.datasets.reader import BadExampleError

    chunks: dict[str, list[torch.Tensor]] = {key: [] for key in LATENTS}
    instructions: list[str] = []
    skipped: dict[str, int] = {}
    pending: list = []

    def flush() -> None:
        if not pending:
            return
        outputs: dict[str, list[torch.Tensor]] = {key: [] for key in LATENTS}
        for mirror in views:
            pairs = [centred_pair_tensors(e.input_image, e.edited_image, resolution, mirror) for e in pending]
            source = torch.stack([p[0] for p in pairs]).to(device, dtype)
            edited = torch.stack([p[1] for p in pairs]).to(device, dtype)
            for key, latent in zip(LATENTS, encode_pairs(model, edited, source), strict=True):
                outputs[key].append(latent.float().cpu())
        for key, tensors in outputs.items():
            chunks[key].append(torch.stack(tensors, dim=1))
        instructions.extend(e.instruction for e in pending)
        pending.clear()

    for i in rows:
        try:
            pending.append(dataset[i])
        except BadExampleError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        if len(pending) == ENCODE_BATCH:
            flush()
    flush()
    latents = {key: torch.cat(parts) for key, parts in chunks.items() if parts}
    return latents, instructions, skipped


def _encode_texts(model, texts: list[str], device) -> torch.Tensor:
    embeddings = []
    for start in range(0, len(texts), ENCODE_BATCH):
        ids = tokenize(model.tokenizer, texts[start : start + ENCODE_BATCH]).to(device)
        embeddings.append(model.text_encoder(ids)[0].float().cpu())
    return torch.cat(embeddings)


# --------------------------------------------------------------------------------------------
# Shards on disk


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def _save_shard(path: Path, rows: range, latents: dict, instructions: list[str], skipped: dict) -> None:
    from ip2p.formats.checkpoint import save_safetensors_atomic

    metadata = {"rows": json.dumps([rows.start, rows.stop]), "instructions": json.dumps(instructions),
                "skipped": json.dumps(skipped)}  # fmt: skip
    save_safetensors_atomic(latents, path, metadata)


def _load_shard(path: Path, rows: range):
    """A complete shard's (latents, instructions, skipped), or None when it is missing or unreadable."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            latents = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        if json.loads(metadata["rows"]) != [rows.start, rows.stop]:
            raise ValueError(f"rows {metadata['rows']}, expected {[rows.start, rows.stop]}")
        instructions, skipped = json.loads(metadata["instructions"]), json.loads(metadata["skipped"])
        if (instructions and set(latents) != set(LATENTS)) or any(
            len(t) != len(instructions) for t in latents.values()
        ):
            raise ValueError("its tensors do not match its instructions")
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        logger.warning("Encoding %s again: it cannot be read (%s)", path, exc)
        return None
    return latents, instructions, skipped


def _read_complete(folder: Path) -> tuple[dict, list[str], torch.Tensor, list[str], dict] | None:
    """A finished cache, or None when it is unfinished or damaged (its readable shards are then reused)."""
    from safetensors import SafetensorError, safe_open

    if not (folder / MANIFEST).is_file():
        return None  # never finished
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            return None
        with safe_open(str(folder / TEXT), framework="pt") as handle:
            texts = handle.get_tensor("embeddings")
            distinct = json.loads((handle.metadata() or {})["instructions"])
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        logger.warning("Finishing the latent cache %s again: it cannot be read (%s)", folder, exc)
        return None
    parts = []
    for index, (start, stop) in enumerate(manifest["shards"]):
        part = _load_shard(_shard_path(folder, index), range(start, stop))
        if part is None:
            return None
        parts.append(part)
    latents, instructions, skipped = _join(parts)
    return latents, instructions, texts, distinct, skipped


def _join(parts: list) -> tuple[dict, list[str], dict]:
    latents = {
        key: torch.cat([p[0][key] for p in parts if key in p[0]]) for key in LATENTS if any(key in p[0] for p in parts)
    }
    instructions = [text for p in parts for text in p[1]]
    skipped: dict[str, int] = {}
    for p in parts:
        for reason, n in p[2].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return latents, instructions, skipped


# --------------------------------------------------------------------------------------------
# The cache as the trainer asks for it


@torch.no_grad()
def encode_dataset(dataset: Sequence, model, *, resolution: int, flip: float, seed: int, device, dtype,
                   folder: Path | None = None, progress: bool = True) -> EncodedStream:  # fmt: skip
    """Every usable example of ``dataset`` encoded with ``model``'s frozen VAE and text encoder.

    With ``folder``, what is there is reused and what is missing is encoded and written there;
    ``folder=None`` keeps the cache in memory only.
    """
    views = (False, True) if flip > 0 else (False,)
    n = len(dataset)
    shards = [range(start, min(n, start + SHARD_EXAMPLES)) for start in range(0, n, SHARD_EXAMPLES)]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    complete = _read_complete(folder) if folder is not None else None
    if complete is not None:
        latents, instructions, texts, distinct, skipped = complete
        logger.info("Read the latent cache %s (%d examples)", folder, len(instructions))
    else:
        parts, reused = [], 0
        bar = _progress(n, progress)
        for index, rows in enumerate(shards):
            part = _load_shard(_shard_path(folder, index), rows) if folder is not None else None
            reused += part is not None
            if part is None:
                part = _encode_rows(
                    dataset, rows, model, resolution=resolution, views=views, device=device, dtype=dtype
                )
                if folder is not None:
                    _save_shard(_shard_path(folder, index), rows, *part)
            parts.append(part)
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        if reused:
            logger.info(
                "Continued the latent cache %s: %d of %d shards were already encoded", folder, reused, len(shards)
            )
        latents, instructions, skipped = _join(parts)
        distinct = sorted(set(instructions))
        texts = _encode_texts(model, distinct, device) if distinct else None
        if folder is not None and distinct:
            _finish(folder, shards, texts, distinct)
    if skipped:
        summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
        logger.warning("Skipped %d of %d examples while encoding: %s", sum(skipped.values()), n, summary)
    if not instructions:
        raise IP2PError(f"None of the dataset's {n} examples is usable (see the warning above).")
    size_mb = (sum(t.numel() for t in latents.values()) + texts.numel()) * 4 / 2**20
    logger.info("Cached %d examples (%d views each) and %d distinct instructions: %.0f MB",
                len(instructions), len(views), len(distinct), size_mb)  # fmt: skip
    lookup = {text: i for i, text in enumerate(distinct)}
    text_index = torch.tensor([lookup[t] for t in instructions], dtype=torch.long)
    return EncodedStream(latents, text_index, texts, flip=flip, seed=seed)


def _finish(folder: Path, shards: list[range], texts: torch.Tensor, distinct: list[str]) -> None:
    from ip2p.formats.atomic import atomic_file
    from ip2p.formats.checkpoint import save_safetensors_atomic

    save_safetensors_atomic({"embeddings": texts}, folder / TEXT, {"instructions": json.dumps(distinct)})
    manifest = {"format": FORMAT, "shards": [[r.start, r.stop] for r in shards]}
    with atomic_file(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest), encoding="utf-8")


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with accelerate
        return None
    return tqdm(total=total, desc="encode", unit="example", disable=not enabled, leave=False)
