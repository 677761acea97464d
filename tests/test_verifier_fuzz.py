"""Seeded fuzz test of the native tree verifier (native/ouro.c) on the F32 target, in a 256-cell
context so that trees often reach its end.

Every call's return code is checked against a reference model of the rules in native/ouro.h;
after every call (error or not) sequence 0 holds exactly the tokens the Python side thinks it
holds and every branch sequence is empty; and from time to time the next-token logits of the
fuzzed KV cache are compared with those of a fresh chain decode of the same tokens.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from ouroboros_lite import native
from ouroboros_lite.native import NativeError
from ouroboros_lite.runtime import Runtime
from ouroboros_lite.tree import TokenTree

from support import options

N_CTX = 256
N_TREES = 2000
SEED = 20261202
# Max |logit difference| allowed between the fuzzed cache and a fresh chain decode. Measured on
# this model, 240 tokens: decoding them in other batch shapes moves logits by at most 0.075
# (float32 summation order); one wrong, extra or missing token among them by at least 0.17.
LOGIT_TOLERANCE = 0.12


@pytest.fixture(scope="module")
def small(target_path):
    # one thread: on a busy shared machine two threads wait on each other (measured 60x slower)
    with Runtime(target_path, options=dataclasses.replace(options(), n_ctx=N_CTX, threads=1)) as runtime:
        assert runtime.context.n_ctx == N_CTX
        yield runtime


class Fuzzer:
    """Drives a TreeVerifier and keeps the reference state: the tokens of sequence 0 and the root."""

    def __init__(self, runtime: Runtime, rng: random.Random):
        self.v = runtime.verifier
        self.ctx = runtime.context
        self.rng = rng
        self.n_vocab = runtime.target.n_vocab
        self.kv: list[int] = []
        self.root = 1
        self.counts: dict[str, int] = {}

    # --- the reference model of ouro.h --------------------------------------------------------
    def expected_decode(self, root: int, pos: int, tokens: list[int], parents: list[int]) -> int:
        v, n = self.v, len(tokens)
        if len(parents) != n:
            return native.OURO_ERR_ARGUMENT
        if pos != len(self.kv):
            return native.OURO_ERR_BAD_POSITION
        if n > v.max_nodes:
            return native.OURO_ERR_TOO_MANY_NODES
        if not 0 <= root < self.n_vocab:
            return native.OURO_ERR_BAD_TOKEN
        depths: list[int] = []
        for i, (token, parent) in enumerate(zip(tokens, parents)):
            if not -1 <= parent < i:
                return native.OURO_ERR_BAD_PARENT
            if not 0 <= token < self.n_vocab:
                return native.OURO_ERR_BAD_TOKEN
            depths.append(1 if parent < 0 else depths[parent] + 1)
        if pos + max(depths, default=0) >= N_CTX:
            return native.OURO_ERR_CONTEXT_FULL
        if max(1, n - len(set(parents) - {-1})) > v.max_paths:
            return native.OURO_ERR_TOO_MANY_PATHS
        if pos + 1 + n > N_CTX:  # the cells: sequence 0 holds pos, the batch needs 1 + n
            return native.OURO_ERR_CONTEXT_FULL
        return native.OURO_OK

    def assert_consistent(self) -> None:
        assert self.v.cached == self.kv
        assert self.ctx.seq_pos_max(0) == len(self.kv) - 1
        assert self.ctx.seq_pos_min(0) == (0 if self.kv else -1)
        for seq in range(1, self.ctx.n_seq_max):
            assert self.ctx.seq_pos_max(seq) == -1, f"branch sequence {seq} not cleared"

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # --- random inputs --------------------------------------------------------------------------
    def random_shape(self, n: int) -> list[int]:
        """Parents of n nodes, from chains to bushes, often with more leaves than the verifier allows."""
        rng, branching = self.rng, self.rng.random()
        return [rng.randrange(-1, i) if i and rng.random() < branching else (i - 1 if i else -1) for i in range(n)]

    def random_size(self) -> int:
        """Mostly small trees (each valid one costs a forward), often straddling the cells left."""
        rng, room = self.rng, N_CTX - len(self.kv) - 1
        draw = rng.random()
        if draw < 0.02:
            return self.v.max_nodes + rng.randint(0, 1)
        if draw < 0.5 and room <= 16:
            return max(0, room + rng.randint(-2, 2))
        return rng.randint(0, 6)

    def random_tree(self) -> tuple[int, int, list[int], list[int], str]:
        """(root, pos, tokens, parents, defect)."""
        rng, n = self.rng, self.random_size()
        parents = self.random_shape(n)
        tokens = [rng.randrange(self.n_vocab) for _ in range(n)]
        root, pos = self.root, len(self.kv)
        defect = rng.choice(["none"] * 2 + ["parent", "token", "root", "position", "lengths", "paths", "nodes"])
        if defect == "paths":  # one leaf more than the verifier's sequences
            n = self.v.max_paths + 1
            tokens, parents = [rng.randrange(self.n_vocab) for _ in range(n)], [-1] * n
        elif defect == "nodes":  # a chain one or two nodes too long
            n = self.v.max_nodes + rng.randint(1, 2)
            tokens, parents = [5] * n, list(range(-1, n - 1))
        elif defect == "parent" and n:
            i = rng.randrange(n)
            parents[i] = rng.choice([i, i + rng.randint(1, 9), -2, -(2**31), 2**31 - 1])
        elif defect == "token" and n:
            tokens[rng.randrange(n)] = rng.choice([-1, self.n_vocab, 2**31 - 1, -(2**31)])
        elif defect == "root":
            root = rng.choice([-1, self.n_vocab, 2**31 - 1])
        elif defect == "position":
            pos = rng.choice([pos + 1, pos - 1, pos + 1000, -1, 2**31 - 1])
        elif defect == "lengths" and n:
            parents = parents[: rng.randrange(n)]
        return root, pos, tokens, parents, defect

    # --- actions ----------------------------------------------------------------------------------
    def decode_tree(self) -> None:
        if self.rng.random() < 0.03:
            return self.decode_a_huge_count()
        root, pos, tokens, parents, defect = self.random_tree()
        expected = self.expected_decode(root, pos, tokens, parents)
        code = self.decode(root, pos, tokens, parents)
        assert code == expected, (defect, len(tokens), pos, code, expected)
        self.count(f"code {code}")
        if expected == native.OURO_ERR_CONTEXT_FULL and pos + TokenTree(tuple(tokens), tuple(parents)).depth < N_CTX:
            self.count("fits by depth, not by cells")
        if code != native.OURO_OK:
            self.assert_consistent()
            return
        if pos + 1 + len(tokens) == N_CTX:
            self.count("fills the cache exactly")
        self.after_decode(root, TokenTree(tuple(tokens), tuple(parents), ("draft",) * len(tokens)))

    def decode_a_huge_count(self) -> None:
        """A node count far beyond the arrays passed: refused before any of them is read."""
        one = native.ffi.new("int32_t[]", [-1])
        n = self.rng.choice([2**31 - 1, 2**30, self.v.max_nodes + 1])
        code = native.lib.ouro_tree_decode(self.v._tree, self.root, len(self.kv), one, n, one, n)
        assert code == native.OURO_ERR_TOO_MANY_NODES
        self.count("huge node count")
        self.assert_consistent()

    def decode(self, root: int, pos: int, tokens: list[int], parents: list[int]) -> int:
        """Through TreeVerifier.decode; arrays of unequal length (Python refuses them) straight to C."""
        if len(tokens) != len(parents):
            with pytest.raises(NativeError, match="parents"):
                self.v.decode(root, pos, TokenTree(tuple(tokens), tuple(parents)))
            return native.lib.ouro_tree_decode(self.v._tree, root, pos, tokens, len(tokens), parents, len(parents))
        try:
            self._argmax = self.v.decode(root, pos, TokenTree(tuple(tokens), tuple(parents), ("draft",) * len(tokens)))
        except NativeError as error:
            return error.code
        return native.OURO_OK

    def after_decode(self, root: int, tree: TokenTree) -> None:
        rng, tokens, argmax = self.rng, tree.tokens, self._argmax
        action = rng.random()
        if action < 0.15:  # a node out of range: refused, the tree stays decoded
            bad = rng.choice([2**31 - 1, len(tokens), len(tokens) + 1, -2, -(2**31)])
            assert native.lib.ouro_tree_commit(self.v._tree, bad) == native.OURO_ERR_STATE
            self.count("bad commit")
        if action < 0.25 and rng.random() < 0.4:  # dropped
            self.v.discard()
            self.assert_consistent()
            return
        if action > 0.97:  # an exception between decode and commit (verify's own guard)
            with pytest.raises(ZeroDivisionError):
                with self.v._discard_on_error():
                    raise ZeroDivisionError
            self.assert_consistent()
            return
        if rng.random() < 0.5:
            path, _ = self.v.accept_greedy()
            last = path[-1] if path else -1
        else:
            last = rng.randrange(-1, len(tokens))
        self.v.commit(last)
        self.kv += [root] + [tokens[i] for i in tree.path_to(last)]
        assert self.v.cached == self.kv
        self.root = int(argmax[last + 1]) if rng.random() < 0.8 else rng.randrange(self.n_vocab)
        self.assert_consistent()

    def prefill(self) -> None:
        rng, end = self.rng, len(self.kv)
        goal = max(end, rng.randint(0, N_CTX) if rng.random() < 0.1 else N_CTX - rng.randint(0, 16))
        chain = [self.root] + [rng.randrange(self.n_vocab) for _ in range(max(0, goal - end - 1))]
        pos0 = end
        defect = rng.choice(["none"] * 4 + ["position", "token"])
        if defect == "position":
            pos0 = rng.choice([end + 1, end - 1, -1]) if end else rng.choice([1, -1])
        elif defect == "token":
            chain[rng.randrange(len(chain))] = rng.choice([-1, self.n_vocab])
        expected = (native.OURO_ERR_ARGUMENT if pos0 < 0 else native.OURO_ERR_BAD_POSITION if pos0 != end
                    else native.OURO_ERR_CONTEXT_FULL if end + len(chain) > N_CTX
                    else native.OURO_ERR_BAD_TOKEN if defect == "token" else native.OURO_OK)
        try:
            self.root = self.v.prefill(chain, pos0)
            code = native.OURO_OK
        except NativeError as error:
            code = error.code
        assert code == expected, (defect, end, len(chain), code, expected)
        self.count(f"chain {code}")
        if code == native.OURO_OK:
            self.kv += chain
        self.assert_consistent()

    def rollback(self) -> None:
        rng, end = self.rng, len(self.kv)
        if rng.random() < 0.3:
            bad = rng.choice([-1, -end - 1, end + 1, 2**31 - 1])
            with pytest.raises(NativeError, match="cannot roll back"):
                self.v.rollback(bad)
            assert native.lib.ouro_rollback(self.v._ctx, end + 1) == native.OURO_ERR_BAD_POSITION
            assert native.lib.ouro_rollback(self.v._ctx, -1) == native.OURO_ERR_ARGUMENT
            self.count("bad rollback")
        else:
            keep = rng.randint(0, end) if rng.random() < 0.03 else max(0, end - rng.randint(0, 8))
            self.v.rollback(keep)
            self.root = self.kv[keep] if keep < end else self.root
            del self.kv[keep:]
        self.assert_consistent()

    def check_against_a_fresh_chain(self, steps: int = 3) -> None:
        """The fuzzed KV cache and a fresh chain decode of the same tokens give the same logits."""
        if len(self.kv) + steps + 1 > N_CTX:
            self.v.rollback(len(self.kv) - steps - 1)
            self.root = self.kv[len(self.kv) - steps - 1]
            del self.kv[len(self.kv) - steps - 1:]
        fuzzed = self.logits_of_continuation(None)
        self.v.reset()
        if self.kv:
            self.v.prefill(self.kv)
        fresh = self.logits_of_continuation([int(np.argmax(row)) for row in fuzzed[:-1]])
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(fuzzed, fresh))
        assert diff < LOGIT_TOLERANCE, f"fuzzed KV differs from a fresh chain decode by {diff}"
        for a, b in zip(fuzzed, fresh):  # the greedy continuation agrees wherever it is no near-tie
            top2 = np.sort(b)[-2:]
            if top2[1] - top2[0] > 2 * LOGIT_TOLERANCE:
                assert int(np.argmax(a)) == int(np.argmax(b))
        self.count("fresh-chain checks")
        self.assert_consistent()

    def logits_of_continuation(self, tokens: list[int] | None, steps: int = 3) -> list[np.ndarray]:
        """Next-token logits after the root and `steps` more tokens (None: the greedy ones), one
        decode each; the KV cache is rolled back to what it held before."""
        rows, pos, token = [], len(self.kv), self.root
        for i in range(steps + 1):
            self.v.decode(token, pos + i, TokenTree())
            rows.append(self.v.logits(0).copy())
            self.v.commit(-1)
            if i < steps:
                token = int(np.argmax(rows[-1])) if tokens is None else tokens[i]
        self.v.rollback(pos)
        return rows


def test_fuzzed_trees_get_the_documented_codes_and_keep_the_kv_consistent(small):
    fuzz = Fuzzer(small, random.Random(SEED))
    small.verifier.reset()
    fuzz.prefill()
    trees = 0
    while trees < N_TREES:
        action = fuzz.rng.random()
        if action < 0.8:
            fuzz.decode_tree()
            trees += 1
        elif action < 0.95:
            fuzz.rollback()
        else:
            fuzz.prefill()
        if trees % 400 == 0 and action < 0.8:
            fuzz.check_against_a_fresh_chain()
    fuzz.check_against_a_fresh_chain()
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(fuzz.counts.items())))
    for code in (native.OURO_OK, native.OURO_ERR_CONTEXT_FULL, native.OURO_ERR_TOO_MANY_PATHS,
                 native.OURO_ERR_TOO_MANY_NODES, native.OURO_ERR_BAD_PARENT, native.OURO_ERR_BAD_TOKEN,
                 native.OURO_ERR_BAD_POSITION, native.OURO_ERR_ARGUMENT):
        assert fuzz.counts.get(f"code {code}", 0) >= 10, (code, fuzz.counts)
    assert fuzz.counts.get("fits by depth, not by cells", 0) >= 25
    assert fuzz.counts.get("fills the cache exactly", 0) >= 5


def test_a_tree_that_fits_by_depth_but_not_by_cells_is_context_full(small):
    v = small.verifier
    v.reset()
    end = N_CTX - 10
    root = v.prefill([1 + i % 500 for i in range(end)])
    nine, ten = (TokenTree(tuple(range(5, 5 + k)), (-1,) * k, ("draft",) * k) for k in (9, 10))
    with pytest.raises(NativeError, match="context is full") as error:
        v.decode(root, end, ten)  # depth 1 fits; 10 + 1 cells after 246 do not
    assert error.value.code == native.OURO_ERR_CONTEXT_FULL
    v.decode(root, end, nine)  # exactly the 256 cells
    v.commit(4)
    assert v.cached[end:] == [root, 9]
    assert small.context.seq_pos_max(0) == end + 1
    for seq in range(1, small.context.n_seq_max):
        assert small.context.seq_pos_max(seq) == -1
