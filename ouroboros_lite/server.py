"""`ouroboros-lite serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn).

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health and
GET /metrics (Prometheus text); the same paths without /v1 too, as llama-server has them.
Handlers check and tokenize the request (openai_api.py), then hand a Job to the one scheduler
thread (scheduler.py) and read its pieces from an asyncio queue, as JSON or as SSE chunks.
SIGTERM or Ctrl-C drains: no new requests, the running ones finish (or, after --drain-timeout
seconds, end with finish_reason "cancelled"), the phrase pool is saved, exit 0.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine
from .errors import OuroborosError
from .openai_api import ApiError, GenerationRequest, ResponseShapes, parse_request, token_logprobs
from .scheduler import Job, QueueFull, Scheduler, ShuttingDown

MAX_BODY_BYTES = 16 * 2**20


class Service:
    """What the handlers share: the models' tokenizer, the scheduler and the server's name for the model."""

    def __init__(self, models, scheduler: Scheduler, *, model_name: str, n_ctx: int):
        self.models, self.scheduler = models, scheduler
        self.model_name, self.n_ctx = model_name, n_ctx
        self.created = int(time.time())
        self.bad_requests = 0

    def tokenize(self, request: GenerationRequest) -> list[int]:
        try:
            if request.kind == "chat":
                return self.models.tokenize_chat(list(request.messages))
            return self.models.tokenize_prompt(request.prompt)
        except OuroborosError as exc:  # text that is not valid Unicode, a broken chat template
            raise ApiError(400, str(exc), param="messages" if request.kind == "chat" else "prompt",
                           code="invalid_value") from None

    def max_tokens(self, request: GenerationRequest, n_prompt: int) -> int:
        """What the request may generate: as asked, or the rest of the context; 400 where it does not fit."""
        asked = request.max_tokens
        if n_prompt >= self.n_ctx:
            raise ApiError(400, f"the prompt is {n_prompt} tokens but the context holds {self.n_ctx}",
                           param="messages" if request.kind == "chat" else "prompt", code="context_length_exceeded")
        if asked is None:
            return self.n_ctx - n_prompt
        if n_prompt + asked > self.n_ctx:
            raise ApiError(400, f"this model's context holds {self.n_ctx} tokens, but {n_prompt + asked} were "
                                f"asked for ({n_prompt} in the prompt, {asked} to generate); lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        return asked


def open_stream(request: GenerationRequest, max_tokens: int, slot: Engine):
    kwargs = dict(max_tokens=max_tokens, stream=True, stop=request.stop or None, logprobs=request.logprobs,
                  **request.sampling)
    if request.kind == "chat":
        return slot.chat(list(request.messages), **kwargs)
    return slot.generate(request.prompt, reuse_cache=True, **kwargs)


# --- handlers ---------------------------------------------------------------------------------------
async def read_json(request: Request):
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="body_too_large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 too
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def generate(request: Request, kind: str) -> Response:
    service: Service = request.app.state.service
    parsed = parse_request(await read_json(request), kind)
    tokens = await run_in_threadpool(service.tokenize, parsed)
    max_tokens = service.max_tokens(parsed, len(tokens))
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def on_event(event) -> None:  # from the scheduler thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    job = Job(tokens, partial(open_stream, parsed, max_tokens), on_event)
    try:
        service.scheduler.submit(job)
    except (QueueFull, ShuttingDown) as exc:
        raise ApiError(503, f"{exc}; try again shortly", type="server_error",
                       code="queue_full" if isinstance(exc, QueueFull) else "shutting_down",
                       headers={"Retry-After": "1"}) from None
    shapes = ResponseShapes(kind, service.model_name)
    if parsed.stream:
        return StreamingResponse(sse_chunks(job, events, shapes, parsed.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    token_bytes = service.models.target.token_bytes if parsed.logprobs else None
    return await whole_response(request, job, events, shapes, token_bytes)


async def whole_response(request: Request, job: Job, events: asyncio.Queue, shapes: ResponseShapes,
                         token_bytes=None) -> Response:
    """token_bytes: the target's token_bytes where the request asked for logprobs."""
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        while True:
            get = asyncio.ensure_future(events.get())
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():  # the client went away: free its slot
                get.cancel()
                return Response(status_code=499)
            kind, value = get.result()
            if kind == "error":
                raise generation_error(value)
            if kind == "done":
                logprobs = token_logprobs(value, token_bytes) if token_bytes and value else None
                return JSONResponse(shapes.whole(value.text if value else "", value, logprobs))
    finally:
        gone.cancel()
        job.cancel()  # a no-op once the job is done


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def sse_chunks(job: Job, events: asyncio.Queue, shapes: ResponseShapes, include_usage: bool):
    """OpenAI's stream: a role chunk (chat), content chunks, a closing chunk with the finish reason
    and llama-server's timings, a usage chunk if asked for, then [DONE]. Whatever ends this
    generator early (a disconnect, shutdown) cancels the job."""
    try:
        if shapes.kind == "chat":
            yield sse(shapes.chunk("", first=True))
        while True:
            kind, value = await events.get()
            if kind == "piece":
                yield sse(shapes.chunk(value))
            elif kind == "error":
                yield sse(generation_error(value).body())
                break
            else:
                yield sse(shapes.closing_chunk(value))
                if include_usage:
                    yield sse(shapes.usage_chunk(value))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def generation_error(exc: Exception) -> ApiError:
    if isinstance(exc, OuroborosError):
        return ApiError(400, str(exc), code="invalid_value")
    traceback.print_exception(exc, file=sys.stderr)
    return ApiError(500, f"the generation failed: {type(exc).__name__}", type="server_error", code="internal_error")


