"""One thread that runs every generation of the server, a step of each active slot in turn.

A slot is an Engine on the shared Models (its own KV cache and drafters). Requests come in as
Jobs; those beyond the free slots wait in a bounded queue (`QueueFull` past it). Each turn of the
loop first puts waiting jobs on free slots (a conversation's next turn on the slot whose KV
cache holds its beginning, see `_best_slot`), then advances each active slot's stream by one
piece (one decode cycle at most), so a long reply never starves a short one. A cancelled job (its client went away)
is closed at its slot's next turn, which frees the slot.

Jobs hear back through `on_event`, called from the scheduler thread with ("piece", text),
("done", Completion or None when it never started) or ("error", exception).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine import Completion, Engine, Stream


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


class ShuttingDown(Exception):
    """The server is draining: it finishes what it has and takes nothing new."""


@dataclass(eq=False)
class Job:
    tokens: list[int]  # the prompt's tokens: they route the job to the slot with the longest cached prefix
    open_stream: Callable[[Engine], Stream]  # starts the generation on a slot's Engine
    on_event: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Thread-safe; the generation ends at its slot's next turn with finish_reason "cancelled"."""
        self.cancelled.set()


@dataclass(eq=False)
class _Running:
    job: Job
    slot: Engine
    stream: Stream
    steps: int = 0  # pieces produced: until the first, engine.last is the previous job's


@dataclass
class Metrics:
    """Counters since start (the scheduler thread writes them)."""

    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0  # QueueFull
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    def count(self, done: Completion) -> None:
        self.prompt_tokens += done.prompt_tokens
        self.cached_tokens += done.cached_tokens
        self.generated_tokens += done.generation_tokens
        self.generation_seconds += done.generation_seconds
        self.drafted_tokens += done.spec.drafted_tokens
        self.accepted_tokens += done.spec.accepted_tokens


def shared_prefix(a, b) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def cached_tokens(slot: Engine) -> list[int]:
    """The tokens the slot's KV cache holds (sequence 0 of its verifier; slots stay open while scheduled)."""
    return slot.runtime.verifier.cached


class Scheduler:
    def __init__(self, slots: list[Engine], *, max_waiting: int):
        self.slots = list(slots)
        self.max_waiting = max_waiting
        self.metrics = Metrics()
        self._free = list(self.slots)
        self._last_used = {id(slot): 0.0 for slot in self.slots}
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="ouroboros-scheduler", daemon=True)

    # --- called from other threads ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) + len(self._running) >= len(self.slots) + self.max_waiting:
                self.metrics.requests_rejected += 1
                raise QueueFull(f"all {len(self.slots)} slots are busy and {self.max_waiting} requests wait")
            self._waiting.append(job)
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def busy_slots(self) -> int:
        return len(self._running)

    def drain(self) -> None:
        """Take no new jobs; the loop ends once the running and waiting ones are done."""
        with self._cond:
            self._accepting = False
            self._cond.notify()

    def cancel_all(self) -> None:
        with self._cond:
            for job in [*self._waiting, *(run.job for run in self._running)]:
                job.cancel()
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Drain, cancel what is left, and wait for the thread to end."""
        self.drain()
        self.cancel_all()
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the scheduler thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                placed = self._place_waiting()
                if not placed and not self._running:
                    if self._stopped or (not self._accepting and not self._waiting):
                        return
                    self._cond.wait()
                    continue
            for job, slot in placed:
                self._start(job, slot)
            for run in list(self._running):
                self._step(run)

    def _place_waiting(self) -> list[tuple[Job, Engine]]:
        """Jobs in arrival order onto free slots, each on the one `_best_slot` picks; jobs whose
        clients went away leave the queue. Called with the lock held."""
        for job in [job for job in self._waiting if job.cancelled.is_set()]:
            self._waiting.remove(job)
            self.metrics.requests_cancelled += 1
            job.on_event(("done", None))
        placed = []
        while self._waiting and self._free:
            job = self._waiting.popleft()
            slot = self._best_slot(job.tokens)
            self._free.remove(slot)
            placed.append((job, slot))
        return placed

    def _best_slot(self, tokens: list[int]) -> Engine:
        """The free slot whose cache this prompt continues (it shares at least half of what the slot
        holds: a conversation's next turn); else an empty slot; else the one idle longest. So a prompt
        that shares only a chat template's preamble with a slot does not evict its conversation."""
        shared = {id(s): shared_prefix(cached_tokens(s), tokens) for s in self._free}
        best = max(self._free, key=lambda s: (shared[id(s)], -self._last_used[id(s)]))
        if 2 * shared[id(best)] >= len(cached_tokens(best)):
            return best
        empty = [s for s in self._free if not cached_tokens(s)]
        return empty[0] if empty else min(self._free, key=lambda s: self._last_used[id(s)])

    def _start(self, job: Job, slot: Engine) -> None:
        try:
            stream = job.open_stream(slot)
        except Exception as exc:  # noqa: BLE001 - the handler turns it into an HTTP error
            self._free_slot(slot)
            self.metrics.requests_failed += 1
            job.on_event(("error", exc))
            return
        with self._cond:
            self._running.append(_Running(job, slot, stream))

    def _step(self, run: _Running) -> None:
        if run.job.cancelled.is_set():
            run.stream.close()  # the generation ends with finish_reason "cancelled"
            self._finish(run, run.slot.last if run.steps else None)
            return
        try:
            piece = next(run.stream)
        except StopIteration:
            self._finish(run, run.slot.last)
            return
        except Exception as exc:  # noqa: BLE001 - one failed generation must not stop the others
            run.stream.close()
            self._finish(run, None, error=exc)
            return
        run.steps += 1
        run.job.on_event(("piece", piece))

    def _finish(self, run: _Running, done: Completion | None, error: Exception | None = None) -> None:
        with self._cond:
            self._running.remove(run)
        self._free_slot(run.slot)
        if error is not None:
            self.metrics.requests_failed += 1
            run.job.on_event(("error", error))
            return
        if done is None or done.finish_reason == "cancelled":
            self.metrics.requests_cancelled += 1
        else:
            self.metrics.requests_finished += 1
        if done is not None:
            self.metrics.count(done)
        run.job.on_event(("done", done))

    def _free_slot(self, slot: Engine) -> None:
        with self._cond:
            self._last_used[id(slot)] = time.monotonic()
            self._free.append(slot)
