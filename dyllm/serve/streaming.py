"""From a row's tokens to the text a client may already see, and the bytes of server-sent events.

A masked diffusion model does not finish its answer left to right one token at a time, but a
block's tokens are final once no mask is left in it (committed tokens never change), and blocks
are decoded left to right. So after each step the text of the finished blocks is final, and
`AnswerText` turns it into the next piece of the stream. Two things could make an early piece
wrong, and both are held back until they are certain:

- a block may end inside a multi-byte character: trailing U+FFFD replacement characters wait;
- a stop string may straddle what is known: with stop strings of at most m characters, the last
  m - 1 characters wait, unless a stop string already lies entirely inside the known text.

Every piece is therefore a prefix of the final answer (`shown_text` of the whole answer), which
is what a non-streamed request gets, so the concatenated stream equals it.

`render_canvas` draws a partially unmasked answer for the canvas extension: masked positions as
`MASK_GLYPH`, the committed tokens decoded between them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

MASK_GLYPH = "\u2592"
"""How `render_canvas` shows a masked position (a medium shade block)."""

REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, int | None]:
    """`text` up to the earliest stop string, and where that string starts (None: no stop)."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    if not found:
        return text, None
    first = min(found)
    return text[:first], first


def shown_text(text: str, stops: Sequence[str], complete: bool) -> tuple[str, bool]:
    """What of `text` (a prefix of the final answer, or all of it) is certain, and whether a stop
    string has ended the answer.

    complete: `text` is the whole answer; nothing is held back.
    """
    if complete:
        cut, where = cut_at_stop(text, stops)
        return cut, where is not None
    known = text.rstrip(REPLACEMENT)
    longest = max((len(stop) for stop in stops), default=0)
    certain = len(known) - max(longest - 1, 0)
    cut, where = cut_at_stop(known, stops)
    if where is not None and where <= certain:
        return cut, True
    return known[: max(certain, 0)], False


class AnswerText:
    """The streamed text of one row: each `update` returns what is new and certain."""

    def __init__(self, decode: Decode, stops: Sequence[str]) -> None:
        self.decode = decode
        self.stops = tuple(stops)
        self.sent = ""
        self.ended = False
        """A stop string has ended the answer, or the answer is complete."""

    def update(self, tokens: Sequence[int], complete: bool) -> str:
        """tokens: the answer's final tokens so far (EOS excluded); complete: that is all of it.
        Returns the text to send now ("" when nothing new is certain)."""
        if self.ended:
            return ""
        shown, stopped = shown_text(self.decode(tokens), self.stops, complete)
        if not shown.startswith(self.sent):
            # Cannot happen with a decoder whose outputs extend each other; never resend.
            return ""
        delta = shown[len(self.sent) :]
        self.sent = shown
        self.ended = stopped or complete
        return delta


def answer_before_eos(tokens: Sequence[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """The tokens before the first EOS, and whether there was one."""
    tokens = list(tokens)
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id)], True
    return tokens, False


def tokens_for_text(tokens: Sequence[int], length: int, decode: Decode) -> int:
    """The fewest leading tokens whose text reaches `length` characters (completion_tokens of an
    answer cut at a stop string)."""
    low, high = 0, len(tokens)
    while low < high:
        middle = (low + high) // 2
        if len(decode(tokens[:middle]).rstrip(REPLACEMENT)) >= length:
            high = middle
        else:
            low = middle + 1
    return low


def render_canvas(tokens: Sequence[int], mask_token_id: int, decode: Decode | None) -> str:
    """The canvas as text: runs of committed tokens decoded, each masked position a glyph.
    Without a tokenizer (decode None) the token ids are written out."""
    pieces: list[str] = []
    run: list[int] = []
    for token in tokens:
        if token == mask_token_id:
            if run:
                pieces.append(_decode_run(run, decode))
                run = []
            pieces.append(MASK_GLYPH)
        else:
            run.append(token)
    if run:
        pieces.append(_decode_run(run, decode))
    return "".join(pieces)


def _decode_run(run: list[int], decode: Decode | None) -> str:
    if decode is None:
        return " ".join(str(token) for token in run) + " "
    return decode(run)


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON (`data: {...}` and a blank line)."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
"""The event that ends an OpenAI stream."""
