"""The W3C trace context a request carries through every service (design §6).

Every internal message about a request holds its `TraceContext`, empty while tracing is off,
so a span anywhere in the mesh can name its parent. A malformed `traceparent` is dropped at
the front door, as the W3C rule says (the request becomes a new root): garbage never travels.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# version "00": 32 hex trace id, 16 hex parent id, 2 hex flags; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
# A list-member syntax check is the tracing SDK's job; here only a size and charset bound.
_TRACESTATE = re.compile(r"[\x20-\x7e]{0,512}")
TRACEPARENT_KEY = "traceparent"
TRACESTATE_KEY = "tracestate"


@dataclass(frozen=True, slots=True)
class TraceContext:
    traceparent: str = ""
    tracestate: str = ""

    def __bool__(self) -> bool:
        return bool(self.traceparent)

    @property
    def trace_id(self) -> str:
        """The 32-hex trace id ("" when empty): what a user searches for in Jaeger."""
        return self.traceparent[3:35]

    @property
    def sampled(self) -> bool:
        """The W3C `sampled` flag: decided once at the front door, obeyed everywhere after."""
        return bool(self.traceparent) and int(self.traceparent[53:55], 16) & 1 == 1

    @classmethod
    def of_span(cls, trace_id: int, span_id: int, flags: int, tracestate: str = "") -> TraceContext:
        """The context that makes a span with these ids the parent of spans elsewhere."""
        return cls(f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}", tracestate)

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext:
        """The context as received, or NO_TRACE when `traceparent` is missing or malformed
        (a `tracestate` without a valid parent means nothing)."""
        if not traceparent or not _TRACEPARENT.fullmatch(traceparent.strip()):
            return NO_TRACE
        state = (tracestate or "").strip()
        return cls(traceparent.strip(), state if _TRACESTATE.fullmatch(state) else "")

    @classmethod
    def from_carrier(cls, get: Callable[[str], str | None]) -> TraceContext:
        """From HTTP headers or gRPC metadata, given a lookup by lower-case key."""
        return cls.parse(get(TRACEPARENT_KEY), get(TRACESTATE_KEY))


NO_TRACE = TraceContext()
