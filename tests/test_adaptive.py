"""The adaptive gate (drafters/adaptive.py) without models: a fake drafter and a fake clock."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ouroboros_lite.drafters import adaptive
from ouroboros_lite.drafters.adaptive import AdaptiveDrafter
from ouroboros_lite.tree import TokenTree


class FakeDrafter:
    name = "fake"
    runs_draft_model = True
    draft_forwards = draft_tokens = 0

    def __init__(self, copy_available=False, prompt_seconds=0.0):
        self.pool = object()
        self.copy_available = copy_available
        self.observed = 0
        self.prompt_seconds = prompt_seconds  # what the draft's prompt prefill costs
        self.prompt_prefills = 0
        self._prompt_pending = False

    def draft_prompt_seconds(self):
        return self.prompt_seconds if self._prompt_pending else 0.0

    def prefill_draft_prompt(self):
        self.prompt_prefills += self._prompt_pending
        self._prompt_pending = False

    def begin(self, prompt, sampler=None, max_tokens=None):
        self._prompt_pending = True

    def propose(self, history, budget, *, draft_model=True):
        if self.copy_available:
            return TokenTree.chain([7, 8], "pool")
        return TokenTree.chain([1, 2, 3], "draft") if draft_model else TokenTree()

    def observe(self, outcome):
        self.observed += 1

    def close(self):
        pass


def run(drafter, cycles, cost, monkeypatch, max_tokens=None, clock=None):
    """cost(arm) -> (seconds, tokens emitted) of one cycle of that arm; returns the arms chosen.
    max_tokens: what the generation may emit, as generate() tells the drafter (None: no end);
    clock: the fake clock, [seconds], for a drafter that spends time of its own (a fresh one if None)."""
    clock = [0.0] if clock is None else clock
    monkeypatch.setattr(adaptive.time, "perf_counter", lambda: clock[0])
    chosen = []
    drafter.begin([1, 2, 3], max_tokens=max_tokens)
    for _ in range(cycles):
        tree = drafter.propose([1, 2, 3], 8)
        arm = adaptive.arm_of(tree)
        seconds, tokens = cost(arm)
        clock[0] += seconds
        drafter.observe(SimpleNamespace(tokens=(0,) * tokens))
        chosen.append(arm)
    return chosen


def test_a_draft_slower_than_plain_steps_is_mostly_skipped(monkeypatch):
    gate = AdaptiveDrafter(FakeDrafter(), probe_every=16)
    # a draft cycle: 2.6 plain steps of time for 2 tokens (the Qwen pair on 2 cores, low acceptance)
    chosen = run(gate, 400, lambda arm: (2.6, 2) if arm == "draft" else (1.0, 1), monkeypatch)
    late = chosen[50:]
    assert late.count("draft") / len(late) < 0.1  # only the periodic probes
    assert late.count("draft") > 0  # but it keeps probing, to come back when the text turns predictable
    speed = sum((2 if a == "draft" else 1) for a in late) / sum((2.6 if a == "draft" else 1.0) for a in late)
    assert speed >= 0.98  # retries cost about the 2 % overhead budget


def test_an_expensive_loser_is_retried_less_often_than_a_cheap_one(monkeypatch):
    def draft_cycles(draft_cost):
        gate = AdaptiveDrafter(FakeDrafter(), probe_every=16)
        chosen = run(gate, 2000, lambda arm: draft_cost if arm == "draft" else (1.0, 1), monkeypatch)
        return chosen[100:].count("draft")

    cheap, expensive = draft_cycles((2.2, 2)), draft_cycles((6.0, 2))  # loses 0.2 vs 4 plain steps a cycle
    assert expensive >= 1 and cheap > 5 * expensive


def test_a_draft_faster_than_plain_steps_runs_nearly_always(monkeypatch):
    gate = AdaptiveDrafter(FakeDrafter(), probe_every=16)
    chosen = run(gate, 400, lambda arm: (2.0, 4) if arm == "draft" else (1.0, 1), monkeypatch)
    late = chosen[50:]
    assert late.count("draft") / len(late) > 0.9
    assert 0 < late.count("plain") <= len(late) // 16 + 1  # plain re-measured every probe_every cycles


def test_it_comes_back_when_drafting_starts_to_pay(monkeypatch):
    # a losing cycle costs 2 plain steps here; a 5 % budget retries it every ~40 cycles
    gate = AdaptiveDrafter(FakeDrafter(), probe_every=8, probe_overhead=0.05)
    state = {"cycle": 0}

    def cost(arm):
        state["cycle"] += 1
        if arm != "draft":
            return 1.0, 1
        return (3.0, 1) if state["cycle"] < 200 else (2.0, 5)  # the text turns predictable

    chosen = run(gate, 400, cost, monkeypatch)
    assert chosen[100:200].count("draft") < 20
    assert chosen[300:].count("draft") > 80


def test_free_guesses_that_do_not_pay_become_plain_steps(monkeypatch):
    inner = FakeDrafter(copy_available=True)
    gate = AdaptiveDrafter(inner, probe_every=16)
    chosen = run(gate, 300, lambda arm: (2.5, 1) if arm == "free" else (1.0, 1), monkeypatch)
    assert chosen[50:].count("free") < 25
    # the inner drafter hears only about the trees it proposed and that were sent
    assert inner.observed == chosen.count("free")


def generations(gate, count, cycles, cost, monkeypatch):
    """`count` generations of `cycles` cycles each; the draft arm's cycles in each."""
    return [run(gate, cycles, cost, monkeypatch).count("draft") for _ in range(count)]


