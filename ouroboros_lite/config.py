"""Layered settings: built-in defaults < TOML config file < environment variables < command line.

The config file is `config_path()`: $OUROBOROS_LITE_CONFIG, else the platform's config directory.
It holds flat top-level keys named as in `SETTINGS` (dashes allowed: `ctx-size`), e.g.

    model = "smollm2-135m-instruct-f32"
    temperature = 0.7
    gpu_layers = 99

Each setting can also come from $OUROBOROS_LITE_<NAME> (`OUROBOROS_LITE_GPU_LAYERS=20`; an empty
value sets an optional setting to None) and from the command line, whose argparse dest names equal
the setting names. `resolve` merges the layers and records where each value came from.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .drafters import METHODS as _REGISTRY
from .errors import OuroborosError

CONFIG_ENV = "OUROBOROS_LITE_CONFIG"
ENV_PREFIX = "OUROBOROS_LITE_"
METHODS = tuple(_REGISTRY)  # the decoding methods (drafters/__init__.py registers them)
REPACK_SETTINGS = ("auto", "on", "off", "avx2", "amx")  # CPU weight repacking (llama.cpp's --repack/--no-repack)


class Setting(NamedTuple):
    type: type  # str, int, float or bool; the setting may also be None exactly when its default is None
    default: Any
    help: str

    @property
    def optional(self) -> bool:
        return self.default is None


SETTINGS: dict[str, Setting] = {
    "model": Setting(str, None, "target model: catalog name or .gguf path"),
    "draft": Setting(str, None, "draft model: catalog name or .gguf path"),
    # the fastest exact method for what was given: with a draft the full method, else its draft-free mode
    "method": Setting(str, "ouroboros", "decoding method: " + ", ".join(METHODS)),
    "threads": Setting(int, None, "CPU threads (None = automatic)"),
    "ctx_size": Setting(int, 4096, "context size in tokens"),
    "gpu_layers": Setting(int, 0, "target layers to offload to the GPU"),
    "draft_gpu_layers": Setting(int, 0, "draft layers to offload to the GPU"),
    "temperature": Setting(float, None, "sampling temperature (None = the command's own default)"),
    "top_k": Setting(int, 40, "top-k sampling"),
    "top_p": Setting(float, 0.95, "top-p (nucleus) sampling"),
    "min_p": Setting(float, 0.05, "min-p sampling"),
    "repeat_penalty": Setting(float, 1.0, "repetition penalty (1.0 = off)"),
    "presence_penalty": Setting(float, 0.0, "subtracted from the logit of every token seen (0.0 = off)"),
    "frequency_penalty": Setting(float, 0.0, "subtracted, times its count, from a seen token's logit (0.0 = off)"),
    "repeat_last_n": Setting(int, 64, "tokens the penalties look back over"),
    "seed": Setting(int, -1, "sampling seed (-1 = random)"),
    "max_tokens": Setting(int, None, "tokens to generate (None = the command's default: generate 128, chat 1024; "
                                     "-1 = until the end or the context)"),
    "system": Setting(str, None, "system prompt"),
    "ngram": Setting(int, None, "N: pool phrases hold N-1 tokens"),
    "window": Setting(int, None, "W: Jacobi window columns on the draft"),
    "draft_guesses": Setting(int, None, "G: pool phrases the draft verifies per forward"),
    "candidates": Setting(int, None, "K: pool phrases that lengthen the draft"),
    "max_target_nodes": Setting(int, None, "largest tree per target forward"),
    "max_draft": Setting(int, None, "longest draft chain (gamma's cap)"),
    "warm_pool": Setting(bool, True, "keep the phrase pool across runs"),
    "repack": Setting(str, "auto", "CPU weight repacking: auto (on; on AMX CPUs Q4_K weights in AMX, or off where its kernels crash), on, off, avx2 (CPU_REPACK without AMX), amx (Q4_K weights in AMX)"),
    "tiled_matmul": Setting(bool, True, "ggml's tiled K-quant matmul for CPU batches of 8+ tokens (false: trees of "
                                        "8-9 tokens cheaper on an AVX2 EPYC, prompts slower; fixed at a process's first model load)"),
    "rpc": Setting(str, None, "ggml-rpc-server HOST:PORT[,HOST:PORT...] that hold the target's layers (llama.cpp's --rpc)"),
    "draft_rpc": Setting(str, None, "ggml-rpc-server HOST:PORT[,...] for the draft (None = the draft runs here)"),
    "host": Setting(str, "127.0.0.1", "address `serve` listens on (loopback: this machine only)"),
    "port": Setting(int, 8080, "port `serve` listens on (0 = any free port)"),
    "parallel": Setting(int, None, "conversations `serve` generates at once, sharing one copy of the weights "
                                   "(None = what fits, 2 to 4)"),
    "api_key": Setting(str, None, "key `serve` requires as 'Authorization: Bearer KEY'"),
}

CHOICES: dict[str, tuple[str, ...]] = {"method": METHODS, "repack": REPACK_SETTINGS}
# the least value of numeric settings (smaller contexts are raised to a working minimum at load time)
MINIMUM: dict[str, int] = {"threads": 1, "ctx_size": 1, "ngram": 2, "window": 0, "draft_guesses": 0, "candidates": 0,
                           "max_target_nodes": 1, "max_draft": 1, "top_k": 0, "repeat_last_n": -1, "port": 0, "max_tokens": -1,
                           "parallel": 1}

# how `format_config` shows None: "-" where it means "nothing", "auto" where something is picked later
_NONE_AS_DASH = {"draft", "system", "api_key", "rpc", "draft_rpc"}
_SECRET = {"api_key"}  # shown as "(set)", never printed

_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_var(name: str) -> str:
    """The environment variable of setting `name`: OUROBOROS_LITE_<NAME>."""
    return ENV_PREFIX + name.upper()


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """$OUROBOROS_LITE_CONFIG, else config.toml in the platform's per-user config directory."""
    override = env.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(env["APPDATA"]) if env.get("APPDATA") else _home(env) / "AppData" / "Roaming"
    elif sys.platform == "darwin":
        base = _home(env) / "Library" / "Application Support"
    else:
        xdg = env.get("XDG_CONFIG_HOME", "")
        # the XDG spec says to ignore a relative path
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else _home(env) / ".config"
    return base / "ouroboros-lite" / "config.toml"


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("USERPROFILE" if sys.platform == "win32" else "HOME")
    return Path(home) if home else Path.home()


