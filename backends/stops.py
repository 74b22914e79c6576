"""Stop strings for backends that do not handle them natively.

Text is released as soon as it can no longer be the start of a stop string, so streaming is
held back by at most ``len(longest stop) - 1`` characters, and a stop string never reaches the
client. Work per feed is proportional to the text fed, times the number of stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        # A held-back suffix starts with a stop string's first character within the last
        # ``longest - 1`` characters: without one there (most tokens) nothing is held.
        self._firsts = tuple({s[0] for s in self._stops})
        self._reach = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self.stopped = False
        # The stop string that completed, once one did.
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit; sets ``stopped`` when a stop string completes."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        # Only the region that could contain a match starting in the held part or in the new
        # text needs scanning; ``buf`` is at most held (< longest stop) + new text long.
        first = -1
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1 and (first == -1 or i < first):
                first = i
                self.matched = stop
        if first != -1:
            self.stopped = True
            self._held = ""
            return buf[:first]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of generation when no stop string completed."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        window = buf[max(len(buf) - self._reach, 0) :] if self._reach else ""
        if not any(c in window for c in self._firsts):
            return 0
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
