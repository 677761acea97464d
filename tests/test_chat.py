"""The chat REPL, driven through a pseudo-terminal like a user (or a script waiting for "> ")."""

from __future__ import annotations

import io
import json
import re
import sys
import time

import pexpect

PROMPT = "\r\n> "


def spawn(target_path, *args, env=None):
    child = pexpect.spawn(sys.executable, ["-m", "ouroboros_lite", "chat", "--model", str(target_path), "-t", "2",
                                           "--no-warm-pool", *args],
                          encoding="utf-8", timeout=180, env=env, dimensions=(40, 200))
    child.expect("(^|\r\n)> ")
    return child


def stats(child) -> str:
    child.sendline("/stats")
    child.expect(PROMPT)
    return child.before


def test_two_turns_reuse_the_cache_then_ctrl_c_reset_save_and_eof(target_path, draft_path, tmp_path):
    child = spawn(target_path, "--draft", str(draft_path), "--temp", "0", "-n", "24")
    child.sendline("My name is Zed. Please remember my name.")
    child.expect(PROMPT)
    first = stats(child)
    first_prompt = int(re.search(r"prompt: (\d+) tokens, 0 reused", first).group(1))
    assert "tokens per target forward" in first and "acceptance" in first and "tok/s" in first

    child.sendline("What is my name?")
    child.expect(PROMPT)
    second = stats(child)
    total, reused, decoded = map(int, re.search(r"prompt: (\d+) tokens, (\d+) reused from the cache, (\d+) decoded",
                                                second).groups())
    assert reused >= first_prompt  # the whole first turn came from the KV cache
    assert decoded == total - reused and decoded < 30  # only the new turn was decoded

    # Ctrl-C mid-reply: back at the prompt, the conversation still there
    child.sendline("/system You are a storyteller. Your stories are very long.")
    child.expect(PROMPT)
    child.sendline("Tell me a very long story about a dragon.")
    child.expect("dragon.\r\n")  # the terminal's echo of the line
    child.expect(r"\w+\s+\w+\s+\w+")  # the reply has begun
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect(PROMPT)
    child.sendline("Thank you.")
    child.expect(PROMPT)
    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect(PROMPT)
    roles = [m["role"] for m in json.loads(saved.read_text())["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant"]

    child.sendline("/reset")
    child.expect(r"\[conversation cleared\]")
    child.expect(PROMPT)
    child.sendline("Hello!")
    child.expect(PROMPT)
    assert re.search(r"prompt: \d+ tokens, 0 reused", stats(child))

    child.sendline("/help")
    child.expect("/save FILE")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_full_context_drops_old_turns_and_carries_on(target_path, tmp_path):
    # llama.cpp rounds the context up to 256 cells; replies of up to 96 tokens are reserved
    child = spawn(target_path, "--temp", "0", "-n", "96", "--ctx-size", "256")
    log = io.StringIO()
    child.logfile_read = log
    for question in ["Write a long essay about the ocean.", "Write a long essay about mountains.",
                     "Write a long essay about deserts.", "Describe a city."]:
        child.sendline(question)
        child.expect(PROMPT)
    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect(PROMPT)
    # Ctrl-C at the prompt exits (also when this test runs in a background job, whose children
    # inherit an ignored SIGINT: the REPL installs its own handler). A short pause, as a person's.
    time.sleep(0.5)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    transcript = log.getvalue()
    assert "[context full: dropped the" in transcript and "Traceback" not in transcript
    messages = json.loads(saved.read_text())["messages"]
    assert messages[-2] == {"role": "user", "content": "Describe a city."}
    assert {"role": "user", "content": "Write a long essay about the ocean."} not in messages  # oldest first


def test_show_drafts_colours_draft_tokens(target_path, draft_path):
    child = spawn(target_path, "--draft", str(draft_path), "--temp", "0", "-n", "24", "--show-drafts")
    child.sendline("List three colours.")
    child.expect(PROMPT)
    assert "\x1b[32m" in child.before  # tokens the draft proposed are green
    child.sendeof()
    child.expect(pexpect.EOF)


def test_set_load_and_the_colour_legend(draft_path, tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"model": "other.gguf", "messages": [
        {"role": "user", "content": "My name is Zed."}, {"role": "assistant", "content": "Hello Zed."}]}))
    child = spawn(draft_path, "--temp", "0.7", "-s", "7", "--show-drafts", "-n", "40")
    assert "seed 7" in child.before  # the banner names the seed when sampling
    child.sendline("/set n 3")
    child.expect(PROMPT)
    assert "[n = 3]" in child.before
    child.sendline("/set temp 0")
    child.expect(PROMPT)
    child.sendline("/set top-p 7")
    child.expect(PROMPT)
    assert "top-p must be in" in child.before  # refused, the old value stays
    child.sendline("/set")
    child.expect(PROMPT)
    assert "n 3" in child.before and "temp 0.0" in child.before
    child.sendline(f"/load {saved}")
    child.expect(PROMPT)
    assert "loaded 2 messages" in child.before and "saved with other.gguf" in child.before
    child.sendline("What is my name?")
    child.expect(PROMPT)
    assert "colours:" in child.before  # the legend, on the first coloured reply
    reply = stats(child)
    assert "reply: 3 tokens" in reply
    assert re.search(r"prompt: (\d+) tokens", reply) and int(re.search(r"prompt: (\d+)", reply).group(1)) > 15
    child.sendline(f"/load {tmp_path / 'missing.json'}")
    child.expect(PROMPT)
    assert "could not read" in child.before
    child.sendline("/exit")
    child.expect(pexpect.EOF)
