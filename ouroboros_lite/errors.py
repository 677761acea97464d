"""User-facing errors. The CLI prints their message on one line and exits non-zero."""


class OuroborosError(Exception):
    """Base class of every error ouroboros-lite raises on bad input or environment."""


class ModelFileError(OuroborosError):
    """A model file is missing, is not GGUF, is truncated or llama.cpp cannot load it."""


class CatalogError(OuroborosError):
    """An unknown catalog name, a failed download or a checksum mismatch."""


class PromptTooLongError(OuroborosError):
    """The prompt does not fit in the context window."""


class PrefillInterrupted(OuroborosError):
    """A cancel arrived while the prompt was being decoded; the KV cache is as it was before."""


class VocabularyMismatchError(OuroborosError):
    """Target and draft models do not share a tokenizer."""
