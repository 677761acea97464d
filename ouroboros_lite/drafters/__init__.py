"""Drafters: where the guesses that the target verifies come from."""

from .base import Drafter, NoDraft

__all__ = ["Drafter", "NoDraft"]
