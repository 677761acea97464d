"""bench (table, JSON, PNG, projection) and tune, end to end on the small test models."""

from __future__ import annotations

import json
import subprocess
import sys

from ouroboros_lite.bench import divergence
from ouroboros_lite.costs import CostProfile
from ouroboros_lite.tune import choose_params


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ouroboros_lite", *args], capture_output=True, text=True, timeout=900)


def test_bench_writes_table_json_png_and_projection(tmp_path, target_path, draft_path):
    profile = tmp_path / "h100.json"
    profile.write_text(json.dumps({"source": "typed in for the test",
                                   "target": {"1": 0.0012, "8": 0.0014, "16": 0.0016},
                                   "draft": {"1": 0.0012, "8": 0.0013}}))
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = run_cli("bench", "--target", str(target_path), "--draft", str(draft_path), "-t", "2",
                   "--methods", "ar,sd,pld,ouroboros-cold,ouroboros", "--limit", "2", "-n", "24",
                   "--temperatures", "0,1.0",
                   "--json", str(out_json), "--png", str(out_png), "--project", str(profile))
    assert done.returncode == 0, done.stderr
    assert "PROJECTION (not measured)" in done.stdout and "typed in for the test" in done.stdout
    data = json.loads(out_json.read_text())
    methods = [row["method"] for row in data["all"]]
    assert methods == ["ar", "sd", "pld", "ouroboros-cold", "ouroboros"]
    assert all(row["mismatches"] == [] or isinstance(row["mismatches"], list) for row in data["all"])
    assert set(data["categories"]) == {"writing", "roleplay"}
    assert set(data["by_temperature"]) == {"0", "1"}
    sampled = {row["method"]: row for row in data["by_temperature"]["1"]}
    assert sampled["pld"]["mismatches"] == []  # fixed drafts sample exactly what ar samples with the seed
    assert "temperature 1 (exact = same text as ar, same seed)" in done.stdout
    assert data["projection"]["tps"]["ar"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_rule_widens_on_flat_curves_and_shrinks_on_steep_ones():
    flat = CostProfile("gpu-like", target={1: 1.0, 8: 1.1, 16: 1.2, 32: 1.5}, draft={1: 1.0, 8: 1.05, 16: 1.1, 32: 1.3})
    steep = CostProfile("cpu-like", target={1: 1.0, 4: 1.8, 8: 3.5, 16: 6.0}, draft={1: 1.0, 4: 2.0, 8: 4.0, 16: 7.5})
    wide, narrow = choose_params(flat, ngram=5), choose_params(steep, ngram=5)
    assert wide.max_target_nodes == 31 and wide.draft_guesses == 4 and wide.window >= 2
    assert narrow.max_target_nodes == 3 and narrow.draft_guesses == 0 and narrow.window == 0


def test_tie_check_tells_a_near_tie_from_a_real_difference(pair):
    """bench and the tests flag a text that left ar's at a measured near-tie as "ties", any other as "NO"."""
    import numpy as np

    from ouroboros_lite.ties import check_tie

    from support import generate_ids

    prompt = pair.tokenize_prompt("Name three colours.", chat=True)
    reference = generate_ids(pair, prompt, 12, "ar")
    i = 5
    pair.verifier.reset()
    pair.verifier.prefill(prompt + reference[:i], 0)
    logits = pair.verifier.logits_last().copy()
    ranked = np.argsort(-logits)
    assert ranked[0] == reference[i]
    runner_up, far = [*reference[:i], int(ranked[1])], [*reference[:i], int(ranked[-1])]
    top_gap = float(logits[ranked[0]]) - float(logits[ranked[1]])
    close = check_tie(pair.verifier, prompt, reference, runner_up)
    assert close.index == i and close.tokens == (reference[i], int(ranked[1]))
    assert len(close.gaps) >= 4  # one token at a time, and the prefix's last 1, 2, 8 (, 32) tokens batched
    # a gap is a difference of two scores, each within the noise of its value in another computation
    assert max(abs(g - top_gap) for g in close.gaps) <= 2 * close.noise + 1e-6 < 0.05  # F32: kernels agree closely
    assert close.is_tie == (top_gap <= close.noise)
    distant = check_tie(pair.verifier, prompt, reference, far)
    assert not distant.is_tie and not distant.ranked_both_ways and "NO tie" in distant.describe()
    assert check_tie(pair.verifier, prompt, reference, reference[:i]) is None  # stopped early: no token differs
    # what bench prints beside a NO, as its evidence
    assert divergence(distant, far, reference) == distant.describe()
    assert divergence(None, reference[:i], reference) == f"the same tokens, but {i} of them where ar emitted 12"


def test_a_runs_own_logits_row_witnesses_where_its_text_left_the_reference(pair):
    """The verifier keeps the row it chose the first token off `expected` from; check_tie weighs it."""
    import numpy as np

    from ouroboros_lite.bench import run_witnessed
    from ouroboros_lite.sampling import GREEDY
    from ouroboros_lite.ties import check_tie, logits_after

    from support import generate_ids

    prompt = pair.tokenize_prompt("Name three colours.", chat=True)
    reference = generate_ids(pair, prompt, 12, "ar")
    i = 5
    row = logits_after(pair.verifier, prompt, reference[:i], None)
    runner_up = int(np.argsort(-row)[1])
    expected = prompt + reference[:i] + [runner_up] + reference[i + 1:]  # a text that leaves ar's at i
    for method in ("ar", "pld"):
        (generated, _), witness = run_witnessed(pair, prompt, method, 12, GREEDY, expected)
        assert generated == reference and witness[0] == i, method
        assert int(np.argmax(witness[1])) == reference[i] and np.abs(witness[1] - row).max() < 1e-3, method
        assert pair.verifier.expected is None and pair.verifier.departure is None  # nothing left behind
    (_, _), none = run_witnessed(pair, prompt, "pld", 12, GREEDY, prompt + reference)
    assert none is None  # the text never left `expected`
    # a run that emitted the runner-up from this row disobeyed the target: its witness proves nothing
    candidate = reference[:i] + [runner_up]
    check = check_tie(pair.verifier, prompt, reference, candidate, witness=witness)
    assert check.witness_gap > 0 and not check.witnessed
    # nor does a row where the runner-up leads only because the row is not the target's (a bad cache)
    forged = row.copy()
    forged[runner_up] = row.max() + 1.0
    check = check_tie(pair.verifier, prompt, reference, candidate, witness=(i, forged))
    assert check.witness_gap < 0 and check.witness_drift > 2 * check.row_noise and not check.witnessed
    assert check_tie(pair.verifier, prompt, reference, candidate, witness=(i + 1, forged)).witness_gap is None


def test_a_witness_row_that_ranks_the_candidate_first_within_the_kernels_drift_proves_a_tie():
    from ouroboros_lite.ties import TieCheck

    # the Qwen target on this EPYC, sd on Spec-Bench prompt 1 (the recomputations all ranked 429 first)
    seen = dict(index=5, tokens=(429, 1424), gaps=(0.1268, 0.2204, 0.1664, 0.1152, 0.1678), noise=0.1201,
                row_noise=0.4778)
    assert not TieCheck(**seen).is_tie
    assert TieCheck(**seen, witness_gap=-0.0652, witness_drift=0.4494).is_tie
    assert not TieCheck(**seen, witness_gap=0.0652, witness_drift=0.4494).is_tie  # the row ranked 429 first
    assert not TieCheck(**seen, witness_gap=-0.0652, witness_drift=2.5).is_tie  # the row is not the target's
    assert "the run's own row: gap -0.0652" in TieCheck(**seen, witness_gap=-0.0652, witness_drift=0.4494).describe()


def test_a_token_a_sampling_filter_drops_in_some_computations_is_reported_not_counted_as_noise():
    import numpy as np
    import pytest

    from ouroboros_lite.ties import FILTERED, TieCheck, score_noise

    # Spec-Bench prompt 9 at T 1.0 on this EPYC: ar's token led by 1.5-1.7 in four computations, the k=32
    # batching's filter dropped it
    rows = np.array([[10.2, 8.6], [10.1, 8.5], [10.3, 8.6], [10.2, 8.6], [FILTERED, 8.7]])
    noise, filtered = score_noise(rows)
    assert noise == pytest.approx(0.2) and filtered == 1  # the spread of the scores that were computed
    gaps = tuple(rows[:, 0] - rows[:, 1])
    check = TieCheck(index=3, tokens=(11, 12), gaps=gaps, noise=noise, filtered=filtered)
    assert check.is_tie  # ranked both ways: the filter's boundary is where the kernels disagree
    text = check.describe()
    assert "1e+30" not in text and "reference filtered" in text and "in 1 of 5 computations" in text
    # dropped the same way everywhere it is no tie, and its sentinel does not pass for noise
    always = np.array([[FILTERED, 8.6]] * 3)
    noise, filtered = score_noise(always)
    check = TieCheck(index=3, tokens=(11, 12), gaps=tuple(always[:, 0] - always[:, 1]), noise=noise, filtered=filtered)
    assert filtered == 3 and noise < 1e-9 and not check.is_tie
