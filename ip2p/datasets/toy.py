"""The toy world: shapes on a plain background, a written instruction, and the true edit.

A synthetic instruction-editing task small enough for a tiny model to learn on a laptop CPU, whose
success is measurable from pixels. One example is a scene of 1–3 shapes (circle, square, triangle,
star), each a distinct colour from :data:`PALETTE`, on a background of yet another colour; an
instruction from one of :data:`FAMILIES`; and the edited image rendered as the *true* edit:

- ``recolor``     "make the circle red"            one shape takes a new colour
- ``background``  "turn the background blue"       the background takes a new colour
- ``reshape``     "change the square into a star"  same place, size and colour, another shape
- ``remove``      "remove the star"                the background shows through
- ``add``         "add a red circle"               a new shape where there was background

``add`` is drawn only on request (``families``): its instruction does not say where the new shape
goes, so its true edit is one of many right answers and pixel distances to it measure luck, not
skill. The other four are :data:`DEFAULT_FAMILIES`, what the toy model learns and is scored on.

Rules that keep every instruction satisfiable and unambiguous: a shape is named by its kind
alone, so an instruction only names a kind that occurs exactly once in the scene; a new colour is
never one the scene already uses (neither a shape's nor the background's); shapes never overlap.

Pixels: each image is drawn at :data:`SUPERSAMPLE` × the size without anti-aliasing and reduced
by box averaging, so edges are anti-aliased and exactly reproducible. The edit mask is *exactly*
the pixels whose RGB value differs between the input and the edited image (no dilation): the
edited image equals the input outside it, and every pixel inside it changed. An edge pixel that
only a sliver of a shape touches may round to the same value in both images and then lies outside
the mask. Consumers who want a margin dilate it themselves.

Determinism: :func:`render_example` depends only on its arguments (seed, size, families). It
draws from :class:`random.Random` through ``random()`` alone, the one method whose sequence
Python promises not to change, and scenes are described in fractions of the side, so one seed
gives the same scene at every size. :attr:`ToyExample.content_hash` identifies an example's
content, so two sets of examples can be checked to be disjoint.

Captions and instructions use only :data:`TOY_WORDS` (lower case, no punctuation), so a tiny
tokenizer can give every toy word its own token.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import IP2PError
from . import EditExample

# Colour names → RGB, chosen far apart so a colour is recognisable from one pixel.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
FAMILIES: tuple[str, ...] = ("recolor", "background", "reshape", "remove", "add")
# The families whose true edit the instruction determines (every one but ``add``): the default.
DEFAULT_FAMILIES: tuple[str, ...] = ("recolor", "background", "reshape", "remove")

_TEMPLATE_WORDS = ("a", "an", "add", "and", "background", "change", "into", "make", "on", "remove", "the", "turn")
# Every word an instruction or caption may contain, sorted.
TOY_WORDS: tuple[str, ...] = tuple(sorted(set(_TEMPLATE_WORDS) | set(COLORS) | set(SHAPES)))

DEFAULT_SIZE = 64  # side of the square images, in pixels
MIN_SIZE = 16  # below this the smallest shape is a few pixels wide
MAX_SIZE = 2048
SUPERSAMPLE = 4  # drawn at this multiple of the size, then box-averaged down (anti-aliasing)
MAX_SHAPES = 3  # shapes in a scene, the edited one included

# Geometry, in fractions of the image side. A shape of half-extent r fits the box centre ± r·_BOX.
_RADIUS = (0.11, 0.18)  # half-extent of a shape, drawn uniformly
_BOX = 1.05  # the star's outer points reach 1.05 r; every other shape stays within r
_GAP = 0.03  # least space between two shapes' boxes, and between a box and the border

# Seeds of one ``ip2p dataset toy --seed S`` run: S·SEEDS_PER_RUN + i, so runs never share a seed.
SEEDS_PER_RUN = 10**6


@dataclass(frozen=True)
class ToyShape:
    """One shape: its kind, colour name, centre (x right, y down) and half-extent, in fractions of the side."""

    kind: str
    color: str
    x: float
    y: float
    r: float


@dataclass(frozen=True)
class ToyScene:
    """A background colour and non-overlapping shapes, listed left to right."""

    background: str
    shapes: tuple[ToyShape, ...]

    def caption(self) -> str:
        """E.g. "a red circle and a blue star on a white background"."""
        things = " and ".join(_a(f"{s.color} {s.kind}") for s in self.shapes)
        return f"{things} on {_a(self.background)} background"


@dataclass
class ToyExample:
    """One toy pair and everything needed to check an edit of it from pixels.

    ``target`` is the index of the shape the instruction names: in ``input_scene.shapes`` for
    recolor, reshape and remove (the same index in ``edited_scene`` for the first two), in
    ``edited_scene.shapes`` for add, ``None`` for background. ``details`` says what changed, as
    JSON-ready names (``shape``, ``from_color``/``to_color``, ``from_shape``/``to_shape``, ``color``).
    """

    seed: int
    size: int
    family: str
    instruction: str
    input_image: Image.Image
    edited_image: Image.Image
    mask: np.ndarray  # bool H×W: exactly the pixels that differ between the two images
    input_caption: str
    edited_caption: str
    input_scene: ToyScene
    edited_scene: ToyScene
    target: int | None
    details: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the instruction and both images' pixels: equal content, equal hash."""
        digest = hashlib.sha256()
        digest.update(f"{self.size}\n{self.instruction}\n".encode())
        digest.update(self.input_image.tobytes())
        digest.update(self.edited_image.tobytes())
        return digest.hexdigest()

    def metadata(self) -> dict:
        """What the dataset writer records for this example (beside the seed)."""
        return {"family": self.family, "toy_edit": dict(self.details), "size": self.size, "hash": self.content_hash}

    def prompt(self) -> dict:
        """The paper layout's ``prompt.json``: input caption, instruction, edited caption."""
        return {"caption": self.input_caption, "edit": self.instruction, "output": self.edited_caption}

    def to_edit_example(self) -> EditExample:
        extra = {
            "input_caption": self.input_caption,
            "output_caption": self.edited_caption,
            "seed": self.seed,
            "edit_mask": self.mask,
            **self.metadata(),
        }
        return EditExample(self.input_image, self.instruction, self.edited_image, f"toy/{self.seed}", extra)


# --- drawing from random() alone (its sequence is the one Python keeps across versions) -------------


def _below(rng: random.Random, n: int) -> int:
    return min(int(rng.random() * n), n - 1)


def _pick(rng: random.Random, options: Sequence):
    return options[_below(rng, len(options))]


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def _sample(rng: random.Random, options: Sequence, k: int) -> list:
    pool = list(options)
    return [pool.pop(_below(rng, len(pool))) for _ in range(k)]


# --- scenes -------------------------------------------------------------------------------------------


def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether two shapes' boxes (x, y, r) are separated by at least the gap, on one axis or the other."""
    reach = (a[2] + b[2]) * _BOX + _GAP
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _layout(rng: random.Random, count: int) -> list[tuple[float, float, float]]:
    """``count`` non-overlapping (x, y, r) placements inside the image, in drawing order."""
    while True:  # a fresh start after a crowded draw; three shapes this small almost always fit at once
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            for _attempt in range(100):
                r = _uniform(rng, *_RADIUS)
                margin = r * _BOX + _GAP
                candidate = (_uniform(rng, margin, 1 - margin), _uniform(rng, margin, 1 - margin), r)
                if all(_apart(candidate, other) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == count:
            return placed


def _a(word: str) -> str:
    """ "a red" / "an orange"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _left_to_right(shapes: Iterable[ToyShape]) -> tuple[ToyShape, ...]:
    return tuple(sorted(shapes, key=lambda s: (s.x, s.y)))


def _plan(rng: random.Random, family: str) -> tuple[ToyScene, ToyScene, ToyShape | None, str, dict]:
    """Input scene, edited scene, the named shape (as it is in the scene that has it), instruction, details."""
    if family == "remove":
        count = 2 + _below(rng, MAX_SHAPES - 1)  # the scene keeps at least one shape
    elif family == "add":
        count = 1 + _below(rng, MAX_SHAPES - 1)  # room for one more
    else:
        count = 1 + _below(rng, MAX_SHAPES)
    drawn = count + 1 if family == "add" else count  # shapes to place (add: the new one too)

    colors = _sample(rng, COLORS, drawn + 2)  # background, shapes, and one spare new colour
    background, shape_colors, spare = colors[0], colors[1 : drawn + 1], colors[drawn + 1]
    if family in ("recolor", "reshape", "remove"):
        # The named shape's kind occurs once; the others may repeat among themselves.
        named = _pick(rng, SHAPES)
        others = [k for k in SHAPES if k != named]
        kinds = [_pick(rng, others) for _ in range(drawn - 1)]
        kinds.insert(_below(rng, drawn), named)
    else:
        kinds = [_pick(rng, SHAPES) for _ in range(drawn)]
    places = _layout(rng, drawn)
    shapes = [ToyShape(k, c, x, y, r) for k, c, (x, y, r) in zip(kinds, shape_colors, places, strict=True)]

    if family == "background":
        scene = ToyScene(background, _left_to_right(shapes))
        return (
            scene,
            replace(scene, background=spare),
            None,
            f"turn the background {spare}",
            {
                "from_color": background,
                "to_color": spare,
            },
        )
    if family == "add":
        new = shapes[-1]
        edited = ToyScene(background, _left_to_right(shapes))
        before = ToyScene(background, _left_to_right(shapes[:-1]))
        return before, edited, new, f"add {_a(new.color)} {new.kind}", {"shape": new.kind, "color": new.color}

    target = next(s for s in shapes if s.kind == named)
    before = ToyScene(background, _left_to_right(shapes))
    if family == "remove":
        after = ToyScene(background, _left_to_right(s for s in shapes if s is not target))
        return before, after, target, f"remove the {named}", {"shape": named, "color": target.color}
    if family == "recolor":
        changed = replace(target, color=spare)
        instruction = f"make the {named} {spare}"
        details = {"shape": named, "from_color": target.color, "to_color": spare}
    elif family == "reshape":
        new_kind = _pick(rng, others)
        changed = replace(target, kind=new_kind)
        instruction = f"change the {named} into {_a(new_kind)}"
        details = {"from_shape": named, "to_shape": new_kind, "color": target.color}
    else:
        raise IP2PError(f"Unknown toy family {family!r}; expected one of {', '.join(FAMILIES)}.")
    after = ToyScene(background, tuple(changed if s is target else s for s in before.shapes))
    return before, after, target, instruction, details


# --- pixels -------------------------------------------------------------------------------------------


def _outline(shape: ToyShape, side: int) -> tuple[str, list[tuple[float, float]]]:
    """("ellipse", bounding box corners) or ("polygon", points), in pixels of a ``side``-pixel image."""
    cx, cy, r = shape.x * side, shape.y * side, shape.r * side
    if shape.kind == "circle":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape.kind == "square":
        h = 0.86 * r  # about the circle's area
        return "polygon", [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape.kind == "triangle":
        h = math.sqrt(3) / 2 * r  # equilateral, side 2r, centred in its box
        return "polygon", [(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)]
    if shape.kind == "star":
        outer, inner = _BOX * r, 0.5 * _BOX * r
        points = []
        for i in range(10):
            angle = -math.pi / 2 + i * math.pi / 5
            radius = outer if i % 2 == 0 else inner
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return "polygon", points
    raise IP2PError(f"Unknown toy shape {shape.kind!r}; expected one of {', '.join(SHAPES)}.")


def _draw(draw: ImageDraw.ImageDraw, shape: ToyShape, side: int, fill) -> None:
    how, points = _outline(shape, side)
    if how == "ellipse":
        draw.ellipse(points, fill=fill)
    else:
        draw.polygon(points, fill=fill)


def render_scene(scene: ToyScene, size: int = DEFAULT_SIZE) -> Image.Image:
    """The scene as a ``size``×``size`` RGB image (drawn at :data:`SUPERSAMPLE`×, box-averaged down)."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw(draw, shape, side, PALETTE[shape.color])
    return image.reduce(SUPERSAMPLE)


def shape_coverage(shape: ToyShape, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Float H×W in [0, 1]: how much of each pixel the shape covers (1 inside, 0 outside, between on edges)."""
    side = size * SUPERSAMPLE
    image = Image.new("L", (side, side), 0)
    _draw(ImageDraw.Draw(image), shape, side, 255)
    return np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def edit_mask(input_image: Image.Image, edited_image: Image.Image) -> np.ndarray:
    """Bool H×W: the pixels whose RGB value differs between the two images."""
    return np.any(np.asarray(input_image) != np.asarray(edited_image), axis=-1)


def check_size(size: int) -> int:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise IP2PError(f"Toy image size {size} is out of range; choose a size from {MIN_SIZE} to {MAX_SIZE} pixels.")
    return size


def check_families(families: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(families))
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown or not chosen:
        raise IP2PError(
            f"Unknown toy edit families {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAMILIES)}."
        )
    return chosen


def render_example(seed: int, size: int = DEFAULT_SIZE, families: Sequence[str] = DEFAULT_FAMILIES) -> ToyExample:
    """The toy example of ``seed``: the same arguments always give the same example, pixel for pixel.

    The family is drawn uniformly from ``families`` (the order given matters for which seed gets
    which family; the default is :data:`DEFAULT_FAMILIES`).
    """
    check_size(size)
    families = check_families(families)
    rng = random.Random(int(seed))
    family = _pick(rng, families)
    before, after, named, instruction, details = _plan(rng, family)
    input_image, edited_image = render_scene(before, size), render_scene(after, size)
    if named is None:
        target = None
    else:
        scene = after if family == "add" else before
        target = scene.shapes.index(named)
    return ToyExample(
        seed=int(seed),
        size=size,
        family=family,
        instruction=instruction,
        input_image=input_image,
        edited_image=edited_image,
        mask=edit_mask(input_image, edited_image),
        input_caption=before.caption(),
        edited_caption=after.caption(),
        input_scene=before,
        edited_scene=after,
        target=target,
        details=details,
    )


def toy_seeds(seed: int, count: int) -> range:
    """The example seeds of a run with ``--seed seed``: disjoint from every other run's."""
    if seed < 0:
        raise IP2PError(f"--seed must be 0 or more (got {seed}).")
    if not 1 <= count <= SEEDS_PER_RUN:
        raise IP2PError(f"--count must be from 1 to {SEEDS_PER_RUN} (got {count}); use several --seed values for more.")
    return range(seed * SEEDS_PER_RUN, seed * SEEDS_PER_RUN + count)


def write_toy_dataset(
    root: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    families: Sequence[str] = DEFAULT_FAMILIES,
    progress: Callable[[int], object] | None = None,
) -> list[list]:
    """Write ``count`` toy pairs in the paper's layout at ``root`` (one prompt folder per pair).

    Files per pair: ``{seed}_0.png`` (input), ``{seed}_1.png`` (edited), ``{seed}_mask.png``
    (1-bit edit mask), ``prompt.json`` and a ``metadata.jsonl`` line with the family, the edit's
    details, the size and the content hash. Writes in place, file by file (atomic per file; wrap
    it in :func:`~ip2p.formats.atomic.atomic_dir` for an all-or-nothing dataset). ``progress`` is
    called with 1 after each pair. Returns the ``seeds.json`` entries.
    """
    from .paper import PaperLayoutWriter

    check_size(size)
    families = check_families(families)
    writer = PaperLayoutWriter(Path(root))
    for index, example_seed in enumerate(toy_seeds(seed, count)):
        example = render_example(example_seed, size, families)
        writer.add(
            index,
            example.prompt(),
            example.seed,
            example.input_image,
            example.edited_image,
            metadata=example.metadata(),
            extra_images={"mask": example.mask},
        )
        if progress is not None:
            progress(1)
    return writer.finish()
