"""`tune`'s honesty: interleaved repeats, medians, and curves refused when a busy machine made them
(model-free, with a fake verifier), and `tune --reset` / `config` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ouroboros_lite.costs import CurvePoint, curve_problem, measure_points


def points(**medians_and_spreads):
    # k=(median ms, spread): three timings median*(1-s/2), median, median*(1+s/2)
    out = {}
    for name, (median, spread) in medians_and_spreads.items():
        k = int(name[1:])
        out[k] = CurvePoint((median * (1 - spread / 2), median, median * (1 + spread / 2)))
    return out


def test_a_quiet_monotone_curve_is_accepted():
    assert curve_problem(points(k1=(10, 0.05), k2=(13, 0.05), k4=(18, 0.04), k8=(27, 0.06))) is None


def test_a_dip_within_the_noise_is_accepted():
    assert curve_problem(points(k1=(10, 0.05), k8=(27, 0.1), k12=(26, 0.1))) is None


def test_a_kernel_switchs_small_dip_is_accepted():
    # measured on a 2-core EPYC, every repeat: 16 tokens cheaper than 12
    assert curve_problem(points(k1=(31.8, 0.03), k12=(259.1, 0.02), k16=(246.7, 0.02))) is None
    assert curve_problem(points(k1=(31.8, 0.03), k12=(259.1, 0.02), k16=(200.0, 0.02)))  # 23 % is not one


def test_a_point_cheaper_than_a_smaller_batch_beyond_noise_is_refused():
    # the case: one draft token measured at 1764 ms, four at 227 ms
    problem = curve_problem(points(k1=(1764, 0.3), k4=(227, 0.05)))
    assert problem and "not monotone" in problem


def test_a_noisy_point_is_refused():
    problem = curve_problem(points(k1=(10, 0.05), k2=(13, 0.9)))
    assert problem and "2 tokens (90%)" in problem


class FakeVerifier:
    """Records the batch size of each timed forward."""

    max_nodes = 40

    def __init__(self):
        self.sizes = []
        self.context = self

    def clear(self):
        pass

    def prefill(self, prefix):
        return 1

    def decode(self, root, position, chain):
        self.sizes.append(len(chain.tokens) + 1)

    def commit(self, n):
        pass


def test_sizes_are_interleaved_and_each_repeated():
    fake = FakeVerifier()
    measured = measure_points(fake, [1, 2, 3], sizes=(1, 4, 8), repeats=3)
    assert fake.sizes == [1, 4, 8] * 3
    assert sorted(measured) == [1, 4, 8] and all(len(p.times) == 3 for p in measured.values())


def run_cli(*args, cache):
    env = {**os.environ, "OUROBOROS_LITE_CACHE": str(cache), "OUROBOROS_LITE_CONFIG": str(cache / "none.toml")}
    return subprocess.run([sys.executable, "-m", "ouroboros_lite", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def tuned(tmp_path, draft_path):
    """A tuning file for the Q4_1 model (as a path, no draft) in a temporary cache."""
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    (tuning / f"{draft_path.stem}.json").write_text(json.dumps({"params": {"window": 3, "draft_guesses": 1}}))
    (tuning / f"{draft_path.stem}.profile.json").write_text("{}")
    return tmp_path


def test_config_says_where_tuned_values_come_from_and_reset_removes_them(tuned, draft_path):
    shown = run_cli("config", "--model", str(draft_path), cache=tuned)
    assert shown.returncode == 0, shown.stderr
    assert "tuned hyper-parameters:" in shown.stdout and "window=3" in shown.stdout and "--reset" in shown.stdout
    reset = run_cli("tune", "--reset", "--model", str(draft_path), cache=tuned)
    assert reset.returncode == 0, reset.stderr
    assert "removed" in reset.stdout and not list((tuned / "tuning").iterdir())
    shown = run_cli("config", "--model", str(draft_path), cache=tuned)
    assert "none for" in shown.stdout and "built-in defaults" in shown.stdout
    again = run_cli("tune", "--reset", "--model", str(draft_path), cache=tuned)
    assert again.returncode == 0 and "nothing to reset" in again.stdout
