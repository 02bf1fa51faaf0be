"""The scheduler ⇄ worker contract: one step plan in, one step result out.

These plain types are what the scheduler->worker gRPC stream carries (design §3). The
scheduler decides everything that runs; the worker keeps per-request state between steps
(token ids, its mirror of the request's page table, the KV length) and executes plans
without making decisions. Only ids and page-table diffs cross; never KV bytes.

Applying a plan on the worker, in this order:
  0. map the host pool named by `host_pool`, if set (dropping any earlier mapping);
  1. drop the state of every rid in `released`;
  2. register every `new_requests` entry;
  3. apply every `page_writes` entry to the request's page table;
  4. read `backups` out of their device pages, before anything of this step writes a page:
     the scheduler may have freed those pages (their KV now lives in the host slots) and
     granted them again in this very plan. The bytes reach the host slots later, without
     holding up the step;
  5. copy `loads` from host slots into device pages (a layer's copy lands before that layer's
     attention reads it);
  6. run one forward pass over `extends` (in order) then `decodes` (in order);
  7. sample one token for every extend with `sample=True` and for every decode.
The result lists the sampled tokens in that same order, and the newest step whose backups
have all landed in host memory (with every step before it run): until then the scheduler
loads nothing from those slots and the hicache service neither reads nor writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.trace_context import NO_TRACE, TraceContext


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request the worker has not seen (or has released, after a retraction).

    `token_ids` is every token known so far: the prompt, then any output generated before a
    retraction. Tokens `[0, num_cached_tokens)` already have KV in `cached_page_ids`, pages
    shared from the prefix cache, which start the request's page table; the request's extends
    compute the rest, in pages granted by page-table writes.
    """

    rid: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_cached_tokens: int
    cached_page_ids: tuple[int, ...]
    sampling: SamplingParams
    trace: TraceContext = NO_TRACE


@dataclass(frozen=True, slots=True)
class PageTableWrite:
    """Sets `page_table[start : start + len(page_ids)] = page_ids` for one request.

    Grants (appending fresh pages) and remaps (pointing a range at identical pages the prefix
    cache already held) are both writes. The table grows to fit.
    """

    rid: str
    start: int
    page_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExtendChunk:
    """Compute KV for tokens `[start, start + length)` of a request, whose tokens the worker holds.

    `start` equals the request's KV length on the worker. `sample` is true on the chunk that
    ends at the last known token: the worker then samples the request's next token.
    """

    rid: str
    start: int
    length: int
    sample: bool


@dataclass(frozen=True, slots=True)
class PageCopies:
    """Whole-page copies between the device pool and the host pool: device page
    `device_pages[i]` and host slot `host_slots[i]`, every layer, K and V."""

    device_pages: tuple[int, ...] = ()
    host_slots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.device_pages) != len(self.host_slots):
            raise ValueError(f"{len(self.device_pages)} device pages for "
                             f"{len(self.host_slots)} host slots")

    def __bool__(self) -> bool:
        return bool(self.device_pages)

    def __len__(self) -> int:
        return len(self.device_pages)


NO_COPIES = PageCopies()


@dataclass(frozen=True, slots=True)
class HostPoolAttachment:
    """The L2 pool the worker maps: a shared memory segment the hicache service created, of
    `num_slots` slots (ids 1..num_slots) laid out for this worker's KV. An empty name drops
    the mapping (the hicache service went away)."""

    name: str
    num_slots: int


@dataclass(slots=True)
class StepPlan:
    """Everything the worker does in one step. A decode's input token is the token the worker
    itself sampled last for that request, so the scheduler can plan ahead of results."""

    step_id: int
    new_requests: list[NewRequest] = field(default_factory=list)
    page_writes: list[PageTableWrite] = field(default_factory=list)
    extends: list[ExtendChunk] = field(default_factory=list)
    decodes: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    host_pool: HostPoolAttachment | None = None
    loads: PageCopies = NO_COPIES
    backups: PageCopies = NO_COPIES

    @property
    def is_empty(self) -> bool:
        return not (self.extends or self.decodes)

    @property
    def num_extend_tokens(self) -> int:
        return sum(chunk.length for chunk in self.extends)


@dataclass(slots=True)
class StepResult:
    """Tokens sampled by one step, in plan order (sampled extends, then decodes)."""

    step_id: int
    rids: list[str]
    next_token_ids: list[int]
    cuda_graph: bool = False  # the step's forward pass was replayed from a CUDA graph
    backed_up_through: int = 0  # every backup planned up to this step id is in host memory


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What the worker tells the scheduler when they connect: the shape of the KV pool and model.

    Page ids run from 1 to `num_pages`; page 0 is the worker's padding page and is never granted.
    """

    model_id: str
    num_pages: int
    page_size: int
    context_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    kv_dtype: str
    max_running_requests: int  # request slots the worker holds (sampler and page-table rows)
    available_memory_gb: float = 0.0  # device memory left free after weights, KV and graphs
    cuda_graph: bool = False  # decode steps up to some batch size replay CUDA graphs
    worker: str = ""  # the implementation's registry name ("model", "null"), set on the wire
    # The KV layout, so the hicache service can size host slots for it ("none": no KV held).
    num_layers: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    weights_fingerprint: str = ""  # names the weights in page keys (design §4)
    # Tensor-parallel ranks the worker is; each holds num_kv_heads of every layer, and a host
    # slot holds every rank's part of a page.
    tp_size: int = 1

    @property
    def max_total_tokens(self) -> int:
        return self.num_pages * self.page_size
