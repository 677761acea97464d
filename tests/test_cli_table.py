"""Nothing a user types, a file holds or the environment says takes the process down.

Each case runs the real `ouroboros-lite` executable and checks the promise: the expected exit code,
exactly one `ouroboros-lite: error: ...` line on stderr for an error (or exactly the one documented
warning for a run that goes on), no traceback, and nothing written outside a temporary cache: HOME,
the XDG directories and OUROBOROS_LITE_CACHE point into a temporary directory, the working directory
is an empty one, and models come from the real cache by path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import pexpect
import pytest
from gguf import GGUFReader

from ouroboros_lite.pool import PhrasePool
from ouroboros_lite.runtime import pair_id, pool_file

EXE = str(Path(sys.executable).with_name("ouroboros-lite"))
GEN = ["generate", "--model", "{q4}", "--prompt", "hi", "-n", "1", "-t", "1"]
AR = [*GEN, "--method", "ar"]
BENCH = ["bench", "--target", "{q4}", "--methods", "ar", "-n", "1", "--limit", "1", "-t", "1"]
CHAT = ["chat", "--model", "{q4}", "-n", "2", "-t", "1", "--temp", "0", "--no-warm-pool"]


@dataclass
class Case:
    id: str
    argv: list
    rc: int
    line: str | None = None  # regex for the one "ouroboros-lite: ..." line on stderr (None: no such line)
    env: dict = field(default_factory=dict)
    stdin: bytes = b""
    setup: object = None  # setup(paths) makes the files a case needs
    stdout: str | None = None  # regex stdout must match
    writes: tuple = ()  # files the case may create outside the cache, relative to the temporary root


def copy_with(src: Path, dst: Path, key: str, value) -> Path:
    """A copy of a GGUF file with one metadata value changed in place (same size)."""
    shutil.copyfile(src, dst)
    reader = GGUFReader(dst, "r+")
    part = reader.fields[key].parts[reader.fields[key].data[0]]
    if isinstance(value, str):
        part[:] = np.frombuffer(value.encode().ljust(len(part)), dtype=np.uint8)
    else:
        part[0] = value
    del reader
    return dst


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, draft_path):
    """Test GGUFs made from the small Q4_1 model: headers llama.cpp aborts on, a broken template."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        "layers1000": copy_with(draft_path, root / "layers1000.gguf", "llama.block_count", 1000),
        "layers29": copy_with(draft_path, root / "layers29.gguf", "llama.block_count", 29),
        # no marker llama.cpp's own template matcher knows, so it goes to Jinja, which cannot parse it
        "template": copy_with(draft_path, root / "template.gguf", "tokenizer.chat_template",
                              "{% for m in messages %}{{ m.content "),
    }


def pool_at(paths) -> Path:
    with mock.patch.dict(os.environ, {"OUROBOROS_LITE_CACHE": str(paths["cache"])}):
        path = pool_file(paths["q4"], None, 5)  # the default method's pool for the Q4_1 model
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def saved_pool(tokens, model_id=None):
    def setup(paths):
        pool = PhrasePool(phrase_length=4, capacity=8)
        pool.insert(5, tokens)
        pool.save(pool_at(paths), model_id=model_id(paths) if model_id else pair_id(paths["q4"], None))
    return setup


def fifo(paths):
    os.mkfifo(pool_at(paths))


def directory(paths):
    pool_at(paths).mkdir()


