"""Stop strings: the text ends before the first stop string, and a streamed piece never shows a
stop string's beginning that later turns out to be a stop.

    stops = StopStrings(["\\n\\n", "User:"])
    piece, stopped = stops.push(text)             # piece: what may be shown now; the rest is held back
    piece, stopped = stops.push(text, last=True)  # the generation's last text: nothing is held back

Held back is the longest end of the text that is the beginning of some stop string, so any stop
that starts in text already shown would have been found: every position where one could start
lies in what is held.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import OuroborosError


def stop_list(stop) -> tuple[str, ...]:
    """None, a string or a list of strings -> a tuple of non-empty strings (OuroborosError otherwise)."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise OuroborosError(f"stop must be a string or a list of strings, got {stop!r:.80}")
    if any(s == "" for s in stop):
        raise OuroborosError("stop strings must not be empty")
    return tuple(stop)


class StopStrings:
    def __init__(self, stop=None):
        self.stops = stop_list(stop)
        self.held = ""

    def push(self, text: str, *, last: bool = False) -> tuple[str, bool]:
        """(what may be shown now, whether a stop string was reached). After a stop, the text from
        the stop string on is dropped, and the generation should end. last: the generation ends
        with this text, so what was held back is shown too."""
        if not self.stops:
            return text, False
        text, self.held = self.held + text, ""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            return text[:min(found)], True
        keep = 0 if last else self._longest_stop_prefix_at_end(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """The text held back: shown once the generation ends without reaching a stop."""
        held, self.held = self.held, ""
        return held

    def _longest_stop_prefix_at_end(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