@dataclass(frozen=True)
class ResolvedConfig:
    values: dict[str, Any]  # every setting in SETTINGS order -> its effective value
    sources: dict[str, str]  # "default", "config file <path>", "environment OUROBOROS_LITE_X" or "command line"
    path: Path  # the config file consulted
    file_found: bool = False  # whether `path` existed and was read

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def resolve(cli: Mapping[str, Any], *, env: Mapping[str, str] = os.environ,
            path: Path | None = None) -> ResolvedConfig:
    """Merge defaults < config file < environment < `cli`.

    `cli` maps setting names to what the user passed; None means "not given". Keys that are not
    settings are ignored, so `vars(args)` may be passed as is. `path` defaults to `config_path(env)`.
    """
    path = config_path(env) if path is None else Path(path)
    values = {name: setting.default for name, setting in SETTINGS.items()}
    sources = dict.fromkeys(SETTINGS, "default")

    from_file = read_config_file(path)
    for name, value in (from_file or {}).items():
        values[name], sources[name] = value, f"config file {path}"

    for name, value in read_env(env).items():
        values[name], sources[name] = value, f"environment {env_var(name)}"

    for name, value in cli.items():
        if name in SETTINGS and value is not None:
            _check_choice(name, value, "command line:")
            values[name], sources[name] = value, "command line"

    return ResolvedConfig(values, sources, path, file_found=from_file is not None)


