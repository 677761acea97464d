"""What llama-cli, Ollama and LM Studio users reach for first, through the real CLI on the small
Q4_1 model (greedy `ar`, a handful of tokens): -f, --system without --chat, max_tokens from the
config file and the environment, -n -1, and `bench --repeat`."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

import pytest

GREEDY = ["--method", "ar", "-t", "1", "--temp", "0", "--no-warm-pool"]


def run(*args, env=None, cwd=None):
    done = subprocess.run([sys.executable, "-m", "ouroboros_lite", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


def generated(done) -> int:
    return int(re.search(r"generated (\d+) tok", done.stderr).group(1))


def test_a_prompt_from_a_file_is_the_prompt(draft_path, tmp_path):
    (tmp_path / "p.txt").write_text("The capital of France is", encoding="utf-8")
    from_file = run("generate", "-m", draft_path, "-f", tmp_path / "p.txt", "-n", 8, *GREEDY)
    from_flag = run("generate", "-m", draft_path, "-p", "The capital of France is", "-n", 8, *GREEDY)
    assert from_file.stdout == from_flag.stdout and from_file.stdout.strip()


def test_a_system_prompt_implies_chat(draft_path):
    implied = run("generate", "-m", draft_path, "-p", "Name a colour.", "--system", "Answer in French.", "-n", 8, *GREEDY)
    explicit = run("generate", "-m", draft_path, "-p", "Name a colour.", "--system", "Answer in French.", "--chat",
                   "-n", 8, *GREEDY)
    raw = run("generate", "-m", draft_path, "-p", "Name a colour.", "-n", 8, *GREEDY)
    assert implied.stdout == explicit.stdout != raw.stdout


@pytest.mark.parametrize("where", ["config", "environment"])
def test_max_tokens_comes_from_the_config_file_and_the_environment(draft_path, tmp_path, where):
    # a prompt that does not end soon, so exactly max_tokens are generated
    prompt = ["-p", "Count from 1 to 100: 1, 2, 3,"]
    if where == "config":
        (tmp_path / "config.toml").write_text("max_tokens = 5\n")
        env = {"OUROBOROS_LITE_CONFIG": str(tmp_path / "config.toml")}
    else:
        env = {"OUROBOROS_LITE_MAX_TOKENS": "5"}
    assert generated(run("generate", "-m", draft_path, *prompt, *GREEDY, env=env)) == 5
    assert generated(run("generate", "-m", draft_path, *prompt, "-n", 7, *GREEDY, env=env)) == 7  # the flag wins
    shown = run("config", env=env).stdout
    assert re.search(r"^max_tokens\s+5\s+(config file|environment)", shown, re.M), shown


def test_n_minus_1_generates_until_the_context_is_full(draft_path):
    done = run("generate", "-m", draft_path, "-p", "Count from 1 to 1000: 1, 2, 3,", "-n", -1, "-c", 256, *GREEDY)
    prompt = int(re.search(r"prompt (\d+) tok", done.stderr).group(1))
    # counting does not end by itself: past the default 128 tokens, up to what the context holds
    assert 128 < generated(done) and prompt + generated(done) <= 256, done.stderr


def test_bench_repeat_reports_medians_and_spreads(draft_path, tmp_path):
    out = tmp_path / "bench.json"
    done = run("bench", "--model", draft_path, "--methods", "ar,pld", "--limit", 2, "-n", 8, "-t", 1, "--repeat", 2,
               "--json", out)
    assert "x 2 repeats" in done.stdout and "median x" in done.stdout and "min-max x" in done.stdout
    data = json.loads(out.read_text())
    assert data["repeat"] == 2 and data["target"] == draft_path.name and data["machine"]
    for row in data["all"]:
        assert all(len(runs) == 2 for runs in row["runs"].values()) and len(row["runs"]) == 2
        low, high = row["speedup_range"]
        assert low <= row["median_speedup"] <= high
        ratio = {p: statistics.median(runs) / statistics.median(data["all"][0]["runs"][p])
                 for p, runs in row["runs"].items()}
        assert ratio[str(row["slowest_prompt"])] == pytest.approx(low)
        assert ratio[str(row["fastest_prompt"])] == pytest.approx(high)
    pld = data["all"][1]
    assert re.search(rf"^pld: slowest prompt {pld['slowest_prompt']} \[\w+\] {pld['speedup_range'][0]:.2f}x, "
                     rf"fastest prompt {pld['fastest_prompt']} \[\w+\] {pld['speedup_range'][1]:.2f}x$",
                     done.stdout, re.M), done.stdout
    assert data["all"][0]["median_speedup"] == 1.0  # ar over itself


def test_models_lists_the_cache_and_rm_removes_a_model(tmp_path, draft_path):
    import shutil

    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / draft_path.name).symlink_to(draft_path)  # "cached" in a temporary cache
    shutil.copy(draft_path.with_name(draft_path.name + ".verified"), cache / "models")
    env = {"OUROBOROS_LITE_CACHE": str(cache)}
    listed = run("models", env=env).stdout
    assert listed.startswith("NAME") and re.search(r"^smollm2-135m-instruct-q4_1 .* yes ", listed, re.M), listed
    assert f"cache: {cache / 'models'} (1 of " in listed
    unknown = subprocess.run([sys.executable, "-m", "ouroboros_lite", "models", "rm", "no-such-model"],
                             capture_output=True, text=True, env={**os.environ, **env})
    assert unknown.returncode == 1 and "unknown model 'no-such-model'" in unknown.stderr
    assert (cache / "models" / draft_path.name).exists()  # nothing removed by a failed rm
    removed = run("models", "rm", "smollm2-135m-instruct-q4_1", env=env).stdout
    assert "removed smollm2-135m-instruct-q4_1" in removed and not (cache / "models" / draft_path.name).exists()
    assert draft_path.is_file()  # the real cache is untouched
    assert "(0 of " in run("models", env=env).stdout
    assert "freed 0 MB" in run("models", "rm", "--all", env=env).stdout


def test_the_stats_line_has_timings_and_the_seed_that_repeats_a_sampled_text(draft_path):
    sampled = ["generate", "-m", draft_path, "-p", "Tell me a story.", "-n", 12, "--method", "ar", "-t", 1,
               "--temp", "0.9", "--no-warm-pool"]
    first = run(*sampled)
    seed = int(re.search(r"seed (\d+)", first.stderr).group(1))
    assert re.search(r"first token \d+\.\d+ s, total \d+\.\d+ s, load \d+\.\d+ s", first.stderr), first.stderr
    again = run(*sampled, "-s", seed)
    assert again.stdout == first.stdout and f"seed {seed}" in again.stderr
    greedy = run("generate", "-m", draft_path, "-p", "Hi", "-n", 4, *GREEDY)
    assert "seed" not in greedy.stderr


def test_pull_from_the_hub_offline_is_one_quick_line(tmp_path):
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once the socket is closed
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ouroboros_lite", "pull", "qwen2.5-0.5b-instruct-q8_0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed}",
                               "OUROBOROS_LITE_CACHE": str(tmp_path)})
    assert done.returncode == 1 and time.perf_counter() - started < 30
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Hugging Face Hub (127.0.0.1) is unreachable" in lines[0], done.stderr


def test_a_local_gguf_shows_up_in_models_with_its_pairing(draft_path, target_path, tmp_path):
    import shutil

    cache = {"OUROBOROS_LITE_CACHE": str(tmp_path / "cache")}
    local = tmp_path / "my-model.gguf"
    shutil.copy(draft_path, local)
    run("generate", "-m", local, "--draft", target_path, "-n", 2, *GREEDY, env=cache)
    listing = run("models", env=cache).stdout
    row = next(line for line in listing.splitlines() if str(local.resolve()) in line)
    assert "MB" in row and f"{target_path.name} (compatible)" in row, listing
    forgot = run("models", "rm", local, env=cache)
    assert "no longer listed" in forgot.stdout and local.is_file()
    assert str(local.resolve()) not in run("models", env=cache).stdout
