"""Near-duplicate texts for the data audit: every pair whose word-bigram sets overlap by a Jaccard of
at least a threshold, found exactly and in near-linear time on ordinary data.

Two texts are near duplicates when ``|A ∩ B| / |A ∪ B| >= threshold`` for their sets of lowercased
word bigrams (``\\w+`` words; a one-word text is its own word). At 0.9, one replaced word in a text
of 40 words keeps a pair in (37 shared bigrams of 41, 0.90); two texts of 20 words that differ in one
word are not (17 of 21, 0.81). Exact copies are near duplicates too (1.0). The scan is a
prefix-filtered set-similarity join, not an estimate:

- Bigrams get one global order, rarest first. If ``J(A, B) >= t`` then ``|A ∩ B| >= ceil(t·|A|)``,
  so the first ``|A| - ceil(t·|A|) + 1`` bigrams of A in that order (its prefix, about a tenth of it
  at 0.9) must meet B's prefix. Only pairs that share a prefix bigram become candidates.
- Within each shared bigram's list, records are sorted by size and paired only when the smaller has
  at least ``t`` times the larger's bigrams (a looser pair cannot reach ``t``).
- Each candidate's Jaccard is then computed exactly.

Rare bigrams come first, so distinct texts share almost none of their prefix bigrams and the
candidates grow with the number of texts, not its square; a cluster of k mutually similar texts
still costs k² pairs, as it must when every pair is reported.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Sized

import numpy as np

from heed.runtime.progress import progress as _progress

NEAR_DUPLICATE_JACCARD = 0.9
_WORD = re.compile(r"\w+")
# For ASCII text: capitals become small letters, bytes that are not \w become spaces.
_ASCII_WORDS = bytes(c + 32 if chr(c).isupper() else c if chr(c).isalnum() or c == 95 else 32
                     for c in range(128)) + bytes(128)
_WORD_BITS = 31  # a bigram id is first_word << 31 | second_word; a lone word is 1 << 62 | word
_PAIR_CHUNK = 1 << 22  # candidate pairs built per step, bounding memory
_VERIFY_CHUNK = 1 << 16  # candidate pairs whose bigrams are compared per step


def shingles(text: str) -> frozenset[str]:
    """The word bigrams of ``text`` (its one word when it has one), as compared by the scan.

    >>> sorted(shingles("The cat, the hat."))
    ['cat the', 'the cat', 'the hat']
    """
    found = words(text)
    if len(found) < 2:
        return frozenset(found)
    return frozenset(" ".join(pair) for pair in zip(found, found[1:]))


def bigram_jaccard(a: str, b: str) -> float:
    """The Jaccard similarity of two texts' word-bigram sets (0 when either has none)."""
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y) if x and y else 0.0


@dataclass
class Scan:
    """What ``scan`` found: ``pairs`` ``(i, j, jaccard)`` with ``i < j``, sorted, and how many candidate
    pairs it compared exactly (``compared``), where a pairwise scan compares ``n·(n-1)/2``."""

    pairs: list[tuple[int, int, float]]
    compared: int


def near_duplicates(texts: Iterable[str], threshold: float = NEAR_DUPLICATE_JACCARD,
                    progress: bool | None = None) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)``, ``i < j``, sorted, of texts whose word-bigram Jaccard is at least
    ``threshold``. ``texts`` is read once (a generator saves holding them all); ``progress``: None shows
    a bar on a terminal when the scan takes more than two seconds, False never.

    >>> near_duplicates(["a b c d e f g h i j k", "a b c d e f g h i j k l", "x y z"])
    [(0, 1, 0.909)]
    """
    return scan(texts, threshold, progress).pairs


def scan(texts: Iterable[str], threshold: float = NEAR_DUPLICATE_JACCARD, progress: bool | None = None) -> Scan:
    """``near_duplicates`` with the number of candidate pairs compared (see ``Scan``)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    total = len(texts) if isinstance(texts, Sized) else None
    tokens, offsets = _bigram_ids(texts, total, progress)
    ranked, offsets = _sorted_by_rarity(tokens, offsets)
    sizes = np.diff(offsets)
    pairs: set[tuple[int, int, float]] = set()
    compared = 0
    for left, right in _candidates(ranked, offsets, sizes, threshold):
        compared += len(left)
        pairs.update(_verify(ranked, offsets, sizes, left, right, threshold))
    return Scan(sorted(pairs), compared)