def test_the_drafts_prompt_is_prefilled_only_in_generations_that_draft(monkeypatch):
    """A losing draft is retried rarely; a generation without a retry never prefills the draft."""
    inner = FakeDrafter()
    drafted = generations(AdaptiveDrafter(inner), 20, 30, lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1),
                          monkeypatch)
    assert inner.prompt_prefills == sum(1 for n in drafted if n) < 20


def test_the_prompt_prefill_is_charged_to_the_draft_arms_retry_budget(monkeypatch):
    """Retrying a loser costs its cycle and, once per generation, the draft's prompt prefill: a dear
    prefill (here 50 plain steps) makes retries rarer, keeping them within the overhead budget."""
    def cost(arm):
        return (3.0, 1) if arm == "draft" else (1.0, 1)

    cheap = FakeDrafter(prompt_seconds=0.0)
    dear = FakeDrafter(prompt_seconds=50.0)
    generations(AdaptiveDrafter(cheap), 40, 200, cost, monkeypatch)
    generations(AdaptiveDrafter(dear), 40, 200, cost, monkeypatch)
    assert 1 <= dear.prompt_prefills < cheap.prompt_prefills / 3
    # its retries' prefills stay near the 2 % budget of the 8,000 plain steps' time
    assert dear.prompt_prefills * 50.0 <= 0.05 * 8000


def test_a_losing_draft_is_retried_only_where_its_prompt_prefill_stays_small_beside_the_generation(monkeypatch):
    """A retry of a losing draft pays its prompt prefill (here 5 plain steps' time) again, so it is made
    only while that stays within probe_overhead (2 %) of what the rest of the generation takes at plain
    speed: never in 60-token generations (1.2 steps' worth), but in 1,000-token ones (20)."""
    cost = lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1)  # noqa: E731  the draft loses 2 s a cycle
    def retries(max_tokens, count):
        shared = {}
        run(AdaptiveDrafter(FakeDrafter(), arms=shared), 40, cost, monkeypatch)  # measured: the draft loses
        inner = FakeDrafter(prompt_seconds=5.0)
        gate = AdaptiveDrafter(inner, arms=shared)
        drafted = sum(run(gate, max_tokens, cost, monkeypatch, max_tokens=max_tokens).count("draft")
                      for _ in range(count))
        return drafted, inner.prompt_prefills

    assert retries(60, 50) == (0, 0)  # 3,000 plain steps: the budget alone would allow several
    drafted, prefills = retries(1000, 3)
    assert drafted >= 1 and prefills >= 1


def test_a_draft_never_measured_is_tried_once_where_its_prefill_is_a_small_share_of_the_generation(monkeypatch):
    """What it might gain is unknown until it ran (on the test pair a prefill of 7 % of the generation
    buys 45 %), so a 5 s prefill is paid in a 60-step generation (8 %); in a 30-step one (17 %; on the
    Qwen pair a HumanEval prompt's prefill took the first problem to 0.59x) it waits for a later one."""
    cost = lambda arm: (2.0, 4) if arm == "draft" else (1.0, 1)  # noqa: E731
    inner = FakeDrafter(prompt_seconds=5.0)
    chosen = run(AdaptiveDrafter(inner), 40, cost, monkeypatch, max_tokens=60)
    assert chosen[2] == "draft" and inner.prompt_prefills == 1

    shared = {}
    short = FakeDrafter(prompt_seconds=5.0)
    assert "draft" not in run(AdaptiveDrafter(short, arms=shared), 30, cost, monkeypatch, max_tokens=30)
    assert short.prompt_prefills == 0 and not shared["draft"].cycles
    later = FakeDrafter(prompt_seconds=5.0)
    assert run(AdaptiveDrafter(later, arms=shared), 40, cost, monkeypatch, max_tokens=60)[2] == "draft"


