"""Prompt-to-Prompt attention control: the maths, shared by every host (diffusers, ComfyUI).

Two captions are sampled together, and the attention of the second (the edited caption) is tied
to the first's so both images share their structure. A controller never guesses where it is: each
call receives the attention probabilities of one layer plus explicit metadata — the layer
(:class:`LayerInfo`: self or cross, name, index, place in the UNet), the step fraction in [0, 1]
(:func:`step_fraction`) and the role of every batch row (:class:`RowRoles`: which pair, which
prompt, cond or uncond). Counting calls breaks as soon as a host splits or reorders a batch.

Two modes:

- :class:`PaperP2P` — what InstructPix2Pix's data generation did: in self-attention layers, while
  the step fraction is below ``p`` (``p2p_fraction``, one per pair), prompt 1's attention is
  replaced by prompt 0's, in cond and uncond rows alike. Cross-attention is untouched.
- :class:`OriginalP2P` — Hertz et al.'s Prompt-to-Prompt: cross-attention word swap
  (``replace``), ``refine`` through a token alignment, ``reweight`` of chosen tokens, self-attention
  replacement for a window of steps, and :class:`LocalBlend`, which keeps prompt 0's latent
  outside the region the chosen words attend to.

Hosts call :func:`attend` with (batch, heads, tokens, dim) queries, keys and values. It asks the
controller for a :class:`AttentionPlan` first, so layers and steps where nothing is edited run the
host's fast attention kernel, and pure copies of another row's attention (every self-attention
edit) run it too, on that row's queries and keys: softmax(q kᵀ) depends on q and k only, so
copying the probabilities is the same as copying q and k. Only edits that need the probabilities
themselves (cross-attention refine/reweight, local blend maps) compute them explicitly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import IP2PError

SELF, CROSS = "self", "cross"
COND, UNCOND = "cond", "uncond"
LAYER_KINDS = (SELF, CROSS)
BRANCHES = (COND, UNCOND)
PLACES = ("down", "mid", "up", "")  # "" when a host cannot say
CLIP_LENGTH = 77  # the padded token length of SD's text encoder: the key length of cross-attention
ORIGINAL_SELF_MAX_QUERIES = 32 * 32  # Hertz et al. replace self-attention only up to 32×32 maps (at 512 px)


def step_fraction(index: int, steps: int) -> float:
    """How far sampling is at model call ``index`` of ``steps``: 0 at the first call, 1 at the last.

    The paper's sampler switches Prompt-to-Prompt on while ``p > index / (steps - 1)``; this is
    that fraction, so a controller's ``step < p`` is the paper's test.
    """
    if steps < 1 or not 0 <= index < steps:
        raise ValueError(f"step index {index} is outside a schedule of {steps} steps")
    return index / (steps - 1) if steps > 1 else 0.0


def check_fraction(name: str, value: object) -> float:
    """``value`` as a float in [0, 1], or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise IP2PError(f"{name} must be a number from 0 to 1, got {value!r}.")
    if not 0.0 <= value <= 1.0:
        raise IP2PError(
            f"{name} is {value}; give a fraction of the sampling steps from 0 (never) to 1 (every step but the last)."
        )
    return float(value)


