"""llama.cpp's RPC backend (ggml-rpc): a model's layers on `ggml-rpc-server` processes, given as
llama.cpp's `--rpc HOST:PORT[,HOST:PORT...]`.

llama-cpp-python's `Llama` dropped `rpc_servers`, so we register the servers through ggml's backend
registry ourselves (as llama.cpp's common/arg.cpp does) and hand their devices to the model's
`llama_model_params.devices`. ggml's RPC client aborts the process on any failure (a server that is
down, speaks another protocol version, or dies), so before registering a server we say HELLO to it
ourselves with a timeout, and a failure later, mid-generation, ends the process with one line naming
the servers instead of an abort with a backtrace (`install_abort_message`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from pathlib import Path

import llama_cpp

from .errors import OuroborosError

# ggml-rpc's wire protocol in the pinned llama.cpp (ggml/include/ggml-rpc.h, ggml-rpc.cpp)
PROTOCOL_MAJOR, PROTOCOL_MINOR = 7, 0
_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_REPLY_SIZE = 4 + _CONN_CAPS_SIZE  # major, minor, patch, padding, conn_caps
HELLO_TIMEOUT_S = 5.0
EXIT_RPC_LOST = 75  # EX_TEMPFAIL: the servers may be back later
_DEVICE_TYPE_GPU, _DEVICE_TYPE_IGPU = 1, 2


class RpcError(OuroborosError):
    pass


def parse_servers(value: str | None) -> tuple[str, ...]:
    """`--rpc` as llama.cpp reads it: comma-separated HOST:PORT; '' or None = no servers."""
    if value is None:
        return ()
    if not isinstance(value, str):
        raise RpcError(f"rpc must be a string of HOST:PORT[,HOST:PORT...], got {type(value).__name__}")
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    for server in servers:
        _host_port(server)
    if len(set(servers)) != len(servers):
        raise RpcError(f"--rpc names a server twice: {value}")
    return servers


def _host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"--rpc takes HOST:PORT (like 127.0.0.1:50052), got {server!r}")
    return host, int(port)


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed the connection")
        data += chunk
    return data


def check_server(server: str, timeout: float = HELLO_TIMEOUT_S) -> tuple[int, int, int]:
    """Say HELLO to one rpc-server and return its protocol version; RpcError (one line) if it is down,
    silent, or speaks another version. What ggml itself would abort the process on."""
    host, port = _host_port(server)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _receive(sock, 8))
            if size != _HELLO_REPLY_SIZE:
                raise RpcError(f"RPC server {server} speaks another protocol than this build's "
                               f"v{PROTOCOL_MAJOR}.{PROTOCOL_MINOR} (its HELLO reply has {size} bytes): "
                               "run ggml-rpc-server from the same llama.cpp version (README, RPC)")
            major, minor, patch = _receive(sock, _HELLO_REPLY_SIZE)[:3]
    except RpcError:
        raise
    except socket.timeout:
        raise RpcError(f"RPC server {server} did not answer within {timeout:g} s "
                       "(busy with another client, or not an rpc-server)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RpcError(f"cannot reach RPC server {server}: {reason} (is ggml-rpc-server running there?)") from None
    if major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        raise RpcError(f"RPC server {server} speaks protocol v{major}.{minor}.{patch}, this build "
                       f"v{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: run ggml-rpc-server from the same llama.cpp version")
    return major, minor, patch


class _Ggml:
    """The few ggml backend-registry calls we need, from the libggml llama-cpp-python already mapped."""

    def __init__(self):
        lib = ctypes.CDLL(str(mapped_library("ggml")))
        p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, restype, argtypes in (
                ("ggml_backend_reg_by_name", p, [s]), ("ggml_backend_reg_get_proc_address", p, [p, s]),
                ("ggml_backend_register", None, [p]), ("ggml_backend_reg_dev_count", i, [p]),
                ("ggml_backend_reg_dev_get", p, [p, i]), ("ggml_backend_reg_name", s, [p]),
                ("ggml_backend_dev_count", i, []), ("ggml_backend_dev_get", p, [i]),
                ("ggml_backend_dev_type", ctypes.c_int, [p]), ("ggml_backend_dev_backend_reg", p, [p]),
                ("ggml_backend_dev_by_type", p, [ctypes.c_int])):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        self.lib = lib


def mapped_library(name: str) -> Path:
    """The file of llama-cpp-python's lib<name> that this process already mapped. Its wheel holds
    copies, not links (libggml.so, libggml.so.0, ...): opening another copy would give a second ggml
    with a registry and an abort callback of its own."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = Path(line.split(maxsplit=5)[-1].strip())
                if path.parent == lib_dir and path.name.startswith(f"lib{name}.so"):
                    return path
    except OSError:  # no /proc (macOS, Windows): there the names are links or single files
        pass
    for candidate in (f"lib{name}.so.0", f"lib{name}.so", f"lib{name}.0.dylib", f"lib{name}.dylib", f"{name}.dll"):
        if (lib_dir / candidate).is_file():
            return lib_dir / candidate
    raise RpcError(f"llama-cpp-python's lib{name} is not in {lib_dir}")


