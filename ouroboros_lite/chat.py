"""`ouroboros-lite chat`: a terminal chat on an Engine, driven like llama.cpp's CLI.

The input prompt is "> " at the start of a line (scripts wait for it). Replies stream token by
token. Ctrl-C during a reply stops it and keeps what was said; Ctrl-C or Ctrl-D at the prompt
exits. Turns reuse the KV cache; when the context fills, the oldest turns are dropped (the
system prompt stays) and the user is told.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from dataclasses import fields
from pathlib import Path

from .backend import ChatMessage
from .engine import Completion, Engine, trim_to_context
from .errors import OuroborosError
from .stops import stop_list

HELP = """commands:
  /help          this list
  /reset         forget the conversation (the system prompt stays)
  /stats         speed and acceptance of the last reply
  /save FILE     write the conversation to FILE as JSON (not over an existing file)
  /save! FILE    the same, replacing FILE if it exists
  /load FILE     continue a conversation saved with /save
  /system TEXT   set the system prompt (empty TEXT removes it)
  /set NAME VALUE  change a setting for the next replies: temp, top-k, top-p, min-p, seed,
                 repeat-penalty, presence-penalty, frequency-penalty, n (longest reply); /set alone lists them
  /exit          leave (so do Ctrl-D and Ctrl-C at the prompt)
  \"\"\"            begin a message of several lines (pasted text); a line ending in \"\"\" ends it