def check_window(name: str, window: Sequence[float]) -> tuple[float, float]:
    """A [start, end) step-fraction window, checked."""
    if not isinstance(window, Sequence) or len(window) != 2:
        raise IP2PError(f"{name} must be a (start, end) pair of step fractions, got {window!r}.")
    start, end = check_fraction(f"{name} start", window[0]), check_fraction(f"{name} end", window[1])
    if start > end:
        raise IP2PError(f"{name} is ({start}, {end}); the start must not come after the end.")
    return start, end


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer, as the host names it when it installs the controller."""

    kind: str  # SELF or CROSS
    name: str = ""  # the host's name, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    index: int = 0  # its position among the model's attention layers
    place: str = ""  # "down", "mid", "up" (the UNet stage), or "" when unknown

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if self.place not in PLACES:
            raise ValueError(f"layer place must be one of {PLACES}, got {self.place!r}")


@dataclass(frozen=True)
class RowRoles:
    """Who each row of a batch is: its pair (seed slot), its prompt (0 input caption, 1 edited) and branch.

    Every (pair, branch) present holds exactly one prompt-0 row and one prompt-1 row, so every
    prompt-1 row has a partner to copy from. Hosts build it from what they know of their batch
    (:meth:`grid` for the headless layout; a ComfyUI patch from ``cond_or_uncond``), never by
    counting calls.
    """

    pair: tuple[int, ...]
    prompt: tuple[int, ...]
    branch: tuple[str, ...]
    _partner: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _pairs: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("pair", "prompt", "branch"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.pair)
        if n == 0 or len(self.prompt) != n or len(self.branch) != n:
            raise ValueError(
                f"row roles need one pair, prompt and branch per row, got {len(self.pair)}, {len(self.prompt)} "
                f"and {len(self.branch)}"
            )
        if any(p not in (0, 1) for p in self.prompt) or any(b not in BRANCHES for b in self.branch):
            raise ValueError(f"prompts must be 0 or 1 and branches one of {BRANCHES}: {self}")
        if any(not isinstance(p, int) or p < 0 for p in self.pair):
            raise ValueError(f"pairs must be non-negative integers, got {self.pair}")
        slots: dict[tuple[int, str, int], int] = {}
        for row, key in enumerate(zip(self.pair, self.branch, self.prompt, strict=True)):
            if key in slots:
                raise ValueError(f"rows {slots[key]} and {row} are both pair {key[0]}, {key[1]}, prompt {key[2]}")
            slots[key] = row
        partner = []
        for pair, branch in zip(self.pair, self.branch, strict=True):
            if (pair, branch, 0) not in slots or (pair, branch, 1) not in slots:
                raise ValueError(f"pair {pair} ({branch}) needs a prompt-0 and a prompt-1 row in the batch: {self}")
            partner.append(slots[(pair, branch, 0)])
        object.__setattr__(self, "_partner", tuple(partner))
        object.__setattr__(self, "_pairs", max(self.pair) + 1)

    @classmethod
    def grid(cls, pairs: int, branches: Sequence[str] = (COND, UNCOND)) -> RowRoles:
        """Branch chunks in ``branches`` order; inside each, pair by pair, prompt 0 then prompt 1.

        ``grid(2)`` is [cond p0 pair0, cond p1 pair0, cond p0 pair1, cond p1 pair1, uncond …]; the
        headless sampler uses it, and a ComfyUI patch passes its ``cond_or_uncond`` chunk order.
        """
        if pairs < 1:
            raise ValueError(f"need at least one pair, got {pairs}")
        chunk = [(pair, prompt) for pair in range(pairs) for prompt in (0, 1)]
        rows = [(pair, prompt, branch) for branch in branches for pair, prompt in chunk]
        return cls(*(tuple(column) for column in zip(*rows, strict=True)))

    @classmethod
    def latents(cls, pairs: int) -> RowRoles:
        """The sampler's latent rows (one per image, no branch; marked cond): pair by pair, prompt 0 then 1."""
        return cls.grid(pairs, (COND,))

    def __len__(self) -> int:
        return len(self.pair)

    @property
    def pairs(self) -> int:
        """How many pairs the rows refer to (the highest pair index + 1)."""
        return self._pairs

    def partner(self, row: int) -> int:
        """The prompt-0 row of ``row``'s pair and branch (itself for a prompt-0 row)."""
        return self._partner[row]

    def sources(self, pairs: Sequence[bool] | None = None, branches: Sequence[str] = BRANCHES) -> tuple[int, ...]:
        """For each row, the row whose attention it takes: its prompt-0 partner for prompt-1 rows of the
        active ``pairs`` (a flag per pair; all when None) in ``branches``, itself otherwise."""
        out = []
        for row, (pair, prompt, branch) in enumerate(zip(self.pair, self.prompt, self.branch, strict=True)):
            active = prompt == 1 and branch in branches and (pairs is None or pairs[pair])
            out.append(self._partner[row] if active else row)
        return tuple(out)

    def targets(self, branches: Sequence[str] = BRANCHES) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(prompt-1 rows in ``branches``, their prompt-0 partners)."""
        rows = tuple(r for r in range(len(self)) if self.prompt[r] == 1 and self.branch[r] in branches)
        return rows, tuple(self._partner[r] for r in rows)


@dataclass(frozen=True)
class AttentionPlan:
    """What a controller needs from one attention call.

    ``sources``: every row attends with the queries and keys of the row named here (a pure copy of
    that row's attention probabilities, exact on the host's fast kernel). ``explicit``: the
    controller needs the probabilities themselves and gets them through :meth:`Controller.edit`;
    ``rows`` then names the rows whose output the edit may change (None: any) — the others keep the
    host kernel's output, so rows nobody edits come out exactly as without a controller.
    """

    sources: tuple[int, ...] | None = None
    explicit: bool = False
    rows: tuple[int, ...] | None = None


class Controller:
    """The interface hosts call; the base class edits nothing.

    Per attention call: :meth:`plan` (None: leave the call alone), then, for an explicit plan,
    :meth:`edit` on the probabilities. Per sampling step: :meth:`after_step` on the latents (local
    blend). :meth:`reset` before a new sampling run.
    """

    def plan(self, layer: LayerInfo, step: float, rows: RowRoles, queries: int) -> AttentionPlan | None:
        return None

    def edit(self, probs: torch.Tensor, layer: LayerInfo, step: float, rows: RowRoles) -> torch.Tensor:
        """The edited (batch, heads, queries, keys) probabilities; the reference maths of every plan."""
        return probs

    def after_step(self, latents: torch.Tensor, step: float, latent_rows: RowRoles) -> torch.Tensor:
        return latents

    def reset(self) -> None:
        return None


def _check_rows(tensor: torch.Tensor, rows: RowRoles) -> None:
    if tensor.ndim != 4 or tensor.shape[0] != len(rows):
        raise ValueError(
            f"expected (batch, heads, queries, keys) attention with batch {len(rows)} (the row roles), "
            f"got shape {tuple(tensor.shape)}"
        )


class PaperP2P(Controller):
    """InstructPix2Pix's Prompt-to-Prompt: self-attention of prompt 1 := prompt 0's while step < p.

    ``p2p_fractions`` holds one ``p`` per pair, so one batch can carry several seeds with their own p.
    Cond and uncond rows alike, every self-attention layer; cross-attention untouched. Works on
    scores (the paper replaced the pre-softmax scores) or probabilities alike.
    """

    def __init__(self, p2p_fractions: Sequence[float]) -> None:
        self.p2p_fractions = tuple(check_fraction("p2p_fraction", p) for p in p2p_fractions)
        if not self.p2p_fractions:
            raise IP2PError("p2p_fractions is empty; give one fraction per pair (seed).")

    def active(self, step: float, pairs: int) -> tuple[bool, ...]:
        """Which pairs are tied at ``step``."""
        if pairs > len(self.p2p_fractions):
            raise IP2PError(
                f"The batch holds {pairs} pairs but only {len(self.p2p_fractions)} p2p_fractions were given; "
                f"give one per pair."
            )
        return tuple(step < p for p in self.p2p_fractions[:pairs])

    def plan(self, layer: LayerInfo, step: float, rows: RowRoles, queries: int) -> AttentionPlan | None:
        if layer.kind != SELF:
            return None
        return _copy_plan(rows, self.active(step, rows.pairs), BRANCHES)

    def edit(self, probs: torch.Tensor, layer: LayerInfo, step: float, rows: RowRoles) -> torch.Tensor:
        _check_rows(probs, rows)
        plan = PaperP2P.plan(self, layer, step, rows, probs.shape[-2])  # not a subclass's plan: the reference
        return probs if plan is None else probs[list(plan.sources)]


@functools.lru_cache(maxsize=1024)
def _copy_plan(rows: RowRoles, active: tuple[bool, ...], branches: tuple[str, ...]) -> AttentionPlan | None:
    if not any(active):
        return None
    return AttentionPlan(sources=rows.sources(active, branches))


# -- token maps: word swap, refine, reweight ------------------------------------------------------


@dataclass(frozen=True)
class TokenMap:
    """Where each token position of prompt 1 takes its cross-attention from in prompt 0.

    ``index[j]`` is a position of prompt 0; ``alphas[j]`` is 1 where prompt 1's token j has a
    counterpart there and 0 for a token prompt 1 adds (that one keeps its own attention).
    """

    index: torch.Tensor  # (length,) int64
    alphas: torch.Tensor  # (length,) float

    def apply(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Prompt 1's probabilities from prompt 0's (``base``) and its own (``own``), both (..., length)."""
        if base.shape[-1] != self.index.numel():
            raise IP2PError(
                f"The cross-attention has {base.shape[-1]} keys but the token map was built for "
                f"{self.index.numel()}; build it with length={base.shape[-1]}."
            )
        index = self.index.to(base.device)
        alphas = self.alphas.to(device=base.device, dtype=base.dtype)
        return base[..., index] * alphas + own * (1 - alphas)


