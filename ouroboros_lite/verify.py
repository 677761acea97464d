"""One target forward per cycle: decode a token tree in the C module, accept greedily, commit the KV."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import native
from .acceptance import accept_sampled
from .backend import Context
from .errors import PrefillInterrupted
from .sampling import Sampler
from .tree import TokenTree


@dataclass(frozen=True)
class Outcome:
    """What one verification decided.

    accepted: node indices of the accepted path (root's child first).
    tokens / sources: every token this cycle emits: the accepted nodes, then the target's token.
    argmax: the target's greedy token after the root (index 0) and after each node (index i + 1).
    """

    tree: TokenTree
    accepted: tuple[int, ...]
    tokens: tuple[int, ...]
    sources: tuple[str, ...]
    argmax: np.ndarray
    logprobs: tuple[float, ...] = ()  # per token, the target's log-probability (when recorded)

    @property
    def next_token(self) -> int:
        return self.tokens[-1]


class TreeVerifier:
    """Owns the native verifier of one target context and the position of its next root."""

    def __init__(self, context: Context, *, max_nodes: int, max_paths: int):
        self.context = context
        self.max_nodes = min(max_nodes, context.n_batch - 1)
        self.max_paths = min(max_paths, context.n_seq_max)
        self._ctx = native.context_pointer(context.handle)
        self._tree = native.lib.ouro_tree_init(self._ctx, self.max_nodes, self.max_paths)
        if self._tree == native.ffi.NULL:
            raise native.NativeError(native.OURO_ERR_NO_MEMORY, "could not create the tree verifier "
                                     f"({self.max_nodes} nodes, {self.max_paths} paths)")
        self._path = native.ffi.new("int32_t[]", max(1, self.max_nodes))
        self._n_path = native.ffi.new("int32_t *")
        self._next = native.ffi.new("int32_t *")
        self.cached: list[int] = []  # the tokens sequence 0 of the KV cache holds, in order
        self.record_logprobs = False  # Outcome.logprobs filled in (stream_generate sets it per generation)
        # the witness of a divergence (bench sets `expected`, the reference's prompt + text, by position):
        # the first position a cycle emits another token than expected there, and a copy of the logits
        # row the target chose it from. ties.check_tie weighs that row beside its own recomputations.
        self.expected: list[int] | None = None
        self.departure: tuple[int, np.ndarray] | None = None
        # interrupt_prefill raises this flag while a prompt decodes; llama.cpp checks it between graph nodes
        self._abort = native.ffi.new("int32_t *")
        self._abort_lock = threading.Lock()
        self._prefilling = False
        native.lib.ouro_set_abort_flag(self._ctx, self._abort)
        self._decoded: tuple[int, TokenTree] = (-1, TokenTree())  # root and tree of the last decode

    def reset(self) -> None:
        """Empty the KV cache."""
        self.discard()
        self.context.clear()
        self.cached = []

    def rollback(self, n_keep: int) -> None:
        """Keep the first n_keep cached tokens (0 <= n_keep <= len(cached)), drop the rest, any
        uncommitted tree and every branch sequence."""
        if not 0 <= n_keep <= len(self.cached):
            raise native.NativeError(native.OURO_ERR_ARGUMENT, f"cannot roll back to {n_keep} tokens: "
                                     f"the cache holds {len(self.cached)}")
        self.discard()
        native.check(native.lib.ouro_rollback(self._ctx, n_keep), f"rolling back to {n_keep} tokens")
        del self.cached[n_keep:]

    def discard(self) -> None:
        """Drop the tree of the last decode if it was not committed (the KV is as before it)."""
        native.check(native.lib.ouro_tree_discard(self._tree))

    def reuse_prefix(self, tokens: list[int], *, leave_one: bool = True) -> int:
        """Keep the longest cached prefix of `tokens` (KV reuse across chat turns); returns its length.

        leave_one: keep at most len(tokens) - 1, so decoding the rest yields next-token logits."""
        n = 0
        limit = min(len(self.cached), len(tokens) - (1 if leave_one else 0))
        while n < limit and self.cached[n] == tokens[n]:
            n += 1
        self.rollback(n)
        return n

    def close(self) -> None:
        if self._tree is not None and self.context.handle:  # the context must not read a freed flag
            native.lib.ouro_set_abort_flag(self._ctx, native.ffi.NULL)
        if self._tree is not None and self._tree != native.ffi.NULL:
            native.lib.ouro_tree_free(self._tree)
        self._tree = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def prefill(self, tokens: list[int], pos0: int = 0) -> int:
        """Decode tokens into sequence 0 at positions pos0..; returns the target's next token.
        PrefillInterrupted (the cache as before) when interrupt_prefill() came from another thread."""
        self.discard()
        rc_out = native.ffi.new("int32_t *")
        with self._abort_lock:
            self._prefilling = True
        try:
            code = native.lib.ouro_decode_chain(self._ctx, tokens, len(tokens), pos0, 0, self._next, rc_out)
        finally:
            with self._abort_lock:
                self._prefilling, interrupted, self._abort[0] = False, self._abort[0] != 0, 0
        if code == native.OURO_ERR_DECODE and rc_out[0] == 2 and interrupted:
            native.check(native.lib.ouro_rollback(self._ctx, pos0))  # drop the part that was decoded
            raise PrefillInterrupted(f"the prompt's decoding was interrupted after less than {len(tokens)} tokens")
        native.check(code, f"llama_decode returned {rc_out[0]}" if code == native.OURO_ERR_DECODE else "")
        self.cached[pos0:] = tokens
        return int(self._next[0])

    def interrupt_prefill(self) -> None:
        """From any thread: end a prompt decode in progress (at llama.cpp's next graph node); nothing
        happens when none is."""
        with self._abort_lock:
            if self._prefilling:
                self._abort[0] = 1

    def decode(self, root: int, pos: int, tree: TokenTree) -> np.ndarray:
        """Run the tree through the target; returns the argmax after the root and every node."""
        n = len(tree)
        if len(tree.parents) != n:
            raise native.NativeError(native.OURO_ERR_ARGUMENT, f"the tree has {n} tokens but {len(tree.parents)} parents")
        code = native.lib.ouro_tree_decode(self._tree, root, pos, list(tree.tokens), n, list(tree.parents), n)
        if code == native.OURO_ERR_DECODE:
            native.check(code, f"llama_decode returned {native.lib.ouro_tree_last_decode_rc(self._tree)}")
        native.check(code)
        self._decoded = (root, tree)
        buf = native.ffi.buffer(native.lib.ouro_tree_argmax(self._tree), 4 * (n + 1))
        return np.frombuffer(buf, dtype=np.int32).copy()

    def logits(self, entry: int) -> np.ndarray:
        """Logits of one batch entry (0 = root) as a view into llama.cpp's buffer (no copy)."""
        ptr = native.lib.ouro_tree_logits(self._tree, entry)
        if ptr == native.ffi.NULL:
            raise native.NativeError(native.OURO_ERR_STATE, f"no logits for entry {entry}")
        return np.frombuffer(native.ffi.buffer(ptr, 4 * self.context.model.n_vocab), dtype=np.float32)

    def logits_last(self) -> np.ndarray:
        """Logits after the last prefill (a view into llama.cpp's buffer)."""
        ptr = native.lib.ouro_logits_last(self._ctx)
        if ptr == native.ffi.NULL:
            raise native.NativeError(native.OURO_ERR_NO_LOGITS, "no logits after the last prefill")
        return np.frombuffer(native.ffi.buffer(ptr, 4 * self.context.model.n_vocab), dtype=np.float32)

    def accept_greedy(self) -> tuple[list[int], int]:
        native.check(native.lib.ouro_tree_accept_greedy(self._tree, self._path, self._n_path, self._next))
        return [self._path[i] for i in range(self._n_path[0])], int(self._next[0])

    def commit(self, last_node: int) -> None:
        """Keep the root and the path to last_node (-1: the root alone) in the KV cache."""
        native.check(native.lib.ouro_tree_commit(self._tree, last_node))
        root, tree = self._decoded
        self.cached.append(root)
        self.cached.extend(tree.tokens[i] for i in (tree.path_to(last_node) if last_node >= 0 else ()))

    def verify(self, root: int, pos: int, tree: TokenTree, sampler: Sampler | None = None,
               history: list[int] | None = None) -> Outcome:
        """One cycle: greedy in C when the sampler is plain greedy, else lossless sampling."""
        if sampler is None or sampler.params.plain_greedy:
            return self.verify_greedy(root, pos, tree)
        return self.verify_sampled(root, pos, tree, sampler, history or [root])

    def verify_greedy(self, root: int, pos: int, tree: TokenTree) -> Outcome:
        """Decode, accept the longest path that matches the target's argmaxes, commit it."""
        argmax = self.decode(root, pos, tree)
        with self._discard_on_error():
            path, next_token = self.accept_greedy()
            return self._commit(tree, argmax, path, next_token)

    def verify_sampled(self, root: int, pos: int, tree: TokenTree, sampler: Sampler,
                       history: list[int]) -> Outcome:
        """Decode, then walk the tree with acceptance.accept_sampled; history ends with the root.

        Only the nodes the walk visits are scored: each logits row is read in place and copied
        once, into the distribution its sampling parameters and path history define."""
        argmax = self.decode(root, pos, tree)

        def target_probs(node: int) -> np.ndarray:
            path = [tree.tokens[i] for i in tree.path_to(node)] if node >= 0 else []
            return sampler.probabilities(self.logits(node + 1), [*history, *path])

        with self._discard_on_error():
            path, next_token = accept_sampled(tree, target_probs, sampler, len(history), tree.draft_probs)
            return self._commit(tree, argmax, path, next_token)

    @contextmanager
    def _discard_on_error(self):
        """Between a decode and its commit: any exception (KeyboardInterrupt too) drops the tree."""
        try:
            yield
        except BaseException:
            self.discard()
            raise

    def _commit(self, tree: TokenTree, argmax: np.ndarray, path: list[int], next_token: int) -> Outcome:
        tokens = tuple(tree.tokens[i] for i in path) + (next_token,)
        rows = [0, *(i + 1 for i in path)]  # a token's distribution is its parent's row
        logprobs = ()
        if self.record_logprobs:  # read before the commit, which ends the rows' life
            logprobs = tuple(log_probability(self.logits(row), token) for row, token in zip(rows, tokens))
        if self.expected is not None and self.departure is None:
            self._note_departure(rows, tokens)
        self.commit(path[-1] if path else -1)
        return Outcome(
            tree=tree,
            accepted=tuple(path),
            tokens=tokens,
            sources=tuple(tree.sources[i] for i in path) + ("target",),
            argmax=argmax,
            logprobs=logprobs,
        )

    def _note_departure(self, rows: list[int], tokens: tuple[int, ...]) -> None:
        first = len(self.cached) + 1  # the root sits at len(cached); its row decides the next position
        for k, (row, token) in enumerate(zip(rows, tokens)):
            position = first + k
            if position < len(self.expected) and self.expected[position] != token:
                self.departure = (position, self.logits(row).copy())
                return


def log_probability(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token]: the target's own log-probability of a token (before sampling's
    temperature and filters), what speculation leaves unchanged."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max()
    return float(x[token] - top - np.log(np.exp(x - top).sum()))