Ctrl-C during a reply stops it."""

COLOURS = {"draft": "\033[32m", "pool": "\033[34m", "window": "\033[34m"}  # green, blue; target plain
RESET = "\033[0m"
LEGEND = (f"[colours: {COLOURS['draft']}draft model{RESET}, {COLOURS['pool']}phrase pool or Jacobi window{RESET}, "
          "plain: the target's own token]")
# /set NAME -> the SamplingParams field it changes ("n" is the chat's own longest reply)
SETTABLE = {"temp": "temperature", "temperature": "temperature", "top-k": "top_k", "top-p": "top_p",
            "min-p": "min_p", "seed": "seed", "repeat-penalty": "repeat_penalty",
            "presence-penalty": "presence_penalty", "frequency-penalty": "frequency_penalty", "n": "n",
            "max-tokens": "n"}


class ChatSession:
    """The conversation and the commands; the Engine does the generating."""

    def __init__(self, engine: Engine, *, system: str | None, max_tokens: int, show_drafts: bool, out=sys.stdout,
                 stop: list[str] | None = None):
        self.engine = engine
        self.stop = stop
        self.messages: list[ChatMessage] = [ChatMessage("system", system)] if system else []
        self.max_tokens = max_tokens
        self.show_drafts = show_drafts
        self.out = out
        self.last: Completion | None = None
        self.typed_ahead: list[str] = []  # lines typed during a reply: the next inputs
        self.legend_shown = False
        self.ended = False  # Ctrl-D came during a reply: leave once it is done

    # --- input ----------------------------------------------------------------------------------------
    def read_message(self) -> str:
        """One line, or the lines between \"\"\" marks joined by newlines (pasted text); EOFError at the end."""
        line = self.read_line("> ")
        if not line.lstrip().startswith('"""'):
            return line
        lines = [line.lstrip()[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            try:
                lines.append(self.read_line("... "))
            except EOFError:  # the end of input closes the block; the chat ends after its reply
                self.ended = True
                break
        text = "\n".join(lines).rstrip()
        return text[:-3] if text.endswith('"""') else text

    def read_line(self, prompt: str) -> str:
        if self.typed_ahead:
            line = self.typed_ahead.pop(0)
            self.say(prompt + line)
            return line
        if self.ended:
            raise EOFError
        return input(prompt)

    def poll_input(self) -> None:
        """While a reply streams, read what the terminal has for us: Ctrl-D (an empty read) would
        otherwise be lost, and lines typed ahead are kept for later. Terminals only: a pipe is
        read by input() alone, whose buffer must not be bypassed."""
        stdin = sys.stdin
        if stdin is None or not stdin.isatty():
            return
        while not self.ended and select.select([stdin], [], [], 0)[0]:
            data = os.read(stdin.fileno(), 4096)
            if not data:
                self.ended = True
            self.typed_ahead += data.decode("utf-8", errors="replace").splitlines()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # --- commands -----------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.messages = [m for m in self.messages if m.role == "system"]
            self.engine.reset()
            self.say("[conversation cleared]")
        elif name == "/stats":
            self.say(format_stats(self.last))
        elif name in ("/save", "/save!"):
            if not arg:
                self.say("usage: /save FILE (/save! FILE replaces an existing file)")
            else:
                self.save(Path(arg).expanduser(), replace=name == "/save!")
        elif name == "/load":
            if not arg:
                self.say("usage: /load FILE (a conversation written by /save)")
            else:
                self.load(Path(arg).expanduser())
        elif name == "/set":
            self.set(arg)
        elif name == "/system":
            self.messages = [m for m in self.messages if m.role != "system"]
            if arg:
                self.messages.insert(0, ChatMessage("system", arg))
            self.say(f"[system prompt {'set' if arg else 'removed'}]")
        else:
            self.say(f"unknown command {name}; /help lists them")
        return True

    def save(self, path: Path, *, replace: bool = False) -> None:
        if path.exists() and not replace:
            self.say(f"[{path} exists; /save! {path} replaces it]")
            return
        runtime = self.engine.runtime
        data = {
            "model": str(runtime.target.path),
            "draft": str(runtime.draft.path) if runtime.draft else None,
            "method": self.engine.method,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
        }
        try:
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            self.say(f"[could not save to {path}: {exc.strerror or exc}]")
            return
        self.say(f"[saved {len(self.messages)} messages to {path}]")

    def load(self, path: Path) -> None:
        """Replace the conversation with one /save wrote; the next reply decodes it (prefix reuse)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            messages = [ChatMessage(m["role"], m["content"]) for m in data["messages"]]
            if not all(isinstance(m.role, str) and m.role in ("system", "user", "assistant")
                       and isinstance(m.content, str) for m in messages):
                raise ValueError("a message needs a role (system, user, assistant) and text")
        except OSError as exc:
            self.say(f"[could not read {path}: {exc.strerror or exc}]")
            return
        except (ValueError, KeyError, TypeError) as exc:
            self.say(f"[{path} is not a conversation saved by /save: {exc}]")
            return
        self.messages = messages
        self.engine.reset()
        model = data.get("model") if isinstance(data, dict) else None
        note = f"; it was saved with {Path(model).name}" if model and Path(model).name != \
            self.engine.runtime.target.path.name else ""
        self.say(f"[loaded {len(messages)} messages from {path}{note}]")

    def set(self, arg: str) -> None:
        from dataclasses import replace

        name, _, value = arg.partition(" ")
        if not name:
            values = {"n": self.max_tokens, **{k: getattr(self.engine.sampling, f) for k, f in SETTABLE.items()
                                               if f != "n" and k not in ("temperature", "max-tokens")}}
            self.say("  ".join(f"{k} {v}" for k, v in values.items()))
            return
        field = SETTABLE.get(name)
        if field is None or not value.strip():
            self.say(f"usage: /set NAME VALUE, NAME one of {', '.join(k for k in SETTABLE if k != 'temperature')}")
            return
        try:
            number = float(value) if field in ("temperature", "top_p", "min_p", "repeat_penalty",
                                                "presence_penalty", "frequency_penalty") else int(value)
            if field == "n":
                if number <= 0:
                    raise OuroborosError(f"n must be a positive number of tokens, got {number}")
                self.max_tokens = number
            else:
                self.engine.sampling = replace(self.engine.sampling, **{field: number})
        except ValueError:
            self.say(f"[{name} takes a number, got {value.strip()!r}]")
            return
        except OuroborosError as exc:
            self.say(f"[{exc}]")
            return
        self.say(f"[{name} = {number}]")

    # --- one turn -----------------------------------------------------------------------------------
    def turn(self, text: str) -> None:
        # From here on Ctrl-C cancels the reply (at the next decode step) instead of raising.
        self.interrupted = False

        def interrupt(*_):
            self.interrupted = True
            self.engine.cancel()

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            self._turn(text)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _turn(self, text: str) -> None:
        self.messages.append(ChatMessage("user", text))
        reserve = min(self.max_tokens, self.engine.n_ctx // 2)
        try:
            dropped = trim_to_context(self.engine, self.messages, reserve)
        except OuroborosError as exc:
            self.messages.pop()
            self.say(f"[{exc}]")
            return
        if dropped:
            self.say(f"[context full: dropped the {dropped} oldest messages]")
        if self.interrupted:  # Ctrl-C before the reply started
            self.messages.pop()
            self.say("[stopped]")
            return
        if self.show_drafts and not self.legend_shown:
            self.say(LEGEND)
            self.legend_shown = True
        reply = []
        stream = self.engine.chat(self.messages, max_tokens=self.max_tokens, stream=True, sources=True,
                                  stop=self.stop)
        try:
            for piece in stream:
                reply.append(piece.text)
                colour = COLOURS.get(piece.source) if self.show_drafts else None
                self.out.write(f"{colour}{piece.text}{RESET}" if colour else piece.text)
                self.out.flush()
                self.poll_input()
        finally:
            stream.close()
        self.last = self.engine.last
        self.say()
        if self.last is not None and self.last.finish_reason == "cancelled":
            self.say("[stopped]")
        elif self.last is not None and self.last.finish_reason == "length" and \
                self.last.prompt_tokens + self.last.generation_tokens >= self.engine.n_ctx:
            self.say("[context full: the reply was cut; older turns will be dropped next time]")
        self.messages.append(ChatMessage("assistant", "".join(reply)))


def format_stats(last: Completion | None) -> str:
    if last is None:
        return "no reply yet"
    spec = last.spec
    by_source = {s: last.sources.count(s) for s in ("draft", "pool", "window", "target")}
    lines = [
        f"reply: {last.generation_tokens} tokens at {last.tokens_per_second:.1f} tok/s ({last.finish_reason})"
        + (f", seed {last.seed}" if last.seed is not None else ""),
        f"prompt: {last.prompt_tokens} tokens, {last.cached_tokens} reused from the cache, "
        f"{last.prompt_tokens - last.cached_tokens} decoded in {last.prompt_seconds:.2f} s (time to first token)",
        f"acceptance: {spec.acceptance_rate:.0%} of {spec.drafted_tokens} drafted tokens; "
        f"{spec.tokens_per_forward:.2f} tokens per target forward ({spec.target_forwards} forwards, "
        f"{spec.draft_forwards} draft forwards)",
        "proposed by: " + ", ".join(f"{k} {v}" for k, v in by_source.items() if v),
    ]
    return "\n".join(lines)


def engine_from_args(args) -> Engine:
    from .arguments import runtime_options, sampling_params

    options = runtime_options(args)
    sampling = sampling_params(args, default_temperature=0.8)
    kwargs = {f.name: getattr(options, f.name) for f in fields(options)}
    kwargs.update({f.name: getattr(sampling, f.name) for f in fields(sampling)})
    return Engine(args.model, args.draft, method=args.method or "ouroboros", warm_pool=args.warm_pool, **kwargs)


def run_chat(args) -> int:
    from .arguments import max_tokens_for

    # Ctrl-C must reach the REPL even when started from a shell that ignores SIGINT for
    # background jobs (the disposition is inherited, and Python keeps SIG_IGN if it finds it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    stop_list(args.stop)  # an empty --stop is an error before the model loads
    with engine_from_args(args) as engine:
        engine.chat_tokens([ChatMessage("user", "Hello")])  # a broken chat template fails here, not every turn
        runtime = engine.runtime
        pair = runtime.target.path.name + (f" + draft {runtime.draft.path.name}" if runtime.draft else "")
        sampling = engine.sampling
        seed = "" if sampling.greedy else (f", seed {sampling.seed}" if sampling.seed not in (None, -1) else
                                           ", seed random per reply (/stats shows it)")
        print(f"ouroboros-lite chat: {pair}, method {engine.method}, temperature {sampling.temperature:g}{seed}",
              file=sys.stderr)
        print("/help lists commands; Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the prompt exits", file=sys.stderr)
        session = ChatSession(engine, system=args.system, show_drafts=args.show_drafts, stop=args.stop,
                              max_tokens=max_tokens_for(args.max_tokens, 1024, engine.n_ctx))
        while True:
            try:
                line = session.read_message()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stdout, flush=True)
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not session.command(line):
                    return 0
                continue
            session.turn(line)
