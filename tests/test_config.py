"""Layered settings: defaults < config file < environment < command line. Pure Python, no models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from ouroboros_lite.config import (
    SETTINGS,
    apply_to_namespace,
    cmd_config,
    config_path,
    format_config,
    resolve,
)
from ouroboros_lite.errors import OuroborosError


@pytest.fixture
def cfg(tmp_path) -> Path:
    return tmp_path / "config.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- layers ---------------------------------------------------------------------------------------


def test_defaults_without_a_file(cfg):
    resolved = resolve({}, env={}, path=cfg)
    assert resolved.values == {name: setting.default for name, setting in SETTINGS.items()}
    assert resolved["ctx_size"] == 4096
    assert resolved["top_p"] == 0.95
    assert resolved["warm_pool"] is True
    assert resolved["model"] is None
    assert set(resolved.sources.values()) == {"default"}
    assert resolved.path == cfg
    assert resolved.file_found is False


def test_file_overrides_defaults(cfg):
    write(cfg, 'model = "smollm2-135m-instruct-f32"\ntemperature = 0.7\ngpu_layers = 99\nwarm_pool = false\n')
    resolved = resolve({}, env={}, path=cfg)
    assert resolved["model"] == "smollm2-135m-instruct-f32"
    assert resolved["temperature"] == 0.7
    assert resolved["gpu_layers"] == 99
    assert resolved["warm_pool"] is False
    assert resolved["ctx_size"] == 4096
    assert resolved.sources["gpu_layers"] == f"config file {cfg}"
    assert resolved.sources["ctx_size"] == "default"
    assert resolved.file_found is True


def test_environment_overrides_file(cfg):
    write(cfg, "temperature = 0.7\ngpu_layers = 99\nwarm_pool = true\n")
    env = {"OUROBOROS_LITE_TEMPERATURE": "0.2", "OUROBOROS_LITE_WARM_POOL": "0"}
    resolved = resolve({}, env=env, path=cfg)
    assert resolved["temperature"] == 0.2
    assert resolved["warm_pool"] is False
    assert resolved["gpu_layers"] == 99
    assert resolved.sources["temperature"] == "environment OUROBOROS_LITE_TEMPERATURE"
    assert resolved.sources["warm_pool"] == "environment OUROBOROS_LITE_WARM_POOL"
    assert resolved.sources["gpu_layers"] == f"config file {cfg}"


def test_command_line_overrides_environment(cfg):
    write(cfg, "gpu_layers = 99\nseed = 1\n")
    env = {"OUROBOROS_LITE_GPU_LAYERS": "20", "OUROBOROS_LITE_SEED": "2"}
    resolved = resolve({"gpu_layers": 5, "seed": None, "top_k": 7}, env=env, path=cfg)
    assert resolved["gpu_layers"] == 5
    assert resolved["seed"] == 2  # None on the command line means "not given"
    assert resolved["top_k"] == 7
    assert resolved.sources["gpu_layers"] == "command line"
    assert resolved.sources["seed"] == "environment OUROBOROS_LITE_SEED"
    assert resolved.sources["top_k"] == "command line"


def test_sources_for_every_layer_at_once(cfg):
    write(cfg, "top_k = 10\nmin_p = 0.1\nrepeat_last_n = 32\n")
    env = {"OUROBOROS_LITE_MIN_P": "0.2", "OUROBOROS_LITE_REPEAT_LAST_N": "16"}
    resolved = resolve({"repeat_last_n": 8, "prompt": "ignored, not a setting"}, env=env, path=cfg)
    assert (resolved["ctx_size"], resolved.sources["ctx_size"]) == (4096, "default")
    assert (resolved["top_k"], resolved.sources["top_k"]) == (10, f"config file {cfg}")
    assert (resolved["min_p"], resolved.sources["min_p"]) == (0.2, "environment OUROBOROS_LITE_MIN_P")
    assert (resolved["repeat_last_n"], resolved.sources["repeat_last_n"]) == (8, "command line")
    assert "prompt" not in resolved.values


def test_path_defaults_to_config_path_from_env(tmp_path):
    path = write(tmp_path / "elsewhere.toml", "threads = 3\n")
    resolved = resolve({}, env={"OUROBOROS_LITE_CONFIG": str(path)})
    assert resolved.path == path
    assert resolved["threads"] == 3


# --- config file format ---------------------------------------------------------------------------


def test_dash_keys(cfg):
    write(cfg, "ctx-size = 8192\ndraft-gpu-layers = 12\n")
    resolved = resolve({}, env={}, path=cfg)
    assert resolved["ctx_size"] == 8192
    assert resolved["draft_gpu_layers"] == 12


def test_same_key_with_dash_and_underscore_is_an_error(cfg):
    write(cfg, "ctx-size = 8192\nctx_size = 1024\n")
    with pytest.raises(OuroborosError, match="ctx_size is set twice"):
        resolve({}, env={}, path=cfg)


def test_int_accepted_for_float(cfg):
    write(cfg, "temperature = 1\nrepeat_penalty = 2\n")
    resolved = resolve({}, env={}, path=cfg)
    assert resolved["temperature"] == 1.0 and type(resolved["temperature"]) is float
    assert resolved["repeat_penalty"] == 2.0 and type(resolved["repeat_penalty"]) is float


def test_malformed_toml(cfg):
    write(cfg, "temperature = = 0.7\n")
    with pytest.raises(OuroborosError) as info:
        resolve({}, env={}, path=cfg)
    message = str(info.value)
    assert str(cfg) in message
    assert "malformed TOML" in message
    assert "line 1" in message  # tomllib's own message
    assert "\n" not in message


def test_unknown_key_suggests_the_closest(cfg):
    write(cfg, "temprature = 0.7\n")
    with pytest.raises(OuroborosError) as info:
        resolve({}, env={}, path=cfg)
    assert str(cfg) in str(info.value)
    assert "'temprature'" in str(info.value)
    assert "did you mean 'temperature'?" in str(info.value)


def test_nested_table_is_an_unknown_key(cfg):
    write(cfg, "[generate]\nseed = 1\n")
    with pytest.raises(OuroborosError, match="unknown setting 'generate'"):
        resolve({}, env={}, path=cfg)


@pytest.mark.parametrize("line, expected", [
    ('temperature = "hot"', "temperature must be a number, got 'hot'"),
    ('gpu_layers = 1.5', "gpu_layers must be a whole number, got 1.5"),
    ('gpu_layers = true', "gpu_layers must be a whole number, got True"),
    ('warm_pool = 1', "warm_pool must be true or false, got 1"),
    ('model = 3', "model must be a string, got 3"),
    ('top_p = inf', "top_p must be a number, got inf"),
])
def test_wrong_type(cfg, line, expected):
    write(cfg, line + "\n")
    with pytest.raises(OuroborosError) as info:
        resolve({}, env={}, path=cfg)
    assert str(info.value) == f"{cfg}: {expected}"


def test_bad_method_in_file(cfg):
    write(cfg, 'method = "fast"\n')
    with pytest.raises(OuroborosError) as info:
        resolve({}, env={}, path=cfg)
    assert str(info.value) == f"{cfg}: method must be one of ar, sd, pld, lookahead, ouroboros; got 'fast'"


def test_every_method_accepted(cfg):
    for method in ["ar", "sd", "pld", "lookahead", "ouroboros"]:
        write(cfg, f'method = "{method}"\n')
        assert resolve({}, env={}, path=cfg)["method"] == method


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(OuroborosError, match="cannot read config file"):
        resolve({}, env={}, path=tmp_path)


# --- environment ----------------------------------------------------------------------------------


def test_env_parses_types(cfg):
    env = {
        "OUROBOROS_LITE_GPU_LAYERS": "20",
        "OUROBOROS_LITE_TOP_P": " 0.5 ",
        "OUROBOROS_LITE_MODEL": "tiny.gguf",
        "OUROBOROS_LITE_WARM_POOL": "False",
        "OUROBOROS_LITE_NATIVE": "/not/a/setting.so",  # other OUROBOROS_LITE_ variables are ignored
    }
    resolved = resolve({}, env=env, path=cfg)
    assert resolved["gpu_layers"] == 20
    assert resolved["top_p"] == 0.5
    assert resolved["model"] == "tiny.gguf"
    assert resolved["warm_pool"] is False


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("0", False), ("false", False)])
def test_env_bool(cfg, text, expected):
    assert resolve({}, env={"OUROBOROS_LITE_WARM_POOL": text}, path=cfg)["warm_pool"] is expected


def test_env_empty_means_none_for_optional_settings(cfg):
    write(cfg, 'model = "big.gguf"\nthreads = 8\n')
    env = {"OUROBOROS_LITE_MODEL": "", "OUROBOROS_LITE_THREADS": ""}
    resolved = resolve({}, env=env, path=cfg)
    assert resolved["model"] is None
    assert resolved["threads"] is None
    assert resolved.sources["threads"] == "environment OUROBOROS_LITE_THREADS"


@pytest.mark.parametrize("var, value, expected", [
    ("OUROBOROS_LITE_GPU_LAYERS", "lots", "OUROBOROS_LITE_GPU_LAYERS: gpu_layers must be a whole number, got 'lots'"),
    ("OUROBOROS_LITE_TEMPERATURE", "hot", "OUROBOROS_LITE_TEMPERATURE: temperature must be a number, got 'hot'"),
    ("OUROBOROS_LITE_CTX_SIZE", "", "OUROBOROS_LITE_CTX_SIZE: ctx_size must be a whole number, got ''"),
    ("OUROBOROS_LITE_WARM_POOL", "maybe",
     "OUROBOROS_LITE_WARM_POOL: warm_pool must be one of 1, 0, true, false, yes, no, on, off; got 'maybe'"),
    ("OUROBOROS_LITE_METHOD", "fast",
     "OUROBOROS_LITE_METHOD: method must be one of ar, sd, pld, lookahead, ouroboros; got 'fast'"),
])
def test_bad_env_value(cfg, var, value, expected):
    with pytest.raises(OuroborosError) as info:
        resolve({}, env={var: value}, path=cfg)
    assert str(info.value) == expected


def test_bad_method_on_command_line(cfg):
    with pytest.raises(OuroborosError, match="command line: method must be one of"):
        resolve({"method": "fast"}, env={}, path=cfg)


# --- platform paths -------------------------------------------------------------------------------


def test_config_path_override():
    assert config_path({"OUROBOROS_LITE_CONFIG": "/etc/ol.toml", "HOME": "/home/u"}) == Path("/etc/ol.toml")


def test_config_path_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert config_path({"HOME": "/home/u"}) == Path("/home/u/.config/ouroboros-lite/config.toml")
    assert config_path({"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/ouroboros-lite/config.toml")
    # a relative XDG_CONFIG_HOME is ignored, as the XDG spec says
    assert config_path({"HOME": "/home/u", "XDG_CONFIG_HOME": "rel"}) == Path(
        "/home/u/.config/ouroboros-lite/config.toml")


def test_config_path_macos(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert config_path({"HOME": "/Users/u", "XDG_CONFIG_HOME": "/xdg"}) == Path(
        "/Users/u/Library/Application Support/ouroboros-lite/config.toml")


def test_config_path_windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    appdata = "/c/Users/u/AppData/Roaming"
    assert config_path({"APPDATA": appdata}) == Path(appdata) / "ouroboros-lite" / "config.toml"
    assert config_path({"USERPROFILE": "/c/Users/v"}) == Path(
        "/c/Users/v/AppData/Roaming/ouroboros-lite/config.toml")


# --- argparse namespace and printing --------------------------------------------------------------


def namespace(**overrides) -> argparse.Namespace:
    args = dict(model=None, ctx_size=None, gpu_layers=None, top_k=None, warm_pool=None, prompt="hi")
    args.update(overrides)
    return argparse.Namespace(**args)


def test_apply_to_namespace_sets_attributes(cfg):
    write(cfg, 'model = "from-file"\ngpu_layers = 99\ntop_k = 10\n')
    args = namespace(top_k=3)
    resolved = apply_to_namespace(args, env={"OUROBOROS_LITE_GPU_LAYERS": "20"}, path=cfg)
    assert args.model == "from-file"
    assert args.ctx_size == 4096
    assert args.gpu_layers == 20
    assert args.top_k == 3
    assert args.warm_pool is True
    assert args.prompt == "hi"
    assert not hasattr(args, "temperature")  # not a flag of this command: resolved, not added
    assert resolved["seed"] == -1
    assert resolved.sources["top_k"] == "command line"
    assert resolved.sources["gpu_layers"] == "environment OUROBOROS_LITE_GPU_LAYERS"


def test_format_config_lists_every_setting_with_its_source(cfg):
    write(cfg, "gpu_layers = 99\n")
    resolved = resolve({"top_k": 3}, env={"OUROBOROS_LITE_SYSTEM": "Be brief."}, path=cfg)
    lines = format_config(resolved).splitlines()
    assert lines[0] == f"config file: {cfg}"
    assert len(lines) == 1 + len(SETTINGS)
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert list(rows) == list(SETTINGS)
    assert rows["gpu_layers"] == ["99", f"config file {cfg}"]
    assert rows["top_k"] == ["3", "command line"]
    assert rows["ctx_size"] == ["4096", "default"]
    assert rows["warm_pool"] == ["true", "default"]
    assert rows["threads"] == ["auto", "default"]
    assert rows["draft"] == ["-", "default"]
    assert lines[1 + list(SETTINGS).index("system")].split(None, 1)[1].startswith(
        "'Be brief.'  environment OUROBOROS_LITE_SYSTEM")


def test_format_config_without_a_file(cfg):
    first = format_config(resolve({}, env={}, path=cfg)).splitlines()[0]
    assert first == f"config file: none found at {cfg}"


def test_cmd_config_prints_and_returns_zero(cfg, monkeypatch, capsys):
    write(cfg, "seed = 42\n")
    monkeypatch.setenv("OUROBOROS_LITE_CONFIG", str(cfg))
    for name in SETTINGS:
        monkeypatch.delenv(f"OUROBOROS_LITE_{name.upper()}", raising=False)
    assert cmd_config(namespace(gpu_layers=7)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"config file: {cfg}"
    assert "seed" in out and "42" in out
    assert any(line.split()[:2] == ["gpu_layers", "7"] and line.endswith("command line")
               for line in out.splitlines())


@pytest.mark.parametrize("draft", [False, True])
def test_window_reaches_lookahead_with_or_without_a_draft(draft_path, draft):
    # with a draft given, `--method lookahead --window 4` used to set only the draft's window
    from ouroboros_lite.arguments import runtime_options
    from ouroboros_lite.cli import setup_arg_parser

    argv = ["generate", "--model", str(draft_path), "--method", "lookahead", "--window", "4", "--draft-guesses", "2"]
    args = setup_arg_parser().parse_args(argv + (["--draft", str(draft_path)] if draft else []))
    apply_to_namespace(args, env={}, path=Path("/nonexistent/config.toml"))
    options = runtime_options(args)
    assert (options.target_window, options.target_guesses) == (4, 2)
    assert (options.ouroboros.window, options.ouroboros.draft_guesses) == (4, 2)