def huge(paths):
    with open(pool_at(paths), "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB that take no disk


def file_at(name: str, data: bytes):
    def setup(paths):
        (paths["root"] / name).write_bytes(data)
    return setup


def config_file(text: str):
    def setup(paths):
        (paths["root"] / "config.toml").write_text(text)
    return setup


CASES = [
    # 1. small contexts: raised to the minimum and said so; what llama.cpp pads to is said too
    *[Case(f"ctx-{c}", [*AR, "-c", str(c)], 0, rf"warning: context size 256 tokens, not {c} \(raised to the minimum")
      for c in (1, 8, 15)],
    Case("ctx-env", AR, 0, r"warning: context size 256 tokens, not 8", env={"OUROBOROS_LITE_CTX_SIZE": "8"}),
    Case("ctx-config", AR, 0, r"warning: context size 256 tokens, not 8",
         env={"OUROBOROS_LITE_CONFIG": "{root}/config.toml"}, setup=config_file("ctx-size = 8\n")),
    Case("ctx-chat", [*CHAT, "-c", "8"], 0, r"warning: context size 256 tokens, not 8", stdin=b"hi\n"),
    Case("ctx-64-padded", [*AR, "-c", "64"], 0, r"warning: context size 256 tokens, not 64 \(rounded up by llama.cpp"),
    # 2. hyper-parameters llama.cpp's loader asserts on, refused before it sees them
    Case("gguf-layers-1000", [*AR[:2], "{layers1000}", *AR[3:]], 1, r"error: .*block_count is 1000, outside 1\.\.512"),
    Case("gguf-layers-mismatch", [*AR[:2], "{layers29}", *AR[3:]], 1, r"error: .*block_count is 29 but .* 30 layers"),
    Case("gguf-tune", ["tune", "--model", "{layers1000}", "-t", "1"], 1, r"error: .*block_count is 1000"),
    # 4. pool files: checked against the vocabulary and the model, bounded, regular files only
    Case("pool-oov", GEN, 0, r"warning: phrase pool .* holds token 1000000, outside this model's vocabulary",
         setup=saved_pool((1, 2, 3, 10**6))),
    Case("pool-negative", GEN, 0, r"warning: phrase pool .* holds token -7, outside", setup=saved_pool((1, -7, 3, 4))),
    Case("pool-other-model", GEN, 0, r"warning: phrase pool .* was learnt on another model",
         setup=saved_pool((1, 2, 3, 4), model_id=lambda paths: pair_id(paths["f32"], None))),
    Case("pool-fifo", GEN, 0, r"warning: phrase pool .* cannot be read \(not a regular file\)", setup=fifo),
    Case("pool-directory", GEN, 0, r"warning: phrase pool .* cannot be read", setup=directory),
    Case("pool-huge", GEN, 0, r"warning: phrase pool .* more than a pool file holds", setup=huge),
    # 6. the cache directory is a file: an error where a model must be fetched, a warning where only
    # the pool is lost; a relative XDG_CACHE_HOME is ignored (no write into the working directory)
    Case("cache-file-pull", ["pull", "smollm2-135m-instruct-q4_1"], 1,
         r"error: .*Not a directory.*OUROBOROS_LITE_CACHE",
         env={"OUROBOROS_LITE_CACHE": "{root}/cachefile"}, setup=file_at("cachefile", b"x")),
    Case("cache-file-default-model", ["generate", "-n", "1", "-t", "1"], 1, r"error: .*Not a directory",
         env={"OUROBOROS_LITE_CACHE": "{root}/cachefile"}, setup=file_at("cachefile", b"x")),
    Case("cache-file-pool", GEN, 0, r"warning: the phrase pool was not saved .*Not a directory",
         env={"OUROBOROS_LITE_CACHE": "{root}/cachefile"}, setup=file_at("cachefile", b"x")),
    Case("xdg-relative", GEN, 0, None, env={"OUROBOROS_LITE_CACHE": None, "XDG_CACHE_HOME": "relcache"},
         writes=("home/.cache/ouroboros-lite",)),
    # input that is not text, numbers that are not numbers
    Case("stdin-bad-utf8", [*AR[:4], "-", *AR[5:]], 0, None, stdin=b"caf\xe9 \xff"),
    Case("argv-bad-utf8", [*AR[:4], b"caf\xe9", *AR[5:]], 1,
         r"error: the text is not valid Unicode: invalid UTF-8 byte 0xe9"),
    Case("seed-2**64", [*AR, "--temp", "0.5", "-s", str(2**64)], 1, r"error: seed must be below 2\*\*64"),
    *[Case(f"{flag}-{value}", [*AR, f"{flag}={value}"], 2, rf"error: argument {flag}.*: must be a finite number")
      for flag, value in [("--repeat-penalty", "nan"), ("--temp", "inf"), ("--top-p", "nan"), ("--min-p", "-inf")]],
    Case("env-nan", AR, 1, r"error: OUROBOROS_LITE_TEMPERATURE: temperature must be a number",
         env={"OUROBOROS_LITE_TEMPERATURE": "nan"}),
    Case("env-ngram-negative", GEN, 1, r"error: OUROBOROS_LITE_NGRAM: ngram must be at least 2; got -3",
         env={"OUROBOROS_LITE_NGRAM": "-3"}),
    Case("flag-ngram-1", [*GEN, "--ngram", "1"], 1, r"error: .*ngram must be at least 2; got 1"),
    Case("threads-1000", [*GEN[:-1], "1000", "--method", "ar"], 0,
         r"warning: 1000 threads asked for, but \d+ CPU cores are available"),
    Case("broken-template-generate", [*AR[:2], "{template}", *AR[3:], "--chat"], 1,
         r"error: template\.gguf has a broken chat template"),
    Case("broken-template-chat", [*CHAT[:2], "{template}", *CHAT[3:]], 1, r"error: template\.gguf has a broken chat",
         stdin=b"hi\n"),
    # llama-cli habits: -f, -n -1, -b, -fa, max_tokens from the environment
    Case("file-missing", [*AR[:3], "-f", "{root}/absent.txt", *AR[5:]], 1, r"error: --file .*absent\.txt: cannot read"),
    Case("file-not-utf8", [*AR[:3], "-f", "{root}/p.txt", *AR[5:]], 1, r"error: --file .*not UTF-8",
         setup=file_at("p.txt", b"caf\xe9")),
    Case("file-and-prompt", [*AR, "-f", "{root}/p.txt"], 2, r"error: argument -f/--file: not allowed with"),
    Case("n-minus-1", [*AR[:5], "-n", "-1", "-c", "256", "-t", "1", "--method", "ar"], 0, None),
    Case("n-zero", [*AR[:5], "-n", "0", *AR[7:]], 2, r"error: argument -n/--max-tokens: must be a positive number or -1"),
    Case("env-max-tokens-0", GEN[:5], 1, r"error: max_tokens must be a positive number or -1",
         env={"OUROBOROS_LITE_MAX_TOKENS": "0"}),
    Case("batch-too-small", [*AR, "-b", "8"], 1, r"error: --batch-size must be at least 49"),
    Case("flash-attn-off", [*AR, "-fa", "off"], 0, None),
    # bench: bad prompt files and unwritable outputs fail before the run
    *[Case(f"bench-{name}", [*BENCH, "--prompts", f"{{root}}/{name}.jsonl"], 1, rf"error: .*{name}\.jsonl.*{message}",
           setup=file_at(f"{name}.jsonl", data))
      for name, data, message in [
          ("malformed", b'{"turns": ["hi"]}\n{"turns": [\n', r"line 2: not JSON"),
          ("no-turns", b'{"category": "x"}\n', r"line 1: expected a JSON object with \"turns\""),
          ("empty-turns", b'{"turns": []}\n', r"line 1: expected a JSON object"),
          ("list", b"[1, 2]\n", r"line 1: expected a JSON object"),
          ("empty", b"", r"the file holds no prompts"),
          ("not-utf8", b'{"turns": ["caf\xe9"]}\n', r"not UTF-8 text")]],
    Case("bench-json-no-dir", [*BENCH, "--json", "{root}/absent/out.json"], 1, r"error: --json .*does not exist"),
    Case("bench-png-is-dir", [*BENCH, "--png", "{root}"], 1, r"error: --png .*it is a directory"),
    Case("bench-temperature-nan", [*BENCH, "--temperatures", "0,nan"], 1, r"error: --temperatures takes numbers"),
    # 5. chat: /save does not overwrite unless told to; \"\"\" blocks make one multi-line message
    Case("chat-save-refuses", CHAT, 0, None, stdin=b"/save {root}/work/kept.json\n",
         setup=file_at("work/kept.json", b"{}\n"), stdout=r"kept\.json exists; /save! .* replaces it"),
    Case("chat-multiline", CHAT, 0, None, stdin=b'"""\nfirst line\nsecond line\n"""\n/save {root}/work/t.json\n',
         stdout=r"saved 2 messages", writes=("work/t.json",)),
]


@pytest.fixture
def paths(tmp_path, draft_path, target_path, crafted):
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    return {"root": tmp_path, "cache": tmp_path / "cache", "q4": draft_path, "f32": target_path, **crafted}


def environment(paths, case: Case) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUROBOROS_LITE_", "XDG_"))}
    env.update(HOME=str(paths["root"] / "home"), XDG_CONFIG_HOME=str(paths["root"] / "xdg-config"),
               XDG_CACHE_HOME=str(paths["root"] / "xdg-cache"), OUROBOROS_LITE_CACHE=str(paths["cache"]))
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.format(**paths)
    return env


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))  # files and directories


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_case(case: Case, paths):
    if case.setup:
        (paths["root"] / "work").mkdir(exist_ok=True)
        case.setup(paths)
    before = files_under(paths["root"])
    argv = [a.format(**paths) if isinstance(a, str) else a for a in case.argv]
    done = subprocess.run([EXE, *argv], input=case.stdin.replace(b"{root}", str(paths["root"]).encode()),
                          capture_output=True, env=environment(paths, case), cwd=paths["root"] / "work", timeout=180)
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert "Traceback" not in err + out and "Exception ignored" not in err, err
    assert done.returncode == case.rc, (done.returncode, err)
    ours = [line for line in err.splitlines() if line.startswith("ouroboros-lite:")]
    if case.line is None:
        assert ours == [], err
    else:
        assert len(ours) == 1 and re.search(case.line, ours[0]), err
    if case.rc != 0:
        assert [line for line in err.splitlines() if line.strip()] == ours, err  # the one line, nothing else
    if case.stdout:
        assert re.search(case.stdout, out), out
    allowed = [paths["cache"], *(paths["root"] / w for w in case.writes)]
    new = [p for p in files_under(paths["root"]) - before
           if not any(p == a or a in p.parents or p in a.parents for a in allowed)]
    assert new == [], f"written outside the cache: {new}"


