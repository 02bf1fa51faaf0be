"""Incremental detokenization of one request: token ids in, newly completed text out.

Decoding each new token alone is wrong twice over: a byte-level token may hold only part of a
UTF-8 character, and some decoders (SentencePiece's) drop the leading space of a sequence's
first word. So each step decodes a short window that starts a little before the new tokens
and emits only what the window adds beyond its already-emitted head:

    ids:   ... [prefix_offset ......... read_offset ......... end)
                 head: decoded, emitted   tail: new, not yet emitted

The emitted text grows only when the window's text does not end in U+FFFD, the mark of a
character still incomplete. Such a window ends on a character boundary, and UTF-8 decoding
restarts cleanly after one, so the deltas concatenate exactly to the text decoded at once.

Invariant (byte-level tokenizers; tested): for any ids split into any chunks,
`"".join(feed(chunk) for chunk in chunks) + flush() == decode(ids, skip_special_tokens=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from radixmesh.shared.token_batch import PROMPT_CONTEXT_TOKENS

REPLACEMENT_CHAR = "\ufffd"


class TokenDecoder(Protocol):
    """A tokenizer's decoding. It may also have `decode_batch(sequences)`, `decode` of each
    sequence with special tokens skipped, in one call (shared/tokenizer.py's does)."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


def decode_many(tokenizer: TokenDecoder, sequences: list[list[int]]) -> list[str]:
    """Each sequence decoded, special tokens skipped: one call where the tokenizer batches."""
    batch = getattr(tokenizer, "decode_batch", None)
    if batch is not None:
        return batch(sequences)
    return [tokenizer.decode(ids, skip_special_tokens=True) if ids else "" for ids in sequences]


class IncrementalDetokenizer:
    """Per-request decoding state; special tokens are skipped.

    `prompt_ids`, when given, seeds the window with the prompt's last few tokens. They are
    used only if they decode to whole characters; otherwise decoding starts from scratch,
    since a window that opens on a broken character would shift every later delta.
    """

    def __init__(self, tokenizer: TokenDecoder, prompt_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        if self._decode(context).endswith(REPLACEMENT_CHAR):
            context = []
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)

    def feed(self, token_ids: Sequence[int]) -> str:
        """Adds output tokens; returns the text they complete (possibly empty)."""
        head_ids, window_ids = self.windows(token_ids)
        return self.commit(token_ids, self._decode(head_ids), self._decode(window_ids))

    def windows(self, token_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """The two id windows `feed(token_ids)` decodes, the emitted head and the head with
        everything after it, so a caller can decode many requests' windows in one call."""
        ids = self._ids
        return ids[self._prefix_offset:self._read_offset], [*ids[self._prefix_offset:],
                                                             *token_ids]

    def commit(self, token_ids: Sequence[int], head: str, window: str) -> str:
        """`feed(token_ids)`, given the text of its `windows(token_ids)`."""
        self._ids.extend(token_ids)
        if len(window) <= len(head) or window.endswith(REPLACEMENT_CHAR):
            return ""
        self._advance()
        return window[len(head):]

    def flush(self) -> str:
        """Releases the text held back at the end, broken characters included."""
        head = self._decode(self._ids[self._prefix_offset:self._read_offset])
        window = self._decode(self._ids[self._prefix_offset:])
        self._advance()
        return window[len(head):]

    def _advance(self) -> None:
        # The emitted tail becomes the next window's head; older ids are no longer needed.
        del self._ids[:self._read_offset]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, token_ids: Sequence[int]) -> str:
        if not token_ids:
            return ""
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)
