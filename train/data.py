"""From :class:`ip2p.datasets.EditExample` to training tensors, in a data order fixed by the seed.

The data stream is a sequence of *positions* 0, 1, 2, …; position ``n`` is example
``permutation(seed, epoch)[n % len]`` with ``epoch = n // len``. Micro-batch ``m`` of process ``p``
(of ``P``, batch ``B`` each) holds positions ``m·B·P + p·B … + B − 1``, so together the processes
read the stream in order, exactly as one process with batch ``B·P`` would. Augmentation (crop
offsets, flip) and the diffusion draws are seeded by the position too; resuming at optimizer step
``s`` simply starts at micro-batch ``s · accumulation``: no batches to skip, nothing to replay.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ip2p.training import STREAM_AUGMENT, sample_generator, sample_seed

_EPOCH_STREAM = 7  # the per-epoch permutation's own stream, apart from the per-sample ones


def epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, _EPOCH_STREAM))
    return torch.randperm(size, generator=g)


def pair_to_tensors(
    input_image: Image.Image, edited_image: Image.Image, resolution: int, flip: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images: shorter side resized to ``resolution``, the SAME square random crop and the SAME flip;
    ``(3, R, R)`` float tensors in [-1, 1]."""
    a = input_image.convert("RGB")
    w, h = a.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    a = a.resize(size, Image.Resampling.BICUBIC) if a.size != size else a
    b = edited_image.convert("RGB")
    b = b.resize(size, Image.Resampling.BICUBIC) if b.size != size else b  # a pair of unequal sizes is aligned
    left = int(torch.randint(0, size[0] - resolution + 1, (), generator=generator))
    top = int(torch.randint(0, size[1] - resolution + 1, (), generator=generator))
    mirror = bool(torch.rand((), generator=generator) < flip)
    out = []
    for image in (a, b):
        image = image.crop((left, top, left + resolution, top + resolution))
        if mirror:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        out.append(pixels / 127.5 - 1.0)
    return out[0], out[1]


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """CLIP token ids padded to the tokenizer's max length (77), truncated as diffusers' pipeline does."""
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class PairStream(torch.utils.data.Dataset):
    """Position -> one training sample: ``{"position", "input", "edited", "input_ids"}``."""

    def __init__(self, dataset: Sequence, tokenizer, *, resolution: int, flip: float, seed: int) -> None:
        if len(dataset) == 0:
            from ip2p.errors import IP2PError

            raise IP2PError("The dataset has no examples; give a dataset with at least one pair.")
        self.dataset, self.tokenizer = dataset, tokenizer
        self.resolution, self.flip, self.seed = resolution, flip, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.seed, epoch, len(self.dataset))
        return int(self._perm[offset])

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a number
        return 2**62

    def __getitem__(self, position: int) -> dict:
        example = self.dataset[self.index(position)]
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
    return {
        "position": torch.tensor([s["position"] for s in samples], dtype=torch.long),
        "input": torch.stack([s["input"] for s in samples]),
        "edited": torch.stack([s["edited"] for s in samples]),
        "input_ids": torch.stack([s["input_ids"] for s in samples]),
    }


def make_loader(
    stream: PairStream, *, batch_size: int, process_index: int, num_processes: int, start_micro: int, num_workers: int
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