def _check_tokens(tokens0: Sequence, tokens1: Sequence, length: int) -> None:
    for name, tokens in (("input caption", tokens0), ("edited caption", tokens1)):
        if not 0 < len(tokens) <= length:
            raise IP2PError(f"The {name} has {len(tokens)} tokens; give 1 to {length} (start and end included).")


def replace_map(tokens0: Sequence, tokens1: Sequence, length: int = CLIP_LENGTH) -> TokenMap:
    """Word swap: token j of prompt 1 takes the attention of token j of prompt 0.

    Only meaningful when both captions have the same number of tokens ("a cat" → "a dog");
    anything else is refused, pointing to :func:`refine_map`.
    """
    _check_tokens(tokens0, tokens1, length)
    if len(tokens0) != len(tokens1):
        raise IP2PError(
            f"Word swap (cross-attention 'replace') needs captions with the same number of tokens, got "
            f"{len(tokens0)} and {len(tokens1)} (start and end tokens included): {list(tokens0)} vs {list(tokens1)}. "
            f"Use the 'refine' edit, which aligns the two captions' tokens, or swap words of equal token length."
        )
    return TokenMap(torch.arange(length), torch.ones(length))


def align_tokens(tokens0: Sequence, tokens1: Sequence) -> list[int]:
    """For each token of prompt 1, the position of the equal token of prompt 0 it aligns with, or -1.

    A global alignment scored match +1, mismatch -1, gap 0 (Hertz et al.'s scores): with free gaps
    a mismatch never pays, so it is the longest common subsequence, kept in order. Ties go to the
    earliest match.
    """
    n, m = len(tokens0), len(tokens1)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if tokens0[i] == tokens1[j]:
                best[i][j] = best[i + 1][j + 1] + 1
            else:
                best[i][j] = max(best[i + 1][j], best[i][j + 1])
    aligned = [-1] * m
    i = j = 0
    while i < n and j < m:
        if tokens0[i] == tokens1[j]:  # matching equal heads is always part of a longest alignment
            aligned[j] = i
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return aligned