def test_pricing_the_drafts_prefill_is_not_charged_to_the_plain_step_it_declines_for(monkeypatch):
    """Pricing the prefill runs a few of the draft's prompt tokens (here 10 plain steps' time); when the
    first try is declined, that time is not the plain step's: on the Qwen pair it made plain look 10x
    slower than it was, and the inflated rest-of-generation then let the dear first try in."""
    clock = [0.0]

    class PricedDrafter(FakeDrafter):
        def draft_prompt_seconds(self):
            clock[0] += 10.0  # the timing samples
            return super().draft_prompt_seconds()

    inner = PricedDrafter(prompt_seconds=5.0)
    gate = AdaptiveDrafter(inner)
    # a 5 s prefill is 17 % of 30 plain steps: declined
    chosen = run(gate, 30, lambda arm: (1.0, 1), monkeypatch, max_tokens=30, clock=clock)
    assert set(chosen) == {"plain"}
    assert gate.arms["plain"].rate == pytest.approx(1.0) and inner.prompt_prefills == 0


def test_a_winning_draft_skips_a_prefill_the_rest_of_the_generation_cannot_repay(monkeypatch):
    """The draft emits 2 tokens per plain step's time, saving 0.5 s a token: a 20 s prefill pays back
    over 40 tokens or more, so a 30-token generation takes plain steps and a 300-token one drafts."""
    cost = lambda arm: (2.0, 4) if arm == "draft" else (1.0, 1)  # noqa: E731
    shared = {}
    run(AdaptiveDrafter(FakeDrafter(), arms=shared), 40, cost, monkeypatch)  # measured: the draft wins
    assert shared["draft"].rate > shared["plain"].rate
    short, long = FakeDrafter(prompt_seconds=20.0), FakeDrafter(prompt_seconds=20.0)
    assert run(AdaptiveDrafter(short, arms=shared), 20, cost, monkeypatch, max_tokens=30).count("draft") == 0
    assert run(AdaptiveDrafter(long, arms=shared), 40, cost, monkeypatch, max_tokens=300).count("draft") > 30
    assert (short.prompt_prefills, long.prompt_prefills) == (0, 1)


def test_a_plain_estimate_taken_under_load_is_corrected_as_soon_as_a_plain_step_beats_the_draft(monkeypatch):
    """Plain's first steps ran while another program loaded the machine (2 s a step, then 1 s). The
    draft (2 tokens in 2.6 s: 0.77 tok/s) looks faster than that estimate (0.5 tok/s) but loses to
    plain's real speed. The first plain re-measure contradicts the estimate, and plain is measured
    again step after step until the draft is seen to lose: without that, plain's running mean took
    four re-measures 16 cycles apart (64 draft cycles) to catch up."""
    steps = {"plain": 0}

    def cost(arm):
        if arm == "plain":
            steps["plain"] += 1
            return (2.0, 1) if steps["plain"] <= 2 else (1.0, 1)
        return 2.6, 2

    chosen = run(AdaptiveDrafter(FakeDrafter(), probe_every=16), 120, cost, monkeypatch)
    first_plain_again = chosen.index("plain", 2)
    assert chosen[2:first_plain_again] == ["draft"] * (first_plain_again - 2)  # it did look like a winner
    assert chosen[first_plain_again:first_plain_again + 4] == ["plain"] * 4
    assert chosen[first_plain_again + 10:].count("draft") <= 3  # only budgeted retries from there


def test_free_guesses_are_judged_after_one_cycle(monkeypatch):
    # a cycle of free guesses costs no draft forward: one losing cycle is enough to stop them (a fresh
    # gate may meet seven kinds), where a draft gets min_samples
    chosen = run(AdaptiveDrafter(FakeDrafter(copy_available=True), min_samples=2), 20,
                 lambda arm: (2.5, 1) if arm == "free" else (1.0, 1), monkeypatch)
    assert chosen[:4] == ["plain", "plain", "free", "plain"]
    assert chosen[3:20].count("free") <= 1


@pytest.mark.parametrize("budget", [0])
def test_no_budget_is_a_plain_step(budget, monkeypatch):
    gate = AdaptiveDrafter(FakeDrafter())
    gate.begin([1])
    assert len(gate.propose([1], budget)) == 0


