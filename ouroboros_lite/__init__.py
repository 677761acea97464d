"""ouroboros-lite: Ouroboros speculative decoding on llama.cpp, exact to the target's own output."""

from importlib import import_module

from .errors import OuroborosError

# Loaded on first use (PEP 562), so that `ouroboros-lite` reports a broken install (llama.cpp or the
# native library) as a one-line error from its command instead of a traceback at import.
_LAZY = {"Completion": ".engine", "Engine": ".engine", "EngineBusyError": ".engine",
         "EngineClosedError": ".engine", "GenerationResponse": ".generate", "SpecStats": ".stats",
         "Models": ".runtime", "Runtime": ".runtime", "RuntimeOptions": ".runtime", "Session": ".runtime",
         "SamplingParams": ".sampling"}

__all__ = [*_LAZY, "OuroborosError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'ouroboros_lite' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)
