"""The data engine's CLIP filter (Brooks et al. 2023, §3.1.2): four similarities and a keep rule.

For an input image x_0 with caption c_0 and its edit x_1 with caption c_1, on L2-normalised CLIP
embeddings (as in the paper's ``clip_similarity.py``):

    sim_0     = cos(x_0, c_0)                 the input shows its caption
    sim_1     = cos(x_1, c_1)                 the output shows the edited caption
    sim_dir   = cos(x_1 − x_0, c_1 − c_0)     the image changed the way the caption did
    sim_image = cos(x_0, x_1)                 the pair still shows one scene

A sample is kept when all four reach their thresholds; of the survivors of one prompt the best
``keep`` by ``sim_dir`` stay. The maths and the rule are plain torch so ComfyUI nodes and the
headless generator share them; :class:`ClipScorer` adds a local CLIP model (transformers, imported
only when one is loaded) and never reaches a hub.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .devices import resolve_device, resolve_dtype
from .errors import IP2PError
from .formats.tokenizer import load_clip_tokenizer
from .quality import metrics as m

# Score field -> its key in the paper's metadata.jsonl (also the name a rejection is counted under).
METADATA_KEYS = {
    "sim_0": "clip_sim_0",
    "sim_1": "clip_sim_1",
    "sim_dir": "clip_sim_dir",
    "sim_image": "clip_sim_image",
}
RANK = "rank"  # the rejection reason of a sample that passed every threshold but was not among the best

# --------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ClipScores:
    """The four similarities of B samples, each a (B,) float32 tensor."""

    sim_0: torch.Tensor
    sim_1: torch.Tensor
    sim_dir: torch.Tensor
    sim_image: torch.Tensor

    def __len__(self) -> int:
        return self.sim_0.shape[0]

    def select(self, rows: Sequence[int]) -> ClipScores:
        """The scores of ``rows`` only, in that order (e.g. one prompt's samples of a mixed batch)."""
        index = torch.tensor(list(rows), dtype=torch.long)
        return ClipScores(**{name: getattr(self, name).index_select(0, index) for name in METADATA_KEYS})

    def as_dicts(self) -> list[dict[str, float]]:
        """One ``{"clip_sim_0": ..., ...}`` dict per sample: the paper's metadata.jsonl fields."""
        columns = {key: getattr(self, name).tolist() for name, key in METADATA_KEYS.items()}
        return [{key: values[i] for key, values in columns.items()} for i in range(len(self))]


def _check_embeddings(img_0: torch.Tensor, img_1: torch.Tensor, cap_0: torch.Tensor, cap_1: torch.Tensor) -> None:
    named = {"img_0": img_0, "img_1": img_1, "cap_0": cap_0, "cap_1": cap_1}
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in named.items())
    batch, dim = img_0.shape if img_0.ndim == 2 else (None, None)
    if (
        any(t.ndim != 2 or t.shape[1] != dim for t in named.values())
        or img_1.shape[0] != batch
        or any(t.shape[0] not in (1, batch) for t in (cap_0, cap_1))
    ):
        raise IP2PError(
            f"CLIP embeddings of mismatched shapes: {shapes}. Expected images B×D and captions B×D or 1×D "
            f"(one caption for every sample), all from the same CLIP model."
        )


def clip_scores(img_0: torch.Tensor, img_1: torch.Tensor, cap_0: torch.Tensor, cap_1: torch.Tensor) -> ClipScores:
    """The four similarities from raw (unnormalised) image embeddings B×D and caption embeddings B×D or 1×D.

    :func:`ip2p.quality.metrics.cosine` and :func:`~ip2p.quality.metrics.directional`, the definitions
    ``ip2p eval`` and the trade-off plot score with: embeddings are normalised first, so ``sim_dir``
    compares differences of unit vectors, as the paper's code does; a 1×D caption is shared by all B
    samples. Computed in float32.
    """
    _check_embeddings(img_0, img_1, cap_0, cap_1)
    return ClipScores(
        sim_0=m.cosine(img_0, cap_0),
        sim_1=m.cosine(img_1, cap_1),
        sim_dir=m.directional(img_0, img_1, cap_0, cap_1),
        sim_image=m.cosine(img_0, img_1),
    )


# ---------------------------------------------------------------------------------------------- filter


