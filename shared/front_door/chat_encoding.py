"""Chat messages -> token ids, with special-token text in the messages kept as plain text.

The chat template writes the turns' special tokens (`<|im_start|>`, `<s>`, ...) itself; a
client that types such text into a message must not forge a turn (design §5). The conversation
is rendered and encoded exactly as `TextTokenizer.apply_chat_template` does, so a chat without
special-token text in its content tokenizes exactly as the HF tokenizer's own
`apply_chat_template`. Where content does hold such text, each special token the encoding
found in (or reaching into) a message's content is replaced by the ids of its text encoded as plain text
(`split_special_tokens`). The HF tokenizer splits its input at special tokens before anything
else, so every other token stays what it was.

Roles are short names, not text: one holding special-token text is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.tokenizer import TextTokenizer

Span = tuple[int, int]


def special_token_texts(tokenizer: TextTokenizer) -> dict[str, int]:
    """The text of every special token the tokenizer parses out of text, with its id."""
    return {token.content: token_id
            for token_id, token in tokenizer.hf_tokenizer.added_tokens_decoder.items()
            if token.special}


def encode_chat(tokenizer: TextTokenizer, messages: Sequence[dict],
                allow_special_tokens: bool = False) -> list[int]:
    """Token ids of a conversation with the generation prompt. Unless `allow_special_tokens`,
    special-token text inside a message's content is encoded as plain text."""
    if allow_special_tokens:
        return tokenizer.apply_chat_template(messages)
    specials = special_token_texts(tokenizer)
    _check_roles(messages, specials)
    if not any(text in message["content"] for message in messages for text in specials):
        return tokenizer.apply_chat_template(messages)  # the common case: nothing to guard
    rendered, spans = content_spans(tokenizer, messages)
    encoding = tokenizer.hf_tokenizer(rendered, add_special_tokens=False,
                                      return_offsets_mapping=True)
    special_ids = set(specials.values())
    ids: list[int] = []
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"],
                                      strict=True):
        if token_id in special_ids and _overlaps(start, end, spans):
            ids.extend(plain_ids(tokenizer, rendered[start:end]))
        else:
            ids.append(token_id)
    return ids


def plain_ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    """`text` encoded with every special token in it taken as ordinary characters."""
    return list(tokenizer.hf_tokenizer(text, add_special_tokens=False,
                                       split_special_tokens=True)["input_ids"])


def content_spans(tokenizer: TextTokenizer, messages: Sequence[dict]) -> tuple[str, list[Span]]:
    """The rendered prompt and where each message's content sits in it.

    Found by rendering once with each content replaced by a marker nobody can send (a fresh
    random nonce), so a content equal to template text (`<|im_end|>` itself, say) is never
    mistaken for the template's own. A template that rewrites content (trims it, say) cannot
    be guarded that way: such a request is refused rather than tokenized with its
    special-token text live.
    """
    nonce = secrets.token_hex(8)
    markers = [f"\x1e{nonce}-{index}\x1e" for index in range(len(messages))]
    templated = tokenizer.render_chat(
        [{**message, "content": marker}
         for message, marker in zip(messages, markers, strict=True)])
    parts: list[str] = []
    spans: list[Span] = []
    length = position = 0
    for message, marker in zip(messages, markers, strict=True):
        at = templated.find(marker, position)
        if at < 0:
            continue  # the template left this message out
        parts.extend((templated[position:at], message["content"]))
        length += at - position
        spans.append((length, length + len(message["content"])))
        length += len(message["content"])
        position = at + len(marker)
    parts.append(templated[position:])
    rendered = "".join(parts)
    if rendered != tokenizer.render_chat(messages):
        raise InvalidRequestError("messages", "special-token text in content cannot be kept as "
                                  "plain text: this model's chat template rewrites content")
    return rendered, spans


def _overlaps(start: int, end: int, spans: list[Span]) -> bool:
    """Whether any of [start, end) is content: a special token made partly of a client's
    text (its start typed into a message, its end the template's) is no template token."""
    return any(start < high and low < end for low, high in spans)


def _check_roles(messages: Sequence[dict], specials: dict[str, int]) -> None:
    for index, message in enumerate(messages):
        if any(text in message["role"] for text in specials):
            raise InvalidRequestError(f"messages[{index}].role",
                                      "must not contain special-token text")
