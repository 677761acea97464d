"""The embeddable API: `Engine` for desktop apps and the chat REPL.

    from ouroboros_lite import Engine

    with Engine(target="smollm2-135m-instruct-q4_1", temperature=0.7) as engine:
        for piece in engine.chat([{"role": "user", "content": "Hi!"}], max_tokens=64, stream=True):
            print(piece, end="", flush=True)
        print(engine.last.tokens_per_second)

One Engine holds one model pair and one KV cache, so it serves one generation at a time: a second
concurrent call gets EngineBusyError instead of corrupting the cache. `engine.cancel()` (from any
thread) stops the running generation before its next decode step. Chat turns reuse the KV cache:
a turn decodes only what its prompt adds to the previous one.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

from .backend import ChatMessage
from .catalog import resolve_pair
from .config import SETTINGS
from .errors import OuroborosError, PrefillInterrupted, PromptTooLongError
from .generate import GenerationResponse
from .stats import SpecStats, tokens_per_second
from .runtime import Models, Runtime, RuntimeOptions, Session
from .sampling import SamplingParams
from .stops import StopStrings

SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}
OPTION_FIELDS = {f.name for f in fields(RuntimeOptions)}


class EngineBusyError(OuroborosError):
    """A second generation was started on an Engine that is still generating."""


class EngineClosedError(OuroborosError):
    """The Engine was closed (its models are freed); make a new one."""


class Piece(NamedTuple):
    """A streamed piece of text and who proposed its token: "target", "draft" or "pool"."""

    text: str
    source: str


class Stream:
    """The iterator a streaming call returns; it holds the Engine's lock until exhausted or closed."""

    def __init__(self, pieces: Iterator, release):
        self._pieces, self._release, self._started = pieces, release, False
        self._step = threading.RLock()  # held for one step: Engine.close from another thread waits for it

    def __iter__(self) -> Stream:
        return self

    def __next__(self):
        with self._step:
            self._started = True
            return next(self._pieces)

    def close(self) -> None:
        with self._step:
            if not self._started:  # the generator never ran, so its `finally` will not release
                self._started = True
                self._release()
            self._pieces.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Completion:
    """What one generation produced, with its statistics."""

    text: str
    prompt_tokens: int  # the whole prompt
    cached_tokens: int  # of which reused from the KV cache (earlier turns)
    generation_tokens: int
    prompt_seconds: float
    generation_seconds: float
    finish_reason: str  # "stop", "length" or "cancelled"
    spec: SpecStats
    sources: tuple[str, ...] = ()  # per generated token: "target", "draft" or "pool"
    seed: int | None = None  # the sampling seed drawn with (None: greedy); pass it as seed= to repeat the text
    tokens: tuple[int, ...] = ()  # the generated token ids
    logprobs: tuple[float, ...] = ()  # per generated token, the target's log-probability (logprobs=True)

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.generation_tokens, self.generation_seconds)

    @property
    def acceptance_rate(self) -> float:
        return self.spec.acceptance_rate

    @property
    def tokens_per_forward(self) -> float:
        return self.spec.tokens_per_forward


