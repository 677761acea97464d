"""The package's shape: imports go one way, the method registry is the one list of methods."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ouroboros_lite"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """Package modules that `path` imports anywhere, deferred imports inside functions included
    (only `if TYPE_CHECKING:` blocks, which never run, are left out)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for sub in ast.walk(tree):
        if id(sub) in skipped:
            continue
        if isinstance(sub, ast.ImportFrom):
            base = package.rsplit(".", sub.level - 1)[0] if sub.level else ""
            target = ".".join(p for p in (base, sub.module) if p)
            if target.startswith("ouroboros_lite"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in sub.names if is_module(f"{target}.{a.name}"))
        elif isinstance(sub, ast.Import):
            found.update(a.name for a in sub.names if a.name.startswith("ouroboros_lite"))
    # a package's own __init__ runs before any of its modules: it is no edge of theirs
    return found - {name, "ouroboros_lite"}


def test_module_imports_form_no_cycle():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    # the check above must be able to fail: two modules importing each other are found
    a, b = tmp_path / "ouroboros_lite" / "a.py", tmp_path / "ouroboros_lite" / "b.py"
    a.parent.mkdir()
    a.write_text("from .b import x\n")
    b.write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ouroboros_lite")
    try:
        test_module_imports_form_no_cycle()
    except AssertionError as error:
        assert "ouroboros_lite.a -> ouroboros_lite.b -> ouroboros_lite.a" in str(error)
    else:
        raise AssertionError("a cycle went unnoticed")


def test_the_command_line_settings_registry_and_stats_load_no_model_code():
    code = ("import sys, ouroboros_lite.cli, ouroboros_lite.bench, ouroboros_lite.stats, ouroboros_lite.drafters as d; "
            "print(sorted(m for m in sys.modules if m.startswith(('llama_cpp', 'cffi', 'numpy'))), list(d.METHODS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['ar', 'sd', 'pld', 'lookahead', 'ouroboros']"


def test_cli_choices_and_config_come_from_the_registry():
    from ouroboros_lite.cli import setup_arg_parser
    from ouroboros_lite.config import CHOICES, METHODS
    from ouroboros_lite.drafters import METHODS as REGISTRY

    assert METHODS == tuple(REGISTRY) == CHOICES["method"]
    generate = setup_arg_parser()._subparsers._group_actions[0].choices["generate"]
    (action,) = [a for a in generate._actions if a.dest == "method"]
    assert tuple(action.choices) == tuple(REGISTRY)


def test_llama_cpp_flag_names_are_aliases(capsys):
    import pytest

    from ouroboros_lite import __version__
    from ouroboros_lite.cli import setup_arg_parser

    for command in ("generate", "chat", "bench", "tune"):
        args = setup_arg_parser().parse_args([command, "-m", "t.gguf", "-md", "d.gguf", "--draft-max", "3"])
        assert (args.model, args.draft, args.max_draft) == ("t.gguf", "d.gguf", 3), command
    args = setup_arg_parser().parse_args(["generate", "--model-draft", "d.gguf", "--target", "t.gguf"])
    assert (args.model, args.draft) == ("t.gguf", "d.gguf")
    # llama-cli's habits (its flag names, as its --help documents them), on generate
    args = setup_arg_parser().parse_args(["generate", "-m", "t.gguf", "-f", "p.txt", "-n", "-1", "-r", "User:",
                                          "--stop", "###", "-fa", "-b", "64", "-s", "7", "-c", "512", "-t", "2",
                                          "-ngl", "99", "--temp", "0.5", "--top-k", "20", "--repeat-penalty", "1.1"])
    assert (args.file, args.max_tokens, args.stop, args.flash_attn, args.batch_size, args.seed) == (
        "p.txt", -1, ["User:", "###"], "on", 64, 7)
    assert (args.ctx_size, args.threads, args.gpu_layers, args.temperature, args.top_k) == (512, 2, 99, 0.5, 20)
    assert setup_arg_parser().parse_args(["generate", "-fa", "off"]).flash_attn == "off"
    assert setup_arg_parser().parse_args(["chat", "-n", "-1"]).max_tokens == -1
    with pytest.raises(SystemExit) as exited:
        setup_arg_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"ouroboros-lite {__version__}"


def test_help_shows_the_defaults_users_ask_about(capsys):
    import pytest

    from ouroboros_lite.cli import setup_arg_parser

    for command, expected in (("generate", ["default: 128", "default: the available cores"]),
                              ("bench", ["default: ar,sd,pld", "default: 13", "default: 128"])):
        with pytest.raises(SystemExit):
            setup_arg_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for words in expected:
            assert words in text, (command, words)
