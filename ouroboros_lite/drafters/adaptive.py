"""Speculation that never costs more than it gives: each cycle picks, from the speed it measured,
whether to run the draft model, to send only free guesses, or to take a plain target step.

On a GPU a tree costs about one token and speculation always pays; on a 2-core CPU a batch of 8
costs ~2.8 target tokens and a draft token ~0.45 of one (the Qwen pair, ../shared/docs/testbeds.md),
so a draft pays only where the text is predictable, and a wrong guess is a loss. The wrapper keeps
three arms, each a running estimate of emitted tokens per second of the cycle's own time (drafting,
verifying and Python, from its proposal to the end of its verification), shared by the sessions of
one model pair (`Models.gate`):
- "plain": an empty tree, exactly one `ar` step;
- "free": guesses that cost no draft forward (pool phrases, a window), and "free3" … "free6" for
  context copies after a match of that many tokens (a longer match is right more often, so copies
  after 6 may pay where copies after 3 lose);
- "draft": the inner drafter's full proposal, draft model included.
Plain steps are measured first (they cost nothing against `ar`). A draft then runs `min_samples`
cycles before it is judged and a kind of free guess one (they cost no draft forward, and a fresh
gate may meet seven kinds), or one where even that cycle's best case (its longest path all accepted,
in the seconds it took) is slower than plain steps: such a tree cannot pay on this machine whatever
the text. A free or draft proposal is made while its arm is at least as fast as plain. A losing arm
is retried on a time budget: once the wall time since its last retry is 1/`probe_overhead` times
(times the number of losing arms, which share the budget) what one of its cycles loses against
plain steps (its seconds minus the time plain steps take for its tokens), so retries cost about
`probe_overhead` (2 %) of the time however badly the arm loses: a cheap loser is retried often, an
expensive one (a 6-step tree on a CPU whose batches cost nearly a step per token) rarely. A retry's
cycle replaces the arm's estimate instead of joining its running mean (what it measured before is
stale), so one winning retry turns the arm back on. The budget is shared by generations, but a
retry's loss lands on one, so a retry, and the cycles after a winning one until its estimate rests
on `min_samples` of them, run only where that cycle would keep its generation within
`probe_overhead` of plain steps even if it emitted just the target's token (`_affordable`): not in
a short answer, where one losing copy on the Qwen pair cost a third of the time, but later in a
long one.

The draft's prompt is prefilled only when the draft first runs in a generation, outside any cycle's
time, and only where the generation's horizon (`max_tokens` less what it emitted) allows: a draft
never measured takes it where it costs at most `first_try_share` (10 %) of the rest of the generation
at plain speed (its first try: what it might gain is unknown; on the test pair the prefill costs 7 %
of a 128-token generation and drafting then gains 45 %; on the Qwen pair, 2 cores, a 118-token
HumanEval prompt's draft prefill cost 1.2 s, 16 % of a 128-token generation, and took the first
problem to 0.59-0.72x: such a first try waits for a shorter prompt or a longer answer); a retry or
a second sample only while it stays within `probe_overhead` of the rest of the generation at plain
speed (and, for a retry, within the shared budget); a winning draft only where what it saves over the
rest repays it.
Its cost is timed on a few prompt tokens (`DraftContext`). On the Qwen pair, 2 cores, a 117-token
prompt's draft prefill cost 0.77 s, six plain steps, of a 128-token HumanEval generation that then
lost: a retry there now waits for a generation long enough to hide it. Plain is re-measured every
`probe_every` cycles, so each estimate stays current and speculation comes back when the text turns
predictable, and at once, step after step, while its steps beat an arm that wins against its estimate
(an estimate taken while the machine was loaded). The choice never changes the output: every tree is
verified by the target, so the text is ar's (acceptance.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..tree import TokenTree
from ..verify import Outcome


@dataclass
class Arm:
    """Exponential running means of tokens and seconds per cycle."""

    smoothing: float
    tokens: float = 0.0
    seconds: float = 0.0
    cycles: int = 0
    best_tokens: float = 0.0  # what its cycles would have emitted had their longest path been accepted
    chances_skipped: int = 0  # plain: cycles since it was last re-measured
    contradicted: bool = False  # plain: its last step beat the arm that runs in its place
    since_retry: float = 0.0  # seconds of generation since this arm last ran
    on_trial: int = 0  # cycles left before a retried arm's estimate rests on more than its retry

    def update(self, tokens: int, seconds: float, best_tokens: int | None = None) -> None:
        a = 1.0 if self.cycles == 0 else self.smoothing
        self.tokens += a * (tokens - self.tokens)
        self.seconds += a * (seconds - self.seconds)
        self.best_tokens += a * ((tokens if best_tokens is None else best_tokens) - self.best_tokens)
        self.cycles += 1

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ceiling(self) -> float:
        """Its rate had every cycle's longest path been accepted: what no text could beat."""
        return self.best_tokens / self.seconds if self.seconds > 0 else float("inf")