def test_gates_of_one_pair_share_what_they_measured(monkeypatch):
    shared = {}
    first = AdaptiveDrafter(FakeDrafter(), arms=shared)
    run(first, 100, lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1), monkeypatch)
    second = AdaptiveDrafter(FakeDrafter(), arms=shared)  # a server's next slot
    fresh = AdaptiveDrafter(FakeDrafter())
    cost = lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1)  # noqa: E731
    assert run(fresh, 20, cost, monkeypatch).count("draft") >= 2  # a gate on its own measures first
    assert run(second, 20, cost, monkeypatch).count("draft") <= 1  # at most a due retry


def test_time_between_cycles_is_not_charged_to_them(monkeypatch):
    # A scheduler runs other conversations between two cycles of this one: 5 s of their work after
    # every cycle. Charged to the cycles, a draft (2 tokens in 5 s of its own) would look faster
    # (2 in 10 s) than a plain step (1 in 6 s), though per second of its own work it is slower.
    clock = [0.0]
    monkeypatch.setattr(adaptive.time, "perf_counter", lambda: clock[0])
    gate = AdaptiveDrafter(FakeDrafter())
    gate.begin([1])
    chosen = []
    for _ in range(200):
        tree = gate.propose([1], 8)
        arm = adaptive.arm_of(tree)
        seconds, tokens = (5.0, 2) if arm == "draft" else (1.0, 1)  # 2 tokens in 5 s: drafting loses
        clock[0] += seconds
        gate.observe(SimpleNamespace(tokens=(0,) * tokens))
        clock[0] += 5.0  # the other conversations' turn
        chosen.append(arm)
    assert chosen[50:].count("draft") < 10


def test_plain_steps_are_measured_before_any_speculation(monkeypatch):
    gate = AdaptiveDrafter(FakeDrafter(), min_samples=2)
    chosen = run(gate, 6, lambda arm: (2.0, 4) if arm == "draft" else (1.0, 1), monkeypatch)
    assert chosen[:2] == ["plain", "plain"] and chosen[2:] == ["draft"] * 4


def test_one_cycle_judges_a_tree_that_loses_even_when_all_of_it_is_accepted(monkeypatch):
    # the fake's draft tree is 3 deep: at most 4 tokens a cycle; in 5 plain steps' time it cannot pay
    hopeless = run(AdaptiveDrafter(FakeDrafter(), min_samples=3), 40,
                   lambda arm: (5.0, 1) if arm == "draft" else (1.0, 1), monkeypatch)
    # in 3 plain steps' time it could (4 tokens), so it gets its min_samples cycles before it is judged
    unlucky = run(AdaptiveDrafter(FakeDrafter(), min_samples=3), 40,
                  lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1), monkeypatch)
    assert hopeless[:4] == ["plain"] * 3 + ["draft"] and hopeless[4:20].count("draft") == 0
    assert unlucky[3:6] == ["draft"] * 3


def test_a_gate_restored_from_an_earlier_run_does_not_explore_a_losing_draft_again(monkeypatch):
    cost = lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1)  # noqa: E731
    earlier = AdaptiveDrafter(FakeDrafter())
    run(earlier, 100, cost, monkeypatch)
    saved = json.loads(json.dumps(adaptive.saved_estimates(earlier.arms)))
    assert set(saved) == {"draft"}  # plain steps are this run's to measure

    inner = FakeDrafter()
    restored = AdaptiveDrafter(inner)
    assert adaptive.restore_estimates(restored.arms, saved)
    chosen = run(restored, 30, cost, monkeypatch)
    assert chosen.count("draft") == 0 and inner.prompt_prefills == 0
    fresh = AdaptiveDrafter(FakeDrafter())
    assert run(fresh, 30, cost, monkeypatch).count("draft") >= 2  # what the restore saved


@pytest.mark.parametrize("saved", [None, [], {"draft": None}, {"draft": {"tokens": "x"}},
                                   {"draft": {"tokens": 1, "seconds": 0, "best_tokens": 2, "cycles": 3}},
                                   {"draft": {"tokens": float("nan"), "seconds": 1, "best_tokens": 2, "cycles": 3}},
                                   {"draft": {"tokens": 1, "seconds": 1, "best_tokens": 2, "cycles": 0}},
                                   {"plain": {"tokens": 1, "seconds": 1, "best_tokens": 1, "cycles": 3}}])
def test_a_malformed_saved_estimate_is_ignored(saved):
    gate = AdaptiveDrafter(FakeDrafter())
    assert not adaptive.restore_estimates(gate.arms, saved)
    assert all(arm.cycles == 0 for arm in gate.arms.values())


