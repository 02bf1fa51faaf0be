"""Where each service listens by default, and how a peer's address is chosen.

A service finds a peer from its flag, else the peer's environment variable, else the default
below; `radixmesh up` passes flags, a compose stack would set the variables.
"""

from __future__ import annotations

import os

PEER_ENV = {
    "scheduler": "RADIXMESH_SCHEDULER_ADDRESS",
    "worker": "RADIXMESH_WORKER_ADDRESS",
    "detokenizer": "RADIXMESH_DETOKENIZER_ADDRESS",
    "hicache": "RADIXMESH_HICACHE_ADDRESS",
}
DEFAULT_PORTS = {"scheduler": 30010, "worker": 30020, "detokenizer": 30030, "hicache": 30040}


def default_address(peer: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[peer]}"


def peer_address(peer: str, flag_value: str | None) -> str:
    return flag_value or os.environ.get(PEER_ENV[peer]) or default_address(peer)


def peer_help(peer: str) -> str:
    return f"host:port of the {peer} (env {PEER_ENV[peer]}, default {default_address(peer)})"