async def models_list(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [
        {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "ouroboros-lite"}]})


async def health(request: Request) -> Response:
    scheduler = request.app.state.service.scheduler
    busy = scheduler.busy_slots
    return JSONResponse({"status": "ok", "slots_idle": len(scheduler.slots) - busy, "slots_processing": busy,
                         "queue_depth": scheduler.queue_depth})


async def metrics(request: Request) -> Response:
    return PlainTextResponse(prometheus_text(request.app.state.service),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


def prometheus_text(service: Service) -> str:
    scheduler, m = service.scheduler, service.scheduler.metrics
    series = [
        ("requests_total", "counter", "Requests by outcome",
         [({"outcome": "finished"}, m.requests_finished), ({"outcome": "cancelled"}, m.requests_cancelled),
          ({"outcome": "failed"}, m.requests_failed), ({"outcome": "rejected"}, m.requests_rejected),
          ({"outcome": "invalid"}, service.bad_requests)]),
        ("prompt_tokens_total", "counter", "Prompt tokens of finished requests", m.prompt_tokens),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's KV cache", m.cached_tokens),
        ("generated_tokens_total", "counter", "Tokens generated", m.generated_tokens),
        ("generation_seconds_total", "counter", "Seconds spent generating (after each first token)",
         m.generation_seconds),
        ("tokens_per_second", "gauge", "Generated tokens per generation second, over all requests",
         m.generated_tokens / m.generation_seconds if m.generation_seconds else 0.0),
        ("drafted_tokens_total", "counter", "Tokens proposed to the target by drafts", m.drafted_tokens),
        ("accepted_tokens_total", "counter", "Drafted tokens the target accepted", m.accepted_tokens),
        ("acceptance_ratio", "gauge", "Accepted over drafted tokens",
         m.accepted_tokens / m.drafted_tokens if m.drafted_tokens else 0.0),
        ("queue_depth", "gauge", "Requests waiting for a slot", scheduler.queue_depth),
        ("slots_busy", "gauge", "Slots generating", scheduler.busy_slots),
        ("slots", "gauge", "Slots (--parallel)", len(scheduler.slots)),
    ]
    lines = []
    for name, kind, help_text, values in series:
        name = f"ouroboros_lite_{name}"
        lines += [f"# HELP {name} {help_text}.", f"# TYPE {name} {kind}"]
        for labels, value in values if isinstance(values, list) else [({}, values)]:
            label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"{name}{label_text} {value:g}" if isinstance(value, float) else f"{name}{label_text} {value}")
    return "\n".join(lines) + "\n"