def test_estimates_are_not_restored_over_measured_ones(monkeypatch):
    gate = AdaptiveDrafter(FakeDrafter())
    run(gate, 10, lambda arm: (1.0, 1), monkeypatch)
    before = dict(gate.arms)
    assert not adaptive.restore_estimates(gate.arms, {"draft": {"tokens": 9, "seconds": 1, "best_tokens": 9, "cycles": 5}})
    assert gate.arms == before


class CopyingDrafter(FakeDrafter):
    """Context copies after matches of 3 and 6 tokens in turn."""

    def __init__(self):
        super().__init__(copy_available=True)
        self.copy_match_length, self._turn = 0, 0

    def propose(self, history, budget, *, draft_model=True):
        self._turn += 1
        self.copy_match_length = 3 if self._turn % 2 else 6
        return TokenTree.chain([7, 8, 9, 10], "pool")


def test_copies_are_judged_by_the_length_of_their_match(monkeypatch):
    # copies after a 3-token match are mostly wrong (1 token in 2.5 steps), after 6 mostly right
    inner = CopyingDrafter()
    gate = AdaptiveDrafter(inner, probe_every=16)
    matches = []

    def cost(arm):
        matches.append(inner.copy_match_length if arm != "plain" else 0)
        return ((1.5, 4) if inner.copy_match_length == 6 else (2.5, 1)) if arm != "plain" else (1.0, 1)

    run(gate, 400, cost, monkeypatch)
    late = matches[100:]
    assert late.count(6) > 100 and late.count(3) < 10
    assert set(gate.arms) >= {"free3", "free6"}
    saved = adaptive.saved_estimates(gate.arms)
    fresh = AdaptiveDrafter(CopyingDrafter())
    assert adaptive.restore_estimates(fresh.arms, json.loads(json.dumps(saved)))
    assert fresh.arms["free3"].rate < 1.0 < fresh.arms["free6"].rate


def test_losing_arms_share_one_retry_budget(monkeypatch):
    # two kinds of copies and the draft all lose 1.5 plain steps a cycle: together they are retried
    # about as often as one losing arm alone, so the overhead stays near probe_overhead
    def losing_cycles(drafter):
        gate = AdaptiveDrafter(drafter, probe_every=16)
        chosen = run(gate, 3000, lambda arm: (2.5, 1) if arm != "plain" else (1.0, 1), monkeypatch)
        return len(chosen[200:]) - chosen[200:].count("plain")

    alone, several = losing_cycles(FakeDrafter()), losing_cycles(CopyingDrafter())
    assert several <= 1.5 * alone
    assert several * 1.5 <= 0.03 * 2800  # ~2 % of the time


def test_a_losing_arm_is_retried_only_in_a_generation_long_enough_to_hide_its_loss(monkeypatch):
    """The retry budget is shared by generations, but a retry's loss lands on the one it runs in: a
    draft that loses 2 plain steps a cycle is never retried in 10-step answers (2 % of one is 0.2
    steps), however many of them ran, and still is in a long generation."""
    cost = lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1)  # noqa: E731
    shared = {}
    run(AdaptiveDrafter(FakeDrafter(), arms=shared), 40, cost, monkeypatch)  # measured: the draft loses
    gate = AdaptiveDrafter(FakeDrafter(), arms=shared)
    assert sum(run(gate, 10, cost, monkeypatch).count("draft") for _ in range(100)) == 0  # 1,000 steps
    assert run(gate, 400, cost, monkeypatch).count("draft") >= 1


def test_a_retry_that_won_once_is_confirmed_only_where_a_loss_would_stay_small(monkeypatch):
    """A retry replaces the arm's estimate, so one lucky cycle turns a losing arm back on; the cycles
    that confirm it are uncertain too and wait, in a short answer, as a retry does. An arm whose win
    rests on more cycles than its retry runs at once."""
    def gate_after_a_winning_retry(on_trial):
        arms = {"plain": adaptive.Arm(adaptive.SMOOTHING, tokens=1.0, seconds=1.0, cycles=10),
                "draft": adaptive.Arm(adaptive.SMOOTHING, tokens=4.0, seconds=2.0, cycles=2, best_tokens=4.0,
                                      on_trial=on_trial)}
        return AdaptiveDrafter(FakeDrafter(), arms=arms)

    cost = lambda arm: (3.0, 1) if arm == "draft" else (1.0, 1)  # noqa: E731  it was luck: the draft loses
    assert run(gate_after_a_winning_retry(1), 10, cost, monkeypatch).count("draft") == 0
    assert run(gate_after_a_winning_retry(0), 10, cost, monkeypatch)[0] == "draft"