class Engine:
    """A target (and optional draft) model ready to generate; a context manager that frees them.

    options: any RuntimeOptions field (n_ctx, threads, gpu_layers, draft_gpu_layers, ...) and any
    SamplingParams field (temperature, top_k, top_p, min_p, repeat_penalty, seed) as defaults for
    every call; method: ar | sd | pld | lookahead | ouroboros (default: ouroboros, which runs its
    draft-free mode without a draft); warm_pool: load the pair's phrase pool from the cache now and
    save it on close. models: generate on weights already loaded (runtime.Models, shared by several
    Engines, each with its own KV cache); closing the Engine then leaves them loaded."""

    _active = None  # a weak reference to the Stream of the running generation
    _closing = False

    def __init__(self, target: str | Path | None = None, draft: str | Path | None = None, *,
                 method: str | None = None, warm_pool: bool = False, models: Models | None = None, **options):
        unknown = set(options) - SAMPLING_FIELDS - OPTION_FIELDS
        if unknown:
            raise OuroborosError(f"unknown Engine option(s): {', '.join(sorted(unknown))}")
        self.sampling = SamplingParams(**{k: v for k, v in options.items() if k in SAMPLING_FIELDS})
        self.method = method or SETTINGS["method"].default
        if models is not None:  # a session on weights shared with other Engines (a server's slots)
            given = sorted(set(options) & OPTION_FIELDS) + [name for name, v in (("target", target), ("draft", draft)) if v]
            if given:
                raise OuroborosError(f"{', '.join(given)}: set on the shared Models, not on an Engine that uses them")
            self.draft_note = None
            self.runtime = Session(models, method=self.method)
        else:
            target, draft, self.draft_note = resolve_pair(target, draft)  # a cached catalog pair is used
            given = {k: v for k, v in options.items() if k in OPTION_FIELDS}
            if "ouroboros" not in given:  # what `ouroboros-lite tune` chose for this pair, as the CLI uses
                from .tune import load_tuned

                tuned = load_tuned(target, draft) if target.is_file() else None
                given.update({"ouroboros": tuned} if tuned else {})
            runtime_options = RuntimeOptions(**given)
            self.runtime = Runtime(target, draft, method=self.method, options=runtime_options)
        self.warm_pool = warm_pool and self.runtime.has_pool()
        if self.warm_pool:
            self.runtime.load_pool()
        self.last: Completion | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    # --- generation ---------------------------------------------------------------------------------
    def generate(self, prompt: str, *, max_tokens: int = 256, stream: bool = False, sources: bool = False,
                 stop: str | Sequence[str] | None = None, reuse_cache: bool = False,
                 on_token: Callable[[str], None] | None = None, logprobs: bool = False, **sampling):
        """Continue raw text (no chat template).

        stream=False: a Completion. stream=True: a Stream of text pieces (Piece(text, source)
        values with sources=True); `engine.last` holds the Completion so far. stop: a string or
        strings; the text ends before the first of them (finish_reason "stop"), and a stream holds
        back a piece that could be the beginning of one until it is known not to be. reuse_cache:
        keep the longest prefix of the prompt the KV cache holds, as chat turns do (the text is the
        same; a server's completions of prompts with a common beginning decode only the rest).
        on_token: called with each text piece as it is generated (stream=False). logprobs: the
        Completion's `logprobs` holds the target's log-probability of each generated token (its
        own distribution, before temperature and filters; speculation does not change it)."""
        if not isinstance(prompt, str):
            raise OuroborosError(f"prompt must be a string, got {type(prompt).__name__}")
        return self._start(lambda: self._open().tokenize_prompt(prompt), max_tokens, stream, sources, sampling,
                           reuse_cache=reuse_cache, stop=stop, on_token=on_token, logprobs=logprobs)

    def chat(self, messages: Sequence[dict | ChatMessage], *, max_tokens: int = 1024, stream: bool = False,
             sources: bool = False, stop: str | Sequence[str] | None = None,
             on_token: Callable[[str], None] | None = None, logprobs: bool = False, **sampling):
        """Answer the last message of a conversation, with the model's chat template; as generate.

        messages: {"role": ..., "content": ...} dicts or ChatMessage values. The KV cache keeps
        the previous turn, so only the new part of the conversation is decoded."""
        return self._start(lambda: self.chat_tokens(messages), max_tokens, stream, sources, sampling,
                           reuse_cache=True, stop=stop, on_token=on_token, logprobs=logprobs)

    async def agenerate(self, prompt: str, **kwargs) -> AsyncIterator:
        """generate(stream=True) for asyncio: each step runs in a worker thread, so the event loop
        keeps serving while tokens are computed. Breaking out of the loop (or cancelling the task)
        ends the generation; `engine.last` holds its Completion."""
        stream = await asyncio.to_thread(self.generate, prompt, stream=True, **kwargs)
        async for piece in _without_blocking(stream):
            yield piece

    async def achat(self, messages: Sequence[dict | ChatMessage], **kwargs) -> AsyncIterator:
        """chat(stream=True) for asyncio, as agenerate."""
        stream = await asyncio.to_thread(self.chat, messages, stream=True, **kwargs)
        async for piece in _without_blocking(stream):
            yield piece

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """The target's tokens for `text` (with its BOS token where the model adds one)."""
        if not isinstance(text, str):
            raise OuroborosError(f"text must be a string, got {type(text).__name__}")
        return self._open().target.tokenize(text, add_special=add_special, parse_special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        model = self._open().target
        bad = [t for t in tokens if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < model.n_vocab]
        if bad:
            raise OuroborosError(f"token ids must be whole numbers in 0..{model.n_vocab - 1}, got {bad[0]!r}")
        return model.detokenize(list(tokens))

    def chat_tokens(self, messages: Sequence[dict | ChatMessage]) -> list[int]:
        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence) or not messages:
            raise OuroborosError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        return self._open().tokenize_chat([_message(m) for m in messages])

    @property
    def n_ctx(self) -> int:
        return self._open().context.n_ctx

    def _open(self) -> Runtime:
        runtime = getattr(self, "runtime", None)
        if runtime is None:
            raise EngineClosedError("this Engine is closed; create a new Engine to generate again")
        return runtime

    def cancel(self) -> None:
        """Stop the running generation (thread-safe); it ends with finish_reason "cancelled", also
        from inside a long prompt's decoding."""
        self._cancel.set()
        verifier = getattr(getattr(self, "runtime", None), "verifier", None)
        if verifier is not None:
            verifier.interrupt_prefill()

    def reset(self) -> None:
        """Forget the cached conversation (the phrase pool stays)."""
        self._acquire("this Engine is generating; cancel it first")
        try:
            self._open().verifier.reset()
        finally:
            self._lock.release()

    def _acquire(self, busy_message: str) -> None:
        if not self._lock.acquire(blocking=False):
            raise EngineBusyError(busy_message)

    def _start(self, tokenize, max_tokens: int, stream: bool, sources: bool, sampling: dict, *,
               reuse_cache: bool, stop=None, on_token=None, logprobs: bool = False):
        """tokenize() runs under the lock, so a concurrent close cannot free the model under it."""
        unknown = set(sampling) - SAMPLING_FIELDS
        if unknown:
            raise OuroborosError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise OuroborosError(f"max_tokens must be a positive whole number, got {max_tokens!r}")
        if not isinstance(logprobs, bool):
            raise OuroborosError(f"logprobs must be True or False, got {logprobs!r}")
        params = replace(self.sampling, **sampling)
        stops = StopStrings(stop)
        self._acquire("this Engine is already generating; wait for it, cancel it, or use a second Engine")
        try:
            if self._closing:
                raise EngineClosedError("this Engine is closed; create a new Engine to generate again")
            tokens = tokenize()
        except BaseException:
            self._lock.release()
            raise
        self._cancel.clear()
        pieces = Stream(self._run(tokens, max_tokens, params, reuse_cache, sources, stops, logprobs),
                        self._lock.release)
        self._active = weakref.ref(pieces)
        if stream:
            return pieces
        try:
            for piece in pieces:
                if on_token is not None:
                    on_token(piece)
        finally:
            pieces.close()  # a callback that raises ends the generation and frees the Engine
        return self.last

    def _run(self, tokens, max_tokens, params, reuse_cache, with_sources, stops: StopStrings,
             logprobs: bool) -> Iterator:
        """Holds the lock from the call until the stream ends or is closed."""
        responses = None
        try:
            responses = self.runtime.generate(tokens, max_tokens=max_tokens, sampling=params, reuse_cache=reuse_cache,
                                              logprobs=logprobs)
            text, sources, ids, scores = [], [], [], []
            for response in responses:
                if response.token >= 0:
                    sources.append(response.source)
                    ids.append(response.token)
                    if response.logprob is not None:
                        scores.append(response.logprob)
                piece, stopped = stops.push(response.text, last=response.finish_reason is not None)
                text.append(piece)
                self.last = _completion(response, "".join(text), sources, ids, scores)
                if stopped:
                    self.last = replace(self.last, finish_reason="stop")
                if piece:
                    try:
                        yield Piece(piece, response.source) if with_sources else piece
                    except GeneratorExit:  # closed before the end (Stream.close, Engine.close)
                        if response.finish_reason is None and not stopped:
                            self.last = replace(self.last, finish_reason="cancelled")
                        raise
                if stopped:
                    break
                if self._cancel.is_set() and response.finish_reason is None:
                    self.last = replace(self.last, finish_reason="cancelled")
                    break
        except PrefillInterrupted:  # cancel() while the prompt decoded: nothing was generated
            self.last = Completion("", len(tokens), 0, 0, 0.0, 0.0, "cancelled", SpecStats())
        finally:
            if responses is not None:
                responses.close()
            self._lock.release()

    # --- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the models. A generation running in another thread is cancelled and waited for
        (it ends before its next decode step); later calls raise EngineClosedError."""
        if getattr(self, "runtime", None) is None or self._closing:
            return
        self._closing = True
        self._cancel.set()
        stream = self._active() if self._active else None
        if stream is not None:
            stream.close()  # waits for the step in progress, then releases the lock
        with self._lock:
            runtime, self.runtime = self.runtime, None
            if self.warm_pool:
                runtime.save_pool()  # warns instead of raising: the pool is only a cache
            runtime.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _message(message) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    if isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str):
        return ChatMessage(message["role"], message["content"])
    raise OuroborosError(f"each message must be a dict with 'role' and 'content' strings (or a ChatMessage); "
                         f"got {message!r:.80}")


async def _without_blocking(stream: Stream) -> AsyncIterator:
    done = object()
    try:
        while (piece := await asyncio.to_thread(next, stream, done)) is not done:
            yield piece
    finally:
        await asyncio.to_thread(stream.close)


def _completion(response: GenerationResponse, text: str, sources: list[str], tokens: list[int],
                logprobs: list[float]) -> Completion:
    return Completion(
        text=text,
        prompt_tokens=response.prompt_tokens,
        cached_tokens=response.cached_tokens,
        generation_tokens=response.generation_tokens,
        prompt_seconds=response.prompt_seconds,
        generation_seconds=response.generation_seconds,
        finish_reason=response.finish_reason or "length",
        spec=response.spec,
        sources=tuple(sources),
        seed=response.seed,
        tokens=tuple(tokens),
        logprobs=tuple(logprobs),
    )


def trim_to_context(engine: Engine, messages: list[ChatMessage], reserve: int) -> int:
    """Drop the oldest user/assistant turns (never the system prompt) until the prompt plus
    `reserve` tokens fit the context. Returns how many messages were dropped; raises
    PromptTooLongError if even the last message alone does not fit."""
    dropped = 0
    while len(engine.chat_tokens(messages)) + reserve > engine.n_ctx:
        first = 1 if messages and messages[0].role == "system" else 0
        if len(messages) - first <= 1:
            raise PromptTooLongError(
                f"the message is {len(engine.chat_tokens(messages))} tokens; with {reserve} for the reply it "
                f"does not fit the context of {engine.n_ctx} (raise --ctx-size)")
        del messages[first]
        dropped += 1
        if messages[first:] and messages[first].role == "assistant":
            del messages[first]
            dropped += 1
    return dropped

