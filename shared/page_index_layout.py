"""How the cross-node page index lies in Redis (design §4): key names, values, and reading
what one node's MGET answers. The hicache service writes it (services/hicache/page_index/);
the router reads it to learn which node holds a prompt's leading pages.

Keys (`P` the --hicache-redis-key-prefix, `N` the node id, `K` the page key in hex):
- `P{N}:hb`: the node's heartbeat, "EPOCH ADDRESS", with a short TTL renewed every few
  seconds. A node is live, in the epoch it names, only while this exists.
- `P{N}:p:K`: the entry of page K on node N, "EPOCH TIER ADDRESS", with the entry TTL.
- `Pnodes`: a set of the node ids that ever beat, so a lookup knows whom to ask.

The hash tag `{N}` puts all of one node's keys in one Redis Cluster slot, so a lookup asks each
node with one MGET (heartbeat first, then the chain's entries), never a cross-slot command and
never one command per page; a Lua script touches one key. Values are space-separated: node ids,
prefixes and addresses may hold no space or brace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TIER_STORAGE = "storage"  # L3: the tier whose pages a node advertises
DEFAULT_KEY_PREFIX = "radixmesh:"

# Deletes KEYS[1] only if its value was written in epoch ARGV[1]: a node removes its own
# entries, and an old process of a restarted node cannot remove what the new one wrote.
DELETE_IF_EPOCH = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RedisLayout:
    prefix: str

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    def heartbeat(self, node_id: str) -> str:
        return f"{self.prefix}{{{node_id}}}:hb"

    def entry(self, node_id: str, key: bytes) -> str:
        return f"{self.prefix}{{{node_id}}}:p:{key.hex()}"

    def lookup_command(self, node_id: str, keys: Sequence[bytes]) -> tuple[str, ...]:
        """The one MGET that asks node `node_id` about `keys`: heartbeat, then the entries."""
        return ("MGET", self.heartbeat(node_id), *(self.entry(node_id, key) for key in keys))


def heartbeat_value(epoch: str, address: str) -> str:
    return f"{epoch} {address}"


def entry_value(epoch: str, address: str, tier: str = TIER_STORAGE) -> str:
    return f"{epoch} {tier} {address}"


@dataclass(frozen=True, slots=True)
class LeadingRun:
    """What one node's MGET says: its epoch, its hicache address and how many leading pages
    it holds in that epoch."""

    epoch: str = ""
    address: str = ""
    num_pages: int = 0


def leading_run(replies: Sequence[str | None]) -> LeadingRun:
    """The leading run one node's MGET (heartbeat, then one entry per page) reports. No
    heartbeat (dead) or entries of another epoch (restarted): no pages."""
    heartbeat, entries = replies[0], replies[1:]
    if heartbeat is None:
        return LeadingRun()
    epoch, _, address = heartbeat.partition(" ")
    mine = epoch + " "
    count = 0
    for entry in entries:
        if entry is None or not entry.startswith(mine):
            break
        count += 1
    return LeadingRun(epoch, address, count)
