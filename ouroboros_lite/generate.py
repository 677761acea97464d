"""The decode loop: propose a tree, verify it on the target in one forward, emit what was accepted.

Layers (after mlx-lm): `generate_tokens` yields raw (token, source) pairs; `stream_generate` adds
text, timing and statistics as GenerationResponse values; the CLI and benchmarks print from those.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .backend import Model, TextStream
from .drafters.base import Drafter
from .errors import OuroborosError, PromptTooLongError
from .sampling import GREEDY, Sampler, SamplingParams, resolve_seed
from .stats import SpecStats, tokens_per_second
from .verify import Outcome, TreeVerifier, log_probability


class Cycle(NamedTuple):
    """One propose-verify-observe cycle of the decode loop and where its time went."""

    outcome: Outcome
    draft_seconds: float
    verify_seconds: float


@dataclass(frozen=True)
class GenerationResponse:
    """One emitted token. Counters are cumulative, so the last response is the summary.

    text: the new text this token completes (may be "" inside a multibyte character).
    source: "target", "draft" or "pool": who proposed the token (the target verified all of them).
    finish_reason: None while generating, then "stop" (end-of-generation token) or "length".
    """

    text: str
    token: int
    source: str
    prompt_tokens: int  # the whole prompt; prompt_tokens - cached_tokens of it were decoded
    cached_tokens: int
    generation_tokens: int
    prompt_seconds: float
    generation_seconds: float
    spec: SpecStats
    finish_reason: str | None = None
    seed: int | None = None  # the sampling seed this generation drew with (None: greedy)
    logprob: float | None = None  # the target's log-probability of `token` (with logprobs=True)

    @property
    def prompt_tps(self) -> float:
        """Prompt tokens decoded (not the ones reused from the cache) per second."""
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return tokens_per_second(self.generation_tokens, self.generation_seconds)


def generate_tokens(
    verifier: TreeVerifier,
    drafter: Drafter,
    prompt: list[int],
    *,
    max_tokens: int,
    sampler: Sampler,
    draft_sampler: Sampler | None = None,
    n_cached: int = 0,
) -> Iterator[tuple[int, str, Cycle | None]]:
    """Yield (token, source, cycle) until max_tokens or the context is full (cycle None: the prefill's token).

    prompt[:n_cached] is already in the target's KV cache. The caller stops at end-of-generation
    tokens. Invariant: every cycle emits at least one token (the target's own), so the loop advances.
    """
    n_ctx = verifier.context.n_ctx
    # 0 prefill the rest of the prompt in one batch, as plain decoding does; it yields the first token
    root = verifier.prefill(prompt[n_cached:], n_cached)
    if not sampler.params.plain_greedy:
        root = sampler.draw(sampler.probabilities(verifier.logits_last(), prompt), position=len(prompt))
    drafter.begin(prompt, draft_sampler, min(max_tokens - 1, n_ctx - len(prompt)))  # what its cycles may emit
    history, pos = [*prompt, root], len(prompt)  # root: last accepted token, not yet in the KV cache
    yield root, "target", None
    emitted = 1
    while emitted < max_tokens and pos < n_ctx:
        t0 = time.perf_counter()
        # 1 propose a tree within the batch budget and the room left in the context
        budget = min(verifier.max_nodes, n_ctx - pos - 1, max_tokens - emitted - 1)
        tree = drafter.propose(history, max(0, budget))
        t1 = time.perf_counter()
        # 2 one target forward over root + tree, acceptance (greedy in C, or lossless sampling), KV commit
        outcome = verifier.verify(root, pos, tree, sampler, history)
        t2 = time.perf_counter()
        # 3 let the drafter roll back and learn
        drafter.observe(outcome)
        cycle = Cycle(outcome, draft_seconds=(t1 - t0) + (time.perf_counter() - t2), verify_seconds=t2 - t1)
        # 4 emit the accepted tokens and the target's own next token
        for token, source in zip(outcome.tokens, outcome.sources):
            history.append(token)
            emitted += 1
            yield token, source, cycle
            if emitted >= max_tokens:
                return
        root, pos = outcome.next_token, pos + len(outcome.tokens)


def stream_generate(
    model: Model,
    verifier: TreeVerifier,
    drafter: Drafter,
    prompt: list[int],
    *,
    max_tokens: int,
    sampling: SamplingParams = GREEDY,
    reuse_cache: bool = False,
    logprobs: bool = False,
) -> Iterator[GenerationResponse]:
    """Timing: prompt_seconds runs to the first token; generation_seconds from it to the last.

    reuse_cache: keep the longest prefix of the prompt the KV cache already holds (chat turns)
    instead of starting from an empty cache. logprobs: each response carries the target's
    log-probability of its token."""
    if max_tokens <= 0:
        raise OuroborosError(f"the number of tokens to generate must be positive (got {max_tokens})")
    if not prompt:
        raise OuroborosError("the prompt is empty")
    n_ctx = verifier.context.n_ctx
    if len(prompt) >= n_ctx:
        raise PromptTooLongError(
            f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}; shorten it or raise --ctx-size"
        )
    if reuse_cache:
        n_cached = verifier.reuse_prefix(prompt)
    else:
        verifier.reset()
        n_cached = 0
    seed = resolve_seed(sampling.seed)
    shown_seed = seed if sampling.temperature > 0 else None
    sampler, draft_sampler = Sampler(sampling, seed, stream=0), Sampler(sampling, seed, stream=1)
    stream = TextStream(model)
    stats = SpecStats()
    t_start = time.perf_counter()
    t_first = None
    generated = 0
    last_cycle = None
    tokens = generate_tokens(verifier, drafter, prompt, max_tokens=max_tokens, sampler=sampler,
                             draft_sampler=draft_sampler, n_cached=n_cached)
    verifier.record_logprobs = logprobs
    in_cycle = 0  # the token's index among its cycle's tokens
    for token, source, cycle in tokens:
        now = time.perf_counter()
        t_first = t_first or now
        if cycle is not None and cycle is not last_cycle:  # once per verification cycle
            stats, last_cycle = stats.after(cycle.outcome, drafter, cycle.draft_seconds, cycle.verify_seconds), cycle
            in_cycle = 0
        logprob = None
        if logprobs:
            logprob = log_probability(verifier.logits_last(), token) if cycle is None else \
                cycle.outcome.logprobs[in_cycle]
            in_cycle += 1
        generated += 1
        is_end = model.is_end_of_generation(token)
        finish = "stop" if is_end else ("length" if generated >= max_tokens else None)
        text = "" if is_end else stream.push(token)
        if finish is not None:
            text += stream.flush()
        yield GenerationResponse(
            text=text,
            token=token,
            source=source,
            prompt_tokens=len(prompt),
            cached_tokens=n_cached,
            generation_tokens=generated,
            prompt_seconds=t_first - t_start,
            generation_seconds=now - t_first,
            spec=stats,
            finish_reason=finish,
            seed=shown_seed,
            logprob=logprob,
        )
        if finish is not None:
            tokens.close()
            return
    # the context filled up before max_tokens
    now = time.perf_counter()
    yield GenerationResponse(
        text=stream.flush(),
        token=-1,
        source="target",
        prompt_tokens=len(prompt),
        cached_tokens=n_cached,
        generation_tokens=generated,
        prompt_seconds=(t_first or now) - t_start,
        generation_seconds=now - (t_first or now),
        spec=stats,
        finish_reason="length",
        seed=shown_seed,
    )
