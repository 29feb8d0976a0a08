"""Prefix trees of token-id requests: run every shared context once.

The prompt variants of one pair share their chat header and prompt (`cot` extends `base`,
`repeat+cot` extends `repeat`). The requests of a group (one item's pieces) are merged into a
trie over their *token ids* (the longest common token prefix, never a string prefix: a
byte-level BPE may tokenize a shared string differently at its end), flattened into one packed
sequence. Every packed token keeps its position in its own request (its depth in the trie) and
attends only to its ancestors, so each request's log-probabilities are those of the request run
alone. Pure numpy; the engine (`atlas.scoring.engine`) turns rows of trees into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Ids = Sequence[int]


@dataclass
class Tree:
    """Requests merged into one packed sequence: tokens, positions and each request's path."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    paths: list[np.ndarray] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def added_by(self, ids: Ids) -> tuple[int, int]:
        """(the member to branch from, the shared length): the longest common token prefix."""
        best, shared = -1, 0
        for k, path in enumerate(self.paths):
            n = min(len(path), len(ids))
            if n <= shared:
                continue
            mine = np.asarray([self.ids[i] for i in path[:n]], dtype=np.int64)
            differ = np.flatnonzero(mine != np.asarray(ids[:n], dtype=np.int64))
            common = int(differ[0]) if len(differ) else n
            if common > shared:
                best, shared = k, common
        return best, shared

    def add(self, member: int, ids: Ids, start: int) -> None:
        """Insert a request: its tail after the longest shared prefix becomes a new branch."""
        best, shared = self.added_by(ids)
        head = self.paths[best][:shared] if best >= 0 else np.zeros(0, dtype=np.int64)
        tail = np.arange(len(self.ids), len(self.ids) + len(ids) - shared, dtype=np.int64)
        self.ids.extend(int(t) for t in ids[shared:])
        self.positions.extend(range(shared, len(ids)))
        self.members.append(member)
        self.paths.append(np.concatenate([head, tail]))
        self.starts.append(start)

    def mask(self) -> np.ndarray:
        """[L, L] booleans: packed token q may attend to k (k is q itself or an ancestor)."""
        n = len(self.ids)
        out = np.zeros((n, n), dtype=bool)
        for path in self.paths:
            tril = np.tril(np.ones((len(path), len(path)), dtype=bool))
            out[np.ix_(path, path)] |= tril
        return out

    def scored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(member slot, predicting packed position, target id) of every scored token."""
        slots, where, targets = [], [], []
        ids = np.asarray(self.ids, dtype=np.int64)
        for slot, (path, start) in enumerate(zip(self.paths, self.starts, strict=True)):
            pos = path[start - 1 : len(path) - 1]
            slots.append(np.full(len(pos), slot, dtype=np.int64))
            where.append(pos)
            targets.append(ids[path[start:]])
        return np.concatenate(slots), np.concatenate(where), np.concatenate(targets)


def build_trees(
    requests: Sequence[tuple[Ids, int]], groups: Sequence[int], budget: int
) -> list[Tree]:
    """One tree per group (a group too big for `budget` tokens is cut into several trees)."""
    by_group: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(int(group), []).append(index)
    trees: list[Tree] = []
    for members in by_group.values():
        # Sorted by ids, requests that share a prefix are inserted next to each other.
        members.sort(key=lambda i: tuple(requests[i][0]))
        tree = Tree()
        for index in members:
            ids, start = requests[index]
            if tree.members and len(tree) + len(ids) - tree.added_by(ids)[1] > budget:
                trees.append(tree)
                tree = Tree()
            tree.add(index, ids, start)
        trees.append(tree)
    return trees


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: tree indices per row, each row at most `width` tokens (or 1 tree)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(width - lengths[i])
    return rows


def unshared_tokens(requests: Sequence[tuple[Ids, int]]) -> int:
    """Tokens the requests feed through the model when each runs alone."""
    return sum(len(ids) for ids, _ in requests)
