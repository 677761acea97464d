"""Sampling parameters and the target distribution they define, with llama.cpp's meanings.

llama.cpp's default chain is penalties -> top-k -> top-p -> min-p -> temperature -> draw; this
module applies the same steps in the same order, so `--temperature 0.8 --top-k 40` means here
what it means in llama-cli. Temperature 0 (or below) is greedy: the first largest logit after
the repetition penalty, exactly as the C module's argmax picks it.

The distribution is a pure function of (logits, history): penalties look at the last
`repeat_last_n` tokens of the history they are given, so a tree node is scored with its own path
and a rejected branch leaves no trace (sampler state advances only on accepted tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from .errors import OuroborosError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (what `generate` does unless told otherwise)
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # tokens the penalties look back over (0: off, -1: the whole history)
    # OpenAI's (and llama.cpp's) additive penalties over the same window: a token seen c times
    # loses c x frequency_penalty + presence_penalty from its logit; 0.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None or -1: a fresh random seed per generation

    def __post_init__(self):
        problems = []
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
                problems.append(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
        for name in ("top_k", "repeat_last_n", "seed"):
            value = getattr(self, name)
            if not (value is None and name == "seed") and (not isinstance(value, Integral) or isinstance(value, bool)):
                problems.append(f"{name.replace('_', '-')} must be a whole number, got {value!r}")
        if problems:
            raise OuroborosError("; ".join(problems))
        if self.seed is not None and self.seed >= 2**64:
            problems.append(f"seed must be below 2**64 (-1 = random), got {self.seed}")
        if self.temperature > 100:  # absurd
            problems.append(f"temperature must be a number in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            problems.append(f"min-p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            problems.append(f"repeat-penalty must be positive, got {self.repeat_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                problems.append(f"{name.replace('_', '-')} must be in [-2, 2], got {getattr(self, name)}")
        if self.repeat_last_n < -1:
            problems.append(f"repeat-last-n must be -1, 0 or positive, got {self.repeat_last_n}")
        if problems:
            raise OuroborosError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy on the raw logits: the C module's argmax decides alone."""
        return self.greedy and not self.penalised

    @property
    def penalised(self) -> bool:
        """Whether the logits depend on the tokens before (a penalty is on)."""
        return self.repeat_last_n != 0 and (self.repeat_penalty != 1.0 or self.presence_penalty != 0.0
                                            or self.frequency_penalty != 0.0)


GREEDY = SamplingParams()
CHAT_DEFAULTS = SamplingParams(temperature=0.8)  # llama-cli's default temperature


class Sampler:
    """The target distribution of one generation and the random numbers it draws with.

    Two kinds of draws:
    - keyed: `draw(probs, position)` is the Gumbel-max draw argmax_v(log p(v) + g(v)), where the
      noise g(v) is a fixed function of (seed, position, v). The token at position t is then a
      function of its distribution and that noise alone, whoever proposed candidates for it, so
      the same seed gives the same text as plain `ar` sampling (acceptance.py relies on it). A
      draft that draws from its own q with the same noise picks the same token as the target
      whenever q is close to p (Gumbel coupling), which is what makes its drafts acceptable.
    - sequential: `draw(probs)` and `uniform()` read the stream `stream` of the seed; a draft
      model sampling for chain speculative sampling uses a stream of its own (stream 1), so its
      draws are independent of the verifier's acceptance tests (stream 0)."""

    def __init__(self, params: SamplingParams, seed: int, stream: int = 0):
        self.params = params
        self.seed = seed
        self.rng = np.random.default_rng([seed, stream])

    def probabilities(self, logits: np.ndarray, history: list[int] | tuple[int, ...]) -> np.ndarray:
        """The distribution to sample the next token from, dense float64 over the vocabulary."""
        params = self.params
        x = np.array(logits, dtype=np.float64)  # the one copy of the row llama.cpp owns
        if params.penalised and history:  # llama.cpp's penalties sampler, in its order
            recent = history if params.repeat_last_n < 0 else history[-params.repeat_last_n:]
            ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
            inside = (ids >= 0) & (ids < len(x))
            ids, counts = ids[inside], counts[inside]
            v = x[ids]
            v = np.where(v <= 0, v * params.repeat_penalty, v / params.repeat_penalty)
            x[ids] = v - counts * params.frequency_penalty - params.presence_penalty
        probs = np.zeros_like(x)
        if params.greedy:
            probs[int(np.argmax(x))] = 1.0
            return probs
        keep = _filter(x, params)
        z = x[keep] / params.temperature
        z = np.exp(z - z.max())
        probs[keep] = z / z.sum()
        return probs

    def draw(self, probs: np.ndarray, position: int | None = None) -> int:
        """One token from a distribution: keyed Gumbel-max at `position`, else the inverse CDF
        at one uniform of the sequential stream."""
        if position is not None:
            ids = np.flatnonzero(probs)
            return int(ids[np.argmax(np.log(probs[ids]) + keyed_gumbel(self.seed, position, ids))])
        cdf = np.cumsum(probs)
        token = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        token = min(token, len(probs) - 1)
        while probs[token] <= 0:  # rounding at the top of the CDF: step back to a real token
            token -= 1
        return token

    def uniform(self) -> float:
        return float(self.rng.random())


_GOLDEN, _MIX1, _MIX2, _SPREAD = (np.uint64(c) for c in (
    0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93))


def keyed_gumbel(seed: int, position: int, ids: np.ndarray) -> np.ndarray:
    """Standard Gumbel noise for token ids at one position, a pure function of (seed, position, id).

    Counter-based (SplitMix64's finaliser over a mix of the three), so only the ids a
    distribution keeps are hashed: 40 with llama.cpp's default top-k, not the whole vocabulary."""
    with np.errstate(over="ignore"):
        z = (np.asarray(ids, dtype=np.uint64) * _SPREAD) ^ (np.uint64(seed) * _MIX1 + np.uint64(position) * _MIX2)
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 9007199254740992.0  # 53 bits, in (0, 1)
    return -np.log(-np.log(u))


def _filter(x: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Indices that survive top-k, top-p and min-p (each computed on untempered logits, as llama.cpp)."""
    n = len(x)
    if 0 < params.top_k < n:
        ids = np.argpartition(-x, params.top_k - 1)[: params.top_k]
    else:
        ids = np.arange(n)
    ids = ids[np.argsort(-x[ids], kind="stable")]  # descending; ties keep the lower id first
    if params.top_p < 1.0 and len(ids) > 1:
        p = np.exp(x[ids] - x[ids[0]])
        cum = np.cumsum(p / p.sum())
        ids = ids[: int(np.searchsorted(cum, params.top_p, side="left")) + 1]
    if params.min_p > 0.0 and len(ids) > 1:
        ids = ids[x[ids] >= x[ids[0]] + np.log(params.min_p)]
    return ids


def resolve_seed(seed: int | None) -> int:
    """A concrete seed: the given one, or a random one for None / -1 (llama.cpp's 'random')."""
    if seed is None or seed < 0:
        return int(np.random.SeedSequence().entropy % (2**32))
    return int(seed)