# --- the application ---------------------------------------------------------------------------------
class RequireApiKey:
    """ASGI middleware: 401 for any HTTP request without `Authorization: Bearer KEY`."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                                 code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def api_error(request: Request, exc: ApiError) -> Response:
    if exc.status < 500:
        request.app.state.service.bad_requests += 1
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: HTTPException) -> Response:
    return await api_error(request, ApiError(exc.status_code, exc.detail or "error", code=str(exc.status_code)))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc, file=sys.stderr)
    return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").body(),
                        status_code=500)


def create_app(service: Service, *, api_key: str | None = None):
    routes = []
    for prefix in ("/v1", ""):
        routes += [Route(f"{prefix}/chat/completions", partial(generate, kind="chat"), methods=["POST"]),
                   Route(f"{prefix}/completions", partial(generate, kind="completion"), methods=["POST"]),
                   Route(f"{prefix}/models", models_list, methods=["GET"]),
                   Route(f"{prefix}/health", health, methods=["GET"])]
    routes.append(Route("/metrics", metrics, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: unexpected_error})
    app.state.service = service
    return RequireApiKey(app, api_key) if api_key else app


# --- `ouroboros-lite serve` --------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args) -> int:
    from .arguments import runtime_options, sampling_params
    from .runtime import Models

    if not 0 <= args.port <= 65535:
        raise OuroborosError(f"--port must be in 0..65535, got {args.port}")
    if args.queue < 0 or args.drain_timeout < 0:
        raise OuroborosError("--queue and --drain-timeout must not be negative")
    sampling = sampling_params(args, default_temperature=0.8)
    sampling_defaults = {name: getattr(sampling, name) for name in sampling.__dataclass_fields__}
    method = args.method or "ouroboros"
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.create_server((args.host, args.port), family=family) as sock, \
            Models(args.model, args.draft, options=runtime_options(args)) as models:
        slots: list[Engine] = []
        scheduler = None
        try:
            before = resident_bytes()
            while len(slots) < (args.parallel or 1):  # slot 0 loads the pair's phrase pool and saves it at the end
                slots.append(Engine(models=models, method=method, warm_pool=args.warm_pool and not slots,
                                    **sampling_defaults))
                if not args.parallel:  # what fits, measured on the first slot
                    args.parallel = slots_that_fit(resident_bytes() - before if before else None, memory_available())
            scheduler = Scheduler(slots, max_waiting=args.queue)
            service = Service(models, scheduler, model_name=models.target.path.name, n_ctx=slots[0].n_ctx)
            scheduler.start()
            config = uvicorn.Config(create_app(service, api_key=args.api_key), log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=args.drain_timeout + 5)
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"ouroboros-lite: serving {service.model_name} at http://{host}:{sock.getsockname()[1]}/v1 "
                  f"({args.parallel} slots, method {method}, context {service.n_ctx}); Ctrl-C stops", flush=True)
            if not is_loopback(args.host) and not args.api_key:
                print("ouroboros-lite: warning: listening beyond this machine without --api-key", file=sys.stderr)
            quiet_after_uvicorn()
            DrainingServer(config, scheduler, args.drain_timeout).run(sockets=[sock])
        finally:
            if scheduler is not None:
                scheduler.stop(timeout=60)  # cancels what is left (nothing, after a drain)
            for slot in reversed(slots):  # slot 0, which saves the pool, last
                slot.close()
    return 0


def slots_that_fit(slot_bytes: int | None, available: int | None, most: int = 4) -> int:
    """The default --parallel: at least 2, and more (up to `most`) while they take at most half of
    the memory still available; `most` where either size is unknown."""
    if not slot_bytes or slot_bytes <= 0 or available is None:
        return most
    return max(2, min(most, 1 + available // (2 * slot_bytes)))


def memory_available() -> int | None:
    """Bytes of memory the system can still give (Linux's MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, told to drain the scheduler on the first SIGINT/SIGTERM: uvicorn stops
    accepting and waits for open responses; the scheduler finishes them, and cancels whatever
    still runs after `drain_seconds` (those responses end with finish_reason "cancelled")."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, drain_seconds: float):
        super().__init__(config)
        self.scheduler, self.drain_seconds = scheduler, drain_seconds

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            self.scheduler.drain()
            timer = threading.Timer(self.drain_seconds, self.scheduler.cancel_all)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)


def quiet_after_uvicorn() -> None:
    """uvicorn restores the signal handlers it found and then raises the signal it caught again,
    which with Python's defaults kills the process (SIGTERM) or raises KeyboardInterrupt (SIGINT)
    after a clean drain. Handlers that ignore that second delivery keep the exit status 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
