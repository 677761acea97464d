"""`ouroboros-lite serve` as clients use it: a real server process on an ephemeral loopback port, the
official `openai` client (httpx for what that client would never send), the small Q4_1 model.

Greedy output through the server (default method, several requests at once) must equal what a
plain `ar` Engine in this process says for the same prompt.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from ouroboros_lite import Engine

KEY = "test-key"
CTX = 1024
README = Path(__file__).resolve().parent.parent / "README.md"
CHAT = ["Name three colours.", "What is the capital of France?", "Write a haiku about the sea.",
        "Give two tips for sleeping well.", "List three fruits.", "What is 12 times 7?"]
TEXT = ["The history of the Roman Empire begins", "def fibonacci(n):\n",
        "Once upon a time, in a small village by the sea,", "Here is a recipe for pancakes. Ingredients:"]
COUNTING = "Count from 1 to 1000: 1, 2, 3,"  # a long reply that does not end by itself


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/v1
    log: Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, headers=headers, timeout=120, **kwargs)

    def get(self, path: str, key: str | None = KEY) -> httpx.Response:
        return httpx.get(self.root + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)

    def metrics(self) -> dict[str, float]:
        text = self.get("/metrics").text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}

    def rss_kb(self) -> int | None:
        status = Path(f"/proc/{self.proc.pid}/status")
        if not status.exists():
            return None
        return int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_server(model: Path, log: Path, *flags: str, env: dict | None = None) -> Server:
    argv = [sys.executable, "-m", "ouroboros_lite", "serve", "--model", str(model), "--port", "0", "-t", "2",
            "-c", str(CTX), *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            env={**os.environ, **(env or {})})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if match:
            return Server(proc, match.group(1), log)
    proc.kill()
    pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(draft_path, tmp_path_factory):
    server = start_server(draft_path, tmp_path_factory.mktemp("serve") / "server.log", "--parallel", "3",
                          "--queue", "8", "--api-key", KEY, "--no-warm-pool")
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]  # SIGTERM with nothing running: a clean exit
    assert "Traceback" not in server.log.read_text()


class Reference:
    """What a plain `ar` Engine says (greedy), per (kind, prompt, max_tokens), computed once."""

    def __init__(self, engine: Engine):
        self.engine, self.done = engine, {}

    def __call__(self, kind: str, prompt: str, max_tokens: int):
        key = (kind, prompt, max_tokens)
        if key not in self.done:
            if kind == "chat":
                self.done[key] = self.engine.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                                  temperature=0.0)
            else:
                self.done[key] = self.engine.generate(prompt, max_tokens=max_tokens, temperature=0.0)
        return self.done[key]


@pytest.fixture(scope="module")
def reference(draft_path):
    with Engine(target=draft_path, method="ar", threads=2, n_ctx=CTX) as engine:
        yield Reference(engine)


def ask(server: Server, kind: str, prompt: str, max_tokens: int, *, stream: bool, **extra):
    """(text, finish_reason, usage dict, timings dict) of one request through the openai client."""
    client = server.client()
    if kind == "chat":
        call = partial_create(client.chat.completions.create, messages=[{"role": "user", "content": prompt}])
    else:
        call = partial_create(client.completions.create, prompt=prompt)
    extra.setdefault("temperature", 0)
    if not stream:
        reply = call(model="any", max_tokens=max_tokens, **extra)
        choice = reply.choices[0]
        text = choice.message.content if kind == "chat" else choice.text
        return text, choice.finish_reason, reply.usage.model_dump(), reply.timings
    pieces, finish, usage, timings = [], None, None, None
    for chunk in call(model="any", max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
                      **extra):
        for choice in chunk.choices:
            pieces.append((choice.delta.content if kind == "chat" else choice.text) or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage.model_dump() if chunk.usage else usage
        timings = getattr(chunk, "timings", None) or timings
    return "".join(pieces), finish, usage, timings


def partial_create(create, **fixed):
    return lambda **kwargs: create(**fixed, **kwargs)


def check_usage(usage: dict, timings: dict, expected) -> None:
    assert usage["prompt_tokens"] == expected.prompt_tokens
    assert usage["completion_tokens"] == expected.generation_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == timings["cache_n"]
    assert timings["predicted_n"] == usage["completion_tokens"]
    assert 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
    assert timings["predicted_per_second"] >= 0 and timings["prompt_ms"] > 0


# --- answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_greedy_answers_equal_ar_with_usage_and_timings(server, reference, kind, stream):
    prompts = CHAT if kind == "chat" else TEXT
    for prompt in prompts[:2]:
        expected = reference(kind, prompt, 24)
        text, finish, usage, timings = ask(server, kind, prompt, 24, stream=stream)
        assert text == expected.text, prompt
        assert finish == expected.finish_reason
        check_usage(usage, timings, expected)


def test_a_stream_sends_whole_characters(server, reference):
    prompt = "日本語の挨拶: こんにちは、"  # its katakana reply takes two tokens per character
    # a length whose reply ends on a whole character (where the reply goes depends on the CPU's kernels)
    length = next(n for n in (24, 23, 25, 22, 26) if "\ufffd" not in reference("completion", prompt, n).text)
    expected = reference("completion", prompt, length)
    stream = server.client().completions.create(model="any", prompt=prompt, max_tokens=length, temperature=0,
                                                stream=True)
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices and chunk.choices[0].text]
    assert "".join(pieces) == expected.text and "\ufffd" not in expected.text
    assert len(pieces) < expected.generation_tokens  # some tokens were only parts of a character


def test_a_conversation_returns_to_the_slot_that_holds_it(server):
    client = server.client()
    first = [{"role": "user", "content": "Tell me about the planet Mars in two sentences."}]
    reply = client.chat.completions.create(model="any", messages=first, max_tokens=16, temperature=0)
    other = [{"role": "user", "content": "Write one line about tea."}]
    client.chat.completions.create(model="any", messages=other, max_tokens=8, temperature=0)
    turn = first + [{"role": "assistant", "content": reply.choices[0].message.content},
                    {"role": "user", "content": "And Venus?"}]
    second = client.chat.completions.create(model="any", messages=turn, max_tokens=8, temperature=0)
    # the first turn's prompt and answer came from the KV cache of its slot, not decoded again
    assert second.timings["cache_n"] >= reply.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == second.timings["cache_n"]
    # completions too: an editor's prompts that share a beginning decode only what differs
    prefix = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"
    one = client.completions.create(model="any", prompt=prefix, max_tokens=4, temperature=0)
    two = client.completions.create(model="any", prompt=prefix + "    return", max_tokens=4, temperature=0)
    assert two.timings["cache_n"] >= one.usage.prompt_tokens - 1


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_stop_strings_end_the_text_before_them_streamed_or_not(server, reference, kind):
    prompt = CHAT[4] if kind == "chat" else COUNTING
    full = reference(kind, prompt, 32).text
    middle = len(full) // 2
    stop = full[middle:middle + 5]  # several tokens, so a stream sees its beginning first
    expected = full[:full.index(stop)]
    for stream in (False, True):
        text, finish, _, _ = ask(server, kind, prompt, 32, stream=stream, stop=["\u2603never", stop])
        assert (text, finish) == (expected, "stop"), (stream, stop)
    text, finish, _, _ = ask(server, kind, prompt, 32, stream=True, stop="\u2603never")
    assert text == full


def test_a_seed_reproduces_a_sampled_answer(server):
    def sampled(seed, stream=False):
        return ask(server, "chat", "Invent a name for a cat.", 16, stream=stream, temperature=1.0, seed=seed,
                   extra_body={"top_k": 0, "top_p": 1.0, "min_p": 0.0})[0]

    first = sampled(7)
    assert sampled(7) == first and sampled(7, stream=True) == first
    assert {sampled(8), sampled(9)} != {first}  # another seed, another draw (two tries: a tie is possible)


def test_unknown_fields_are_ignored(server):
    body = {"model": "gpt-4o", "messages": [{"role": "developer", "content": "Be brief."},
                                            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_tokens": 4, "logit_bias": {}, "tools": [], "whatever": {"x": 1}, "user": "u-1", "n": 1,
            "presence_penalty": 0, "frequency_penalty": 0.0}
    response = server.post("/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_penalties_and_logprobs_through_the_openai_client(server):
    client = server.client()
    plain = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say blue blue blue."}],
                                           max_tokens=12, temperature=0, logprobs=True)
    entries = plain.choices[0].logprobs.content
    assert len(entries) == plain.usage.completion_tokens and all(e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries).startswith(plain.choices[0].message.content[:8])
    penalised = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say blue blue blue."}],
                                               max_tokens=12, temperature=0, presence_penalty=2.0,
                                               frequency_penalty=2.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    response = server.post("/chat/completions", {**HI, "logprobs": True, "stream": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"


def test_models_health_and_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert server.get("/health").json()["status"] == "ok"
    server.post("/completions", {"prompt": "Hello", "max_tokens": 3})
    metrics = server.metrics()
    assert metrics['ouroboros_lite_requests_total{outcome="finished"}'] >= 1
    assert metrics["ouroboros_lite_generated_tokens_total"] >= 3
    assert metrics["ouroboros_lite_slots"] == 3 and metrics["ouroboros_lite_queue_depth"] == 0
    assert 0 <= metrics["ouroboros_lite_acceptance_ratio"] <= 1


# --- load -------------------------------------------------------------------------------------------
def test_concurrent_clients_each_get_their_own_prompts_answer(server, reference):
    """8 clients x 10 requests (chat and completion, streamed and not, 8 to 32 tokens) on 3 slots:
    every answer equals its own prompt's `ar` output, within a time bound, and memory comes back."""
    plans = []
    for client in range(8):
        plan = []
        for i in range(10):
            kind = "chat" if (client + i) % 2 == 0 else "completion"
            prompts = CHAT if kind == "chat" else TEXT
            plan.append((kind, prompts[(client * 10 + i) % len(prompts)], (8, 16, 24, 32)[(client + 2 * i) % 4],
                         (client + i) % 3 == 0))
        plans.append(plan)
    for plan in plans:
        for kind, prompt, n, _ in plan:
            reference(kind, prompt, n)

    def run(plan):
        return [ask(server, kind, prompt, n, stream=stream)[:2] for kind, prompt, n, stream in plan]

    with ThreadPoolExecutor(8) as pool:  # one round first: every slot has decoded, buffers are allocated
        list(pool.map(lambda plan: run(plan[:1]), plans))
    before = server.rss_kb()
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, plans))
    elapsed = time.monotonic() - start
    for plan, got in zip(plans, answers):
        for (kind, prompt, n, stream), (text, finish) in zip(plan, got):
            expected = reference(kind, prompt, n)
            assert (text, finish) == (expected.text, expected.finish_reason), (kind, prompt, n, stream)
    assert elapsed < 300, f"80 short requests took {elapsed:.0f} s"  # a hang, not a slow machine
    after = server.rss_kb()
    if before:
        assert after <= before * 1.10, f"RSS grew from {before} to {after} kB"
    metrics = server.metrics()
    assert metrics["ouroboros_lite_slots_busy"] == 0 and metrics["ouroboros_lite_queue_depth"] == 0


