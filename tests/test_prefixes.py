"""Prefix trees: the packing by hand, then the engine on zoo models against separate rows and
the float64 one-item reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from atlas.scoring.prefixes import Tree, build_trees, pack_rows

REQUESTS = [
    ((1, 2, 3, 4, 5), 3),  # base
    ((1, 2, 3, 9, 4, 5), 4),  # cot: shares 1 2 3
    ((1, 2, 7, 2, 3, 4, 5), 5),  # repeat: shares 1 2
    ((1, 2, 7, 2, 3, 9, 4, 5), 6),  # repeat+cot: shares 1 2 7 2 3 with repeat
    ((1, 8, 4, 5), 2),  # unconditional: shares 1
]


def _lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_tree_runs_each_shared_prefix_once():
    tree = build_trees(REQUESTS, [0] * 5, budget=100)[0]
    # Tokens: every request minus its longest common prefix with one inserted before it.
    order = sorted(range(5), key=lambda i: REQUESTS[i][0])
    want = sum(
        len(REQUESTS[i][0]) - max([_lcp(REQUESTS[i][0], REQUESTS[j][0]) for j in order[:k]] or [0])
        for k, i in enumerate(order)
    )
    assert len(tree) == want == 5 + 3 + 5 + 3 + 3
    mask = tree.mask()
    for slot, member in enumerate(tree.members):
        ids, _ = REQUESTS[member]
        path = tree.paths[slot]
        assert [tree.ids[p] for p in path] == list(ids)
        assert [tree.positions[p] for p in path] == list(range(len(ids)))
        # Each token sees exactly its own request's earlier tokens (and itself).
        for t, p in enumerate(path):
            assert set(np.flatnonzero(mask[p])) == set(path[: t + 1].tolist())
    slots, where, targets = tree.scored()
    for slot, member in enumerate(tree.members):
        ids, start = REQUESTS[member]
        mine = slots == slot
        assert targets[mine].tolist() == list(ids[start:])
        assert where[mine].tolist() == tree.paths[slot][start - 1 : len(ids) - 1].tolist()


def test_groups_and_budget_cut_trees():
    trees = build_trees(REQUESTS, [0, 0, 1, 1, 2], budget=100)
    assert sorted(sorted(t.members) for t in trees) == [[0, 1], [2, 3], [4]]
    small = build_trees(REQUESTS, [0] * 5, budget=9)
    assert sorted(m for t in small for m in t.members) == [0, 1, 2, 3, 4]
    assert all(len(t) <= 9 for t in small)


def test_pack_rows_first_fit():
    rows = pack_rows([5, 3, 7, 2, 9, 1], 10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    sizes = [5, 3, 7, 2, 9, 1]
    assert all(sum(sizes[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 3  # 27 tokens: the fewest rows of 10
    assert pack_rows([12], 10) == [[0]]  # an oversized tree gets a row of its own


torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from atlas.scoring.engine import Scorer, score_items, score_naive  # noqa: E402
from atlas.scoring.templates import build_requests  # noqa: E402
from atlas.textsets import read_items, sample_path  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def pairs():
    items = read_items(sample_path())
    return [*items[::30], items[104], items[100]]


@pytest.mark.parametrize("name", ["llama-chat-a", "qwen-chat-a"])
def test_shared_prefixes_give_the_same_numbers(zoo_by_name, pairs, name):
    path = zoo_by_name[f"atlas-zoo/{name}"].path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    alone = Scorer(model, share_prefixes=False)
    tree, packed = Scorer(model), Scorer(model, pack=True, batch_tokens=1024)
    want = score_items(model, tok, pairs, scorer=alone)
    got = score_items(model, tok, pairs, scorer=tree)
    got_packed = score_items(model, tok, pairs, scorer=packed)
    assert tree.stats.shared == packed.stats.shared == "prefix-trees"
    reference = copy.deepcopy(model).double()
    for key, piece in want.items():
        assert np.abs(got[key].values - piece.values).max() <= TOL, key
        assert np.abs(got_packed[key].values - piece.values).max() <= TOL, key
        assert np.abs(got[key].values - score_naive(reference, tok, pairs, *key)).max() <= TOL
        np.testing.assert_array_equal(got[key].token_counts, piece.token_counts)
    # Fewer tokens through the model; exactly the tokens not in a shared token prefix.
    requests = [
        build_requests(tok, pairs, kind=kind, variant=variant) for variant, kind in want
    ]
    flat = [(r.ids, r.start) for reqs in requests for r in reqs]
    groups = [i for reqs in requests for i in range(len(reqs))]
    unique = dict.fromkeys(flat)
    first = {k: groups[flat.index(k)] for k in unique}
    trees = build_trees(list(unique), [first[k] for k in unique], budget=10**9)
    assert tree.stats.forward_tokens == sum(len(t) for t in trees)
    assert tree.stats.forward_tokens < alone.stats.forward_tokens
    assert alone.stats.forward_tokens == tree.stats.unshared_tokens


def test_token_prefix_not_string_prefix(zoo_by_name, pairs):
    """Where BPE merges across the shared string's end, only the common token ids are shared."""
    tok = AutoTokenizer.from_pretrained(zoo_by_name["atlas-zoo/qwen-chat-a"].path)
    base = build_requests(tok, pairs, kind="conditional", variant="base")
    cot = build_requests(tok, pairs, kind="conditional", variant="cot")
    for b, c in zip(base, cot, strict=True):
        tree = Tree()
        tree.add(0, b.ids, b.start)
        tree.add(1, c.ids, c.start)
        shared = _lcp(b.ids, c.ids)
        assert len(tree) == len(b.ids) + len(c.ids) - shared
        assert shared < b.start  # the prompts differ before the response starts


def test_sliding_window_models_score_each_request_alone(zoo_by_name, pairs):
    path = zoo_by_name["atlas-zoo/llama-chat-a"].path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    model.config.sliding_window = 4  # a window the tree mask would not honour
    engine = Scorer(model)
    got = score_items(model, tok, pairs[:3], scorer=engine)
    assert engine.stats.shared == "off (sliding-window attention)"
    assert engine.stats.forward_tokens == engine.stats.unshared_tokens
    assert all(np.all(p.values < 0) for p in got.values())


def test_answers_to_one_prompt_share_its_prefix_across_items(zoo_by_name, pairs):
    """`groups` (validate-kl's several answers per prompt): one tree per prompt, same numbers."""
    from atlas.errors import UsageError
    from atlas.textsets import Item

    path = zoo_by_name["atlas-zoo/qwen-chat-a"].path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts, answers = pairs[:3], [p.response for p in pairs[3:6]]
    items = [Item(prompt=p.prompt, response=a) for a in answers for p in prompts]
    groups = [s for _ in answers for s in range(len(prompts))]
    piece = [("base", "conditional")]
    alone, tree = Scorer(model, share_prefixes=False), Scorer(model)
    want = score_items(model, tok, items, pieces=piece, scorer=alone)[piece[0]].values
    got = score_items(model, tok, items, pieces=piece, scorer=tree, groups=groups)[piece[0]]
    assert tree.stats.shared == "prefix-trees"
    assert np.abs(got.values - want).max() <= TOL
    assert tree.stats.forward_tokens < alone.stats.forward_tokens
    assert len(got.token_counts) == len(items)
    with pytest.raises(UsageError):
        score_items(model, tok, items, pieces=piece, groups=groups[:-1])