ARMS = ("plain", "free", "draft")  # and "free<n>": context copies after an n-token match (_free_arm)
MAX_JUDGED_MATCH = 6  # longer matches share the arm of 6
SMOOTHING = 0.3  # weight of a cycle in its arm's running means
SPECULATIVE_ARMS = ("free", "draft", *(f"free{n}" for n in range(1, MAX_JUDGED_MATCH + 1)))
_SAVED_FIELDS = ("tokens", "seconds", "best_tokens", "cycles")


def saved_estimates(arms: dict[str, Arm]) -> dict:
    """The speculative arms' estimates as JSON, kept beside the pair's phrase pool for the next run."""
    return {name: {field: getattr(arm, field) for field in _SAVED_FIELDS}
            for name, arm in arms.items() if name != "plain" and arm.cycles}


def restore_estimates(arms: dict[str, Arm], saved) -> bool:
    """Start a gate that has measured nothing from an earlier run's estimates (`saved_estimates`):
    a speculative arm that lost there is not explored again, only retried on the budget (and the
    draft's prompt is not prefilled for it); plain steps are measured afresh, first, as this run's
    machine load sets them. Malformed entries are skipped. Returns whether anything was restored."""
    if any(arm.cycles for arm in arms.values()) or not isinstance(saved, dict):
        return False
    restored = False
    for name, entry in saved.items():
        if name not in SPECULATIVE_ARMS or not isinstance(entry, dict):
            continue
        try:
            values = {field: float(entry[field]) for field in _SAVED_FIELDS}
        except (KeyError, TypeError, ValueError):
            continue
        if not all(math.isfinite(v) and v >= 0 for v in values.values()) or not values["seconds"] > 0 \
                or not values["cycles"] >= 1:
            continue
        smoothing = arms["plain"].smoothing if "plain" in arms else SMOOTHING
        arms[name] = Arm(smoothing, values["tokens"], values["seconds"],
                         cycles=int(min(values["cycles"], 1e6)), best_tokens=values["best_tokens"])
        restored = True
    return restored


def arm_of(tree: TokenTree) -> str:
    if not len(tree):
        return "plain"
    return "draft" if "draft" in tree.sources else "free"