@dataclass(frozen=True)
class FilterThresholds:
    """The keep rule: a sample passes when every similarity is ≥ its minimum (the paper's values)."""

    sim_0: float = 0.2  # min cos(x_0, c_0)
    sim_1: float = 0.2  # min cos(x_1, c_1)
    sim_dir: float = 0.2  # min cos(x_1 − x_0, c_1 − c_0)
    sim_image: float = 0.75  # min cos(x_0, x_1); the paper's text says 0.75, its code's default is 0.7
    keep: int = 4  # at most this many survivors per prompt, highest sim_dir first

    def __post_init__(self) -> None:
        for name in METADATA_KEYS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not -1.0 <= value <= 1.0:
                raise IP2PError(
                    f"The CLIP threshold {name} is {value!r}; a cosine similarity lies in [-1, 1], so give a "
                    f"number in that range (the paper uses 0.2, and 0.75 for sim_image)."
                )
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise IP2PError(f"keep is {self.keep!r}; give how many samples per prompt to keep, at least 1 (paper: 4).")


@dataclass(frozen=True)
class FilterResult:
    """Which samples of one prompt stay, and why each other one went."""

    kept: tuple[int, ...]  # sample indices, highest sim_dir first
    rejected: Mapping[int, str]  # sample index -> first failed metadata key ("clip_sim_0", ...) or "rank"


def select_samples(scores: ClipScores, thresholds: FilterThresholds | None = None) -> FilterResult:
    """Apply the keep rule to the samples of ONE prompt.

    A sample is rejected by the first threshold it misses, checked in the order sim_0, sim_1,
    sim_dir, sim_image (a NaN score misses its threshold). The survivors are ranked by sim_dir,
    equal scores by index; those beyond the best ``keep`` are rejected as ``"rank"``.
    """
    thresholds = thresholds or FilterThresholds()
    values = {name: getattr(scores, name).tolist() for name in METADATA_KEYS}
    rejected: dict[int, str] = {}
    passing = []
    for i in range(len(scores)):
        failed = next(
            (key for name, key in METADATA_KEYS.items() if not values[name][i] >= getattr(thresholds, name)), None
        )
        if failed is None:
            passing.append(i)
        else:
            rejected[i] = failed
    ranked = sorted(passing, key=lambda i: (-values["sim_dir"][i], i))
    for i in ranked[thresholds.keep :]:
        rejected[i] = RANK
    return FilterResult(kept=tuple(ranked[: thresholds.keep]), rejected=dict(sorted(rejected.items())))


def count_rejections(results: Iterable[FilterResult]) -> Counter[str]:
    """How many samples each threshold (or ``"rank"``) rejected, over many prompts: the filter's summary."""
    return Counter(reason for result in results for reason in result.rejected.values())


# ------------------------------------------------------------------------------------------ the model

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_FOLDER_NEEDS = (
    "A CLIP folder is a transformers CLIPModel saved with save_pretrained (e.g. a local copy of "
    "openai/clip-vit-large-patch14): config.json, model.safetensors (or pytorch_model.bin), the tokenizer "
    "(vocab.json and merges.txt, or tokenizer.json) and preprocessor_config.json."
)


def config_model_type(folder: Path, needs: str) -> str | None:
    """The ``model_type`` a transformers folder's config.json names; an unreadable config is an error ending
    with ``needs`` (what such a folder must hold)."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise IP2PError(f"{folder / 'config.json'} is not a readable JSON model config ({exc}). {needs}") from exc


def check_clip_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it holds every file a CLIP model needs, else an error naming the missing one."""
    folder = Path(path)
    if not folder.is_dir():
        raise IP2PError(f"CLIP model folder not found: {folder}. {_FOLDER_NEEDS}")
    tokenizer_ok = (folder / "tokenizer.json").is_file() or all(
        (folder / n).is_file() for n in ("vocab.json", "merges.txt")
    )
    missing = [
        name
        for name, present in (
            ("config.json", (folder / "config.json").is_file()),
            (" or ".join(WEIGHT_FILES[::2]), any((folder / n).is_file() for n in WEIGHT_FILES)),
            ("vocab.json and merges.txt (or tokenizer.json)", tokenizer_ok),
            ("preprocessor_config.json", (folder / "preprocessor_config.json").is_file()),
        )
        if not present
    ]
    if missing:
        raise IP2PError(f"{folder} lacks {'; '.join(missing)}. {_FOLDER_NEEDS}")
    model_type = config_model_type(folder, _FOLDER_NEEDS)
    if model_type != "clip":
        raise IP2PError(
            f"{folder} holds a {model_type!r} model, not a CLIP dual encoder (model_type 'clip'): the filter needs "
            f"both the image and the text tower. {_FOLDER_NEEDS}"
        )
    return folder


def _size(size, key: str) -> int | None:
    """One entry of a processor's size (a dict in transformers 4, a SizeDict in 5, an int in old configs)."""
    if isinstance(size, int):
        return size
    return size.get(key) if size is not None else None


