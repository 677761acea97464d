"""Wires a target (and optionally a draft) model, their contexts, the verifier and a drafter."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from . import gguf_meta
from .backend import DEFAULT_THREADS, ChatMessage, Context, Model, available_cores, deferred_interrupt
from .catalog import resolve_model
from . import drafters, local_models, rpc
from .drafters.adaptive import restore_estimates, saved_estimates
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
    repack: str = "auto"  # CPU weight repacking: "auto", "on", "off", "avx2", "amx" (backend.cpu_weight_setting)
    tiled_matmul: bool = True  # False: ggml's tiled K-quant matmul off for the process (backend.apply_tiled_matmul)
    # llama.cpp's --rpc: "host:port,..." of ggml-rpc-server processes holding the target's layers;
    # the draft stays local unless draft_rpc names servers for it (local is what makes speculation pay)
    rpc: str | None = None
    draft_rpc: str | None = None
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
        rpc.parse_servers(self.rpc), rpc.parse_servers(self.draft_rpc)  # one-line errors for bad lists
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


class Models:
    """A target (and optional draft) model's weights, loaded once and shared by the sessions that
    generate with them, with the pair's phrase pools (what makes every session of the pair warm)."""

    def __init__(self, target: str | Path | None = None, draft: str | Path | None = None, *,
                 options: RuntimeOptions = RuntimeOptions()):
        # Ctrl-C while llama.cpp loads reaches Python inside its log callback, where ctypes prints
        # and drops the KeyboardInterrupt; deferred_interrupt raises it once loading returns.
        self.target = self.draft = None
        self._pools: dict[str, PhrasePool] = {}
        self._gates: dict[str, dict] = {}
        try:
            with deferred_interrupt():
                self._load(target, draft, _capped_threads(options))
        except BaseException:
            self.close()
            raise

    def _load(self, target, draft, options: RuntimeOptions) -> None:
        self.options = options
        self.target = Model(resolve_model(target), gpu_layers=options.gpu_layers, repack=options.repack,
                            rpc_servers=rpc.parse_servers(options.rpc), tiled_matmul=options.tiled_matmul)
        if draft is None:
            local_models.remember(self.target)
            return
        from .errors import VocabularyMismatchError
        from .vocab import check_compatible

        self.draft = Model(resolve_model(draft), gpu_layers=options.draft_gpu_layers, repack=options.repack,
                           rpc_servers=rpc.parse_servers(options.draft_rpc), tiled_matmul=options.tiled_matmul)
        try:
            check_compatible(self.target, self.draft)
        except VocabularyMismatchError:
            local_models.remember(self.target, self.draft, local_models.INCOMPATIBLE)
            raise
        local_models.remember(self.target, self.draft, local_models.COMPATIBLE)

    def pool(self, key: str) -> PhrasePool:
        """The phrase pool of one method (key: its name), shared by every session of this pair.
        Methods compared side by side get separate pools: they must not learn from each other's runs."""
        if key not in self._pools:
            self._pools[key] = PhrasePool(phrase_length=self.options.ngram - 1, capacity=self.options.pool_capacity)
        return self._pools[key]

    def gate(self, key: str) -> dict:
        """The speed gate's estimates of one method (drafters/adaptive.py), shared by the pair's
        sessions: how fast drafting is belongs to the pair and the machine, so a server's new slot
        starts from what the others measured instead of probing again."""
        return self._gates.setdefault(key, {})

    def model_id(self) -> bytes:
        return pair_id(self.target.path, self.draft.path if self.draft else None)

    def pool_path(self) -> Path:
        """Where this model pair's phrase pool is kept between runs (warm start)."""
        return pool_file(self.target.path, self.draft.path if self.draft else None, self.options.ngram)

    def tokenize_prompt(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        if chat:
            system_turn = [ChatMessage("system", system)] if system else []
            return self.tokenize_chat([*system_turn, ChatMessage("user", prompt)])
        return self.target.tokenize(prompt, add_special=True, parse_special=True)

    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]:
        """A conversation in the target's chat template, ready for its answer."""
        text = self.target.apply_chat_template(messages)
        return self.target.tokenize(text, add_special=True, parse_special=True)

    def close(self) -> None:
        for model in (self.draft, self.target):
            if model is not None:
                model.close()
        self.target = self.draft = None

    def __enter__(self) -> Models:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_gate_file(path: Path) -> dict:
    """A saved gate file's entries; {} where there is none or it is not one (never blocks on a FIFO,
    never reads a huge file)."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return {}
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


class Session:
    """One conversation on shared Models: its own target context and KV cache, tree verifier and
    drafters (with their draft contexts), reusing the longest cached prompt prefix turn to turn.
    Closing it frees only what it holds; the Models stay loaded."""

    def __init__(self, models: Models, *, method: str = "ar"):
        self.models = models
        self.options = models.options
        self.method = method
        self._drafters: dict = {}
        self.verifier = self.context = None
        try:
            with deferred_interrupt():
                self._open_context(self.options)
            self.drafter = self.drafter_for(method)
        except BaseException:
            self.close()
            raise

    def _open_context(self, options: RuntimeOptions) -> None:
        train = self.target.n_ctx_train
        n_ctx = max(min(options.n_ctx, train) if train > 0 else options.n_ctx, MIN_CTX)
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
            warnings.warn(note, ContextSizeWarning, stacklevel=4)
        self.verifier = TreeVerifier(
            self.context, max_nodes=options.max_tree_nodes, max_paths=options.max_tree_paths
        )

    @property
    def target(self) -> Model:
        return self.models.target

    @property
    def draft(self) -> Model | None:
        return self.models.draft

    def drafter_for(self, method: str):
        """The drafter of a method, created once and reused (bench runs several side by side).

        "NAME-cold" is a separate drafter of method NAME whose pool the bench clears per prompt."""
        if method not in self._drafters:
            entry = drafters.method(method)
            if entry.needs_draft and self.draft is None:
                raise OuroborosError(f"--method {entry.name} needs a draft model (--draft NAME|PATH)")
            self._drafters[method] = entry.build(self, self.models.pool(method), self.models.gate(method))
        return self._drafters[method]

    @property
    def pool(self) -> PhrasePool:
        """The phrase pool of the session's method (shared with the pair's other sessions)."""
        return self.pool_of(self.method)

    def has_pool(self, method: str | None = None) -> bool:
        """Whether the method learns phrases (worth loading and saving a pool for)."""
        return self.drafter_for(method or self.method).pool is not None

    def pool_of(self, method: str) -> PhrasePool:
        return self.models.pool(method)

    def model_id(self) -> bytes:
        return self.models.model_id()

    def pool_path(self) -> Path:
        return self.models.pool_path()

    def load_pool(self, path: Path | None = None) -> None:
        """Replace the pool by a saved one; a missing, corrupt or foreign file (another model, tokens
        outside the vocabulary) gives a warning and a fresh pool. The speed gate's estimates saved
        beside it are restored too (see _gate_file)."""
        path = path or self.pool_path()
        loaded = PhrasePool.load(path, self.pool.phrase_length, self.pool.capacity,
                                 n_vocab=self.target.n_vocab, model_id=self.model_id())
        if path.exists() and not path.is_file():
            self._not_a_pool = path  # a FIFO or a directory: warned about once, never replaced
        self.pool.clear()
        for key in loaded.keys():
            for phrase in loaded.phrases(key):
                self.pool.insert(key, phrase)
        self._load_gate(path)

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
        self._save_gate(target)
        return target

    # The speed gate's estimates (drafters/adaptive.py) travel with the pool: a new process of the same
    # pair, method and settings starts from what the last one measured instead of exploring again.
    def _gate_file(self, pool_path: Path) -> tuple[Path, str]:
        o = self.options
        key = (f"{self.method} threads={o.threads} gpu={o.gpu_layers},{o.draft_gpu_layers} repack={o.repack} "
               f"rpc={bool(o.rpc)},{bool(o.draft_rpc)}" + ("" if o.tiled_matmul else " tiled=off"))
        return pool_path.with_name(pool_path.name + ".gate.json"), key

    def _load_gate(self, pool_path: Path) -> None:
        arms = self.models.gate(self.method)
        if arms:  # the method has a speed gate
            path, key = self._gate_file(pool_path)
            restore_estimates(arms, _read_gate_file(path).get(key))

    def _save_gate(self, pool_path: Path) -> None:
        estimates = saved_estimates(self.models.gate(self.method))
        if not estimates:
            return
        path, key = self._gate_file(pool_path)
        if path.exists() and not path.is_file():
            return  # a FIFO or a directory there is not ours to replace
        saved = {**_read_gate_file(path), key: estimates}
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(saved, indent=1))
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)  # only a cache: the next run measures again

    def tokenize_prompt(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        return self.models.tokenize_prompt(prompt, chat=chat, system=system)

    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]:
        return self.models.tokenize_chat(messages)

    def generate(
        self,
        prompt_tokens: list[int],
        *,
        max_tokens: int,
        method: str | None = None,
        sampling: SamplingParams = GREEDY,
        reuse_cache: bool = False,
        logprobs: bool = False,
    ) -> Iterator[GenerationResponse]:
        """Stream a generation. reuse_cache keeps the prompt prefix the KV cache already holds;
        logprobs: each response carries the target's log-probability of its token."""
        drafter = self.drafter_for(method) if method else self.drafter
        return stream_generate(self.target, self.verifier, drafter, prompt_tokens, max_tokens=max_tokens,
                               sampling=sampling, reuse_cache=reuse_cache, logprobs=logprobs)

    def close(self) -> None:
        for drafter in self._drafters.values():
            drafter.close()
        self._drafters = {}
        for thing in (self.verifier, self.context):
            if thing is not None:
                thing.close()
        self.verifier = self.context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Runtime(Session):
    """A Session that owns its Models: loads the pair, and frees it on close (one conversation, as
    the CLI, bench and tests use it). Use as a context manager."""

    def __init__(self, target: str | Path | None = None, draft: str | Path | None = None, *,
                 method: str = "ar", options: RuntimeOptions = RuntimeOptions()):
        models = Models(target, draft, options=options)
        try:
            super().__init__(models, method=method)
        except BaseException:
            models.close()
            raise

    def close(self) -> None:
        super().close()
        self.models.close()
