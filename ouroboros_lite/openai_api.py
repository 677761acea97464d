"""The OpenAI HTTP API's request checking and response shapes, without any HTTP.

`parse_request` turns a decoded JSON body into a `GenerationRequest` or raises `ApiError` (a 400
with OpenAI's `{"error": {"message", "type", "param", "code"}}` body). Unknown fields are ignored,
as OpenAI-compatible servers do. The response builders add `usage` and llama-server's `timings`
object, so dashboards written for llama-server read our acceptance.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from numbers import Integral, Real

from .backend import ChatMessage
from .engine import Completion
from .stats import SpecStats

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """An error the client gets as an OpenAI error body with this HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    kind: str  # "chat" or "completion"
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    max_tokens: int | None = None  # None: up to the end of the context
    sampling: dict = field(default_factory=dict)  # SamplingParams fields the request set
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # chat: each generated token's log-probability in the (non-streamed) response


def parse_request(body, kind: str) -> GenerationRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if kind == "chat":
        messages, prompt = _messages(body.get("messages")), ""
    else:
        messages, prompt = (), _prompt(body.get("prompt"))
    max_tokens = _max_tokens(body)
    n = _optional(body, "n", Integral)
    if n is not None and n != 1:
        raise ApiError(400, f"n must be 1 (one choice per request), got {n}", param="n", code="invalid_value")
    sampling = {
        "presence_penalty": _number(body, "presence_penalty", -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", -2.0, 2.0),
        "temperature": _number(body, "temperature", 0.0, 100.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, low_open=True),
        "min_p": _number(body, "min_p", 0.0, 1.0),
        "repeat_penalty": _number(body, "repeat_penalty", 0.0, 100.0, low_open=True),
        "top_k": _whole(body, "top_k", 0),
        "repeat_last_n": _whole(body, "repeat_last_n", -1),
        "seed": _whole(body, "seed", -(2**63), 2**64 - 1),
    }
    sampling = {k: (float(v) if isinstance(v, Real) and k not in ("top_k", "repeat_last_n", "seed") else v)
                for k, v in sampling.items() if v is not None}
    stream = _optional(body, "stream", bool) or False
    logprobs = _logprobs(body, kind, stream)
    options = _optional(body, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options",
                       code="invalid_type")
    _optional(body, "user", str)
    return GenerationRequest(kind, messages, prompt, max_tokens, sampling, _stop(body.get("stop")), stream,
                             include_usage, logprobs)


def _logprobs(body: dict, kind: str, stream: bool) -> bool:
    """Chat's `logprobs: true`: the chosen tokens' log-probabilities (no alternatives: top_logprobs 0)."""
    if kind != "chat":
        if body.get("logprobs") not in (None, 0):
            raise ApiError(400, "logprobs on /v1/completions is not supported; use /v1/chat/completions with "
                                "logprobs: true", param="logprobs", code="unsupported_value")
        return False
    wanted = _optional(body, "logprobs", bool) or False
    top = _whole(body, "top_logprobs", 0, 20)
    if top:
        raise ApiError(400, "top_logprobs above 0 is not supported (the chosen tokens' logprobs are)",
                       param="top_logprobs", code="unsupported_value")
    if wanted and stream:
        raise ApiError(400, "logprobs come with non-streamed responses only; set stream to false",
                       param="logprobs", code="unsupported_value")
    return wanted


def token_logprobs(done: Completion, token_bytes) -> dict:
    """OpenAI's choices[].logprobs for a chat answer: one entry per generated token."""
    content = []
    for token, logprob in zip(done.tokens, done.logprobs):
        raw = token_bytes(token)
        content.append({"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw),
                        "top_logprobs": []})
    return {"content": content}


def _optional(body: dict, name: str, kind):
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = {Integral: "a whole number", Real: "a number", bool: "true or false", str: "a string",
                 dict: "an object"}
        raise ApiError(400, f"{name} must be {names[kind]}, got {value!r:.60}", param=name, code="invalid_type")
    return value


def _number(body: dict, name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = _optional(body, name, Real)
    if value is None:
        return None
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{name} must be in {interval}, got {value!r}", param=name, code="invalid_value")
    return value


def _whole(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if isinstance(value, float) and value.is_integer():  # JSON clients send 40.0 for 40
        value = int(value)
    value = _optional({name: value}, name, Integral)
    if value is not None and (value < low or (high is not None and value > high)):
        raise ApiError(400, f"{name} must be at least {low}" + (f" and at most {high}" if high else "")
                       + f", got {value}", param=name, code="invalid_value")
    return value


def _max_tokens(body: dict) -> int | None:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _whole(body, name, 1)  # above what the context leaves is checked against the prompt


def _messages(messages) -> tuple[ChatMessage, ...]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {'role', 'content'} objects", param="messages",
                       code="invalid_value" if isinstance(messages, list) else "invalid_type")
    out = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{param} must be an object with 'role' and 'content'", param=param,
                           code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{param}.role must be one of {', '.join(ROLES)}, got {role!r:.40}",
                           param=f"{param}.role", code="invalid_value")
        out.append(ChatMessage(ROLES[role], _content(message.get("content"), f"{param}.content")))
    return tuple(out)


def _content(content, param: str) -> str:
    """A string, or a list of text parts ({"type": "text", "text": ...}) joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{param} must be a string or a list of text parts, got {content!r:.60}", param=param,
                   code="invalid_type")


def _prompt(prompt) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string", param="prompt", code="invalid_type")
    if not prompt:
        raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    return prompt


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise ApiError(400, f"stop must hold 1 to {MAX_STOP_STRINGS} non-empty strings", param="stop",
                       code="invalid_value")
    return tuple(stops)


# --- responses ------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(done: Completion | None) -> dict:
    if done is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 0}}
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.generation_tokens,
            "total_tokens": done.prompt_tokens + done.generation_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


def timings(done: Completion | None) -> dict:
    """llama-server's names: prompt_n counts the prompt tokens decoded, cache_n those reused."""
    if done is None:
        done = Completion("", 0, 0, 0, 0.0, 0.0, "cancelled", SpecStats())
    prompt_n, prompt_ms = done.prompt_tokens - done.cached_tokens, done.prompt_seconds * 1e3
    predicted_n, predicted_ms = done.generation_tokens, done.generation_seconds * 1e3
    return {
        "cache_n": done.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / done.prompt_seconds if done.prompt_seconds > 0 else 0.0,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": done.tokens_per_second,
        "draft_n": done.spec.drafted_tokens,
        "draft_n_accepted": done.spec.accepted_tokens,
    }


def finish_reason(done: Completion | None) -> str:
    return "cancelled" if done is None else done.finish_reason


class ResponseShapes:
    """The bodies of one request's response: whole, or as stream chunks."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id, self.created = new_id(kind), int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, text: str, done: Completion | None, logprobs: dict | None = None) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason(done))
        return {**self._head(self.object), "choices": [choice], "usage": usage(done), "timings": timings(done)}

    def chunk(self, text: str | None, finish: str | None = None, *, first: bool = False) -> dict:
        """A piece of text (text=None: the closing chunk that names the finish reason)."""
        object_name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        if self.kind == "chat":
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice.update(logprobs=None, finish_reason=finish)
        return {**self._head(object_name), "choices": [choice]}

    def closing_chunk(self, done: Completion | None) -> dict:
        return {**self.chunk(None, finish_reason(done)), "timings": timings(done)}

    def usage_chunk(self, done: Completion | None) -> dict:
        object_name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(object_name), "choices": [], "usage": usage(done), "timings": timings(done)}
