"""GGUF files a user ran from their own paths (not catalog models), remembered for `ouroboros-lite models`
as `ollama list` remembers pulled ones: the path, size, llama.cpp's description of the model, and each
model it was paired with, with whether their vocabularies matched (the draft compatibility that was
detected when both were loaded). Kept in `<cache>/local-models.json`; bookkeeping never fails a run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .catalog import cache_dir, models_dir

COMPATIBLE, INCOMPATIBLE = "compatible", "vocabulary differs"


def registry_file() -> Path:
    return cache_dir() / "local-models.json"


def read() -> dict[str, dict]:
    """path -> {"size", "description", "last_used", "role", "pairs": {other path: COMPATIBLE|INCOMPATIBLE}}"""
    try:
        data = json.loads(registry_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) else {}


def _is_local(path: Path) -> bool:
    return models_dir().resolve() not in path.resolve().parents


def remember(target, draft=None, compatibility: str | None = None) -> None:
    """Record the loaded Model(s) that came from local paths; `compatibility` of the pair, if both loaded."""
    models = [(target, "target", draft), (draft, "draft", target)]
    local = [(model, role, other) for model, role, other in models if model is not None and _is_local(model.path)]
    if not local:
        return
    files = read()
    for model, role, other in local:
        key = str(model.path.resolve())
        record = files.get(key, {})
        pairs = record.get("pairs") if isinstance(record.get("pairs"), dict) else {}
        if other is not None and compatibility is not None:
            pairs[str(other.path.resolve())] = compatibility
        files[key] = {"size": model.path.stat().st_size, "description": model.description, "role": role,
                      "last_used": time.strftime("%Y-%m-%d %H:%M"), "pairs": pairs}
    try:
        path = registry_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(files, indent=1), encoding="utf-8")
        partial.replace(path)
    except OSError:
        pass


def forget(path: str) -> bool:
    """Drop a file from the list (the file itself is the user's and stays); False if it was not listed."""
    files = read()
    key = str(Path(path).expanduser().resolve())
    if key not in files:
        return False
    del files[key]
    registry_file().write_text(json.dumps(files, indent=1), encoding="utf-8")
    return True
