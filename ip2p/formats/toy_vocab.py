"""The toy world's CLIP vocabulary: every toy word one token, so a tiny frozen text encoder sees
each instruction word as one embedding. Written as the vocab.json / merges.txt pair that
transformers' CLIPTokenizer and the diffusers folders read.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

from ..datasets.toy import TOY_WORDS
from ..errors import IP2PError
from .tokenizer import END_TOKEN, START_TOKEN, _base_tokens, load_clip_tokenizer, write_tokenizer_files

TOY_VOCAB_SIZE = 1024  # the toy text encoder's vocab_size (ip2p/headless/configs/toy.json)
# Texts are padded to 12 tokens, not CLIP's 77: the longest toy instruction ("change the square into
# a triangle") is 8 with start and end. The frozen encoder is causal, so the words' embeddings are the
# same either way, but cross-attention then has a few padding keys instead of 70 near-identical ones
# that averaged the words away: measured, 0.475 / 0.544 of the baselines after 800 steps against
# 0.580 / 0.649 at 77 (docs/training.md, "The toy world").
TOY_MAX_LENGTH = 12
TOY_TOKENIZER = "toy"  # how random models and single files name this tokenizer (a single file carries none)

# Words besides TOY_WORDS that are one token each, so hand-written instructions stay short too.
EXTRA_WORDS = (
    "a all an and any big blank bottom brown by can change color colors colour could cyan delete do each "
    "empty erase every for from grey image in into is it its large left make middle more new no not object "
    "of one paint photo picture pink please put replace right shape shapes small smaller swap that the "
    "there this three to top turn two with"
).split()
VOCAB_WORDS: tuple[str, ...] = tuple(sorted(set(TOY_WORDS) | set(EXTRA_WORDS)))


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + "</w>"]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lower-case ASCII word: merge the best-ranked adjacent pair until none applies."""
    symbols = _symbols(word)
    while len(symbols) > 1:
        known = [(ranks[pair], pair) for pair in zip(symbols, symbols[1:], strict=False) if pair in ranks]
        if not known:
            break
        _, (first, second) = min(known)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def toy_vocab(vocab_size: int = TOY_VOCAB_SIZE) -> tuple[list[str], list[tuple[str, str]]]:
    """The toy vocabulary (id order) and merges: every word of :data:`VOCAB_WORDS` is one token.

    CLIP-shaped: the 512 byte tokens first, one token per merge, filler tokens that no merge
    produces up to ``vocab_size`` (default: the toy text encoder's), the start and end tokens last.
    Each word gets merges until the BPE spells it as one symbol; a merge added later ranks below
    every earlier one, so it never changes how an earlier word is split.
    """
    tokens, merges = _toy_tokens()
    vocab = list(tokens)
    needed = toy_vocab_min_size()
    if vocab_size < needed:
        raise IP2PError(f"The toy vocabulary needs at least {needed} tokens; the text encoder has {vocab_size}.")
    vocab += [f"<|ip2p_toy_unused_{i}|>" for i in range(vocab_size - needed)]
    return [*vocab, START_TOKEN, END_TOKEN], list(merges)


def toy_vocab_min_size() -> int:
    """The fewest tokens the toy vocabulary fits in: its byte and word tokens, and start and end."""
    return len(_toy_tokens()[0]) + 2


@cache
def _toy_tokens() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The byte tokens and one token per merge (no filler, no specials), and the merges, in order."""
    vocab = _base_tokens()
    known = set(vocab)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in VOCAB_WORDS:
        while len(symbols := _bpe(word, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                vocab.append(pair[0] + pair[1])
                known.add(pair[0] + pair[1])
    return tuple(vocab), tuple(merges)


def toy_tokenizer_files(folder: str | os.PathLike, vocab_size: int = TOY_VOCAB_SIZE) -> Path:
    """Write the toy tokenizer (vocab.json, merges.txt, configs) that ``CLIPTokenizer`` reads into ``folder``."""
    vocab, merges = toy_vocab(vocab_size)
    return write_tokenizer_files(folder, vocab, merges, max_length=TOY_MAX_LENGTH)


def toy_tokenizer(vocab_size: int = TOY_VOCAB_SIZE):
    """The toy vocabulary as a ``transformers.CLIPTokenizer`` (built in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="ip2p-toy-tokenizer-") as tmp:
        toy_tokenizer_files(tmp, vocab_size)
        return load_clip_tokenizer(tmp)
