"""ouroboros-lite: Ouroboros speculative decoding on llama.cpp, exact to the target's own output."""

from .engine import Completion, Engine, EngineBusyError, EngineClosedError
from .errors import OuroborosError
from .generate import GenerationResponse, SpecStats
from .runtime import Runtime, RuntimeOptions
from .sampling import SamplingParams

__all__ = ["Completion", "Engine", "EngineBusyError", "EngineClosedError", "GenerationResponse", "OuroborosError",
           "Runtime", "RuntimeOptions", "SamplingParams", "SpecStats"]
__version__ = "0.1.0"
