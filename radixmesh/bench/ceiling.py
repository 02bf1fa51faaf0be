"""What a workload's output tok/s can be at best on one GPU: a step-cost model replayed over
the workload's own requests.

A step costs its weight-bound work (the larger of reading every weight once and its GEMM
FLOPs at the device's matmul rate), plus reading the KV of every decoding request's context,
plus a fixed per-step overhead (kernel launches and gaps, the host's share, sampling). The
replay follows a scheduler step by step: requests are admitted in a given order, a prompt is
prefilled in chunks, and every admitted request decodes one token per decode step until its
`max_new_tokens` (benchmarks ignore EOS). By default the KV pool is unbounded, so the figure
is an upper bound for the scheduling policy replayed: a real pool can only hold the batch
back. Where a workload outgrows the pool, `kv_pool_tokens` bounds admission: each admitted
request reserves its own tokens and its whole output, and a shared prefix counts once and
stays. Requests of a prefix group skip their shared prefix once one member computed it (a
radix cache); with `cascade` a decode step reads each group's shared prefix once, not once
per member. Fitted to a measured run (`fit_overhead`, `fit_matmul_rate`), it says how far
that run is from the same policy's ceiling and what each term is worth.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

POLICIES = ("prefill-first", "mixed")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A dense decoder's costs per token, from its config's sizes (bf16: 2 bytes a value)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    bytes_per_value: int = 2

    @property
    def layer_params(self) -> int:
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim \
            + self.heads * self.head_dim * self.hidden
        return attention + 3 * self.hidden * self.intermediate

    @property
    def weight_bytes(self) -> int:
        """Every weight read once: the layers, the embedding row lookups aside, the LM head."""
        return (self.layers * self.layer_params + self.vocab * self.hidden) * self.bytes_per_value

    @property
    def flops_per_token(self) -> int:
        """GEMM FLOPs of one token through the layers (the LM head is per sampled row)."""
        return 2 * self.layers * self.layer_params

    @property
    def lm_head_flops(self) -> int:
        return 2 * self.vocab * self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_value

    def attention_flops(self, query_tokens: int, first_position: int) -> int:
        """Causal attention FLOPs (QK and PV) of a prefill chunk of `query_tokens` starting
        at `first_position` of its prompt."""
        keys = query_tokens * first_position + query_tokens * (query_tokens + 1) // 2
        return 4 * self.layers * self.heads * self.head_dim * keys


LLAMA_8B = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                      intermediate=14336, vocab=128256)


@dataclass(frozen=True, slots=True)
class DeviceCosts:
    matmul_flops: float       # sustained GEMM FLOP/s
    bandwidth: float          # sustained bytes/s from device memory
    step_overhead_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A workload's request as the replay sees it: `shared_prefix` leading prompt tokens are
    the same for every request of `prefix_group` (None: it shares nothing)."""

    prompt: int
    output: int
    prefix_group: Hashable | None = None
    shared_prefix: int = 0


@dataclass(slots=True)
class ReplayedRequest:
    prompt: int
    output: int
    group: Hashable | None = None
    shared: int = 0
    prefilled: int = 0
    generated: int = 0

    @property
    def reserved(self) -> int:
        """KV tokens of its own it may come to hold (the shared prefix is the group's)."""
        return self.prompt - self.shared + self.output

    @property
    def context(self) -> int:
        return self.prompt + self.generated


@dataclass(frozen=True, slots=True)
class Replay:
    seconds: float
    output_tokens: int
    steps: int
    decode_steps: int
    mean_decode_batch: float
    kv_seconds: float  # of `seconds`, reading decodes' KV

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds


@dataclass(slots=True)
class ReplayStep:
    """What one step computes: prefill tokens (with their attention FLOPs), decode rows and
    the context they read, and how many rows are sampled."""

    prefill_tokens: int = 0
    attention_flops: int = 0
    decodes: list[ReplayedRequest] = field(default_factory=list)
    sampled: int = 0

    def seconds(self, shape: ModelShape, device: DeviceCosts, cascade: bool = False) -> float:
        tokens = self.prefill_tokens + len(self.decodes)
        flops = tokens * shape.flops_per_token + self.sampled * shape.lm_head_flops \
            + self.attention_flops
        weight_bound = max(shape.weight_bytes / device.bandwidth, flops / device.matmul_flops)
        return weight_bound + self.kv_seconds(shape, device, cascade) + device.step_overhead_s

    def kv_seconds(self, shape: ModelShape, device: DeviceCosts, cascade: bool) -> float:
        return self.kv_tokens_read(cascade) * shape.kv_bytes_per_token / device.bandwidth

    def kv_tokens_read(self, cascade: bool) -> int:
        """The KV tokens the decodes read: every context whole, or with `cascade` each
        group's shared prefix once and every member's own tokens after it."""
        total = sum(req.context for req in self.decodes)
        if not cascade:
            return total
        shared = {req.group: req.shared for req in self.decodes if req.group is not None}
        members = sum(req.shared for req in self.decodes if req.group is not None)
        return total - members + sum(shared.values())


