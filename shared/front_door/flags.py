"""The flags every public front door shares: the tokenizer service of one mesh and the router
in front of several take the same HTTP, gRPC, key, TLS and limit flags, with the same meanings.

The limits (design §11) are explicit flags with defaults a single front door can hold: past
them a client gets a clear refusal (400 naming the field, 503 / RESOURCE_EXHAUSTED for
capacity, a closed connection for a stalled one) instead of slowing everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.api_keys import API_KEY_ENV, ApiKeys, keys_from
from radixmesh.shared.hub import HubFlags
from radixmesh.shared.model_location import model_name
from radixmesh.shared.sampling_params import DEFAULT_LIMITS, HARD_LIMITS, SamplingLimits
from radixmesh.shared.tls_flags import TLSFlags
from radixmesh.shared.tracing import TracingFlags

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
# Python's json has no depth limit (it recurses until RecursionError): bodies deeper than this
# are refused before any object is built. OpenAI bodies nest 5 deep at most.
DEFAULT_MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class FrontDoorFlags(TracingFlags, HubFlags, TLSFlags):
    """The flags of a public front door (a node's tokenizer service, the router).

    Invariant after construction: `served_model_name` is set and `api_key` is a tuple."""

    model_path: str | None = field(default=None, metadata={
        "help": "HF-format model directory whose tokenizer and chat template to use "
                "(default: the tiny random model made on first use)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "interface the HTTP and gRPC servers listen on"})
    port: int = field(default=30000, metadata={"help": "OpenAI-compatible HTTP port"})
    grpc_port: int = field(default=30001, metadata={"help": "gRPC Generation API port"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "model name clients must use in OpenAI requests (default: the model "
                "directory's name)"})
    max_request_bytes: int = field(default=DEFAULT_MAX_REQUEST_BYTES, metadata={
        "help": "largest HTTP request body or gRPC message accepted, in bytes"})
    # Not in repr: configs get logged, keys must not be.
    api_key: tuple[str, ...] = field(default=(), repr=False, metadata={
        "help": "a key clients must present as `Authorization: Bearer <key>` (or "
                "`x-api-key: <key>`) on every HTTP and gRPC call but /health, /metrics and "
                f"gRPC health; repeat for several keys (default: ${API_KEY_ENV}, one key, "
                "which keeps it off the command line; none: no authentication)"})
    enable_special_tokens_in_content: bool = field(default=False, metadata={
        "help": "tokenize special-token text inside chat message content (e.g. "
                "`<|im_start|>`) as the special token; off: it is plain text, so a user "
                "cannot forge the chat template's turns"})
    max_connections: int = field(default=1024, metadata={
        "help": "most HTTP connections open at once; past it a new connection is answered "
                "503 and closed"})
    max_concurrent_streams: int = field(default=1024, metadata={
        "help": "most gRPC Generate streams at once (all connections; also each "
                "connection's HTTP/2 limit); past it RESOURCE_EXHAUSTED"})
    max_queued_requests: int | None = field(default=None, metadata={
        "help": "most requests this front door holds at once, queued or running (it counts "
                "what it submitted and has not seen finish); past it a new request gets 429 / "
                "RESOURCE_EXHAUSTED at once (default: no limit of its own, as SGLang's: "
                "--max-connections and --max-concurrent-streams already bound it)"})
    http_header_timeout: float = field(default=20.0, metadata={
        "help": "seconds a connection may take to send a request's headers, from its opening "
                "or the end of its previous response (also the idle keep-alive limit)"})
    http_body_timeout: float = field(default=30.0, metadata={
        "help": "seconds to receive a request's body once its headers are in (408 past it)"})
    max_json_depth: int = field(default=DEFAULT_MAX_JSON_DEPTH, metadata={
        "help": "deepest nesting of arrays and objects a JSON body may have"})
    max_stop_strings: int = field(default=DEFAULT_LIMITS.max_stop_strings, metadata={
        "help": f"most stop strings per request (at most {HARD_LIMITS.max_stop_strings})"})
    max_stop_string_length: int = field(default=DEFAULT_LIMITS.max_stop_string_length, metadata={
        "help": "most characters per stop string (at most "
                f"{HARD_LIMITS.max_stop_string_length})"})
    max_stop_token_ids: int = field(default=DEFAULT_LIMITS.max_stop_token_ids, metadata={
        "help": f"most stop token ids per request (at most {HARD_LIMITS.max_stop_token_ids})"})

    def __post_init__(self) -> None:
        self.check_tls()  # TLS files named by the flags: usable, or a clear error
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        if isinstance(self.api_key, str):  # one key given as a plain string
            resolve(self, "api_key", (self.api_key,))
        resolve(self, "api_key", tuple(self.api_key))
        if self.served_model_name is None:
            resolve(self, "served_model_name", model_name(self.model_path))
        for name in ("port", "grpc_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 65535]")
        if self.max_request_bytes < 1024:
            raise ValueError("--max-request-bytes must be >= 1024")
        for name in ("max_connections", "max_concurrent_streams", "max_json_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            raise ValueError("--max-queued-requests must be >= 1")
        for name in ("http_header_timeout", "http_body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        self.sampling_limits.check_within(HARD_LIMITS)

    @property
    def api_keys(self) -> ApiKeys:
        """The keys in force: the flags', else $RADIXMESH_API_KEY's, read when asked, so a
        launcher's config never copies the variable onto a service's command line."""
        return ApiKeys(keys_from(self.api_key))

    @property
    def sampling_limits(self) -> SamplingLimits:
        return SamplingLimits(self.max_stop_strings, self.max_stop_string_length,
                              self.max_stop_token_ids)

