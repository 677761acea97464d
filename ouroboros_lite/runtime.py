"""Wires a target (and optionally a draft) model, their contexts, the verifier and a drafter."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from . import gguf_meta
from .backend import DEFAULT_THREADS, ChatMessage, Context, Model, available_cores, deferred_interrupt
from .catalog import resolve_model
from .config import METHODS
from .drafters import NoDraft
from .drafters.ouroboros import OuroborosParams
from .pool import PhrasePool, PoolFileWarning, default_pool_path
from .errors import OuroborosError
from .generate import GenerationResponse, stream_generate
from .sampling import GREEDY, SamplingParams
from .verify import TreeVerifier



@dataclass(frozen=True)
class RuntimeOptions:
    n_ctx: int = 4096
    n_batch: int = 512
    threads: int = DEFAULT_THREADS
    gpu_layers: int = 0
    draft_gpu_layers: int = 0
    # Nodes verified in one target forward. Kept under 63: on CPU a batch of 64+ tokens switches
    # llama.cpp to kernels that sum in another order, and tree logits stop being bit-identical
    # to their chains (measured; see tests/test_tree_verifier.py).
    max_tree_nodes: int = 48
    max_tree_paths: int = 16  # root-to-leaf paths (sequence ids) per tree
    flash_attn: bool | None = None  # None: llama.cpp decides (on for CPU)
    kv_type: str = "f16"  # "f32" halves KV rounding noise for exactness checks, doubles its memory
    repack: str = "auto"  # CPU weight repacking: "auto" (off where ggml's AMX path is active), "on", "off"
    max_draft: int = 8  # longest draft-model chain (sd, pld)
    ngram: int = 5  # N: pool phrases hold N-1 tokens
    pool_capacity: int = 8  # phrases kept per key token (LRU)
    ouroboros: OuroborosParams = OuroborosParams()
    # Draft-free mode on the target. Defaults measured on 2 CPU cores (13 Spec-Bench prompts): the
    # context's own continuation gave 1.24x ar; adding one pool phrase where the context has none
    # gave 1.10x, because a guess keyed by one token is rarely right and every batch token costs.
    target_window: int = 0  # W: Jacobi window columns on the target
    target_guesses: int = 0  # pool phrases keyed by the root, where the context has no continuation
    # ouroboros measures per cycle whether drafting pays here and takes plain steps when it does not
    # (drafters/adaptive.py); False: always propose (for ablations)
    adaptive: bool = True

    def __post_init__(self):
        for name, least in _AT_LEAST.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise OuroborosError(f"{name} must be a whole number of at least {least}, got {value!r}")
        for name in ("gpu_layers", "draft_gpu_layers"):
            if not isinstance(getattr(self, name), int):
                raise OuroborosError(f"{name} must be a whole number, got {getattr(self, name)!r}")
        if self.max_tree_nodes >= self.n_batch:
            raise OuroborosError(f"max_tree_nodes must be below n_batch ({self.n_batch}), got {self.max_tree_nodes}")


_AT_LEAST = {"n_ctx": 1, "n_batch": 1, "threads": 1, "max_tree_nodes": 1, "max_tree_paths": 1, "max_draft": 1,
             "ngram": 2, "pool_capacity": 1, "target_window": 0, "target_guesses": 0}
# Smaller contexts are raised to this: a tree batch (up to 48 nodes) and the 16 sequences of its
# paths must fit in one llama.cpp batch, which llama.cpp clamps to the context size.
MIN_CTX = 64


class ContextSizeWarning(UserWarning):
    """The context differs from the size asked for (raised to the minimum, capped, or rounded up)."""


def _capped_threads(options: RuntimeOptions) -> RuntimeOptions:
    cores = available_cores()
    if options.threads <= cores:
        return options
    # more threads than cores only wait on each other: 1000 threads took 72 s for two tokens
    warnings.warn(f"{options.threads} threads asked for, but {cores} CPU cores are available; using {cores}",
                  stacklevel=4)
    return replace(options, threads=cores)


def _context_note(asked: int, used: int, got: int) -> str | None:
    """asked: the context size asked for; used: after the minimum and the model's cap; got: llama.cpp's."""
    if got == asked:
        return None
    why = []
    if used > asked:
        why.append(f"raised to the minimum of {MIN_CTX}")
    if used < asked:
        why.append(f"capped at the model's training context of {used}")
    if got != used:
        why.append("rounded up by llama.cpp to a multiple of 256")
    return f"context size {got} tokens, not {asked} ({', then '.join(why)})"


def pair_id(target: Path, draft: Path | None) -> bytes:
    """The identity of a model pair (sha256 over the files' fingerprints): what a phrase pool is for."""
    paths = [target, *([draft] if draft else [])]
    return hashlib.sha256(" ".join(gguf_meta.fingerprint(p) for p in paths).encode()).digest()


def pool_file(target: Path, draft: Path | None, ngram: int) -> Path:
    """The cached pool of a model pair, named by the files' stems and the pair's identity, so that
    two different files called model.gguf do not share one."""
    name = target.stem + (f"__{draft.stem}" if draft else "")
    return default_pool_path(f"{name}__{pair_id(target, draft).hex()[:12]}__n{ngram}")


class Runtime:
    """A loaded model pair ready to generate. Use as a context manager to free the models."""

    def __init__(
        self,
        target: str | Path | None = None,
        draft: str | Path | None = None,
        *,
        method: str = "ar",
        options: RuntimeOptions = RuntimeOptions(),
    ):
        # Ctrl-C while llama.cpp loads reaches Python inside its log callback, where ctypes prints
        # and drops the KeyboardInterrupt; deferred_interrupt raises it once loading returns.
        try:
            with deferred_interrupt():
                self._load(target, draft, method, _capped_threads(options))
        except BaseException:
            self.close()
            raise

    def _load(self, target, draft, method: str, options: RuntimeOptions) -> None:
        self.options = options
        self.method = method
        self.target = Model(resolve_model(target), gpu_layers=options.gpu_layers, repack=options.repack)
        n_ctx = min(options.n_ctx, self.target.n_ctx_train) if self.target.n_ctx_train > 0 else options.n_ctx
        n_ctx = max(n_ctx, MIN_CTX)
        self.context = Context(
            self.target,
            n_ctx=n_ctx,
            n_batch=options.n_batch,
            n_seq_max=options.max_tree_paths,
            threads=options.threads,
            flash_attn=options.flash_attn,
            kv_type=options.kv_type,
        )
        note = _context_note(options.n_ctx, n_ctx, self.context.n_ctx)
        if note:
            warnings.warn(note, ContextSizeWarning, stacklevel=3)
        self.verifier = TreeVerifier(
            self.context, max_nodes=options.max_tree_nodes, max_paths=options.max_tree_paths
        )
        self.draft = None
        if draft is not None:
            from .vocab import check_compatible

            self.draft = Model(resolve_model(draft), gpu_layers=options.draft_gpu_layers, repack=options.repack)
            check_compatible(self.target, self.draft)
        self._drafters: dict = {}
        self.drafter = self.drafter_for(method)

    def drafter_for(self, method: str):
        """The drafter of a method, created once and reused (bench runs several side by side).

        "NAME-cold" is a separate drafter of method NAME whose pool the bench clears per prompt."""
        base = method.removesuffix("-cold")
        if base not in METHODS:
            raise OuroborosError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method not in self._drafters:
            drafter = self._make_drafter(base)
            if base == "ouroboros" and self.options.adaptive:
                from .drafters.adaptive import AdaptiveDrafter

                drafter = AdaptiveDrafter(drafter)
            self._drafters[method] = drafter
        return self._drafters[method]

    def _make_drafter(self, method: str):
        options, n_ctx = self.options, self.context.n_ctx
        if method == "ar":
            return NoDraft()
        if method == "pld":
            from .drafters.pld import PromptLookupDrafter

            return PromptLookupDrafter(draft_length=options.max_draft)
        if method == "lookahead" or (method == "ouroboros" and self.draft is None):
            from .drafters.lookahead import LookaheadDrafter

            return LookaheadDrafter(self._new_pool(), window=options.target_window,
                                    guesses=options.target_guesses,
                                    max_nodes=options.ouroboros.max_target_nodes, max_paths=self.verifier.max_paths)
        if self.draft is None:
            raise OuroborosError(f"--method {method} needs a draft model (--draft NAME|PATH)")
        if method == "sd":
            from .drafters.draft_model import DraftModelDrafter

            return DraftModelDrafter(self.draft, n_ctx=n_ctx, options=options)
        from .drafters.ouroboros import OuroborosDrafter

        return OuroborosDrafter(self.draft, self._new_pool(), n_ctx=n_ctx, threads=options.threads,
                                params=options.ouroboros, flash_attn=options.flash_attn, kv_type=options.kv_type,
                                max_paths=self.verifier.max_paths)

    def _new_pool(self) -> PhrasePool:
        # one pool per drafter: methods compared side by side must not learn from each other's runs
        return PhrasePool(phrase_length=self.options.ngram - 1, capacity=self.options.pool_capacity)

    @property
    def pool(self) -> PhrasePool:
        """The phrase pool of the runtime's method (an empty one for methods without a pool)."""
        return self.pool_of(self.method)

    def has_pool(self, method: str | None = None) -> bool:
        """Whether the method learns phrases (worth loading and saving a pool for)."""
        return hasattr(self.drafter_for(method or self.method), "pool")

    def pool_of(self, method: str) -> PhrasePool:
        drafter = self.drafter_for(method)
        if not hasattr(drafter, "pool"):
            drafter.pool = self._new_pool()
        return drafter.pool

    def model_id(self) -> bytes:
        return pair_id(self.target.path, self.draft.path if self.draft else None)

    def pool_path(self) -> Path:
        """Where this model pair's phrase pool is kept between runs (warm start)."""
        return pool_file(self.target.path, self.draft.path if self.draft else None, self.pool.phrase_length + 1)

    def load_pool(self, path: Path | None = None) -> None:
        """Replace the pool by a saved one; a missing, corrupt or foreign file (another model, tokens
        outside the vocabulary) gives a warning and a fresh pool."""
        path = path or self.pool_path()
        loaded = PhrasePool.load(path, self.pool.phrase_length, self.pool.capacity,
                                 n_vocab=self.target.n_vocab, model_id=self.model_id())
        if path.exists() and not path.is_file():
            self._not_a_pool = path  # a FIFO or a directory: warned about once, never replaced
        self.pool.clear()
        for key in loaded.keys():
            for phrase in loaded.phrases(key):
                self.pool.insert(key, phrase)

    def save_pool(self, path: Path | None = None) -> Path | None:
        """Save the pool for the next run; where that fails, warn and return None (it is only a cache)."""
        target = path or self.pool_path()
        if target == getattr(self, "_not_a_pool", None):
            return None
        try:
            self.pool.save(target, model_id=self.model_id())
        except (OSError, ValueError) as exc:
            warnings.warn(f"the phrase pool was not saved to {target}: {getattr(exc, 'strerror', None) or exc}",
                          PoolFileWarning, stacklevel=2)
            return None
        return target

    def tokenize_prompt(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        if chat:
            system_turn = [ChatMessage("system", system)] if system else []
            return self.tokenize_chat([*system_turn, ChatMessage("user", prompt)])
        return self.target.tokenize(prompt, add_special=True, parse_special=True)

    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]:
        """A conversation in the target's chat template, ready for its answer."""
        text = self.target.apply_chat_template(messages)
        return self.target.tokenize(text, add_special=True, parse_special=True)

    def generate(
        self,
        prompt_tokens: list[int],
        *,
        max_tokens: int,
        method: str | None = None,
        sampling: SamplingParams = GREEDY,
        reuse_cache: bool = False,
    ) -> Iterator[GenerationResponse]:
        """Stream a generation. reuse_cache keeps the prompt prefix the KV cache already holds."""
        drafter = self.drafter_for(method) if method else self.drafter
        return stream_generate(self.target, self.verifier, drafter, prompt_tokens, max_tokens=max_tokens,
                               sampling=sampling, reuse_cache=reuse_cache)

    def close(self) -> None:
        for thing in [*getattr(self, "_drafters", {}).values(), getattr(self, "verifier", None)]:
            if hasattr(thing, "close"):
                thing.close()
        for thing in (getattr(self, "context", None), getattr(self, "draft", None), getattr(self, "target", None)):
            if thing is not None:
                thing.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
