"""Bad input: one clear line on stderr, a non-zero exit, no traceback, no crash."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ouroboros_lite", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode not in (0,) and done.returncode > 0, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "error" in lines[0] and expected in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_clean_error(run_cli("generate", "--model", str(tmp_path / "absent.gguf"), "-n", "4"), "not found")


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("these are not model weights\n")
    assert_clean_error(run_cli("generate", "--model", str(bogus), "-n", "4"), "not a GGUF file")


@pytest.mark.parametrize("keep_bytes", [3000, 50_000_000])
def test_truncated_gguf(tmp_path, draft_path, keep_bytes):
    truncated = tmp_path / "truncated.gguf"
    with open(draft_path, "rb") as src:
        truncated.write_bytes(src.read(keep_bytes))
    assert_clean_error(run_cli("generate", "--model", str(truncated), "-n", "4"), "could not load")


def test_unknown_catalog_name():
    assert_clean_error(run_cli("generate", "--model", "no-such-model", "-n", "4"), "unknown model")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_non_positive_token_count(n, draft_path):
    assert_clean_error(run_cli("generate", "--model", str(draft_path), "-n", n), "positive")


def test_prompt_longer_than_context(draft_path):
    long_prompt = "word " * 600
    done = run_cli("generate", "--model", str(draft_path), "-c", "256", "-n", "4", "--prompt", long_prompt)
    assert_clean_error(done, "context holds 256")


def test_generate_streams_text_and_stats(draft_path):
    done = run_cli("generate", "--model", str(draft_path), "--chat", "-n", "24", "-t", "2",
                   "--prompt", "Name three colours.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "tok/s" in done.stderr.splitlines()[-1]
