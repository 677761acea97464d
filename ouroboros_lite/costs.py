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


def measure_curve(verifier, prefix: list[int], sizes=BATCH_SIZES, repeats: int = 5) -> dict[int, float]:
    """Median seconds of one chain forward of k tokens after `prefix`, for each k."""
    from .tree import TokenTree

    curve = {}
    context = verifier.context
    sizes = [k for k in sizes if k - 1 <= verifier.max_nodes]
    for k in sizes:
        times = []
        for _ in range(repeats):
            context.clear()
            root = verifier.prefill(prefix)
            chain = TokenTree(tuple([root] * (k - 1)), tuple(range(-1, k - 2)), ("draft",) * (k - 1))
            start = time.perf_counter()
            verifier.decode(root, len(prefix), chain)
            times.append(time.perf_counter() - start)
            verifier.commit(-1)
        curve[k] = sorted(times)[len(times) // 2]
    return curve