def refine_map(tokens0: Sequence, tokens1: Sequence, length: int = CLIP_LENGTH) -> TokenMap:
    """Refine: prompt 1's tokens that also occur in prompt 0 (in order) take prompt 0's attention;
    added tokens keep their own. ``tokens*`` are full encodings (start and end tokens, no padding);
    the padding after them is mapped position by position after each caption's end."""
    _check_tokens(tokens0, tokens1, length)
    aligned = align_tokens(tokens0, tokens1)
    index = torch.zeros(length, dtype=torch.int64)
    alphas = torch.ones(length)
    for j, i in enumerate(aligned):
        index[j] = max(i, 0)
        alphas[j] = float(i >= 0)
    for j in range(len(tokens1), length):
        index[j] = min(len(tokens0) + j - len(tokens1), length - 1)
    return TokenMap(index, alphas)


def word_positions(tokens: Sequence, word_tokens: Sequence) -> list[int]:
    """The positions in ``tokens`` of every occurrence of the sub-sequence ``word_tokens``."""
    size = len(word_tokens)
    if size == 0:
        return []
    tokens, word = list(tokens), list(word_tokens)
    starts = [s for s in range(len(tokens) - size + 1) if tokens[s : s + size] == word]
    return [position for s in starts for position in range(s, s + size)]