class AdaptiveDrafter:
    """Wraps a drafter (ouroboros, or its draft-free mode) and gates its proposals by measured speed."""

    def __init__(self, inner, *, probe_every: int = 16, probe_overhead: float = 0.02, smoothing: float = SMOOTHING,
                 min_samples: int = 2, first_try_share: float = 0.10, arms: dict | None = None):
        """arms: estimates shared with other gates of the same model pair (filled here if empty);
        first_try_share: the most of a generation's remaining plain-speed time that an arm's first try
        may spend on its switch (the draft's prompt prefill)."""
        self.inner = inner
        self.name = inner.name
        self.runs_draft_model = inner.runs_draft_model
        self.pool = inner.pool
        self.probe_every = probe_every
        self.probe_overhead = probe_overhead
        self.min_samples = min_samples
        self.first_try_share = first_try_share
        self.arms = {} if arms is None else arms
        self.smoothing = smoothing
        for name in ARMS:
            self.arms.setdefault(name, Arm(smoothing))
        self.cycles_by_arm: dict[str, int] = {}  # this generation's choices (for statistics)
        self._pending: tuple[str, float, int] | None = None  # arm, start time and tree depth of the cycle in flight
        self._retrying: str | None = None  # the losing arm this cycle retries
        self._inner_proposed = False
        self._tokens_left = math.inf  # what this generation may still emit
        self._started: float | None = None  # when this generation's first cycle began
        self._gained = 0.0  # seconds its speculative cycles saved against plain steps (negative: lost)

    @property
    def draft_forwards(self) -> int:
        return self.inner.draft_forwards

    @property
    def draft_tokens(self) -> int:
        return self.inner.draft_tokens

    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        self.inner.begin(prompt, sampler, max_tokens)
        self.cycles_by_arm = {}
        self._tokens_left = math.inf if max_tokens is None else max_tokens
        self._pending = self._retrying = None  # the prefill before the first cycle is nobody's cost
        self._started, self._gained = None, 0.0

    def close(self) -> None:
        self.inner.close()

    def speedup_over_plain(self, tokens_per_second: float) -> float | None:
        """A generation's speed over the plain (ar) steps measured in it; None before any were."""
        plain = self.arms["plain"]
        if plain.cycles < 8 or not tokens_per_second:  # fewer plain steps say little
            return None
        return tokens_per_second / plain.rate

    # --- one cycle ----------------------------------------------------------------------------------
    def propose(self, history: list[int], budget: int) -> TokenTree:
        now = time.perf_counter()
        self._started = now if self._started is None else self._started
        self._pending = self._retrying = None  # a cycle that was never observed counts for nothing
        tree = TokenTree()
        self._inner_proposed = False
        if budget > 0 and not self._plain_is_due():
            drafting = self.runs_draft_model and self._worth("draft", self.inner.draft_prompt_seconds)
            if drafting:
                self.inner.prefill_draft_prompt()
            # like the target's prefill, the draft's is no cycle's cost, nor are the samples that priced it
            now = time.perf_counter()
            if self.runs_draft_model and not drafting:
                tree = self.inner.propose(history, budget, draft_model=False)
            else:
                tree = self.inner.propose(history, budget)
            if arm_of(tree) == "free" and not self._worth(self._free_arm()):
                tree = TokenTree()  # free guesses that do not pay here: a plain step instead
            self._inner_proposed = len(tree) > 0
        arm = self._free_arm() if arm_of(tree) == "free" else arm_of(tree)
        self.cycles_by_arm[arm] = self.cycles_by_arm.get(arm, 0) + 1
        self._pending = (arm, now, tree.depth)
        return tree

    def observe(self, outcome: Outcome) -> None:
        if self._inner_proposed:
            self.inner.observe(outcome)
        self._tokens_left -= len(outcome.tokens)
        self._finish_cycle(len(outcome.tokens), time.perf_counter())

    def _losing_arms(self, plain: Arm) -> list[str]:
        return [name for name, arm in self.arms.items()
                if name != "plain" and arm.cycles and arm.rate < plain.rate]

    def _free_arm(self) -> str:
        """The arm of this cycle's free guesses: a context copy is judged by the length of the match it
        follows ("free3" … "free6": copies after longer matches are right more often, so one kind
        may pay where another does not), other free guesses as "free"."""
        matched = getattr(self.inner, "copy_match_length", 0)
        name = f"free{min(matched, MAX_JUDGED_MATCH)}" if matched else "free"
        if name not in self.arms:
            self.arms[name] = Arm(self.smoothing)
        return name

    # --- the choice ---------------------------------------------------------------------------------
    def _finish_cycle(self, tokens: int, now: float) -> None:
        """Count this cycle's own time, from its proposal to the end of its verification: not the time
        between two proposals, which a server's scheduler fills with other conversations' cycles."""
        if self._pending is not None:
            arm, start, depth = self._pending
            measured = self.arms[arm]
            if arm == self._retrying:
                measured.cycles = 0  # the estimate becomes this cycle's: the old one is stale
            measured.update(tokens, now - start, best_tokens=depth + 1)
            if arm == self._retrying:
                measured.cycles = max(measured.cycles, self.min_samples)  # one retry is one cycle
                measured.on_trial = self.min_samples
            measured.on_trial = max(0, measured.on_trial - 1)
            if arm == "plain":
                measured.contradicted = self._contradicts(tokens / max(now - start, 1e-9))
            else:
                self._gained += tokens / self.arms["plain"].rate - (now - start)
            for other in self.arms.values():
                other.since_retry += now - start
        self._pending = self._retrying = None

    def _plain_is_due(self) -> bool:
        """Keep the plain step's estimate fresh (and measured at all) while speculation wins."""
        plain = self.arms["plain"]
        if plain.cycles < self.min_samples or plain.contradicted:  # plain steps cost nothing against ar
            return True
        plain.chances_skipped += 1
        if plain.chances_skipped >= self.probe_every:
            plain.chances_skipped = 0
            return True
        return False

    def _contradicts(self, plain_step_rate: float) -> bool:
        """Whether a plain step just measured was faster than an arm that wins against plain's
        estimate. The estimate may be stale: taken while the machine was loaded (another program, a
        pip install), it makes a losing draft look like a winner for as long as its running mean takes
        to catch up, re-measured only every `probe_every` cycles. A contradiction re-measures plain
        at once, step after step, until the estimate and the steps agree."""
        plain = self.arms["plain"]
        return any(arm.cycles and plain.rate <= arm.rate < plain_step_rate
                   for name, arm in self.arms.items() if name != "plain")

    def _worth(self, name: str, switch_cost=None) -> bool:
        """Whether to spend this cycle on arm `name`: unmeasured, faster than plain, or due a retry.
        switch_cost: () -> seconds that taking the arm costs once before its cycle in this generation
        (the draft's prompt prefill). A never-measured arm is tried once, where its switch costs at most
        `first_try_share` of the rest of the generation at plain speed; a faster arm takes the
        switch when the rest of the generation repays it; a second sample or a retry only when it stays
        within `probe_overhead` of the rest of the generation (so no prompt pays much for exploring)
        and, for a retry, within the shared budget."""
        arm, plain = self.arms[name], self.arms["plain"]
        switch = (lambda: 0.0) if switch_cost is None else switch_cost
        # one cycle says enough when even its best case (every longest path accepted) loses
        hopeless = arm.cycles > 0 and plain.cycles >= self.min_samples and arm.ceiling < plain.rate
        if arm.cycles == 0:  # never measured: what it could gain is unknown, so it is tried once
            return self._try(arm, switch(), self.first_try_share)
        if arm.cycles < self._samples_to_judge(name) and not hopeless:
            return self._try(arm, switch())
        if arm.rate >= plain.rate:
            seconds_saved = self._tokens_left * (1 / plain.rate - 1 / arm.rate)
            if math.isfinite(seconds_saved) and seconds_saved < switch():
                return False
            if arm.on_trial and not self._affordable(arm, switch()):
                return False  # one lucky retry: confirmed only where a loss would stay small
            arm.since_retry = 0.0
            return True
        # what one more cycle of it should cost
        loss = max(arm.seconds - arm.tokens / plain.rate, 0.0)
        # the losing arms share the budget, so retries cost probe_overhead in all however many there are
        share = self.probe_overhead / max(1, len(self._losing_arms(plain)))
        if arm.since_retry * share < loss:
            return False
        cost = switch()
        if arm.since_retry * share >= loss + cost and self._affordable(arm, cost) and self._try(arm, cost):
            self._retrying = name
            return True
        return False

    def _affordable(self, arm: Arm, switch_seconds: float) -> bool:
        """Whether one more uncertain cycle of `arm` (a retry, or a cycle confirming a retry's win)
        keeps this generation within `probe_overhead` of plain steps should it emit only the target's
        own token: what that cycle would lose (its switch, and its estimated seconds less one plain
        step) is at most probe_overhead of the seconds the generation has run, plus what its
        speculative cycles saved so far. A retry's budget is shared by generations, but its loss lands
        on one: on the Qwen pair, 2 cores, a copy that a lucky retry had turned back on took a 12-token
        answer to 0.63x plain steps (Spec-Bench prompt 25)."""
        plain = self.arms["plain"]
        loss = switch_seconds + max(arm.seconds - 1 / plain.rate, 0.0)
        ran = time.perf_counter() - self._started  # propose set it before asking
        return loss <= self.probe_overhead * ran + self._gained

    def _samples_to_judge(self, name: str) -> int:
        """Cycles an arm runs before it is judged: a draft's `min_samples`; one for free guesses, whose
        cycles are cheap to retry (a fresh gate meets up to seven kinds of them)."""
        return self.min_samples if name == "draft" else 1

    def _try(self, arm: Arm, switch_seconds: float, share: float | None = None) -> bool:
        """Try an arm whose speed is unknown or stale, unless its switch would cost more than `share`
        (`probe_overhead` unless given) of what the rest of this generation takes at plain speed."""
        seconds_left = self._tokens_left / self.arms["plain"].rate
        if switch_seconds > (self.probe_overhead if share is None else share) * seconds_left:
            return False
        arm.since_retry = 0.0
        return True