def words(text: str) -> list[str]:
    """The lowercased ``\\w+`` words of ``text``; ASCII text takes a faster path to the same words."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
    return _WORD.findall(text.lower())


def _bigram_ids(texts: Iterable[str], total: int | None, progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Every text's bigrams as int64 ids, concatenated, with ``offsets`` (text k is ``offsets[k]:offsets[k+1]``)."""
    vocab = _Vocab()
    lookup = vocab.__getitem__
    chunks: list[np.ndarray] = []  # word ids, one array per 4,096 texts (a long list of ints is big)
    word_ids: list[int] = []
    counts = array("q")
    with progress_bar(total, "near duplicates", progress) as bar:
        for k, text in enumerate(texts):
            before = len(word_ids)
            word_ids.extend(map(lookup, words(text)))
            counts.append(len(word_ids) - before)
            if k % 4096 == 4095:
                chunks.append(np.array(word_ids, dtype=np.int64))
                word_ids.clear()
                bar.update(4096)
    chunks.append(np.array(word_ids, dtype=np.int64))
    if len(vocab) >= 1 << _WORD_BITS:
        raise ValueError("more than 2**31 distinct words")
    ids = np.concatenate(chunks)
    del chunks
    n_words = np.frombuffer(counts, dtype=np.int64) if len(counts) else np.zeros(0, np.int64)
    # Word p starts a bigram with word p+1 unless it is the last of its text; a one-word text keeps
    # its word as its one token.
    last = np.zeros(len(ids), dtype=bool)
    last[np.cumsum(n_words)[n_words > 0] - 1] = True
    following = np.zeros_like(ids)
    following[:-1] = ids[1:]
    tokens = (ids << _WORD_BITS) | following
    del following
    tokens[last] = (1 << 62) | ids[last]
    tokens = tokens[~last | np.repeat(n_words == 1, n_words)]
    per_text = np.maximum(n_words - 1, 0) + (n_words == 1)
    return tokens, np.concatenate(([0], np.cumsum(per_text)))


class _Vocab(dict):
    """Word → dense id, numbering new words as they come."""

    def __missing__(self, word: str) -> int:
        self[word] = len(self)
        return self[word]


