"""Pairs of 64-bit hashes within a Hamming distance, without comparing all pairs: multi-index hashing.

Split the 64 bits into `d + k` blocks. Two hashes at most `d` bits apart differ in at most `d` blocks, so at least
`k` blocks are equal (pigeonhole). For every choice of `k` blocks, rows whose hashes agree on those blocks are found
by sorting on the masked hash; only those candidates are compared bit by bit. `k` grows with the number of hashes
so that the masked key keeps about log2(n) bits: chance collisions stay about linear in n, and the work is
(number of block choices) sorts of n keys plus the candidates. The answer is exactly the all-pairs answer.
"""

from __future__ import annotations

from itertools import combinations
from math import comb, log2

import numpy as np
import pandas as pd

from covidxr.errors import UsageError

HASH_BITS = 64
MAX_BLOCK_CHOICES = 1000
"""Beyond this many block choices (a large distance on many hashes) the index costs more than it saves, and such a
distance joins a large share of all pairs anyway: the search falls back to comparing all pairs, in chunks."""
_CHUNK = 512


def parse_hashes(hex_digits: pd.Series | list[str]) -> np.ndarray:
    """Hex strings of at most 16 digits (as `imagehash` writes a 64-bit pHash) as uint64, without a Python loop."""
    text = pd.Series(hex_digits, dtype="string").str.strip().str.zfill(16)
    bad = text.isna() | (text.str.len() != 16) | ~text.str.fullmatch("[0-9a-fA-F]{16}").fillna(False)
    if bad.any():
        shown = ", ".join(repr(str(value)) for value in pd.Series(hex_digits)[bad.to_numpy()].head(3))
        raise UsageError(f"{int(bad.sum())} phash value(s) are not 64-bit hex digests such as 'c3b1a6d8e4f20917': "
                         f"{shown}")
    return np.frombuffer(bytes.fromhex("".join(text.tolist())), dtype=">u8").astype(np.uint64)


def pairs_within(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs (i < j) of hashes at most `max_distance` bits apart, sorted, shape (n, 2)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if len(hashes) < 2:
        return np.empty((0, 2), dtype=np.int64)
    masks = block_masks(len(hashes), max_distance)
    if masks is None:
        return _all_pairs_within(hashes, max_distance)
    found = [_verified(hashes, _equal_under(hashes, mask), max_distance) for mask in masks]
    codes = np.unique(np.concatenate(found))
    return np.stack(np.divmod(codes, len(hashes)), axis=1).astype(np.int64)


def pairs_between(first: np.ndarray, second: np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs (i in `first`, j in `second`) of hashes at most `max_distance` bits apart, sorted, shape (n, 2)."""
    pairs = pairs_within(np.concatenate([first, second]).astype(np.uint64), max_distance)
    across = pairs[(pairs[:, 0] < len(first)) & (pairs[:, 1] >= len(first))]
    return across - np.array([0, len(first)])


def block_masks(count: int, max_distance: int) -> list[np.uint64] | None:
    """One 64-bit mask per choice of k of the d + k blocks (None: compare all pairs instead, see MAX_BLOCK_CHOICES)."""
    if not 0 <= max_distance <= HASH_BITS:
        raise UsageError(f"must be 0..{HASH_BITS} bits", "max_distance", max_distance)
    key_bits = min(32.0, max(8.0, log2(count)))
    for k in range(1, HASH_BITS + 1):
        blocks = max_distance + k
        if blocks > HASH_BITS or comb(blocks, k) > MAX_BLOCK_CHOICES:
            return None
        if k * (HASH_BITS // blocks) >= key_bits or blocks == k:
            edges = np.linspace(0, HASH_BITS, blocks + 1).round().astype(int)
            block = [sum(1 << bit for bit in range(low, high)) for low, high in zip(edges[:-1], edges[1:])]
            return [np.uint64(sum(block[b] for b in chosen)) for chosen in combinations(range(blocks), k)]
    return None


def _equal_under(hashes: np.ndarray, mask: np.uint64) -> np.ndarray:
    """Pairs (i, j), i != j, of rows whose hashes agree on the bits of `mask` (each unordered pair once)."""
    keys = hashes & mask
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.repeat(np.r_[starts[1:], len(keys)], np.diff(np.r_[starts, len(keys)]))
    position = np.flatnonzero(ends - np.arange(len(keys)) > 1)
    found, offset = [], 1
    while len(position):
        found.append(np.stack([order[position], order[position + offset]], axis=1))
        offset += 1
        position = position[ends[position] - position > offset]
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def _verified(hashes: np.ndarray, candidates: np.ndarray, max_distance: int) -> np.ndarray:
    """Codes i * n + j (i < j) of the candidates whose hashes are at most `max_distance` bits apart."""
    close = np.bitwise_count(hashes[candidates[:, 0]] ^ hashes[candidates[:, 1]]) <= max_distance
    low, high = np.sort(candidates[close], axis=1).T
    return low.astype(np.int64) * len(hashes) + high


def _all_pairs_within(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    found = []
    for start in range(0, len(hashes), _CHUNK):
        distance = np.bitwise_count(hashes[start:start + _CHUNK, None] ^ hashes[None, :])
        rows, columns = np.nonzero(distance <= max_distance)
        found.append(np.stack([rows + start, columns], axis=1))
    pairs = np.concatenate(found)
    return pairs[pairs[:, 0] < pairs[:, 1]].astype(np.int64)
