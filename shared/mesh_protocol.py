"""The handshake every internal link opens with, and how a request that a lost peer took down
is told apart from one a client aborted.

Before its stream, a link's caller sends its `Hello` (protos/internal.proto `PeerHello`) and
gets the callee's back: protocol version, service, implementation, model, a fresh instance id,
capabilities and, where a peer holds KV, its page layout. `check_peer` turns a mismatch into
a HandshakeError naming both sides. The stream that follows carries the greeted instance id in
its metadata (`stream_metadata`), so a process replaced between the hello and the stream is
refused (`refusal`) instead of being fed state meant for its predecessor.

Plain Python: the generated message is read and built by field name (`from_message`,
`fields`), so this file needs no stub and every service's gRPC edge shares it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.requests import FinishKind, FinishReason

# Raised whenever a message, a stream's order or its meaning changes incompatibly.
MESH_PROTOCOL_VERSION = 2  # 2: token and text batches as columns (wire_deltas.py)

# Stream metadata (keys are lower case, as gRPC wants them).
PROTOCOL_KEY = "radixmesh-protocol"          # the caller's protocol version
PEER_INSTANCE_KEY = "radixmesh-peer-instance"  # the callee instance the caller greeted
CALLER_INSTANCE_KEY = "radixmesh-instance"     # the caller's own instance

# Capabilities. A stream's callee that acknowledges it sends its initial metadata once it has
# taken the stream over (the caller waits for that before it reports ready).
STREAM_ACK = "stream-ack"
HOST_KV = "host-kv"  # the worker maps the hicache service's L2 pool (it holds KV)


class HandshakeError(UnavailableError):
    """A peer that cannot be used as it is: another protocol, model or kind of service."""


@dataclass(frozen=True, slots=True)
class PageLayout:
    page_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str

    def __str__(self) -> str:
        return (f"{self.num_layers} layers x {self.num_kv_heads} KV heads x {self.head_dim}, "
                f"{self.dtype}, pages of {self.page_size}")


@dataclass(frozen=True, slots=True)
class Hello:
    service: str
    implementation: str = ""
    model_id: str = ""
    capabilities: tuple[str, ...] = ()
    layout: PageLayout | None = None
    protocol_version: int = MESH_PROTOCOL_VERSION
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def describe(self, address: str = "") -> str:
        """`worker 'null' at 127.0.0.1:5 serves model 'm', protocol 1`."""
        kind = f"{self.service} {self.implementation!r}" if self.implementation else self.service
        where = f" at {address}" if address else ""
        model = f"serves model {self.model_id!r}" if self.model_id else "serves no fixed model"
        return f"{kind}{where} {model}, protocol {self.protocol_version}"

    def fields(self) -> dict[str, object]:
        """Keyword arguments of the `PeerHello` message."""
        values: dict[str, object] = {
            "protocol_version": self.protocol_version, "service": self.service,
            "implementation": self.implementation, "model_id": self.model_id,
            "instance_id": self.instance_id, "capabilities": list(self.capabilities)}
        if self.layout is not None:
            values["layout"] = {name: getattr(self.layout, name)
                                for name in PageLayout.__dataclass_fields__}
        return values

    @classmethod
    def from_message(cls, message: Any) -> Hello:
        """From a `PeerHello` message (read by field name)."""
        layout = None
        if message.HasField("layout"):
            sent = message.layout
            layout = PageLayout(sent.page_size, sent.num_layers, sent.num_kv_heads,
                                sent.head_dim, sent.dtype)
        return cls(service=message.service, implementation=message.implementation,
                   model_id=message.model_id, capabilities=tuple(message.capabilities),
                   layout=layout, protocol_version=message.protocol_version,
                   instance_id=message.instance_id)

    def stream_metadata(self, peer: Hello) -> tuple[tuple[str, str], ...]:
        """Metadata of a stream this side opens to `peer`, which it greeted."""
        return ((PROTOCOL_KEY, str(self.protocol_version)),
                (PEER_INSTANCE_KEY, peer.instance_id), (CALLER_INSTANCE_KEY, self.instance_id))

    def refusal(self, metadata: Mapping[str, str]) -> str | None:
        """Why this side (the callee) refuses a stream opened with `metadata`; None to take it.
        A caller that sends none of the keys (a hand-made client) is taken as it is."""
        protocol = metadata.get(PROTOCOL_KEY)
        if protocol is not None and protocol != str(self.protocol_version):
            return (f"the caller speaks mesh protocol {protocol}; this {self.service} speaks "
                    f"protocol {self.protocol_version}")
        greeted = metadata.get(PEER_INSTANCE_KEY)
        if greeted is not None and greeted != self.instance_id:
            return (f"the stream was meant for {self.service} instance {greeted}; this is "
                    f"instance {self.instance_id} (restarted since the hello): greet it again")
        return None


def check_peer(own: Hello, peer: Hello, address: str, service: str,
               expected_model: str | None = None, required: Sequence[str] = ()) -> None:
    """Raises HandshakeError, naming both sides, unless `peer` (greeted at `address`) is a
    `service` of our protocol, serves `expected_model` (when given) and offers `required`."""
    problems = []
    if peer.service != service:
        problems.append(f"it is a {peer.service or 'nameless'} service, not a {service}")
    if peer.protocol_version != own.protocol_version:
        problems.append("the protocols differ")
    if expected_model is not None and peer.model_id != expected_model:
        problems.append("the models differ")
    missing = [name for name in required if name not in peer.capabilities]
    if missing:
        problems.append(f"it lacks {', '.join(missing)}")
    if not problems:
        return
    ours = f"this {own.service} speaks protocol {own.protocol_version}"
    if expected_model is not None:
        ours += f" and was started for {expected_model!r}"
    raise HandshakeError(f"{peer.describe(address)}; {ours}: refused ({'; '.join(problems)})")


# ---- requests a lost peer took down -------------------------------------------------------
# A request the mesh could not finish because a peer was lost ends with an abort whose
# message starts with this prefix; the front door turns it into UNAVAILABLE / 503.
UNAVAILABLE_PREFIX = "unavailable: "


def unavailable_finish(reason: str) -> FinishReason:
    return FinishReason(FinishKind.ABORT, message=UNAVAILABLE_PREFIX + reason)


def unavailable_reason(finish: FinishReason | None) -> str | None:
    """The reason of an `unavailable_finish`; None for any other finish."""
    if (finish is None or finish.kind is not FinishKind.ABORT
            or not finish.message.startswith(UNAVAILABLE_PREFIX)):
        return None
    return finish.message[len(UNAVAILABLE_PREFIX):]