def equalizer(weights: Mapping[int, float], length: int = CLIP_LENGTH) -> torch.Tensor:
    """Reweight: a (length,) scale for prompt 1's cross-attention, ``weights[position]`` there, 1 elsewhere."""
    scale = torch.ones(length)
    for position, weight in weights.items():
        if not 0 <= position < length:
            raise IP2PError(f"Token position {position} is outside the {length} tokens of the caption.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise IP2PError(f"Reweight factors must be finite numbers ≥ 0 (1 leaves a word alone), got {weight!r}.")
        scale[position] = float(weight)
    return scale


# -- local blend -----------------------------------------------------------------------------------


class LocalBlend:
    """Keep prompt 0's latent outside the region the chosen words attend to (Hertz et al. §3.3).

    It observes the cond rows' cross-attention maps of the chosen words (``positions0`` in prompt
    0, ``positions1`` in prompt 1), summed over the steps so far and averaged over the layers at
    the lowest resolution in ``places``. Each step after ``start``, the sampler calls it on the
    latents: per pair, a map is dilated (max-pool of 2·dilate+1), resized to the latent, scaled to
    a maximum of 1 and thresholded; the union of the two prompts' masks decides where prompt 1
    keeps its own latent, prompt 0's is taken everywhere else.
    """

    def __init__(
        self,
        positions0: Sequence[int],
        positions1: Sequence[int],
        *,
        threshold: float = 0.3,  # Hertz et al.'s
        start: float = 0.2,  # step fraction from which the blend applies (their start_blend)
        dilate: int = 1,  # their max-pool radius
        places: Sequence[str] = ("down", "up"),  # their maps come from the down and up blocks, not mid
    ) -> None:
        self.positions = (tuple(positions0), tuple(positions1))
        if not any(self.positions):
            raise IP2PError("Local blend needs at least one word (token position) in either caption.")
        self.threshold = check_fraction("blend threshold", threshold)
        self.start = check_fraction("blend start", start)
        if not isinstance(dilate, int) or dilate < 0:
            raise IP2PError(f"dilate must be a whole number ≥ 0, got {dilate!r}.")
        self.dilate = dilate
        self.places = tuple(places)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}  # queries -> (pairs, 2, queries)
        self._counts: dict[int, int] = {}

    def observe(self, probs: torch.Tensor, layer: LayerInfo, rows: RowRoles) -> None:
        """Add one cross-attention call's maps of the chosen words (cond rows only)."""
        if layer.kind != CROSS or layer.place not in self.places:
            return
        _check_rows(probs, rows)
        queries = probs.shape[-2]
        total = self._sums.get(queries)
        if total is None or total.shape[0] < rows.pairs:
            grown = probs.new_zeros((rows.pairs, 2, queries), dtype=torch.float32)
            if total is not None:
                grown[: total.shape[0]] = total
            total = grown
        for row in range(len(rows)):
            positions = self.positions[rows.prompt[row]]
            if rows.branch[row] != COND or not positions:
                continue
            word_map = probs[row][..., list(positions)].sum(-1).mean(0)  # over words, then heads: (queries,)
            total[rows.pair[row], rows.prompt[row]] += word_map.float()
        self._sums[queries] = total
        self._counts[queries] = self._counts.get(queries, 0) + 1

    def mask(self, latent_size: tuple[int, int]) -> torch.Tensor | None:
        """(pairs, 1, h, w) float mask, 1 where prompt 1 keeps its own latent; None before any map is seen."""
        if not self._sums:
            return None
        queries = min(self._sums)
        maps = self._sums[queries] / self._counts[queries]
        height, width = latent_size
        grid = _map_grid(queries, height, width)
        pairs = maps.shape[0]
        maps = maps.reshape(pairs * 2, 1, *grid)
        if self.dilate:
            size = 2 * self.dilate + 1
            maps = F.max_pool2d(maps, size, stride=1, padding=self.dilate)
        maps = F.interpolate(maps, size=(height, width), mode="nearest")
        peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
        chosen = (maps / peak[:, None, None, None]) > self.threshold
        chosen = chosen.reshape(pairs, 2, height, width).any(dim=1, keepdim=True)
        return chosen.float()

    def __call__(self, latents: torch.Tensor, step: float, latent_rows: RowRoles) -> torch.Tensor:
        """Blended latents (rows as ``latent_rows``): prompt 1 keeps its own inside the mask, takes prompt 0's outside."""
        if step < self.start:
            return latents
        mask = self.mask(tuple(latents.shape[-2:]))
        if mask is None:
            return latents
        if latents.shape[0] != len(latent_rows):
            raise ValueError(f"{latents.shape[0]} latent rows but {len(latent_rows)} row roles")
        targets, sources = latent_rows.targets()
        pairs = [latent_rows.pair[r] for r in targets]
        out = latents.clone()
        keep_own = mask[pairs].to(device=latents.device, dtype=torch.bool)
        out[list(targets)] = torch.where(keep_own, latents[list(targets)], latents[list(sources)])
        return out


