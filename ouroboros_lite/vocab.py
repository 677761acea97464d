"""Draft/target vocabulary compatibility, checked before anything runs.

Token ids are exchanged between the models (drafts, pool phrases), so the tokenizers must agree:
same tokenizer type, same special tokens, same text for every token both have. Sizes may differ by
padding only (like llama.cpp's common_speculative_are_compatible, at most 128 extra ids).
"""

from __future__ import annotations

from .backend import Model
from .errors import VocabularyMismatchError

MAX_PADDING = 128


def vocabulary_differences(target: Model, draft: Model) -> list[str]:
    problems = []
    if target.vocab_type != draft.vocab_type:
        problems.append(f"tokenizer type {target.vocab_type} vs {draft.vocab_type}")
    if target.add_bos != draft.add_bos or (target.add_bos and target.bos != draft.bos):
        problems.append(f"BOS token {target.bos} (add={target.add_bos}) vs {draft.bos} (add={draft.add_bos})")
    if target.add_eos != draft.add_eos or target.eos != draft.eos:
        problems.append(f"EOS token {target.eos} vs {draft.eos}")
    if abs(target.n_vocab - draft.n_vocab) > MAX_PADDING:
        problems.append(f"vocabulary size {target.n_vocab} vs {draft.n_vocab}")
    if not problems:
        for token in range(min(target.n_vocab, draft.n_vocab)):
            if target.token_text(token) != draft.token_text(token):
                problems.append(
                    f"token {token} is {target.token_text(token)!r} in the target but {draft.token_text(token)!r} in the draft"
                )
                break
    return problems


def check_compatible(target: Model, draft: Model) -> None:
    problems = vocabulary_differences(target, draft)
    if problems:
        raise VocabularyMismatchError(
            f"draft {draft.path.name} does not share the target's vocabulary ({target.path.name}): " + "; ".join(problems)
        )
