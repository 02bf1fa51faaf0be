"""What `HiCache.attach` takes and gives back: the KV layout of one page, and the pool made for
it."""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.host_pool import HostPoolLayout


@dataclass(frozen=True, slots=True)
class KVLayout:
    """The shape of one page of KV, as the worker holds it (HostPoolLayout less the count)."""

    num_layers: int
    page_size: int
    num_kv_heads: int  # per tensor-parallel rank
    head_dim: int
    dtype: str
    tp_size: int = 1

    def host_pool_layout(self, num_slots: int) -> HostPoolLayout:
        """The pool layout of `num_slots` slots. A bad field raises InvalidRequestError naming
        it, so the caller learns which of its values the service cannot use."""
        try:
            return HostPoolLayout(num_slots=num_slots, num_layers=self.num_layers,
                                  page_size=self.page_size, num_kv_heads=self.num_kv_heads,
                                  head_dim=self.head_dim, dtype=self.dtype,
                                  tp_size=self.tp_size)
        except ValueError as error:
            raise InvalidRequestError("layout", str(error)) from None


@dataclass(frozen=True, slots=True)
class Attachment:
    """The L2 pool the worker maps by `pool_name`: slot ids 1..num_slots (0 is never granted, so
    slots index the pool directly, as device pages do). Slots of another `epoch` are void.
    `storage`: an L3 backend is configured and takes writes."""

    pool_name: str
    num_slots: int
    epoch: str
    storage: bool