# --- faults -------------------------------------------------------------------------------------------
HI = {"messages": [{"role": "user", "content": "Hi"}]}
BAD = [
    ("/chat/completions", b"{not json", None, "invalid_json"),
    ("/chat/completions", b"[1, 2]", None, None),
    ("/chat/completions", b"[" * 100_000, None, "invalid_json"),
    ("/chat/completions", b"\xff\xfe\x00garbage", None, "invalid_json"),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature",
     None),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages", None),
    ("/chat/completions", {"model": "m"}, "messages", None),
    ("/chat/completions", {"messages": []}, "messages", None),
    ("/chat/completions", {"messages": "hi"}, "messages", None),
    ("/chat/completions", {"messages": ["hi"]}, "messages[0]", None),
    ("/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", None),
    ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    ("/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content", None),
    ("/chat/completions", {**HI, "max_tokens": 0}, "max_tokens", None),
    ("/chat/completions", {**HI, "max_tokens": -5}, "max_tokens", None),
    ("/chat/completions", {**HI, "max_tokens": "12"}, "max_tokens", None),
    ("/chat/completions", {**HI, "max_tokens": 10**12}, "max_tokens", "context_length_exceeded"),
    ("/chat/completions", {**HI, "max_completion_tokens": 0}, "max_completion_tokens", None),
    ("/chat/completions", {**HI, "temperature": "hot"}, "temperature", None),
    ("/chat/completions", {**HI, "temperature": -1}, "temperature", None),
    ("/chat/completions", {**HI, "top_p": 0}, "top_p", None),
    ("/chat/completions", {**HI, "top_k": 2.5}, "top_k", None),
    ("/chat/completions", {**HI, "seed": "x"}, "seed", None),
    ("/chat/completions", {**HI, "n": 2}, "n", None),
    ("/chat/completions", {**HI, "stop": 7}, "stop", None),
    ("/chat/completions", {**HI, "stop": [""]}, "stop", None),
    ("/chat/completions", {**HI, "stream": "yes"}, "stream", None),
    ("/chat/completions", {**HI, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options", None),
    ("/chat/completions", {**HI, "presence_penalty": -2.5}, "presence_penalty", None),
    ("/chat/completions", {**HI, "frequency_penalty": 9}, "frequency_penalty", None),
    ("/chat/completions", {"messages": [{"role": "user", "content": "word " * 2 * CTX}]}, "messages",
     "context_length_exceeded"),
    ("/completions", {"prompt": 5}, "prompt", None),
    ("/completions", {"prompt": ""}, "prompt", None),
    ("/completions", {"prompt": "word " * 2 * CTX}, "prompt", "context_length_exceeded"),
]


@pytest.mark.parametrize("path, body, param, code", BAD, ids=[f"{i}-{p[1:5]}" for i, (p, *_) in enumerate(BAD)])
def test_bad_requests_are_400_with_an_openai_error_and_the_server_stays_up(server, path, body, param, code):
    response = server.post(path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    if code:
        assert error["code"] == code
    assert server.proc.poll() is None
    assert server.get("/health").status_code == 200


def test_a_missing_or_wrong_api_key_is_401(server):
    for key in (None, "wrong", KEY + "x"):
        response = server.post("/chat/completions", {**HI, "max_tokens": 2}, key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert server.get("/v1/models", key=key).status_code == 401
        assert server.get("/metrics", key=key).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    assert server.post("/chat/completions", {**HI, "max_tokens": 2}).status_code == 200


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def first_piece(lines) -> str:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0].get("text"):
                return chunk["choices"][0]["text"]
    pytest.fail("the stream ended without text")


def test_the_queue_limit_answers_503_and_a_disconnect_frees_the_slot(draft_path, tmp_path):
    server = start_server(draft_path, tmp_path / "server.log", "--parallel", "1", "--queue", "1", "--no-warm-pool")
    try:
        long = {"prompt": COUNTING, "max_tokens": 900, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + "/completions", json=long, timeout=120) as streaming:
            lines = streaming.iter_lines()  # kept: a closed iterator closes the connection
            assert first_piece(lines)  # the one slot is generating
            waiting = ThreadPoolExecutor(1).submit(
                server.post, "/completions", {"prompt": "Name a colour:", "max_tokens": 8, "temperature": 0}, None)
            wait_for(lambda: server.get("/health").json()["queue_depth"] == 1, what="a waiting request")
            refused = server.post("/completions", {"prompt": "One more", "max_tokens": 2}, key=None)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
            assert not waiting.done()  # it waits for the slot, held by the long stream
        # the client went away: its generation is cancelled and the waiting request gets the slot
        served = waiting.result(timeout=60)
        assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] >= 1
        metrics = server.metrics()
        assert metrics['ouroboros_lite_requests_total{outcome="cancelled"}'] == 1
        assert metrics['ouroboros_lite_requests_total{outcome="rejected"}'] == 1
        assert metrics["ouroboros_lite_generated_tokens_total"] < 900
        # a non-streamed request whose client gives up is cancelled too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/completions", json={**long, "stream": False}, timeout=1.5)
        wait_for(lambda: server.metrics()['ouroboros_lite_requests_total{outcome="cancelled"}'] == 2,
                 what="the abandoned request to be cancelled")
        assert server.post("/completions", {"prompt": "Hi", "max_tokens": 2}, key=None).status_code == 200
    finally:
        assert server.stop() == 0


def test_sigterm_drains_saves_the_pool_and_exits_0(draft_path, tmp_path):
    cache = tmp_path / "cache"
    server = start_server(draft_path, tmp_path / "server.log", "--parallel", "2", "--drain-timeout", "3",
                          env={"OUROBOROS_LITE_CACHE": str(cache)})
    long = {"prompt": COUNTING, "max_tokens": 900, "temperature": 0, "stream": True}
    lines: list[str] = []
    started = threading.Event()

    def stream_long():
        with httpx.stream("POST", server.url + "/completions", json=long, timeout=120) as response:
            for line in filter(None, response.iter_lines()):
                lines.append(line)
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    started.set()

    reader = threading.Thread(target=stream_long)
    reader.start()
    assert started.wait(60)
    short = ThreadPoolExecutor(1).submit(server.post, "/chat/completions", {**HI, "max_tokens": 6}, None)
    wait_for(lambda: server.get("/health").json()["slots_processing"] == 2 or short.done(), what="both running")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.log.read_text()[-2000:]
    reader.join(30)
    assert lines[-1] == "data: [DONE]"
    closing = json.loads([line for line in lines if '"finish_reason": "' in line][-1][6:])
    assert closing["choices"][0]["finish_reason"] == "cancelled"  # 900 tokens do not fit in 3 s of draining
    reply = short.result(timeout=30)
    assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("length", "stop", "cancelled")
    assert list((cache / "pools").glob("*.pool")), "the phrase pool was not saved"
    assert "Traceback" not in server.log.read_text()


def test_the_readme_client_example_runs(server):
    example = re.search(r"### Server\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    example = example.replace("http://127.0.0.1:8080/v1", server.url).replace('api_key="none"', f'api_key="{KEY}"')
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) >= 2


@pytest.mark.parametrize("flags, message", [(["--port", "70000"], "--port must be in 0..65535"),
                                            (["--port", "{busy}"], "Address already in use"),
                                            (["--parallel", "0"], "must be a positive number"),
                                            (["--queue", "-1"], "must not be negative")])
def test_serve_flag_errors_are_one_line(draft_path, flags, message):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        flags = [f.format(busy=busy.getsockname()[1]) for f in flags]
        done = subprocess.run([sys.executable, "-m", "ouroboros_lite", "serve", "--model", str(draft_path), *flags],
                              capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode > 0 and len(lines) == 1 and message in lines[0], done.stderr


def test_the_default_slot_count_is_what_fits_from_2_to_4():
    from ouroboros_lite.server import slots_that_fit

    gib = 2**30
    assert slots_that_fit(gib, 64 * gib) == 4  # plenty of memory: the cap
    assert slots_that_fit(gib, 4 * gib) == 3  # two more slots would take over half of what is free
    assert slots_that_fit(gib, gib // 2) == 2  # never fewer than 2
    assert slots_that_fit(None, gib) == 4 and slots_that_fit(gib, None) == 4  # unknown: the cap
