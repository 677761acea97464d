"""Context lookup (ouroboros_lite/ngram.py) and the drafters that copy from the context."""

from __future__ import annotations

import pytest

from ouroboros_lite.drafters.ouroboros import OuroborosParams
from ouroboros_lite.drafters.pld import PromptLookupDrafter
from ouroboros_lite.ngram import ContextIndex
from ouroboros_lite.runtime import Runtime

from support import assert_equal_or_tie, generate_ids, options


def indexed(tokens, **kwargs) -> ContextIndex:
    index = ContextIndex(**kwargs)
    index.sync(tokens)
    return index


def test_the_longest_match_wins_and_copies_n_plus_two_tokens():
    tokens = [7, 2, 3, 50, 51, 52, 53, 54, 1, 2, 3, 4, 60, 61, 62, 63, 9, 1, 2, 3]
    # "2 3" occurred twice (after 7 and after 1), "1 2 3" once: the 3-token match wins
    assert indexed(tokens).continuation(tokens, max_length=8) == ([4, 60, 61, 62, 63], 3)
    assert indexed(tokens).continuation(tokens, max_length=2) == ([4, 60], 3)


def test_the_most_recent_occurrence_wins():
    tokens = [5, 6, 10, 11, 5, 6, 20, 21, 5, 6]
    assert indexed(tokens).continuation(tokens, max_length=2) == ([20, 21], 2)


def test_a_one_token_match_is_not_enough_by_default():
    tokens = [4, 8, 9, 1, 4]
    assert indexed(tokens).continuation(tokens, max_length=4) == ([], 0)
    assert indexed(tokens, min_n=1).continuation(tokens, max_length=4) == ([8, 9, 1], 1)


def test_the_current_suffix_is_not_its_own_match():
    tokens = [1, 2, 3, 4]
    assert indexed(tokens).continuation(tokens, max_length=4) == ([], 0)


def test_growing_tokens_are_indexed_incrementally_and_a_new_text_starts_over():
    index = ContextIndex()
    history = [1, 2, 3, 1]
    index.sync(history)
    assert index.continuation(history, max_length=4) == ([], 0)
    history += [2]
    index.sync(history)
    assert index.continuation(history, max_length=4) == ([3, 1, 2], 2)  # "1 2" -> 3, then on
    other = [9, 9, 8]
    index.sync(other)  # not an extension: the old text is gone
    assert index.tokens == other and index.continuation([1, 2], max_length=4) == ([], 0)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        ContextIndex(min_n=3, max_n=2)


def test_prompt_lookup_proposes_a_chain_only_after_a_real_match():
    drafter = PromptLookupDrafter(draft_length=3)
    drafter.begin([1])
    assert len(drafter.propose([1, 2, 3, 4, 5, 6, 2], budget=8)) == 0
    tree = drafter.propose([1, 2, 3, 4, 5, 6, 2, 3], budget=8)
    assert tree.tokens == (4, 5, 6) and tree.parents == (-1, 0, 1) and set(tree.sources) == {"pool"}


COPY_PROMPT = ("Repeat the following text word for word:\nThe quick brown fox jumps over the lazy dog. The early "
               "bird catches the worm, but the second mouse gets the cheese. A journey of a thousand miles "
               "begins with a single step, and every step counts.")


def test_ouroboros_copies_from_the_context_instead_of_drafting_and_stays_exact(pair, target_path, draft_path):
    """Where the last tokens occurred before, the copy replaces the draft: fewer draft forwards,
    the same greedy text."""
    prompt = pair.tokenize_prompt(COPY_PROMPT, chat=True)
    reference = generate_ids(pair, prompt, 96, "ar")
    # the drafter's own mechanism, without the speed gate in front of it (drafters/adaptive.py)
    with Runtime(target_path, draft_path, options=options(ouroboros=OuroborosParams(copy_match=0),
                                                          adaptive=False)) as never_copies:
        without = list(never_copies.generate(prompt, max_tokens=96, method="ouroboros"))
    with Runtime(target_path, draft_path, options=options(adaptive=False)) as copies:
        with_copy = list(copies.generate(prompt, max_tokens=96, method="ouroboros"))
    for responses, label in ((with_copy, "copy"), (without, "no copy")):
        assert_equal_or_tie(pair, prompt, reference, [r.token for r in responses if r.token >= 0], label)
    copied = with_copy[-1].spec.accepted_by_source.get("pool", 0)
    forwards_with, forwards_without = with_copy[-1].spec.draft_forwards, without[-1].spec.draft_forwards
    print(f"\naccepted copies {copied}; draft forwards with copying {forwards_with}, without {forwards_without}")
    assert copied >= 10 and forwards_with < 0.8 * forwards_without
