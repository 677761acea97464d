"""SpecStats owns every count and rate: per-cycle updates, sums over generations, the one tok/s. No models."""

from __future__ import annotations

from types import SimpleNamespace

from ouroboros_lite.stats import SpecStats, tokens_per_second


def cycle(tree_size: int, accepted: int, sources: tuple[str, ...]):
    return SimpleNamespace(tree=[0] * tree_size, accepted=tuple(range(accepted)), sources=(*sources, "target"))


def test_cycles_fill_the_counters_and_the_accepted_length_histogram():
    drafter = SimpleNamespace(draft_forwards=3, draft_tokens=9)
    stats = SpecStats()
    for tree_size, accepted, sources in [(4, 2, ("draft", "pool")), (4, 0, ()), (0, 0, ()), (6, 3, ("draft",) * 3)]:
        stats = stats.after(cycle(tree_size, accepted, sources), drafter, draft_seconds=0.5, verify_seconds=1.0)
    assert stats.target_forwards == 4 and stats.target_batch_tokens == 4 + 14
    assert stats.drafted_tokens == 14 and stats.accepted_tokens == 5
    assert stats.accepted_lengths == (2, 0, 1, 1)  # two cycles accepted nothing, one 2, one 3
    assert stats.accepted_by_source == {"draft": 4, "pool": 1} and stats.accepted_from_pool == 1
    assert stats.emitted_tokens == 9 and stats.tokens_per_forward == 9 / 4
    assert stats.acceptance_rate == 5 / 14
    assert (stats.draft_seconds, stats.verify_seconds) == (2.0, 4.0)
    assert stats.other_seconds(7.5) == 1.5 and stats.other_seconds(5.0) == 0.0


def test_sums_over_generations_merge_every_field():
    a = SpecStats(target_forwards=2, drafted_tokens=4, accepted_tokens=3, accepted_by_source={"draft": 3},
                  accepted_lengths=(1, 0, 0, 1), draft_seconds=0.25, draft_forwards=5)
    b = SpecStats(target_forwards=3, drafted_tokens=2, accepted_tokens=1, accepted_by_source={"pool": 1, "draft": 0},
                  accepted_lengths=(2, 1), verify_seconds=1.5, draft_forwards=1)
    total = a + b
    assert (total.target_forwards, total.drafted_tokens, total.accepted_tokens, total.draft_forwards) == (5, 6, 4, 6)
    assert total.accepted_by_source == {"draft": 3, "pool": 1}
    assert total.accepted_lengths == (3, 1, 0, 1)
    assert (total.draft_seconds, total.verify_seconds) == (0.25, 1.5)
    assert SpecStats() + SpecStats() == SpecStats()


def test_tokens_per_second_leaves_out_each_generations_first_token():
    assert tokens_per_second(11, 2.0) == 5.0  # the first token came with the prompt's forward
    assert tokens_per_second(22, 4.0, generations=2) == 5.0
    assert tokens_per_second(1, 1.0) == 0.0 and tokens_per_second(5, 0.0) == 0.0
