"""Stop strings: the matcher on its own, then through Engine.generate/chat and `generate --stop`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ouroboros_lite import Engine, OuroborosError
from ouroboros_lite.stops import StopStrings


def run(pieces, stops):
    matcher, shown = StopStrings(stops), []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        shown.append(text)
        if stopped:
            return shown, True
    shown.append(matcher.flush())
    return shown, False


def test_a_stop_split_over_pieces_is_never_shown_in_part():
    shown, stopped = run(["Hello", " Us", "er", ": more"], ["User:"])
    assert stopped and "".join(shown) == "Hello "
    assert shown[:3] == ["Hello", " ", ""]  # " Us" and "Us" + "er" could begin "User:": held back


def test_a_held_beginning_that_does_not_stop_is_shown_later():
    shown, stopped = run(["a", "\n", "b", "\n", "c"], ["\n\n"])
    assert not stopped and "".join(shown) == "a\nb\nc"
    assert shown[1] == "" and shown[2] == "\nb"
    shown, stopped = run(["end", "<"], ["<|end|>"])
    assert not stopped and shown == ["end", "", "<"]  # the end of the generation releases what was held


def test_the_earliest_of_several_stops_wins_within_one_piece():
    shown, stopped = run(["one two three"], ["three", "two"])
    assert stopped and shown == ["one "]
    assert run(["xyz"], None) == (["xyz", ""], False)


@pytest.mark.parametrize("bad", ["", [""], [1], 3, {"a": 1}])
def test_bad_stop_values_are_named_errors(bad):
    with pytest.raises(OuroborosError, match="stop"):
        StopStrings(bad)


@pytest.fixture(scope="module")
def engine(draft_path):
    with Engine(target=draft_path, method="ar", threads=2, n_ctx=512) as engine:
        yield engine


def test_engine_ends_before_the_stop_and_streams_no_part_of_it(engine):
    prompt = "Count from 1 to 20: 1, 2, 3,"
    full = engine.generate(prompt, max_tokens=24).text
    stop = full[full.index("6"):full.index("6") + 4]  # spans several tokens ("6", ",", " 7")
    cut = engine.generate(prompt, max_tokens=24, stop=[stop, "never"])
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]
    pieces = list(engine.generate(prompt, max_tokens=24, stop=stop, stream=True))
    assert "".join(pieces) == cut.text and engine.last.text == cut.text
    assert engine.last.finish_reason == "stop"
    chat = engine.chat([{"role": "user", "content": "Name three colours."}], max_tokens=16, temperature=0.0)
    word = chat.text.split()[1]
    stopped = engine.chat([{"role": "user", "content": "Name three colours."}], max_tokens=16, temperature=0.0,
                          stop=word)
    assert stopped.text == chat.text[:chat.text.index(word)] and stopped.finish_reason == "stop"
    assert engine.generate(prompt, max_tokens=8, stop="never there").text == engine.generate(prompt, max_tokens=8).text


def test_generate_stop_flag(draft_path):
    argv = [sys.executable, "-m", "ouroboros_lite", "generate", "--model", str(draft_path), "-t", "2", "-n", "24",
            "--method", "ar", "--no-warm-pool", "--prompt", "Count from 1 to 20: 1, 2, 3,"]
    full = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    cut = subprocess.run([*argv, "-r", "never", "--stop", ", 7"], capture_output=True, text=True, timeout=300)
    assert cut.returncode == 0, cut.stderr
    assert ", 7" in full.stdout and cut.stdout == full.stdout[:full.stdout.index(", 7")] + "\n"


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_an_empty_stop_flag_is_a_one_line_error(command):
    done = subprocess.run([sys.executable, "-m", "ouroboros_lite", command, "--stop", ""], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stderr.strip() == "ouroboros-lite: error: stop strings must not be empty"