def clip_pixel_values(
    images: torch.Tensor,
    *,
    shortest_edge: int | None,
    crop: tuple[int, int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    resize_to: tuple[int, int] | None = None,
) -> torch.Tensor:
    """CLIP's preprocessing of B×3×H×W floats in [0, 1], in torch alone (no torchvision, no PIL round trip).

    Resize the shortest side to ``shortest_edge`` (the long side truncated, as transformers does) or
    to ``resize_to`` (height, width), with antialiased bicubic (PIL's kernel), clamp to [0, 1] as
    8-bit images are, centre-crop to ``crop`` (height, width), normalise. Runs in float32.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise IP2PError(
            f"Expected images as B×3×H×W floats in [0, 1], got shape {tuple(images.shape)}. "
            f"(ComfyUI's B×H×W×C images need .movedim(-1, 1) first.)"
        )
    x = images.float()
    height, width = x.shape[-2:]
    if shortest_edge is not None:
        short, long = sorted((height, width))
        new_long = int(shortest_edge * long / short)
        resize_to = (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)
    if resize_to is not None and tuple(resize_to) != (height, width):
        x = F.interpolate(x, size=tuple(resize_to), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if crop is not None:
        height, width = x.shape[-2:]
        top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
        if top < 0 or left < 0:
            raise IP2PError(
                f"The CLIP processor crops {crop[0]}×{crop[1]} from an image resized to {height}×{width}; its "
                f"preprocessor_config.json must not crop larger than it resizes."
            )
        x = x[..., top : top + crop[0], left : left + crop[1]]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


class ClipScorer:
    """A local CLIP dual encoder (any size: ViT-L/14 as in the paper, or a tiny test model) that scores pairs."""

    def __init__(self, model, tokenizer, processor) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
    ) -> ClipScorer:
        """Load a CLIPModel, its tokenizer and image processor from ``path``, offline; see :func:`check_clip_folder`.

        ``device`` / ``dtype`` take what ``--device`` / ``--dtype`` take ("auto": CUDA in float16 when
        present, else the CPU in float32), or torch objects.
        """
        folder = check_clip_folder(path)
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
        try:
            import transformers
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise IP2PError("The CLIP filter needs transformers: pip install 'comfyui-ip2p[headless]'") from exc
        model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        return cls(model.to(device=device, dtype=dtype), load_clip_tokenizer(folder), processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def pixel_values(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """The model's input: PIL images through the folder's own processor, tensors through :func:`clip_pixel_values`."""
        p = self.processor
        if isinstance(images, torch.Tensor):
            images = images.unsqueeze(0) if images.ndim == 3 else images
            shortest = _size(p.size, "shortest_edge") if p.do_resize else None
            square = (_size(p.size, "height"), _size(p.size, "width")) if p.do_resize and shortest is None else None
            crop = (_size(p.crop_size, "height"), _size(p.crop_size, "width")) if p.do_center_crop else None
            mean, std = (p.image_mean, p.image_std) if p.do_normalize else ((0.0,) * 3, (1.0,) * 3)
            return clip_pixel_values(images, shortest_edge=shortest, crop=crop, mean=mean, std=std, resize_to=square)
        images = [images] if isinstance(images, Image.Image) else list(images)
        return torch.as_tensor(np.asarray(p(images=images, return_tensors="np")["pixel_values"]))

    @torch.inference_mode()
    def embed_images(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Raw CLIP image embeddings, B×D in float32 (B×3×H×W tensors in [0, 1] or PIL images)."""
        pixels = self.pixel_values(images).to(device=self.device, dtype=self.dtype)
        return _features(self.model.get_image_features(pixel_values=pixels)).float()

    @torch.inference_mode()
    def embed_captions(self, captions: str | Sequence[str]) -> torch.Tensor:
        """Raw CLIP text embeddings, B×D in float32 (1×D for one string), truncated to the model's context."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        limit = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**tokens)).float()

    def score(
        self,
        image_0: torch.Tensor | Sequence[Image.Image],
        image_1: torch.Tensor | Sequence[Image.Image],
        caption_0: str | Sequence[str],
        caption_1: str | Sequence[str],
    ) -> ClipScores:
        """The four similarities of B pairs; a single caption string applies to every pair."""
        return clip_scores(
            self.embed_images(image_0),
            self.embed_images(image_1),
            self.embed_captions(caption_0),
            self.embed_captions(caption_1),
        )


def _features(output) -> torch.Tensor:
    """transformers 4 returns the projected embedding, transformers 5 an output whose pooler_output it is."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
