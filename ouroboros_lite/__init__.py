"""ouroboros-lite: Ouroboros speculative decoding on llama.cpp, exact to the target's greedy output."""

from .errors import OuroborosError
from .generate import GenerationResponse, SpecStats
from .runtime import Runtime, RuntimeOptions

__all__ = ["GenerationResponse", "OuroborosError", "Runtime", "RuntimeOptions", "SpecStats"]
__version__ = "0.1.0"
