"""From :class:`ip2p.datasets.EditExample` to training tensors, in a data order fixed by the seed.

The data stream is a sequence of *positions* 0, 1, 2, …; position ``n`` is example
``permutation(seed, epoch)[n % len]`` with ``epoch = n // len``. Micro-batch ``m`` of process ``p``
(of ``P``, batch ``B`` each) holds positions ``m·B·P + p·B … + B − 1``, so together the processes
read the stream in order, exactly as one process with batch ``B·P`` would. Augmentation (crop
offsets, flip) and the diffusion draws are seeded by the position too; resuming at optimizer step
``s`` simply starts at micro-batch ``s · accumulation``: no batches to skip, nothing to replay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ip2p.errors import IP2PError
from ip2p.training import STREAM_AUGMENT, sample_generator, sample_seed

logger = logging.getLogger("ip2p.train")

_EPOCH_STREAM = 7  # the per-epoch permutation's own stream, apart from the per-sample ones


def epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, _EPOCH_STREAM))
    return torch.randperm(size, generator=g)


def _resized_pair(input_image: Image.Image, edited_image: Image.Image, resolution: int):
    """Both images in RGB with the shorter side at ``resolution`` (a pair of unequal sizes is aligned)."""
    a = input_image.convert("RGB")
    w, h = a.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    a = a.resize(size, Image.Resampling.BICUBIC) if a.size != size else a
    b = edited_image.convert("RGB")
    b = b.resize(size, Image.Resampling.BICUBIC) if b.size != size else b
    return a, b, size


def _crop_flip(images, left: int, top: int, resolution: int, mirror: bool) -> list[torch.Tensor]:
    out = []
    for image in images:
        image = image.crop((left, top, left + resolution, top + resolution))
        if mirror:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        out.append(pixels / 127.5 - 1.0)
    return out


def pair_to_tensors(
    input_image: Image.Image, edited_image: Image.Image, resolution: int, flip: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images: shorter side resized to ``resolution``, the SAME square random crop and the SAME flip;
    ``(3, R, R)`` float tensors in [-1, 1]."""
    a, b, size = _resized_pair(input_image, edited_image, resolution)
    left = int(torch.randint(0, size[0] - resolution + 1, (), generator=generator))
    top = int(torch.randint(0, size[1] - resolution + 1, (), generator=generator))
    mirror = bool(torch.rand((), generator=generator) < flip)
    source, edited = _crop_flip((a, b), left, top, resolution, mirror)
    return source, edited


def centred_pair_tensors(
    input_image: Image.Image, edited_image: Image.Image, resolution: int, mirror: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`pair_to_tensors` with the centre crop and a given flip (what the latent cache encodes)."""
    a, b, size = _resized_pair(input_image, edited_image, resolution)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    source, edited = _crop_flip((a, b), left, top, resolution, mirror)
    return source, edited


def draw_mirror(seed: int, position: int, flip: float) -> bool:
    """The cached stream's flip of the sample at ``position`` (its augmentation stream's first draw)."""
    return bool(torch.rand((), generator=sample_generator(seed, position, STREAM_AUGMENT)) < flip)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """CLIP token ids padded to the tokenizer's max length (77), truncated as diffusers' pipeline does."""
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class PositionStream(torch.utils.data.Dataset):
    """Positions 0, 1, 2, … of an endless stream over ``size`` examples, in a seeded order per epoch."""

    def __init__(self, size: int, seed: int) -> None:
        if size == 0:
            raise IP2PError("The dataset has no usable examples; give a dataset with at least one good pair.")
        self.size, self.seed = size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.seed, epoch, self.size)
        return int(self._perm[offset])

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a number
        return 2**62


class PairStream(PositionStream):
    """Position -> one training sample: ``{"position", "input", "edited", "input_ids"}``, decoded and augmented.

    An example the reader finds unusable only now (a corrupt image file, a mismatched pair) is
    skipped with a warning, and the next example in file order takes its place, the same at every
    visit; a dataset with no usable example at all stops the run.
    """

    def __init__(self, dataset: Sequence, tokenizer, *, resolution: int, flip: float, seed: int) -> None:
        super().__init__(len(dataset), seed)
        self.dataset, self.tokenizer = dataset, tokenizer
        self.resolution, self.flip = resolution, flip
        self.bad: set[int] = set()

    def example(self, index: int):
        """The example at ``index``, or the first usable one after it (cyclically)."""
        from ip2p.datasets.reader import BadExampleError

        for step in range(self.size):
            candidate = (index + step) % self.size
            if candidate in self.bad:
                continue
            try:
                return self.dataset[candidate]
            except BadExampleError as exc:
                self.bad.add(candidate)
                logger.warning("Skipping %s (%s); %d unusable so far", exc.key, exc.reason, len(self.bad))
        raise IP2PError(f"None of the dataset's {self.size} examples is usable (see the warnings above).")

    def __getitem__(self, position: int) -> dict:
        example = self.example(self.index(position))
        g = sample_generator(self.seed, position, STREAM_AUGMENT)
        input_pixels, edited_pixels = pair_to_tensors(
            example.input_image, example.edited_image, self.resolution, self.flip, g
        )
        ids = tokenize(self.tokenizer, [example.instruction])[0]
        return {"position": position, "input": input_pixels, "edited": edited_pixels, "input_ids": ids}


@dataclass
class ShardedPositions(torch.utils.data.Sampler):
    """The positions one process reads, micro-batch after micro-batch, from ``start_micro`` on (endless)."""

    batch_size: int
    process_index: int = 0
    num_processes: int = 1
    start_micro: int = 0

    def __iter__(self) -> Iterator[int]:
        micro = self.start_micro
        stride = self.batch_size * self.num_processes
        while True:
            first = micro * stride + self.process_index * self.batch_size
            yield from range(first, first + self.batch_size)
            micro += 1


def collate(samples: list[dict]) -> dict:
    """Samples -> one batch: positions as a long tensor, every other field stacked."""
    batch = {"position": torch.tensor([s["position"] for s in samples], dtype=torch.long)}
    for key in samples[0].keys() - {"position"}:
        batch[key] = torch.stack([s[key] for s in samples])
    return batch


def make_loader(
    stream: PositionStream,
    *,
    batch_size: int,
    process_index: int,
    num_processes: int,
    start_micro: int,
    num_workers: int,
) -> torch.utils.data.DataLoader:
    sampler = ShardedPositions(batch_size, process_index, num_processes, start_micro)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


def open_training_data(path: str, columns: dict[str, str], split: str | None):
    """The dataset through the shared reader (imported here, so the trainer's modules load without it)."""
    from ip2p.datasets.reader import open_dataset

    return open_dataset(path, columns=columns or None, split=split)
