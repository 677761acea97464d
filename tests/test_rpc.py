"""llama.cpp's RPC backend: the target's layers on ggml-rpc-server processes on loopback.

The first part needs no server: endpoint parsing and the HELLO check that turns what ggml would abort
the process on (a server down, silent, or on another protocol version) into one-line errors. The second
starts two real ggml-rpc-server processes (built by .ci/run with `python -m ouroboros_lite.llamacpp_tools
ggml-rpc-server`, from the pinned llama.cpp) and needs a llama-cpp-python built with GGML_RPC=on; it is
skipped where either is missing, unless OUROBOROS_LITE_TEST_RPC=required (CI) makes that a failure.
Every process a test starts, it stops."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ouroboros_lite import llamacpp_tools, rpc
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime
from support import PROMPTS, THREADS, assert_equal_or_tie, generate_ids, options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- no server needed -----------------------------------------------------------------------------

def test_server_lists_are_read_as_llama_cpp_reads_them():
    assert rpc.parse_servers("127.0.0.1:50052, 10.0.0.2:50053") == ("127.0.0.1:50052", "10.0.0.2:50053")
    assert rpc.parse_servers("[::1]:50052") == ("[::1]:50052",)
    assert rpc.parse_servers(None) == rpc.parse_servers("") == ()
    for bad in ("localhost", "host:", ":50052", "host:port", "host:0", "host:70000", "a:1,a:1"):
        with pytest.raises(rpc.RpcError):
            rpc.parse_servers(bad)
    with pytest.raises(OuroborosError, match="HOST:PORT"):
        options(rpc="no-port-here")


def test_a_server_that_is_down_is_one_line():
    with pytest.raises(rpc.RpcError, match=r"cannot reach RPC server 127\.0\.0\.1:\d+: .*ggml-rpc-server"):
        rpc.check_server(f"127.0.0.1:{free_port()}")


@contextmanager
def fake_server(reply: bytes | None):
    """A TCP server that answers one HELLO with `reply` (None: reads it and says nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(1 + 8 + 24)
            if reply is not None:
                conn.sendall(reply)
            stop.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_silent_server_times_out_in_bounded_time():
    with fake_server(None) as server:
        started = time.perf_counter()
        with pytest.raises(rpc.RpcError, match="did not answer within 0.5 s"):
            rpc.check_server(server, timeout=0.5)
        assert time.perf_counter() - started < 3


def test_a_server_on_another_protocol_version_is_named():
    hello = struct.pack("<Q", 28) + bytes([6, 0, 1, 0]) + bytes(24)  # a v6 server's reply
    with fake_server(hello) as server:
        with pytest.raises(rpc.RpcError, match=r"speaks protocol v6\.0\.1, this build v7\.0"):
            rpc.check_server(server)
    with fake_server(struct.pack("<Q", 4) + bytes(4)) as server:  # a reply of another shape
        with pytest.raises(rpc.RpcError, match="another protocol"):
            rpc.check_server(server)


def test_generate_with_a_server_that_is_down_exits_with_one_line(target_path):
    command = [sys.executable, "-m", "ouroboros_lite", "generate", "-m", str(target_path), "--draft", "none",
               "--rpc", f"127.0.0.1:{free_port()}", "-n", "4", "--no-warm-pool"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ouroboros-lite: error:"), done.stderr
    assert ("cannot reach RPC server" in lines[0]) if rpc.supported() else ("GGML_RPC=on" in lines[0])


# --- two real rpc-servers on loopback -------------------------------------------------------------

def _rpc_ready() -> None:
    missing = []
    if not rpc.supported():
        missing.append('llama-cpp-python built with RPC (CMAKE_ARGS="-DGGML_RPC=on")')
    if not llamacpp_tools.binary("ggml-rpc-server").is_file():
        missing.append("ggml-rpc-server (python -m ouroboros_lite.llamacpp_tools ggml-rpc-server)")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("OUROBOROS_LITE_TEST_RPC") == "required":
            pytest.fail(message)
        pytest.skip(message)


def _resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def two_servers():
    """Two ggml-rpc-server processes on 127.0.0.1, one thread each; stopped after the test."""
    _rpc_ready()
    processes, endpoints = [], []
    try:
        for _ in range(2):
            port = free_port()
            # through our CLI, which execs the cached ggml-rpc-server in place (the pid stays the server's)
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "ouroboros_lite", "rpc-server", "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            endpoints.append(f"127.0.0.1:{port}")
        for endpoint in endpoints:
            deadline = time.monotonic() + 30
            while True:
                try:
                    rpc.check_server(endpoint, timeout=2)
                    break
                except rpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield endpoints, processes
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


def test_rpc_server_build_only_names_the_cached_binary():
    _rpc_ready()
    done = subprocess.run([sys.executable, "-m", "ouroboros_lite", "rpc-server", "--build-only"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(llamacpp_tools.binary("ggml-rpc-server"))


def test_the_target_on_two_servers_decodes_exactly_like_local_ar(two_servers, pair, target_path, draft_path):
    endpoints, processes = two_servers
    prompt = PROMPTS[:2]
    before = [_resident_mb(p.pid) for p in processes]
    with Runtime(target_path, draft_path, method="ar", options=options(rpc=",".join(endpoints))) as remote:
        assert remote.models.target.rpc_servers == tuple(endpoints)
        grown = [_resident_mb(p.pid) - b for p, b in zip(processes, before)]
        # the F32 target is 540 MB: each server holds a share of its layers
        assert all(mb > 50 for mb in grown), f"the servers hold {grown} MB: the layers stayed local"
        ties = 0
        for text in prompt:
            tokens = pair.tokenize_prompt(text)
            reference = generate_ids(pair, tokens, 32, "ar")
            for method in ("ar", "sd", "ouroboros"):
                got = generate_ids(remote, tokens, 32, method)
                ties += assert_equal_or_tie(pair, tokens, reference, got, f"rpc {method} {text[:20]!r}")
        assert ties <= 1, f"{ties} near-ties over {len(prompt) * 3} generations"


def test_a_server_killed_mid_generation_ends_the_process_with_one_line(two_servers, target_path):
    endpoints, processes = two_servers
    command = [sys.executable, "-m", "ouroboros_lite", "generate", "-m", str(target_path), "--draft", "none",
               "--method", "ar", "--rpc", ",".join(endpoints), "-n", "4000", "-c", "4096", "-t", str(THREADS),
               "--no-warm-pool", "--prompt", "Count from one to a thousand: one, two, three,"]
    generation = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert generation.stdout.read(16), "no output before the kill"
        processes[1].kill()
        killed = time.monotonic()
        _, stderr = generation.communicate(timeout=60)
        assert time.monotonic() - killed < 30, "the error took too long"
    finally:
        if generation.poll() is None:
            generation.kill()
            generation.wait(10)
    text = stderr.decode(errors="replace")
    assert generation.returncode == rpc.EXIT_RPC_LOST, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1].startswith("ouroboros-lite: llama.cpp stopped:") and endpoints[1] in lines[-1], text
    assert "backtrace" not in text.lower() and "Aborted" not in text
