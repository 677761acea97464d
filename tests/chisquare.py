"""Pearson's chi-square goodness-of-fit test, computed here (no SciPy in the test environment)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, x/2)."""
    a, z = dof / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:  # series for P(a, z)
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= z / n
            total += term
        return max(0.0, 1.0 - math.exp(log_prefix) * total)
    # Lentz's continued fraction for Q(a, z)
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_prefix) * h


def goodness_of_fit(samples: list[Hashable], expected: Mapping[Hashable, float], min_count: float = 5.0):
    """Chi-square of observed outcomes against exact probabilities.

    Outcomes whose expected count is under min_count are pooled into one "other" bin (with any
    outcome not in `expected`), as the test's approximation requires. Returns (statistic, dof, p)."""
    n = len(samples)
    counts = Counter(samples)
    bins = [k for k, p in expected.items() if p * n >= min_count]
    observed = [counts.get(k, 0) for k in bins]
    wanted = [expected[k] * n for k in bins]
    other_expected = n - sum(wanted)
    other_observed = n - sum(observed)
    if other_expected >= 1e-9 * n:
        observed.append(other_observed)
        wanted.append(other_expected)
    elif other_observed:
        return math.inf, max(1, len(bins) - 1), 0.0
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, wanted))
    dof = len(wanted) - 1
    return stat, dof, chi2_sf(stat, dof)