_lock = threading.Lock()
_ggml: _Ggml | None = None
_registered: dict[str, list[int]] = {}  # server -> its device pointers, once registered with ggml
_abort_callback = None


def _library() -> _Ggml:
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def ggml_library(name: str = "ggml") -> ctypes.CDLL:
    """llama-cpp-python's own lib<name> ("ggml", "ggml-base"), the copy this process already mapped."""
    return _library().lib if name == "ggml" else ctypes.CDLL(str(mapped_library(name)))


def supported() -> bool:
    """Whether this llama-cpp-python was built with the RPC backend (CMAKE_ARGS=-DGGML_RPC=on)."""
    return bool(llama_cpp.llama_supports_rpc())


def in_use() -> bool:
    return bool(_registered)


def server_devices(servers: tuple[str, ...]) -> list[int]:
    """ggml devices of the servers, each server checked and registered once per process."""
    if not servers:
        return []
    if not supported():
        raise RpcError("this llama-cpp-python was built without RPC: reinstall it with "
                       "CMAKE_ARGS=\"-DGGML_RPC=on\" (README, RPC)")
    devices = []
    with _lock:
        ggml = _library().lib
        for server in servers:
            if server not in _registered:
                check_server(server)
                install_abort_message()
                rpc = ggml.ggml_backend_reg_by_name(b"RPC")
                add_server = ggml.ggml_backend_reg_get_proc_address(rpc, b"ggml_backend_rpc_add_server")
                if not add_server:
                    raise RpcError("this build's RPC backend has no ggml_backend_rpc_add_server")
                reg = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add_server)(server.encode())
                if not reg:
                    raise RpcError(f"RPC server {server} offers no devices")
                ggml.ggml_backend_register(reg)
                _registered[server] = [ggml.ggml_backend_reg_dev_get(reg, i)
                                       for i in range(ggml.ggml_backend_reg_dev_count(reg))]
            devices += _registered[server]
    return devices


def local_gpu_devices() -> list[int]:
    """This machine's GPUs as llama.cpp picks them by default (dedicated GPUs, else integrated ones),
    RPC devices left out."""
    ggml = _library().lib
    gpus, igpus = [], []
    for index in range(ggml.ggml_backend_dev_count()):
        device = ggml.ggml_backend_dev_get(index)
        if ggml.ggml_backend_reg_name(ggml.ggml_backend_dev_backend_reg(device)) == b"RPC":
            continue
        kind = ggml.ggml_backend_dev_type(device)
        if kind == _DEVICE_TYPE_GPU:
            gpus.append(device)
        elif kind == _DEVICE_TYPE_IGPU:
            igpus.append(device)
    return gpus or igpus[:1]


def device_list(servers: tuple[str, ...]) -> ctypes.Array | None:
    """The NULL-terminated llama_model_params.devices for a model on `servers` (RPC devices first, as llama.cpp orders them,
    then the local GPUs), or None (llama.cpp's default) while no RPC server is registered in the process:
    once one is, llama.cpp's default would put every model on it."""
    remote = server_devices(servers)
    if not remote and not in_use():
        return None
    chosen = remote + local_gpu_devices()
    return (ctypes.c_void_p * (len(chosen) + 1))(*chosen, None)


def install_abort_message() -> None:
    """ggml aborts the process when an RPC server stops answering mid-generation (ggml-rpc.cpp's
    RPC_STATUS_ASSERT, in its dispatcher thread; nothing can unwind it). Make that one line naming the
    servers and exit code EXIT_RPC_LOST instead of an abort with a backtrace and a core dump."""
    global _abort_callback
    if _abort_callback is not None:
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def on_abort(message):
        text = (message or b"").decode("utf-8", "replace").split(": ", 1)[-1].strip()
        servers = ", ".join(_registered) or "none"
        os.write(2, f"ouroboros-lite: llama.cpp stopped: {text} (RPC servers: {servers})\n".encode())
        os._exit(EXIT_RPC_LOST)

    lib = ctypes.CDLL(str(mapped_library("ggml-base")))
    lib.ggml_set_abort_callback.restype = ctypes.c_void_p
    lib.ggml_set_abort_callback.argtypes = [ctypes.c_void_p]
    lib.ggml_set_abort_callback(ctypes.cast(on_abort, ctypes.c_void_p))
    _abort_callback = on_abort  # kept alive for the process
