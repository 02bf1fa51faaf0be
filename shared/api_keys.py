"""API keys: who may call the front door, and which key a request belongs to (design §11).

Keys come from `--api-key` (repeatable) or, when no flag names one, from the environment
variable RADIXMESH_API_KEY (one key), so they need not appear on a command line. A client
presents one as `Authorization: Bearer <key>` (what OpenAI-style clients send) or as
`x-api-key: <key>`, in HTTP headers and gRPC metadata alike.

Invariants: a presented key is compared with every configured key in constant time
(`hmac.compare_digest`, no early exit), so timing says nothing about which key or how much of
it matched; the key a request was started with is remembered only as its `owner` digest,
never as the key itself; with no key configured everyone is allowed and owns nothing
(`owner` None), so aborts work for anyone, as before keys existed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Sequence

import grpc

from radixmesh.shared.errors import RadixMeshError

logger = logging.getLogger(__name__)

API_KEY_ENV = "RADIXMESH_API_KEY"
BEARER = "bearer "
# The header / metadata names a key may arrive in, lower case (gRPC metadata keys are).
AUTHORIZATION = "authorization"
X_API_KEY = "x-api-key"
# Who owns a request: the digest of the key that started it; None where no key is configured.
Owner = str | None


class AuthenticationError(RadixMeshError):
    """No key, or not one of the configured keys."""

    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    openai_type = "authentication_error"


class PermissionDeniedError(RadixMeshError):
    """A valid key asked for something that belongs to another key (another's request)."""

    grpc_status = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    openai_type = "permission_error"


def owner_of(key: str) -> str:
    """The digest a request's owner is remembered by; the key itself is never stored."""
    return _digest(key).hex()


def _digest(key: str) -> bytes:
    # surrogatepass: a header holding a lone surrogate is a wrong key, not a server error.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def keys_from(flags: Sequence[str], environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The configured keys: the flags' if any, else $RADIXMESH_API_KEY's one, else none.
    Empty strings are no keys (an empty variable does not switch authentication on)."""
    keys = tuple(key for key in flags if key)
    if keys:
        return keys
    value = (os.environ if environ is None else environ).get(API_KEY_ENV, "")
    return (value,) if value else ()


def presented_key(get: Callable[[str], str | None]) -> str | None:
    """The key a request carries, read through a case-insensitive header getter."""
    authorization = get(AUTHORIZATION)
    if authorization is not None:
        if authorization[:len(BEARER)].lower() == BEARER:
            return authorization[len(BEARER):].strip()
        return None  # another scheme (Basic, ...) is no key of ours
    return get(X_API_KEY)


class ApiKeys:
    """The configured keys; `authenticate` turns what a request presents into its owner."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Digests, all of one length: comparing them says nothing about a key's length either.
        self._keys = tuple(_digest(key) for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # configs and objects get logged: never the keys
        return f"ApiKeys({len(self._keys)} configured)"

    def authenticate(self, presented: str | None) -> Owner:
        """The owner of requests made with `presented`; AuthenticationError if it is not a
        configured key. Every configured key is compared, matched or not."""
        if not self._keys:
            return None
        if not presented:
            raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
        candidate = _digest(presented)
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationError("invalid API key")
        return owner_of(presented)

    def authenticate_grpc(self, context: grpc.aio.ServicerContext) -> Owner:
        """`authenticate` for a gRPC call's metadata."""
        metadata: dict[str, str] = {}
        for name, value in context.invocation_metadata() or ():
            if isinstance(value, str):  # binary (-bin) entries hold no key
                metadata.setdefault(name.lower(), value)
        return self.authenticate(presented_key(metadata.get))


NO_KEYS = ApiKeys(())  # authentication off


def may_abort(owner: Owner, caller: Owner) -> bool:
    """Whether `caller` may end a request `owner` started: only its owner may, and anyone
    may where no key is configured (both None)."""
    if owner is None or caller is None:
        return owner is None and caller is None
    return hmac.compare_digest(owner, caller)


def warn_if_open(keys: ApiKeys, host: str, what: str = "the front door") -> bool:
    """Logs a warning when `host` is not loopback and no key guards it; True if it warned."""
    if keys.enabled or is_loopback(host):
        return False
    logger.warning("%s listens on %s with no API key: anyone who can reach it may use it. "
                   "Set --api-key (or $%s), or bind --host 127.0.0.1", what, host, API_KEY_ENV)
    return True


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