def _sorted_by_rarity(tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace each bigram by its rank (rarest = 0, ties by id), dedupe and sort within each text."""
    n = len(offsets) - 1
    if not len(tokens):
        return tokens, offsets
    unique, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
    rank = np.empty(len(unique), dtype=np.int64)
    rank[np.argsort(counts, kind="stable")] = np.arange(len(unique))
    owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    bits = max(1, int(len(unique)).bit_length())
    key = np.sort((owner << bits) | rank[inverse])  # texts are contiguous: this sorts inside each
    fresh = np.ones(len(key), dtype=bool)
    fresh[1:] = key[1:] != key[:-1]
    key = key[fresh]
    owner = key >> bits
    sizes = np.bincount(owner, minlength=n)
    return key & ((1 << bits) - 1), np.concatenate(([0], np.cumsum(sizes)))


def _prefix_lengths(sizes: np.ndarray, threshold: float) -> np.ndarray:
    """``|A| - ceil(t·|A|) + 1`` per text (the 1e-9 keeps float rounding from making it one too short)."""
    needed = np.ceil(sizes * threshold - 1e-9).astype(np.int64)
    return np.where(sizes > 0, sizes - needed + 1, 0)


def _candidates(ranked: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                threshold: float) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(left, right)`` of text indices, ``left < right``, that share a prefix bigram and pass
    the size filter, in chunks of about ``_PAIR_CHUNK``; distinct within a chunk (a pair that shares
    prefix bigrams in two chunks comes twice, and its verdict is the same both times)."""
    n = len(sizes)
    prefix = _prefix_lengths(sizes, threshold)
    owner = np.repeat(np.arange(n, dtype=np.int64), prefix)
    position = np.arange(len(owner)) + np.repeat(offsets[:-1] - (np.cumsum(prefix) - prefix), prefix)
    token, size = ranked[position], sizes[owner]
    order = np.lexsort((owner, size, token))  # by bigram, then size, then text
    token, size, owner = token[order], size[order], owner[order]
    # The largest partner each entry may meet: the smaller set must hold >= t times the larger's bigrams.
    most = np.floor(size / threshold + 1e-9).astype(np.int64)
    size_bits = int(most.max(initial=1)).bit_length()
    key = (token << size_bits) | size
    partners = np.searchsorted(key, (token << size_bits) | most, side="right") - np.arange(len(key)) - 1
    done = np.concatenate(([0], np.cumsum(partners)))
    start = 0
    while start < len(partners):
        stop = max(start + 1, int(np.searchsorted(done, done[start] + _PAIR_CHUNK, side="right")) - 1)
        first = np.repeat(np.arange(start, stop), partners[start:stop])
        if len(first):
            step = np.arange(len(first)) - np.repeat(done[start:stop] - done[start], partners[start:stop]) + 1
            a, b = owner[first], owner[first + step]
            pairs = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
            yield pairs // n, pairs % n
        start = stop


def _verify(ranked: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, left: np.ndarray, right: np.ndarray,
            threshold: float) -> list[tuple[int, int, float]]:
    """The candidate pairs whose exact Jaccard reaches ``threshold``."""
    small, large = np.minimum(sizes[left], sizes[right]), np.maximum(sizes[left], sizes[right])
    fits = ~(small < threshold * large)  # as the bound is written in the pairwise definition
    left, right = left[fits], right[fits]
    found = []
    bits = int(ranked.max(initial=1)).bit_length()
    for lo in range(0, len(left), _VERIFY_CHUNK):
        a, b = left[lo:lo + _VERIFY_CHUNK], right[lo:lo + _VERIFY_CHUNK]
        pair = np.arange(len(a), dtype=np.int64)
        # Both sides' bigrams keyed by pair, each side sorted: a stable sort merges the two runs.
        keys = np.sort(np.concatenate([_gather(ranked, offsets, sizes, pair, a, bits),
                                       _gather(ranked, offsets, sizes, pair, b, bits)]), kind="stable")
        shared = keys[1:][keys[1:] == keys[:-1]] >> bits
        common = np.bincount(shared, minlength=len(a))
        score = common / (sizes[a] + sizes[b] - common)
        for k in np.flatnonzero(score >= threshold):
            found.append((int(a[k]), int(b[k]), round(float(score[k]), 3)))
    return found


def _gather(ranked: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, pair: np.ndarray, text: np.ndarray,
            bits: int) -> np.ndarray:
    """``pair << bits | bigram`` for every bigram of each ``text``, in pair order."""
    length = sizes[text]
    index = np.arange(int(length.sum())) + np.repeat(offsets[text] - (np.cumsum(length) - length), length)
    return (np.repeat(pair, length) << bits) | ranked[index]


def progress_bar(total: int | None, desc: str, enabled: bool | None = None) -> Any:
    """The audit's bar (``heed.runtime.progress``): shown only on a terminal and only once the work has
    taken two seconds, gone when done.

    ``enabled``: None = decide by the terminal, False = never.
    """
    return _progress(total, desc, " records", enabled=enabled, delay=2.0, mininterval=0.5, leave=False)