def read_config_file(path: Path) -> dict[str, Any] | None:
    """The settings in the TOML file at `path`, checked and typed; None if there is no such file."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OuroborosError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError, or UnicodeDecodeError
        raise OuroborosError(f"{path}: malformed TOML: {exc}") from None

    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in SETTINGS:
            raise OuroborosError(f"{path}: unknown setting {key!r}{_suggestion(name)}")
        if name in settings:
            raise OuroborosError(f"{path}: {name} is set twice (as {name} and {name.replace('_', '-')})")
        settings[name] = _from_toml(name, value, f"{path}:")
        _check_choice(name, settings[name], f"{path}:")
    return settings


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as OUROBOROS_LITE_<NAME> variables, parsed to their types."""
    settings: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        var = env_var(name)
        if var not in env:
            continue
        text = env[var].strip()
        if text == "" and setting.optional:
            settings[name] = None
            continue
        settings[name] = _from_text(name, text, f"{var}:")
        _check_choice(name, settings[name], f"{var}:")
    return settings


def _from_toml(name: str, value: Any, where: str) -> Any:
    kind = SETTINGS[name].type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind or (kind is float and not math.isfinite(value)):
        raise _type_error(name, value, where)  # `type is`, not isinstance: true is not a whole number
    return value


def _from_text(name: str, text: str, where: str) -> Any:
    kind = SETTINGS[name].type
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise OuroborosError(f"{where} {name} must be one of 1, 0, true, false, yes, no, on, off; got {text!r}")
    try:
        value = kind(text)
    except ValueError:
        raise _type_error(name, text, where) from None
    if kind is float and not math.isfinite(value):
        raise _type_error(name, text, where)
    return value


def _type_error(name: str, value: Any, where: str) -> OuroborosError:
    return OuroborosError(f"{where} {name} must be {_TYPE_NAMES[SETTINGS[name].type]}, got {value!r}")


def _check_choice(name: str, value: Any, where: str) -> None:
    """A value outside the setting's choices or below its minimum is an error, whichever layer gave it."""
    choices = CHOICES.get(name)
    if choices is not None and value is not None and value not in choices:
        raise OuroborosError(f"{where} {name} must be one of {', '.join(choices)}; got {value!r}")
    least = MINIMUM.get(name)
    if least is not None and value is not None and value < least:
        raise OuroborosError(f"{where} {name} must be at least {least}; got {value!r}")


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply_to_namespace(args: argparse.Namespace, *, env: Mapping[str, str] = os.environ,
                       path: Path | None = None) -> ResolvedConfig:
    """Resolve with `args` as the command-line layer, then write the effective values back to `args`.

    Only settings that are attributes of `args` are read (None = not given) and written; the others
    are still resolved and returned. Flags must therefore default to None, not to a value.
    """
    present = [name for name in SETTINGS if hasattr(args, name)]
    resolved = resolve({name: getattr(args, name) for name in present}, env=env, path=path)
    for name in present:
        setattr(args, name, resolved[name])
    return resolved


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "-" if name in _NONE_AS_DASH else "auto"
    if name in _SECRET:
        return "(set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    return str(value)


def format_config(resolved: ResolvedConfig) -> str:
    """Which config file was read, then one line per setting: name, effective value, source."""
    if resolved.file_found:
        lines = [f"config file: {resolved.path}"]
    else:
        lines = [f"config file: none found at {resolved.path}"]
    shown = {name: format_value(name, value) for name, value in resolved.values.items()}
    name_width = max(map(len, shown))
    value_width = max(map(len, shown.values()))
    for name, text in shown.items():
        lines.append(f"{name:<{name_width}}  {text:<{value_width}}  {resolved.sources[name]}")
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace) -> int:
    """`ouroboros-lite config`: show every setting's effective value and where it came from."""
    resolved = apply_to_namespace(args)
    print(format_config(resolved))
    from .tune import describe_cached_tuning

    line = describe_cached_tuning(resolved["model"], resolved["draft"])
    if line:
        print(line)
    return 0
