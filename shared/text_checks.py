"""Checks on the text a request carries, shared by every entry (design §5, §11).

Protobuf string fields must be valid UTF-8, and Python strings need not be: JSON's
`"\\ud800"` decodes to a lone surrogate, which raises inside the wire encoding of whichever
link the request travels next, failing that link and every request on it. So text is checked
where it enters, and the field it came in is named.
"""

from __future__ import annotations

from radixmesh.shared.errors import InvalidRequestError

MAX_RID_LENGTH = 256
MAX_CACHE_SALT_LENGTH = 1024


def check_utf8(field: str, text: str) -> str:
    """`text` itself if it encodes as UTF-8; otherwise names the first lone surrogate."""
    if text.isascii():  # the common case, at C speed
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequestError(
            field, f"is not valid UTF-8: lone surrogate U+{ord(text[error.start]):04X} at "
            f"character {error.start}") from None
    return text


def check_json_text(value: object, root: str = "body") -> None:
    """Every string of a decoded JSON document, keys included, must be valid UTF-8.

    Iterative, so that depth costs no recursion; the error names the path of the first bad
    string the way OpenAI errors name parameters (`messages[2].content`).
    """
    pending: list[tuple[object, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            check_utf8(path or root, item)
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                check_utf8(where if key.isascii() else (path or root), key)
                if isinstance(child, (str, dict, list)):
                    pending.append((child, where))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]") for index, child in enumerate(item)
                           if isinstance(child, (str, dict, list)))


def check_rid(rid: object, field: str = "rid") -> str:
    """A client's or a peer's request id: a printable string of at most MAX_RID_LENGTH
    characters. Ids travel in logs and metadata, where a control character could forge a
    line."""
    if not isinstance(rid, str) or not rid:
        raise InvalidRequestError(field, "must be a non-empty string")
    if len(rid) > MAX_RID_LENGTH:
        raise InvalidRequestError(field, f"must be at most {MAX_RID_LENGTH} characters, "
                                  f"got {len(rid)}")
    check_utf8(field, rid)
    if not rid.isprintable():
        raise InvalidRequestError(field, "must hold printable characters only")
    return rid


def check_cache_salt(salt: object, field: str = "cache_salt") -> str | None:
    """A request's cache salt (vLLM's field): None (no salt), or a non-empty UTF-8 string of at
    most MAX_CACHE_SALT_LENGTH characters. It names a prefix-cache namespace of its own, so an
    empty one (as vLLM) is refused rather than taken for "no salt"."""
    if salt is None:
        return None
    if not isinstance(salt, str) or not salt:
        raise InvalidRequestError(field, "must be a non-empty string if given")
    if len(salt) > MAX_CACHE_SALT_LENGTH:
        raise InvalidRequestError(field, f"must be at most {MAX_CACHE_SALT_LENGTH} characters, "
                                  f"got {len(salt)}")
    return check_utf8(field, salt)