def _map_grid(queries: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) of an attention map of ``queries`` positions over a ``height``×``width`` latent."""
    factor = round(math.sqrt(height * width / queries))
    if factor >= 1:
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        if grid[0] * grid[1] == queries:
            return grid
    raise ValueError(f"an attention map of {queries} positions does not tile a {height}×{width} latent")


# -- Hertz et al.'s controller ---------------------------------------------------------------------


class OriginalP2P(Controller):
    """Hertz et al.'s Prompt-to-Prompt: cross-attention replace/refine/reweight, self-attention
    replacement and local blend, on the cond rows (their edit leaves the unconditional half alone).

    ``token_map`` (:func:`replace_map` or :func:`refine_map`) ties prompt 1's cross-attention to prompt
    0's while the step fraction is in ``cross_window``; ``reweight`` (:func:`equalizer`) then scales
    chosen tokens (a reweight alone is a replace map plus a reweight, as in their code). Self-attention
    of prompt 1 is prompt 0's in ``self_window``, on maps of at most ``self_max_queries`` positions
    (None: all). ``blend`` is called on the latents after every step.
    """

    def __init__(
        self,
        token_map: TokenMap,
        *,
        cross_window: Sequence[float] = (0.0, 0.8),  # their cross_replace_steps
        self_window: Sequence[float] = (0.0, 0.4),  # their self_replace_steps
        reweight: torch.Tensor | None = None,
        blend: LocalBlend | None = None,
        self_max_queries: int | None = ORIGINAL_SELF_MAX_QUERIES,
        branches: Sequence[str] = (COND,),
    ) -> None:
        self.token_map = token_map
        self.cross_window = check_window("cross_window", cross_window)
        self.self_window = check_window("self_window", self_window)
        if reweight is not None and reweight.shape != token_map.index.shape:
            raise IP2PError(
                f"The reweight scale has shape {tuple(reweight.shape)}; it needs one factor per token "
                f"{tuple(token_map.index.shape)}, as equalizer() builds it."
            )
        self.reweight = reweight
        self.blend = blend
        self.self_max_queries = self_max_queries
        if any(b not in BRANCHES for b in branches):
            raise IP2PError(f"branches must be among {BRANCHES}, got {tuple(branches)}.")
        self.branches = tuple(branches)

    @classmethod
    def from_tokens(
        cls, tokens0: Sequence, tokens1: Sequence, edit: str = "replace", *, length: int = CLIP_LENGTH, **options
    ) -> OriginalP2P:
        """The controller for two encoded captions; ``edit`` is "replace" (word swap) or "refine"."""
        builders = {"replace": replace_map, "refine": refine_map}
        if edit not in builders:
            raise IP2PError(f"Unknown cross-attention edit {edit!r}; choose 'replace' (word swap) or 'refine'.")
        return cls(builders[edit](tokens0, tokens1, length), **options)

    @staticmethod
    def _inside(step: float, window: tuple[float, float]) -> bool:
        return window[0] <= step < window[1]

    def _self_plan(self, step: float, rows: RowRoles, queries: int) -> AttentionPlan | None:
        small = self.self_max_queries is None or queries <= self.self_max_queries
        if small and self._inside(step, self.self_window):
            return _copy_plan(rows, (True,) * rows.pairs, self.branches)
        return None

    def plan(self, layer: LayerInfo, step: float, rows: RowRoles, queries: int) -> AttentionPlan | None:
        if layer.kind == SELF:
            return self._self_plan(step, rows, queries)
        if self._inside(step, self.cross_window):
            return AttentionPlan(explicit=True, rows=rows.targets(self.branches)[0])
        if self.blend is not None:
            return AttentionPlan(explicit=True, rows=())  # the blend only reads the maps
        return None

    def edit(self, probs: torch.Tensor, layer: LayerInfo, step: float, rows: RowRoles) -> torch.Tensor:
        _check_rows(probs, rows)
        if layer.kind == SELF:
            plan = self._self_plan(step, rows, probs.shape[-2])
            return probs if plan is None else probs[list(plan.sources)]
        if self.blend is not None:
            self.blend.observe(probs, layer, rows)  # the maps before the edit, as theirs
        if not self._inside(step, self.cross_window):
            return probs
        targets, sources = rows.targets(self.branches)
        edited = self.token_map.apply(probs[list(sources)], probs[list(targets)])
        if self.reweight is not None:
            edited = edited * self.reweight.to(device=probs.device, dtype=probs.dtype)
        out = probs.clone()
        out[list(targets)] = edited
        return out

    def after_step(self, latents: torch.Tensor, step: float, latent_rows: RowRoles) -> torch.Tensor:
        return latents if self.blend is None else self.blend(latents, step, latent_rows)

    def reset(self) -> None:
        if self.blend is not None:
            self.blend.reset()


# -- the attention call every host makes -----------------------------------------------------------

AttentionFn = Callable[..., torch.Tensor]  # (q, k, v, attn_mask=…) -> out, all (batch, heads, tokens, dim)


@functools.lru_cache(maxsize=256)
def _index(sources: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(sources, dtype=torch.int64, device=device)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    controller: Controller | None,
    layer: LayerInfo,
    step: float,
    rows: RowRoles,
    *,
    mask: torch.Tensor | None = None,
    attention: AttentionFn | None = None,
) -> torch.Tensor:
    """Attention of (batch, heads, tokens, dim) ``q``/``k``/``v`` under ``controller``.

    ``attention`` is the host's kernel (default ``F.scaled_dot_product_attention``, scale 1/√dim);
    it runs unchanged where the controller does nothing, and on copied queries/keys for copy plans.
    Explicit plans compute softmax(q kᵀ/√dim) in float32 and hand it to ``controller.edit``; the rows
    the plan says the edit changes take ``edited probabilities @ v``, the others the kernel's output.
    """
    kernel = attention or F.scaled_dot_product_attention
    if q.shape[0] != len(rows):
        raise ValueError(f"the attention batch has {q.shape[0]} rows but the row roles describe {len(rows)}")
    plan = None if controller is None else controller.plan(layer, step, rows, q.shape[-2])
    if plan is None:
        return kernel(q, k, v, attn_mask=mask)
    if not plan.explicit:
        index = _index(plan.sources, str(q.device))
        q, k = q.index_select(0, index), k.index_select(0, index)
        if mask is not None and mask.ndim == 4 and mask.shape[0] == len(rows) > 1:
            mask = mask.index_select(0, index)
        return kernel(q, k, v, attn_mask=mask)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probs = controller.edit(scores.softmax(dim=-1), layer, step, rows)
    if plan.rows is None:
        return torch.matmul(probs.to(v.dtype), v)
    out = kernel(q, k, v, attn_mask=mask)
    if plan.rows:
        index = _index(plan.rows, str(q.device))
        edited = torch.matmul(probs.index_select(0, index).to(v.dtype), v.index_select(0, index))
        out = out.index_copy(0, index, edited)
    return out