def replay(requests: Sequence[tuple[int, int] | ReplayRequest], shape: ModelShape,
           device: DeviceCosts, chunk_tokens: int = 8192, max_running: int = 1024,
           policy: str = "prefill-first", kv_pool_tokens: int | None = None,
           cascade: bool = False) -> Replay:
    """Replays requests, all waiting at time 0, admitted in the given order. `prefill-first`
    (SGLang's and mini-sglang's default): while a prompt waits and can be admitted, a step
    prefills up to `chunk_tokens` and no request decodes; `mixed`: every step decodes all
    running requests and fills the rest of the chunk with prefill. A prompt's last prefill
    step samples its first output token."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    wanted = [item if isinstance(item, ReplayRequest) else ReplayRequest(*item)
              for item in requests]
    waiting = deque(ReplayedRequest(item.prompt, item.output, item.prefix_group, item.shared_prefix)
                    for item in wanted)
    pool = _Pool(kv_pool_tokens)
    running: list[ReplayedRequest] = []
    seconds, kv_seconds, steps, decode_steps, decode_rows = 0.0, 0.0, 0, 0, 0
    while waiting or running:
        step = ReplayStep()
        if policy == "mixed" or not _can_admit(waiting, running, max_running, pool):
            step.decodes = [req for req in running if req.generated < req.output]
        _prefill(step, waiting, running, pool, shape, chunk_tokens - len(step.decodes),
                 max_running)
        step.sampled += len(step.decodes)
        seconds += step.seconds(shape, device, cascade)  # decodes read their context so far
        kv_seconds += step.kv_seconds(shape, device, cascade)
        for req in step.decodes:
            req.generated += 1
        if step.decodes:
            decode_steps += 1
            decode_rows += len(step.decodes)
        steps += 1
        for req in running:
            if req.generated >= req.output:
                pool.release(req)
        running = [req for req in running if req.generated < req.output]
    total = sum(item.output for item in wanted)
    return Replay(seconds, total, steps, decode_steps, decode_rows / max(1, decode_steps),
                  kv_seconds)


def _can_admit(waiting: deque[ReplayedRequest], running: list[ReplayedRequest],
               max_running: int, pool: _Pool) -> bool:
    return bool(waiting) and len(running) < max_running and pool.admits(waiting[0])


def _prefill(step: ReplayStep, waiting: deque[ReplayedRequest],
             running: list[ReplayedRequest], pool: _Pool, shape: ModelShape, budget: int,
             max_running: int) -> None:
    """Fills `step` with prompt chunks, in order, while the budget and the pool allow; a
    prompt whose last chunk is in it starts running with its first token sampled."""
    while budget > 0 and _can_admit(waiting, running, max_running, pool):
        req = waiting[0]
        if not req.prefilled:
            pool.admit(req)  # a computed shared prefix is a cache hit
        take = min(budget, req.prompt - req.prefilled)
        step.attention_flops += shape.attention_flops(take, req.prefilled)
        step.prefill_tokens += take
        req.prefilled += take
        budget -= take
        if req.prefilled < req.prompt:
            return  # the chunk is full; the prompt goes on next step
        waiting.popleft()
        if req.group is not None:
            pool.computed.add(req.group)
        req.generated = 1
        step.sampled += 1
        running.append(req)


@dataclass(slots=True)
class _Pool:
    """KV tokens held: each admitted request's own (prompt past its shared prefix, and its
    whole output reserved up front), and each group's shared prefix once, kept from its first
    member's admission on (a radix cache keeps it)."""

    capacity: int | None
    held: int = 0
    groups: set = field(default_factory=set)    # groups whose prefix holds pool tokens
    computed: set = field(default_factory=set)  # groups whose prefix is in the cache

    def admits(self, req: ReplayedRequest) -> bool:
        if self.capacity is None or req.prefilled:
            return True  # unbounded, or admitted already (its prompt goes on)
        prefix = req.shared if req.group not in self.groups else 0
        return self.held + prefix + req.reserved <= self.capacity

    def admit(self, req: ReplayedRequest) -> None:
        if req.group is not None and req.group not in self.groups:
            self.groups.add(req.group)
            self.held += req.shared
        self.held += req.reserved
        if req.group in self.computed:
            req.prefilled = req.shared

    def release(self, req: ReplayedRequest) -> None:
        self.held -= req.reserved


def decode_step_seconds(shape: ModelShape, device: DeviceCosts, batch: int,
                        context: int) -> float:
    """One decode step of `batch` requests of `context` tokens each."""
    step = ReplayStep(decodes=[ReplayedRequest(context, context + 1)] * batch, sampled=batch)
    return step.seconds(shape, device)


def fit_overhead(shape: ModelShape, bandwidth: float, itl_s: float, context: int) -> float:
    """The per-step overhead that makes a batch-1 decode step at `context` tokens take
    `itl_s` (a measured decode-b1 median ITL)."""
    return itl_s - decode_step_seconds(shape, DeviceCosts(1e30, bandwidth), 1, context)


def fit_matmul_rate(requests: Sequence[tuple[int, int]], shape: ModelShape,
                    bandwidth: float, overhead_s: float, output_tok_s: float,
                    policy: str = "prefill-first", **limits: int) -> float:
    """The sustained GEMM FLOP/s at which the replay gives `output_tok_s` (bisection; the
    replay's throughput only grows with the rate); inf when no rate reaches it (the model
    misses something the measured run has)."""
    low, high = 1e12, 1e16
    if replay(requests, shape, DeviceCosts(high, bandwidth, overhead_s), policy=policy,
              **limits).output_tok_s < output_tok_s:
        return math.inf
    for _ in range(40):
        middle = (low * high) ** 0.5
        figure = replay(requests, shape, DeviceCosts(middle, bandwidth, overhead_s),
                        policy=policy, **limits).output_tok_s
        low, high = (middle, high) if figure < output_tok_s else (low, middle)
    return (low * high) ** 0.5
