"""Drafters: where the guesses that the target verifies come from, and the one registry of methods.

A method is one entry of `METHODS`: its name, what it does, whether it needs a draft model, whether
its sampled text equals `ar`'s for the same seed, and its factory. The CLI's choices, the config's
validation, bench's defaults and its exact-match rule and the session's drafters all read it, so a
new method is a new drafter module plus one entry here. Factories import their module when first
called: reading the registry loads no model code (the CLI reports a broken install cleanly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pool import PhrasePool
    from ..runtime import Session
    from .base import Drafter


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    needs_draft: bool  # refuses to run without a draft model
    sampled_like_ar: bool  # at temperature > 0 its text equals ar's for the same seed (coupled draws)
    # (session, the pair's pool for it, the pair's shared speed-gate estimates for it or None) -> a drafter
    build: Callable[[Session, PhrasePool, dict | None], Drafter]


def _ar(session, pool, gate=None):
    from .base import NoDraft

    return NoDraft()


def _pld(session, pool, gate=None):
    from .pld import PromptLookupDrafter

    return PromptLookupDrafter(draft_length=session.options.max_draft)


def _lookahead(session, pool, gate=None):
    from .lookahead import LookaheadDrafter

    options = session.options
    return LookaheadDrafter(pool, window=options.target_window, guesses=options.target_guesses,
                            max_nodes=options.ouroboros.max_target_nodes, max_paths=session.verifier.max_paths)


def _sd(session, pool, gate=None):
    from .draft_model import DraftModelDrafter

    return DraftModelDrafter(session.draft, n_ctx=session.context.n_ctx, options=session.options)


def _ouroboros(session, pool, gate=None):
    from .adaptive import AdaptiveDrafter
    from .ouroboros import OuroborosDrafter

    options = session.options
    if session.draft is None:  # the draft-free mode: the window and the pool on the target itself
        drafter = _lookahead(session, pool)
    else:
        drafter = OuroborosDrafter(session.draft, pool, n_ctx=session.context.n_ctx, threads=options.threads,
                                   params=options.ouroboros, flash_attn=options.flash_attn,
                                   kv_type=options.kv_type, max_paths=session.verifier.max_paths)
    return AdaptiveDrafter(drafter, arms=gate) if options.adaptive else drafter


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ar", "target only, one token per forward (the baseline)", False, True, _ar),
    Method("sd", "speculative decoding: a chain from the draft model", True, False, _sd),
    Method("pld", "prompt lookup: chains copied from the context", False, True, _pld),
    Method("lookahead", "a Jacobi window and a phrase pool on the target (no draft model)", False, True, _lookahead),
    Method("ouroboros", "phrase drafting on the draft model, pool lengthening, a speed gate "
           "(without a draft: lookahead's mode)", False, True, _ouroboros),
)}


def method(name: str) -> Method:
    """The registry entry of a method name ("NAME-cold": bench's cold-pool variant of NAME)."""
    from ..errors import OuroborosError

    base = name.removesuffix("-cold")
    if base not in METHODS:
        raise OuroborosError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[base]


def __getattr__(name: str):  # Drafter and NoDraft without importing the model code up front
    if name in ("Drafter", "NoDraft"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "Method", "method", "Drafter", "NoDraft"]
