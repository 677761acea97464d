"""The embeddable API: the README's example, cancellation from another thread, the busy lock, config layers."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ouroboros_lite import Engine, EngineBusyError, EngineClosedError, OuroborosError
from ouroboros_lite.runtime import ContextSizeWarning

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_runs(draft_path):
    example = re.search(r"### Python API\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.match(r"\d+ tokens, [\d.]+ tok/s, (stop|length)", lines[1])
    cached, prompt = map(int, re.search(r"\((\d+) of (\d+) prompt tokens were cached\)", lines[-1]).groups())
    assert 0 < cached < prompt


@pytest.fixture(scope="module")
def engine(draft_path):
    with Engine(target=draft_path, threads=2, n_ctx=2048) as engine:
        yield engine


def test_cancel_from_another_thread_stops_within_a_step(engine):
    stream = engine.generate("Once upon a time", max_tokens=400, stream=True)
    first = next(stream)
    assert first
    counts = []

    def consume():
        for _ in stream:
            counts.append(engine.last.generation_tokens)

    worker = threading.Thread(target=consume)
    engine.cancel()  # before the worker asks for the next step
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert engine.last.finish_reason == "cancelled"
    # the cancel was seen before any further decode step: at most what the first step had emitted
    assert engine.last.generation_tokens <= 1 + engine.runtime.verifier.max_nodes
    assert engine.generate("Hello", max_tokens=4).generation_tokens == 4  # usable again


def test_a_second_concurrent_call_gets_a_clear_error(engine):
    stream = engine.generate("The river", max_tokens=64, stream=True)
    next(stream)
    with pytest.raises(EngineBusyError, match="already generating"):
        engine.generate("Another", max_tokens=4)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_try(lambda: engine.chat(
        [{"role": "user", "content": "hi"}], max_tokens=4))))
    thread.start()
    thread.join()
    assert isinstance(errors[0], EngineBusyError)
    stream.close()
    assert engine.generate("Again", max_tokens=3).generation_tokens == 3
    unused = engine.generate("Never iterated", max_tokens=3, stream=True)
    unused.close()  # releases the lock although it never ran
    assert engine.generate("Once more", max_tokens=2).finish_reason == "length"


def _try(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def test_chat_turns_reuse_the_cache_and_match_a_fresh_greedy_run(engine):
    messages = [{"role": "user", "content": "Name a colour."}]
    first = engine.chat(messages, max_tokens=16, temperature=0.0)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Another one?"}]
    second = engine.chat(messages, max_tokens=16, temperature=0.0)
    assert second.cached_tokens >= first.prompt_tokens
    engine.reset()
    fresh = engine.chat(messages, max_tokens=16, temperature=0.0)
    assert fresh.cached_tokens == 0
    assert fresh.text == second.text  # greedy: the reused cache changes nothing the user sees


def test_bad_options_are_named(draft_path):
    with pytest.raises(OuroborosError, match="unknown Engine option"):
        Engine(target=draft_path, temprature=0.5)
    with pytest.raises(OuroborosError, match="top-p"):
        Engine(target=draft_path, top_p=2.0)


def test_config_file_env_and_flags_layer_in_order(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('temperature = 0.3\ntop_k = 11\nthreads = 3\nmethod = "pld"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OUROBOROS_LITE_CONFIG": str(config),
           "OUROBOROS_LITE_TOP_K": "22", "OUROBOROS_LITE_THREADS": "5"}
    done = subprocess.run([sys.executable, "-m", "ouroboros_lite", "config", "--threads", "7"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert re.search(r"temperature\s+0\.3\s+config file", rows["temperature"])
    assert re.search(r"top_k\s+22\s+environment OUROBOROS_LITE_TOP_K", rows["top_k"])
    assert re.search(r"threads\s+7\s+command line", rows["threads"])
    assert re.search(r"method\s+'?pld'?\s+config file", rows["method"])
    assert re.search(r"top_p\s+0\.95\s+default", rows["top_p"])
    bad = subprocess.run([sys.executable, "-m", "ouroboros_lite", "config"], capture_output=True, text=True,
                         env={**env, "OUROBOROS_LITE_TOP_K": "many"}, timeout=60)
    assert bad.returncode == 1 and "OUROBOROS_LITE_TOP_K" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("call, message", [
    (lambda e: e.generate("hi", max_tokens=2, top_k="a"), "top-k must be a whole number"),
    (lambda e: e.generate("hi", max_tokens=None), "max_tokens must be a positive whole number"),
    (lambda e: e.generate(None, max_tokens=2), "prompt must be a string"),
    (lambda e: e.chat([{"role": "user"}], max_tokens=2), "'role' and 'content' strings"),
    (lambda e: e.chat("hello", max_tokens=2), "non-empty list"),
    (lambda e: e.generate("caf\ud800", max_tokens=2), "lone surrogate U\\+D800"),
    (lambda e: e.chat([{"role": "user", "content": "\udcff"}], max_tokens=2), "not valid Unicode"),
    (lambda e: e.generate("hi", max_tokens=2, repeat_penalty=float("nan")), "repeat-penalty must be a finite"),
    (lambda e: e.generate("hi", max_tokens=2, temperature=0.5, seed=2**64), "seed must be below 2\\*\\*64"),
], ids=["top_k", "max_tokens", "prompt", "content", "messages", "surrogate", "chat-surrogate", "nan", "seed"])
def test_api_misuse_raises_a_named_error_that_says_what_to_change(engine, call, message):
    with pytest.raises(OuroborosError, match=message):
        call(engine)
    assert engine.generate("Hi", max_tokens=1).generation_tokens == 1  # the lock was not left held


@pytest.mark.parametrize("options, message", [
    ({"ngram": 1}, "ngram must be a whole number of at least 2"),
    ({"max_tree_nodes": -5}, "max_tree_nodes must be a whole number of at least 1"),
    ({"threads": 0}, "threads must be"),
    ({"top_k": "a"}, "top-k must be a whole number"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
])
def test_bad_engine_options_are_named_errors(draft_path, options, message):
    with pytest.raises(OuroborosError, match=message):
        Engine(target=draft_path, **options)


def test_tiny_contexts_are_raised_to_a_working_minimum(draft_path):
    for n_ctx in range(1, 16):  # each aborted inside llama.cpp (GGML_ASSERT n_outputs_max)
        with pytest.warns(ContextSizeWarning, match=rf"not {n_ctx} \(raised to the minimum of 64"):
            engine = Engine(target=draft_path, n_ctx=n_ctx, threads=1)
        with engine:
            assert engine.n_ctx >= 64
            assert engine.generate("Hello", max_tokens=2).generation_tokens == 2


def test_close_from_another_thread_cancels_and_waits_for_the_stream(draft_path):
    for delay in (0.0, 0.05, 0.3):  # before the first step, during prefill, mid-stream
        engine = Engine(target=draft_path, threads=1, n_ctx=512)
        stream = engine.generate("Once upon a time, " * 20, max_tokens=400, stream=True)
        pieces = []
        worker = threading.Thread(target=lambda: pieces.extend(stream))
        worker.start()
        time.sleep(delay)
        engine.close()  # freed the models under the running decode: a heap use-after-free (exit 139)
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert engine.last is None or engine.last.finish_reason == "cancelled"
        with pytest.raises(EngineClosedError, match="closed"):
            engine.generate("Hi", max_tokens=1)


def test_a_closed_engine_raises_a_named_error(draft_path):
    engine = Engine(target=draft_path, threads=1, n_ctx=512)
    paused = engine.generate("Hello", max_tokens=50, stream=True)
    next(paused)
    engine.close()  # the same thread holds a started stream: closed, not waited for forever
    assert list(paused) == []
    engine.close()  # twice is fine
    for call in (lambda: engine.generate("Hi"), lambda: engine.chat([{"role": "user", "content": "Hi"}]),
                 lambda: engine.reset(), lambda: engine.n_ctx):
        with pytest.raises(EngineClosedError, match="create a new Engine"):
            call()


def test_engine_uses_the_pairs_tuned_parameters_as_the_cli_does(draft_path, tmp_path, monkeypatch):
    import json
    from dataclasses import asdict, replace

    from ouroboros_lite.catalog import CACHE_ENV
    from ouroboros_lite.drafters.ouroboros import OuroborosParams
    from ouroboros_lite.tune import tuning_path

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    tuned = replace(OuroborosParams(), window=2, draft_guesses=3, max_target_nodes=12)
    path = tuning_path(draft_path, None)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"params": asdict(tuned)}))
    with Engine(target=draft_path, threads=2, n_ctx=256) as engine:
        assert engine.runtime.options.ouroboros == tuned
    explicit = OuroborosParams()
    with Engine(target=draft_path, threads=2, n_ctx=256, ouroboros=explicit) as engine:  # a given value wins
        assert engine.runtime.options.ouroboros == explicit


def test_tokenize_and_detokenize_round_trip(engine):
    tokens = engine.tokenize("Hello, world", add_special=False)
    assert tokens and engine.detokenize(tokens) == "Hello, world"
    with pytest.raises(OuroborosError, match="token ids must be whole numbers"):
        engine.detokenize([10**9])
    with pytest.raises(OuroborosError, match="text must be a string"):
        engine.tokenize(None)


def test_on_token_sees_every_piece_and_a_raising_callback_frees_the_engine(engine):
    pieces = []
    done = engine.generate("The sky is", max_tokens=12, temperature=0.0, on_token=pieces.append)
    assert "".join(pieces) == done.text and len(pieces) > 1

    def boom(piece):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        engine.generate("The sky is", max_tokens=12, temperature=0.0, on_token=boom)
    assert engine.generate("The sky is", max_tokens=12, temperature=0.0).text == done.text


def test_async_generation_leaves_the_event_loop_free(engine):
    import asyncio

    reference = engine.generate("Once upon a time", max_tokens=24, temperature=0.0).text

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        pieces = [piece async for piece in engine.agenerate("Once upon a time", max_tokens=24, temperature=0.0)]
        async for _ in engine.achat([{"role": "user", "content": "Count to twenty."}], max_tokens=64):
            break  # leaving early ends the generation and frees the Engine
        task.cancel()
        return pieces, ticks

    pieces, ticks = asyncio.run(main())
    assert "".join(pieces) == reference
    assert ticks > len(pieces)  # the loop ran other tasks between (and during) the steps
    assert engine.last.finish_reason == "cancelled"
    assert engine.generate("Once upon a time", max_tokens=24, temperature=0.0).text == reference


def test_logprobs_are_the_targets_and_speculation_leaves_them_unchanged(target_path, draft_path):
    import math

    runs = {}
    for method in ("ouroboros", "ar"):
        with Engine(target_path, draft_path, method=method, threads=2, kv_type="f32") as engine:
            runs[method] = engine.generate("The capital of France is", max_tokens=24, temperature=0, logprobs=True)
            assert not engine.generate("Hi", max_tokens=2).logprobs  # only when asked for
    plain, reference = runs["ouroboros"], runs["ar"]
    assert plain.tokens == reference.tokens and len(plain.logprobs) == len(plain.tokens) == 24
    assert all(lp <= 0 for lp in plain.logprobs)
    # the same distributions, computed in tree batches or one token at a time: they differ by the
    # kernels' rounding (measured up to 0.0035 nats here), a wrong row would be off by whole nats
    assert plain.logprobs == pytest.approx(reference.logprobs, abs=1e-2)
    assert max(math.exp(lp) for lp in plain.logprobs) > 0.5  # greedy picks likely tokens
    assert plain.spec.accepted_tokens > 0  # some tokens came from drafts


def test_cancel_interrupts_a_long_prompt_decode_and_leaves_the_cache_whole(target_path):
    prompt = " ".join(f"item{i}" for i in range(270))  # about 1000 tokens: seconds of prefill here
    with Engine(target_path, method="ar", threads=2, n_ctx=4096) as engine:
        full = engine.generate(prompt, max_tokens=2, temperature=0)
        assert full.prompt_seconds > 1.0, "the prompt is too short to show an interrupted prefill"
        engine.reset()
        timer = threading.Timer(0.2, engine.cancel)
        started = time.perf_counter()
        timer.start()
        cut = engine.generate(prompt, max_tokens=2, temperature=0, reuse_cache=True)
        waited = time.perf_counter() - started - 0.2
        timer.join()
        assert cut.finish_reason == "cancelled" and cut.generation_tokens == 0
        assert waited < max(0.3, full.prompt_seconds / 4), f"cancel took {waited:.2f} s of a {full.prompt_seconds:.2f} s prefill"
        again = engine.generate(prompt, max_tokens=2, temperature=0, reuse_cache=True)
        assert again.text == full.text  # the cache holds nothing half-decoded