def test_ctrl_d_during_a_reply_ends_the_chat_after_it(draft_path, tmp_path):
    child = pexpect.spawn(EXE, [*CHAT[:2], str(draft_path), "-n", "48", "-t", "1", "--no-warm-pool"],
                          encoding="utf-8", timeout=120, cwd=str(tmp_path),
                          env={**os.environ, "OUROBOROS_LITE_CACHE": str(tmp_path / "cache")})
    child.expect("(^|\r\n)> ")
    child.sendline("Tell me a long story about a dragon.")
    child.expect(r"dragon\.\r\n")  # the terminal's echo
    child.expect(r"\w+\s+\w+")  # the reply has begun
    child.sendeof()
    child.expect(pexpect.EOF)  # before: the chat sat at its prompt forever, the EOF lost
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before


def test_ctrl_c_while_the_model_loads_exits_130(target_path, tmp_path):
    child = pexpect.spawn(EXE, ["chat", "--model", str(target_path), "-t", "1", "--no-warm-pool"], encoding="utf-8",
                          timeout=120, cwd=str(tmp_path),
                          env={**os.environ, "OUROBOROS_LITE_VERBOSE": "1", "OUROBOROS_LITE_CACHE": str(tmp_path)})
    child.expect("llama_model_loader: loaded meta data")  # llama.cpp is loading the model now
    child.kill(signal.SIGINT)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert "Exception ignored" not in child.before and "Traceback" not in child.before
    assert "ouroboros-lite chat:" not in child.before  # the chat did not start anyway
