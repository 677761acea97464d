"""Wires a target (and optionally a draft) model, their contexts, the verifier and a drafter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .backend import DEFAULT_THREADS, ChatMessage, Context, Model
from .catalog import resolve_model
from .config import METHODS
from .drafters import NoDraft
from .drafters.ouroboros import OuroborosParams
from .pool import PhrasePool, default_pool_path
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
    max_draft: int = 8  # longest draft-model chain (sd, pld)
    ngram: int = 5  # N: pool phrases hold N-1 tokens
    pool_capacity: int = 8  # phrases kept per key token (LRU)
    ouroboros: OuroborosParams = OuroborosParams()
    # Draft-free mode on the target. Defaults measured on 2 CPU cores (13 Spec-Bench prompts): the
    # context's own continuation gave 1.24x ar; adding one pool phrase where the context has none
    # gave 1.10x, because a guess keyed by one token is rarely right and every batch token costs.
    target_window: int = 0  # W: Jacobi window columns on the target
    target_guesses: int = 0  # pool phrases keyed by the root, where the context has no continuation


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
        self.options = options
        self.method = method
        self.target = Model(resolve_model(target), gpu_layers=options.gpu_layers)
        n_ctx = min(options.n_ctx, self.target.n_ctx_train) if self.target.n_ctx_train > 0 else options.n_ctx
        self.context = Context(
            self.target,
            n_ctx=n_ctx,
            n_batch=options.n_batch,
            n_seq_max=options.max_tree_paths,
            threads=options.threads,
            flash_attn=options.flash_attn,
            kv_type=options.kv_type,
        )
        self.verifier = TreeVerifier(
            self.context, max_nodes=options.max_tree_nodes, max_paths=options.max_tree_paths
        )
        self.draft = None
        if draft is not None:
            from .vocab import check_compatible

            self.draft = Model(resolve_model(draft), gpu_layers=options.draft_gpu_layers)
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
            self._drafters[method] = self._make_drafter(base)
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
                                    max_nodes=options.ouroboros.max_target_nodes)
        if self.draft is None:
            raise OuroborosError(f"--method {method} needs a draft model (--draft NAME|PATH)")
        if method == "sd":
            from .drafters.draft_model import DraftModelDrafter

            return DraftModelDrafter(self.draft, n_ctx=n_ctx, options=options)
        from .drafters.ouroboros import OuroborosDrafter

        return OuroborosDrafter(self.draft, self._new_pool(), n_ctx=n_ctx, threads=options.threads,
                                params=options.ouroboros, flash_attn=options.flash_attn, kv_type=options.kv_type)

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

    def pool_path(self) -> Path:
        """Where this model pair's phrase pool is kept between runs (warm start)."""
        name = self.target.path.stem + (f"__{self.draft.path.stem}" if self.draft else "")
        return default_pool_path(f"{name}__n{self.pool.phrase_length + 1}")

    def load_pool(self, path: Path | None = None) -> None:
        """Replace the pool by a saved one; a missing, corrupt or foreign file gives a fresh pool."""
        loaded = PhrasePool.load(path or self.pool_path(), self.pool.phrase_length, self.pool.capacity)
        self.pool.clear()
        for key in loaded.keys():
            for phrase in loaded.phrases(key):
                self.pool.insert(key, phrase)

    def save_pool(self, path: Path | None = None) -> Path:
        target = path or self.pool_path()
        self.pool.save(target)
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
