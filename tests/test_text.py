"""Tokenizer, UTF-8 streaming, chat template and end-of-generation on real models."""

from __future__ import annotations

from ouroboros_lite.backend import ChatMessage, TextStream


def test_multibyte_characters_stream_whole(q4):
    model = q4.target
    text = "Snakes 🐍 and dragons 🐉 — naïve café, 日本語."
    tokens = model.tokenize(text, add_special=False)
    split = [t for t in tokens if b"\xef\xbf\xbd" in model.token_bytes(t) or not _is_utf8(model.token_bytes(t))]
    assert split, "the test needs a character split over several tokens"
    stream = TextStream(model)
    pieces = [stream.push(t) for t in tokens] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces).strip() == text


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_chat_template_from_gguf(q4):
    text = q4.target.apply_chat_template([ChatMessage("user", "Hello there")])
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_generation_stops_at_end_of_generation(q4):
    tokens = q4.tokenize_prompt("What is the capital of France? Answer in one word.", chat=True)
    responses = list(q4.generate(tokens, max_tokens=200))
    last = responses[-1]
    assert last.finish_reason == "stop"
    assert q4.target.is_end_of_generation(last.token)
    assert last.generation_tokens < 200
    assert "Paris" in "".join(r.text for r in responses)


def test_max_tokens_gives_length(q4):
    tokens = q4.tokenize_prompt("Write a long story about a dragon.", chat=True)
    responses = list(q4.generate(tokens, max_tokens=5))
    assert len(responses) == 5 and responses[-1].finish_reason == "length"
