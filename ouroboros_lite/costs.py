"""Batch-cost curves: how long one forward of k tokens takes, for the target and the draft.

They decide how wide trees and draft batches should be on this machine (`ouroboros-lite tune`) and
let `bench --project` turn measured acceptance into a projected speed on other hardware. A profile
is JSON: {"source": "...", "target": {"1": seconds, "8": seconds, ...}, "draft": {...}}.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OuroborosError

BATCH_SIZES = (1, 2, 4, 6, 8, 12, 16, 24, 32)


def _interpolate(curve: dict[int, float], k: float) -> float:
    points = sorted(curve.items())
    if k <= points[0][0]:
        return points[0][1]
    for (k0, t0), (k1, t1) in zip(points, points[1:]):
        if k <= k1:
            return t0 + (t1 - t0) * (k - k0) / (k1 - k0)
    (k0, t0), (k1, t1) = points[-2], points[-1]  # beyond the last point: extend the last slope
    return t1 + (t1 - t0) * (k - k1) / (k1 - k0)


@dataclass(frozen=True)
class CostProfile:
    source: str
    target: dict[int, float]
    draft: dict[int, float] = field(default_factory=dict)

    def target_step(self, batch: float) -> float:
        return _interpolate(self.target, batch)

    def draft_step(self, batch: float) -> float:
        if not self.draft:
            raise OuroborosError(f"cost profile {self.source} has no draft curve")
        return _interpolate(self.draft, batch)

    @classmethod
    def load(cls, path: Path) -> CostProfile:
        try:
            raw = json.loads(path.read_text())
            target = {int(k): float(v) for k, v in raw["target"].items()}
            draft = {int(k): float(v) for k, v in raw.get("draft", {}).items()}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise OuroborosError(f"cannot read cost profile {path}: {exc}") from None
        if not target or any(t <= 0 for t in [*target.values(), *draft.values()]):
            raise OuroborosError(f"cost profile {path} needs positive step times for the target")
        return cls(source=raw.get("source", str(path)), target=target, draft=draft)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"source": self.source, "target": self.target, "draft": self.draft}, indent=2))


@dataclass(frozen=True)
class CurvePoint:
    """Repeated timings of one batch size: the median is the cost, the spread its noise."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        ordered = sorted(self.times)
        return ordered[len(ordered) // 2]

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.1 = the runs differ by 10 % of the cost."""
        return (max(self.times) - min(self.times)) / self.median


MAX_SPREAD = 0.5  # a point whose repeats differ by more than half its median was measured on a busy machine
# A forward of more tokens may cost a little less than one of fewer where llama.cpp switches kernels (on a
# 2-core EPYC 16 tokens took 246.7 ms, 12 tokens 259.1 ms, every repeat): a dip up to this share beyond
# the noise is the machine's; a bigger one (4 tokens at 1/8 of one token's time) is a busy moment.
MAX_DIP = 0.15


def curve_problem(points: dict[int, CurvePoint], max_spread: float = MAX_SPREAD) -> str | None:
    """Why a measured curve cannot be trusted, or None. A forward of more tokens never costs less
    than one of fewer beyond the noise of the two points and a kernel switch's dip (MAX_DIP); no point
    may be noisier than max_spread."""
    noisy = [f"{k} tokens ({point.spread:.0%})" for k, point in sorted(points.items()) if point.spread > max_spread]
    if noisy:
        return f"timings vary too much between repeats at {', '.join(noisy)} (more than {max_spread:.0%})"
    ordered = sorted(points.items())
    for (k0, p0), (k1, p1) in zip(ordered, ordered[1:]):
        noise = max(p0.median * p0.spread, p1.median * p1.spread, 0.02 * p0.median)
        if p1.median < (p0.median - noise) * (1 - MAX_DIP):
            return (f"{k1} tokens measured cheaper than {k0} ({p1.median * 1e3:.1f} ms < {p0.median * 1e3:.1f} ms, "
                    f"noise {noise * 1e3:.1f} ms): the curve is not monotone")
    return None


def measure_points(verifier, prefix: list[int], sizes=BATCH_SIZES, repeats: int = 7) -> dict[int, CurvePoint]:
    """Seconds of one chain forward of k tokens after `prefix`, `repeats` times per k, the sizes
    interleaved (round r times every size once), so a burst of load spreads over all of them."""
    from .tree import TokenTree

    context = verifier.context
    sizes = [k for k in sizes if k - 1 <= verifier.max_nodes]
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(repeats):
        for k in sizes:
            context.clear()
            root = verifier.prefill(prefix)
            chain = TokenTree(tuple([root] * (k - 1)), tuple(range(-1, k - 2)), ("draft",) * (k - 1))
            start = time.perf_counter()
            verifier.decode(root, len(prefix), chain)
            times[k].append(time.perf_counter() - start)
            verifier.commit(-1)
    return {k: CurvePoint(tuple(ts)) for k, ts in times.items()}


def measure_curve(verifier, prefix: list[int], sizes=BATCH_SIZES, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one chain forward of k tokens after `prefix`, for each k."""
    return {k: point.median for k, point in measure_points(verifier, prefix, sizes, repeats).items()}
