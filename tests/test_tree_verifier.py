"""The C tree verifier on the F32 target: exact per-node results, clean commits, safe errors."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ouroboros_lite import native
from ouroboros_lite.native import NativeError
from ouroboros_lite.tree import TokenTree

PROMPT = "<|im_start|>user\nTell me about rivers.<|im_end|>\n<|im_start|>assistant\n"


def random_tree(rng: random.Random, max_nodes: int, max_paths: int, n_vocab: int) -> TokenTree:
    """A random shape: up to max_nodes nodes, up to max_paths leaves, from chains to bushes."""
    n_nodes = rng.randint(1, max_nodes)
    path_limit = rng.randint(1, max_paths)
    branching = rng.random()
    leaves = {-1}  # the root is a leaf until it has a child
    parents: list[int] = []
    for i in range(n_nodes):
        if len(leaves) < path_limit and rng.random() < branching:
            parent = rng.randrange(-1, i)  # any node: may open a new path
        else:
            parent = rng.choice(sorted(leaves))  # extend a leaf: no new path
        leaves.discard(parent)
        leaves.add(i)
        parents.append(parent)
    tokens = [rng.randrange(n_vocab) for _ in parents]
    return TokenTree(tuple(tokens), tuple(parents), ("draft",) * len(parents))


def prefill(runtime, tokens):
    runtime.context.clear()
    return runtime.verifier.prefill(tokens)


def path_logits_as_chain(runtime, prompt, root, path_tokens):
    """Decode root + path alone as a chain on a fresh prefix; logits of every entry."""
    prefill(runtime, prompt)
    chain = TokenTree(tuple(path_tokens), tuple(range(-1, len(path_tokens) - 1)), ("draft",) * len(path_tokens))
    runtime.verifier.decode(root, len(prompt), chain)
    rows = [runtime.verifier.logits(e).copy() for e in range(len(path_tokens) + 1)]
    runtime.verifier.commit(-1)
    return rows


def test_random_trees_match_chains(pair):
    verifier = pair.verifier
    rng = random.Random(1234)
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    n_vocab = pair.target.n_vocab
    assert pair.options.flash_attn is not False
    max_diff, shapes = 0.0, []
    m, w = verifier.max_nodes, verifier.max_paths
    # w chains below the root, grown round-robin: node j extends node j - w
    widest = TokenTree(tuple(rng.randrange(n_vocab) for _ in range(m)),
                       tuple([-1] * w + [j - w for j in range(w, m)]), ("draft",) * m)
    deepest = TokenTree(tuple(rng.randrange(n_vocab) for _ in range(m)), tuple(range(-1, m - 1)), ("draft",) * m)
    trees = [widest, deepest] + [random_tree(rng, m, w, n_vocab) for _ in range(50)]
    for tree in trees:
        root = prefill(pair, prompt)
        argmax = verifier.decode(root, len(prompt), tree)
        tree_rows = [verifier.logits(e).copy() for e in range(len(tree) + 1)]
        verifier.commit(-1)
        shapes.append((len(tree), tree.n_paths, tree.depth))
        leaves = [i for i in range(len(tree)) if i not in set(tree.parents)]
        for leaf in leaves:
            path = tree.path_to(leaf)
            chain_rows = path_logits_as_chain(pair, prompt, root, [tree.tokens[i] for i in path])
            for depth, entry in enumerate([0] + [i + 1 for i in path]):
                assert int(np.argmax(chain_rows[depth])) == argmax[entry]
                max_diff = max(max_diff, float(np.max(np.abs(chain_rows[depth] - tree_rows[entry]))))
    assert max(n for n, _, _ in shapes) == m and max(p for _, p, _ in shapes) == w
    assert max(d for _, _, d in shapes) == m
    print(f"\n52 trees (nodes up to {max(s[0] for s in shapes)}, paths up to "
          f"{max(s[1] for s in shapes)}, depth up to {max(s[2] for s in shapes)}): "
          f"max |tree logit - chain logit| = {max_diff:g}")
    # Flash attention accumulates over visible KV cells in order, so a tree equals its chains
    # bit for bit (without it, SIMD lanes group cells by index and tree cells interleave).
    assert max_diff == 0.0


def test_commit_leaves_exactly_prompt_plus_accepted(pair):
    verifier, ctx = pair.verifier, pair.context
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    greedy = []
    root = prefill(pair, prompt)
    # the greedy continuation, to build a tree whose main path is accepted
    chain_root, pos = root, len(prompt)
    for _ in range(4):
        outcome = verifier.verify_greedy(chain_root, pos, TokenTree())
        greedy.append(outcome.next_token)
        chain_root, pos = outcome.next_token, pos + 1
    # tree: the true continuation (3 tokens) plus two wrong branches
    tree = TokenTree((greedy[0], greedy[1], 17, greedy[2], 99), (-1, 0, 0, 1, -1), ("draft",) * 5)
    root = prefill(pair, prompt)
    outcome = verifier.verify_greedy(root, len(prompt), tree)
    assert outcome.accepted == (0, 1, 3)
    assert list(outcome.tokens) == greedy[:4]
    n_kept = len(prompt) + 1 + 3  # prompt, root, three accepted nodes
    assert ctx.seq_pos_max(0) == n_kept - 1 and ctx.seq_pos_min(0) == 0
    for seq in range(1, ctx.n_seq_max):
        assert ctx.seq_pos_max(seq) == -1, f"branch sequence {seq} not cleared"
    continued = _greedy_steps(verifier, outcome.next_token, n_kept, 12)
    # fresh context fed prompt + the accepted tokens (same batch shapes: prompt, then root + path)
    root2 = prefill(pair, prompt)
    chain = TokenTree(tuple(greedy[:3]), (-1, 0, 1), ("draft",) * 3)
    verifier.decode(root2, len(prompt), chain)
    verifier.commit(2)
    fresh = _greedy_steps(verifier, outcome.next_token, n_kept, 12)
    assert continued == fresh


def _greedy_steps(verifier, root, pos, n):
    out = []
    for _ in range(n):
        outcome = verifier.verify_greedy(root, pos, TokenTree())
        out.append(outcome.next_token)
        root, pos = outcome.next_token, pos + 1
    return out


@pytest.mark.parametrize(
    "tokens, parents, problem",
    [
        ((5, 6, 7), (-1, 5, 0), "parent"),  # parent out of range
        ((5, 6), (-1, 1), "parent"),  # node is its own parent: a cycle
        ((5, 6, 7), (-1, 2, 1), "parent"),  # forward edge (cycle 1 -> 2 -> 1)
        ((5, 6), (-1, -2), "parent"),  # parent below -1
        ((5, 10**7), (-1, 0), "vocabulary"),  # token outside the vocabulary
    ],
)
def test_invalid_trees_raise_and_leave_the_context_usable(pair, tokens, parents, problem):
    _assert_rejected_then_usable(pair, TokenTree(tokens, parents, ("draft",) * len(tokens)), problem)


def test_too_many_nodes(pair):
    n = pair.verifier.max_nodes + 1
    tree = TokenTree(tuple([5] * n), tuple(range(-1, n - 1)), ("draft",) * n)
    _assert_rejected_then_usable(pair, tree, "nodes")


def test_too_many_paths(pair):
    n = pair.verifier.max_paths + 1
    tree = TokenTree(tuple(range(5, 5 + n)), (-1,) * n, ("draft",) * n)
    _assert_rejected_then_usable(pair, tree, "paths")


def test_empty_tree_without_a_root_is_rejected(pair):
    # an empty node list is a plain one-token step; a tree needs a real root token
    _assert_rejected_then_usable(pair, TokenTree(), "vocabulary", root=-1)


def _assert_rejected_then_usable(pair, tree, problem, root=None):
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    first = prefill(pair, prompt)
    before = pair.context.seq_pos_max(0)
    with pytest.raises(NativeError, match=problem):
        pair.verifier.decode(first if root is None else root, len(prompt), tree)
    assert pair.context.seq_pos_max(0) == before
    outcome = pair.verifier.verify_greedy(first, len(prompt), TokenTree((first,), (-1,), ("draft",)))
    assert len(outcome.tokens) >= 1
    assert pair.context.seq_pos_max(0) == before + len(outcome.tokens)


def test_wrong_position_is_rejected(pair):
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    first = prefill(pair, prompt)
    with pytest.raises(NativeError, match="position"):
        pair.verifier.decode(first, len(prompt) + 3, TokenTree())


@pytest.mark.parametrize("runtime_name", ["q4", "pair"])
def test_a_branch_path_committed_continues_like_the_trunk(runtime_name, request):
    """Accepting a path that is not sequence 0 must leave the KV cache as if the path had been
    decoded on the trunk. (Kept branch cells change later logits under flash attention by up to
    0.65 logit on Q4_1: the commit decodes such a path again, see native/ouro.c.)"""
    runtime = request.getfixturevalue(runtime_name)
    v = runtime.verifier
    prompt = runtime.tokenize_prompt("Explain how a rainbow forms, step by step.", chat=True)
    hist = prompt + [r.token for r in runtime.generate(prompt, max_tokens=8)]
    p = len(prompt)
    path, other = hist[p + 1:p + 5], [hist[p + 1] + 1, 5, 6, 7]
    rows = []
    for tokens in (path + other, other + path):  # the true path on sequence 0, then on sequence 1
        v.reset()
        v.prefill(hist[:p])
        outcome = v.verify_greedy(hist[p], p, TokenTree(tuple(tokens), (-1, 0, 1, 2, -1, 4, 5, 6), ("pool",) * 8))
        assert outcome.tokens == tuple(hist[p + 1:p + 6])
        v.rollback(p + 2)  # keep root + 1 accepted token, then decode the next one alone
        v.decode(hist[p + 2], p + 2, TokenTree())
        rows.append(v.logits(0).copy())
        v.commit(-1)
    assert np.array_equal(rows[0], rows[1])


# --- inputs that used to crash the process or leave the KV cache out of step -----------------


def _assert_only_trunk(ctx, n_tokens):
    assert ctx.seq_pos_max(0) == n_tokens - 1 and ctx.seq_pos_min(0) == (0 if n_tokens else -1)
    for seq in range(1, ctx.n_seq_max):
        assert ctx.seq_pos_max(seq) == -1, f"branch sequence {seq} not cleared"


BUSH = TokenTree((5, 6, 7, 8), (-1, -1, 0, 0), ("draft",) * 4)  # three paths: branches hold copies


def test_commit_of_a_node_out_of_range_is_refused_and_the_tree_stays_decoded(pair):
    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    root = prefill(pair, prompt)
    v.decode(root, len(prompt), BUSH)
    for bad in (2**31 - 1, len(BUSH), -2, -(2**31)):
        with pytest.raises(NativeError, match="node index out of range"):
            v.commit(bad)
    assert native.lib.ouro_tree_commit(v._tree, 2**31 - 1) == native.OURO_ERR_STATE
    v.commit(2)
    assert v.cached == prompt + [root, 5, 7]
    _assert_only_trunk(pair.context, len(prompt) + 3)


def test_a_huge_node_count_is_refused_before_any_array_is_read(pair):
    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    root = prefill(pair, prompt)
    tokens, parents = native.ffi.new("int32_t[]", [5]), native.ffi.new("int32_t[]", [-1])
    for n in (2**31 - 1, v.max_nodes + 1):
        code = native.lib.ouro_tree_decode(v._tree, root, len(prompt), tokens, n, parents, n)
        assert code == native.OURO_ERR_TOO_MANY_NODES
    rc = native.ffi.new("int32_t *")
    assert native.lib.ouro_decode_chain(v._ctx, tokens, 2**31 - 1, len(prompt), 0, native.ffi.NULL, rc) \
        == native.OURO_ERR_CONTEXT_FULL
    _assert_only_trunk(pair.context, len(prompt))
    assert len(v.verify_greedy(root, len(prompt), TokenTree()).tokens) == 1


def test_parents_shorter_than_tokens_are_refused_in_python_and_in_c(pair):
    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    root = prefill(pair, prompt)
    with pytest.raises(NativeError, match="3 tokens but 2 parents"):
        v.decode(root, len(prompt), TokenTree((5, 6, 7), (-1, 0), ("draft",) * 3))
    tokens, parents = native.ffi.new("int32_t[]", [5, 6, 7]), native.ffi.new("int32_t[]", [-1, 0])
    assert native.lib.ouro_tree_decode(v._tree, root, len(prompt), tokens, 3, parents, 2) == native.OURO_ERR_ARGUMENT
    _assert_only_trunk(pair.context, len(prompt))


def test_rollback_out_of_range_is_refused_and_changes_nothing(pair):
    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    prefill(pair, prompt)
    for bad in (-1, -len(prompt), len(prompt) + 1):
        with pytest.raises(NativeError, match="cannot roll back"):
            v.rollback(bad)
        assert v.cached == prompt
        _assert_only_trunk(pair.context, len(prompt))
    assert native.lib.ouro_rollback(v._ctx, -1) == native.OURO_ERR_ARGUMENT
    assert native.lib.ouro_rollback(v._ctx, len(prompt) + 1) == native.OURO_ERR_BAD_POSITION
    _assert_only_trunk(pair.context, len(prompt))
    v.rollback(3)
    assert v.cached == prompt[:3]
    _assert_only_trunk(pair.context, 3)


def test_rollback_drops_an_uncommitted_tree_and_its_branch_copies(pair):
    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    root = prefill(pair, prompt)
    v.decode(root, len(prompt), BUSH)
    assert pair.context.seq_pos_max(2) == len(prompt) + 2  # branch 2 holds the prompt + its path
    v.rollback(len(prompt) - 2)
    _assert_only_trunk(pair.context, len(prompt) - 2)
    with pytest.raises(NativeError, match="no decoded tree"):
        v.commit(-1)
    assert v.cached == prompt[:-2]


def test_an_exception_while_sampling_rolls_the_tree_back(pair):
    from ouroboros_lite.sampling import Sampler, SamplingParams

    class Broken(Sampler):
        def probabilities(self, logits, history):
            raise KeyError("a bug in a sampler")

    v = pair.verifier
    prompt = pair.target.tokenize(PROMPT, parse_special=True)
    root = prefill(pair, prompt)
    sampler = Broken(SamplingParams(temperature=0.8), 1)
    with pytest.raises(KeyError):
        v.verify(root, len(prompt), BUSH, sampler, [*prompt, root])
    assert v.cached == prompt
    _assert_only_trunk(pair.context, len(prompt))
    assert len(v.verify_greedy(root, len(prompt), BUSH).tokens) >= 1


def test_native_entry_points_refuse_out_of_range_capacities_and_null(pair):
    ctx = native.context_pointer(pair.context.handle)
    for nodes, paths in ((2**31 - 1, 1), (pair.context.n_batch, 1), (-1, 1), (0, 0), (0, 2**31 - 1),
                         (0, pair.context.n_seq_max + 1)):
        assert native.lib.ouro_tree_init(ctx, nodes, paths) == native.ffi.NULL, (nodes, paths)
    assert native.lib.ouro_argmax(native.ffi.NULL, 5) == native.OURO_ERR_ARGUMENT
    assert native.lib.ouro_tree_discard(native.ffi.NULL) == native.OURO_ERR_ARGUMENT
    assert native.lib.ouro_rollback(native.ffi.NULL, 0) == native.OURO_ERR_ARGUMENT
    assert native.lib.ouro_logits_last(native.ffi.NULL) == native.ffi.NULL
    assert native.lib.ouro_n_vocab(native.ffi.NULL) == native.OURO_ERR_ARGUMENT
