"""Ports picked free on 127.0.0.1 for a process about to bind them.

Two kinds of picker share one machine: `radixmesh up`, which picks its internal services'
ports as it starts, and whoever starts processes on ports it chose itself (tests, benches,
load tests: a mesh's `--port`, a pod's containerPort). Each draws from its own range, so a
port promised by one but not yet bound can never be picked by the other meanwhile (CI saw a
node's `up` take the port a router was about to bind). Both ranges lie below Linux's
ephemeral range and above the well-known ports: a picked port cannot meanwhile become the
local end of an outgoing connection or of a bind to port 0 (gloo's and torch.distributed's
sockets, other tests' servers), as an ephemeral port can.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection

LOCAL_HOST = "127.0.0.1"
MESH_INTERNAL_PORTS = range(20000, 32768)  # `radixmesh up`'s internal services
CALLER_PORTS = range(10000, 20000)  # ports a caller picks for processes it starts


def pick_free_ports(count: int, avoid: Collection[int] = (),
                    within: range = CALLER_PORTS) -> list[int]:
    """`count` different ports of `within` free right now on 127.0.0.1, none in `avoid`
    (ports already promised, such as a mesh's public ports), in random order. Another process
    could still take one before it is bound, which fails that bind loudly
    (`shared/grpc_service.start_server`)."""
    picked: list[int] = []
    for port in random.sample(within, len(within)):
        if len(picked) == count:
            break
        if port not in avoid and _is_free(port):
            picked.append(port)
    if len(picked) < count:
        raise OSError(f"no {count} free ports in {within.start}-{within.stop - 1}")
    return picked


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True
