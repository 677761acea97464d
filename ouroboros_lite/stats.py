"""Speculation statistics: one type owns every count and rate a report prints (tok/s, acceptance,
tokens per forward, the accepted-length histogram, where the time went). Imports nothing heavy,
so the CLI and bench can use it before any model code loads."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .drafters.base import Drafter
    from .verify import Outcome


def tokens_per_second(tokens: int, seconds: float, generations: int = 1) -> float:
    """The one definition of generation speed: the tokens after each generation's first (which comes
    with the prompt's forward) over the seconds from the first token to the last."""
    n = tokens - generations
    return n / seconds if n > 0 and seconds > 0 else 0.0


@dataclass(frozen=True)
class SpecStats:
    """Cumulative speculation counters of one generation, or of several added up (`a + b`): the one
    owner of the numbers the stats line, the Engine, the server and bench report."""

    target_forwards: int = 0
    target_batch_tokens: int = 0  # tree nodes + roots sent to the target (cost model input)
    draft_forwards: int = 0
    draft_batch_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_by_source: dict[str, int] = field(default_factory=dict)
    accepted_lengths: tuple[int, ...] = ()  # [i]: cycles that accepted i drafted tokens (llama.cpp's histogram)
    draft_seconds: float = 0.0  # in the drafter: proposing the tree and keeping its state in step
    verify_seconds: float = 0.0  # in the target's tree forward, acceptance and KV commit

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tree nodes (0 when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def emitted_tokens(self) -> int:
        """Tokens the cycles emitted: the accepted drafts and the target's own token per forward."""
        return self.accepted_tokens + self.target_forwards

    @property
    def tokens_per_forward(self) -> float:
        """Emitted tokens per target forward: what predicts the speed-up."""
        return self.emitted_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def accepted_from_pool(self) -> int:
        """Accepted tokens that pool phrases or a Jacobi window proposed (free of draft forwards)."""
        return self.accepted_by_source.get("pool", 0) + self.accepted_by_source.get("window", 0)

    def other_seconds(self, generation_seconds: float) -> float:
        """What the generation spent outside drafting and verifying: Python, sampling, detokenizing."""
        return max(0.0, generation_seconds - self.draft_seconds - self.verify_seconds)

    def after(self, outcome: Outcome, drafter: Drafter, draft_seconds: float = 0.0,
              verify_seconds: float = 0.0) -> SpecStats:
        by_source = dict(self.accepted_by_source)
        for source in outcome.sources[:-1]:
            by_source[source] = by_source.get(source, 0) + 1
        n = len(outcome.accepted)
        lengths = list(self.accepted_lengths) + [0] * max(0, n + 1 - len(self.accepted_lengths))
        lengths[n] += 1
        return SpecStats(
            target_forwards=self.target_forwards + 1,
            target_batch_tokens=self.target_batch_tokens + len(outcome.tree) + 1,
            draft_forwards=drafter.draft_forwards,
            draft_batch_tokens=drafter.draft_tokens,
            drafted_tokens=self.drafted_tokens + len(outcome.tree),
            accepted_tokens=self.accepted_tokens + n,
            accepted_by_source=by_source,
            accepted_lengths=tuple(lengths),
            draft_seconds=self.draft_seconds + draft_seconds,
            verify_seconds=self.verify_seconds + verify_seconds,
        )

    def __add__(self, other: SpecStats) -> SpecStats:
        sources = dict(self.accepted_by_source)
        for source, n in other.accepted_by_source.items():
            sources[source] = sources.get(source, 0) + n
        a, b = self.accepted_lengths, other.accepted_lengths
        lengths = tuple((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(max(len(a), len(b))))
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name not in ("accepted_by_source", "accepted_lengths")}
        return SpecStats(**summed, accepted_by_source=sources, accepted_lengths=lengths)
