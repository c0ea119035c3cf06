"""The text of one answer as verified tokens arrive: what may be streamed now, and where a stop string ends it."""

from __future__ import annotations

from typing import Callable


class AnswerText:
    """Decodes the whole answer after every batch of tokens (so multi-byte merges stay right) and
    holds back what a client must not see yet: an unfinished character, or a tail that could be the
    start of a stop string. Once a stop string appears the text ends just before it."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()) -> None:
        self._decode, self._stops = decode, stops
        self.ids: list[int] = []
        self.text = ""  # the answer so far (cut before a stop string once one appeared)
        self.sent = ""  # the prefix of ``text`` handed out so far
        self.stopped = False

    def add(self, new: list[int]) -> str:
        """Take newly verified tokens; return the text that may be sent now ('' if none)."""
        self.ids += new
        text = self._decode(self.ids)
        cuts = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            return self._release(self.text)
        self.text = text
        safe = text[: len(text) - self._stop_prefix(text)]
        return self._release(safe.rstrip("\ufffd"))  # U+FFFD at the end: a character still incomplete

    def finish(self) -> str:
        """The rest of the text once decoding ended (nothing is held back any more)."""
        return self._release(self.text)

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        return max((k for s in self._stops for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), default=0)

    def _release(self, safe: str) -> str:
        # Decoding more tokens can rewrite the end of earlier text (byte merges): only a text that
        # extends what was sent can be sent; the rest waits for a later call or for finish().
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta
