"""Conversions between the plain dataclasses the cores use and the generated proto messages.

Servicers call these and nothing else touches protobuf types, so the cores stay testable
without gRPC and the protos stay the single source of truth for what crosses the wire. The
common messages (finish, usage, trace) are converted in wire_common.py and the delta batches
of the scheduler -> detokenizer -> tokenizer links in wire_deltas.py; both are re-exported
here, so `wire.X` names every conversion.
"""

from __future__ import annotations

from collections.abc import Mapping

from radixmesh.shared.mesh_info import ModelInfo, SchedulerLoad
from radixmesh.shared.page_keys import KeyNamespace
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, internal_pb2
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import (
    NO_COPIES,
    ExtendChunk,
    HostPoolAttachment,
    NewRequest,
    PageCopies,
    PageTableWrite,
    StepPlan,
    StepResult,
    WorkerInfo,
)
from radixmesh.shared.wire_common import finish_from_proto as finish_from_proto
from radixmesh.shared.wire_common import finish_to_proto as finish_to_proto
from radixmesh.shared.wire_common import trace_from_proto, trace_to_proto
from radixmesh.shared.wire_common import usage_from_proto as usage_from_proto
from radixmesh.shared.wire_common import usage_to_proto as usage_to_proto
from radixmesh.shared.wire_deltas import text_batch_from_proto as text_batch_from_proto
from radixmesh.shared.wire_deltas import text_batch_to_proto as text_batch_to_proto
from radixmesh.shared.wire_deltas import text_delta_from_proto as text_delta_from_proto
from radixmesh.shared.wire_deltas import text_delta_to_proto as text_delta_to_proto
from radixmesh.shared.wire_deltas import token_batch_from_proto as token_batch_from_proto
from radixmesh.shared.wire_deltas import token_batch_to_proto as token_batch_to_proto
from radixmesh.shared.wire_deltas import token_delta_from_proto as token_delta_from_proto
from radixmesh.shared.wire_deltas import token_delta_to_proto as token_delta_to_proto

# Proto `optional` fields: left unset, the receiver takes SamplingParams' default.
_OPTIONAL_SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
                      "frequency_penalty", "presence_penalty", "repetition_penalty",
                      "hicache_remote_policy")
_LIST_SAMPLING = ("stop", "stop_token_ids")
SAMPLING_NAMES: tuple[str, ...] = tuple(SamplingParams.__dataclass_fields__)

# ---- sampling ------------------------------------------------------------------------------


def sampling_to_proto(params: SamplingParams) -> common_pb2.SamplingParams:
    """Every field, for the internal hops."""
    return sampling_fields_to_proto({name: getattr(params, name) for name in SAMPLING_NAMES})


def sampling_fields_to_proto(fields: Mapping[str, object]) -> common_pb2.SamplingParams:
    """Some of SamplingParams' fields, by name, as a message: the one way in for the internal
    hops and for the client's keyword arguments. None leaves a field unset (the server's
    default); a lone stop string counts as a list of one. Raises TypeError for an unknown
    name, as Python does for an unknown keyword argument."""
    message = common_pb2.SamplingParams()
    for name, value in fields.items():
        if name not in SAMPLING_NAMES:
            raise TypeError(f"unknown sampling parameter {name!r}; "
                            f"known: {', '.join(sorted(SAMPLING_NAMES))}")
        if value is None:
            continue
        if name in _LIST_SAMPLING:
            getattr(message, name).extend([value] if isinstance(value, str) else value)
        else:
            setattr(message, name, value)
    return message


def sampling_from_proto(message: common_pb2.SamplingParams) -> SamplingParams:
    """Straight into SamplingParams, unset fields taking their defaults. Nothing is checked
    here: the wire's types are already right, and each service's entry calls
    `SamplingParams.validate` once (the front door, the scheduler)."""
    optional = {name: getattr(message, name) for name in _OPTIONAL_SAMPLING
                if message.HasField(name)}
    return SamplingParams(stop=tuple(message.stop), stop_token_ids=tuple(message.stop_token_ids),
                          ignore_eos=message.ignore_eos, **optional)


# ---- tokenizer -> scheduler -----------------------------------------------------------------


def tokenized_request_to_proto(request: TokenizedRequest) -> internal_pb2.TokenizedRequest:
    return internal_pb2.TokenizedRequest(
        rid=request.rid, input_ids=list(request.input_ids),
        sampling=sampling_to_proto(request.sampling), trace=trace_to_proto(request.trace),
        cache_salt=request.cache_salt)


def tokenized_request_from_proto(message: internal_pb2.TokenizedRequest) -> TokenizedRequest:
    salt = message.cache_salt if message.HasField("cache_salt") else None
    return TokenizedRequest(message.rid, tuple(message.input_ids),
                            sampling_from_proto(message.sampling),
                            trace_from_proto(message.trace), salt)


# ---- scheduler <-> worker -------------------------------------------------------------------


def plan_to_proto(plan: StepPlan) -> internal_pb2.StepPlan:
    return internal_pb2.StepPlan(
        step_id=plan.step_id,
        new_requests=[internal_pb2.NewRequest(
            rid=new.rid, token_ids=list(new.token_ids), num_prompt_tokens=new.num_prompt_tokens,
            num_cached_tokens=new.num_cached_tokens, cached_page_ids=list(new.cached_page_ids),
            sampling=sampling_to_proto(new.sampling), trace=trace_to_proto(new.trace))
            for new in plan.new_requests],
        page_writes=[internal_pb2.PageTableWrite(rid=w.rid, start=w.start, page_ids=list(w.page_ids))
                     for w in plan.page_writes],
        extends=[internal_pb2.ExtendChunk(rid=c.rid, start=c.start, length=c.length, sample=c.sample)
                 for c in plan.extends],
        decodes=list(plan.decodes),
        released=list(plan.released),
        host_pool=(None if plan.host_pool is None else internal_pb2.HostPoolAttachment(
            name=plan.host_pool.name, num_slots=plan.host_pool.num_slots)),
        loads=_copies_to_proto(plan.loads), backups=_copies_to_proto(plan.backups))


def plan_from_proto(message: internal_pb2.StepPlan) -> StepPlan:
    return StepPlan(
        step_id=message.step_id,
        new_requests=[NewRequest(new.rid, tuple(new.token_ids), new.num_prompt_tokens,
                                 new.num_cached_tokens, tuple(new.cached_page_ids),
                                 sampling_from_proto(new.sampling), trace_from_proto(new.trace))
                      for new in message.new_requests],
        page_writes=[PageTableWrite(w.rid, w.start, tuple(w.page_ids)) for w in message.page_writes],
        extends=[ExtendChunk(c.rid, c.start, c.length, c.sample) for c in message.extends],
        decodes=list(message.decodes),
        released=list(message.released),
        host_pool=(HostPoolAttachment(message.host_pool.name, message.host_pool.num_slots)
                   if message.HasField("host_pool") else None),
        loads=_copies_from_proto(message.loads), backups=_copies_from_proto(message.backups))


def _copies_to_proto(copies: PageCopies) -> internal_pb2.PageCopies | None:
    if not copies:
        return None
    return internal_pb2.PageCopies(device_pages=copies.device_pages, host_slots=copies.host_slots)


def _copies_from_proto(message: internal_pb2.PageCopies) -> PageCopies:
    if not message.device_pages and not message.host_slots:
        return NO_COPIES
    return PageCopies(tuple(message.device_pages), tuple(message.host_slots))


def result_to_proto(result: StepResult, forward_seconds: float = 0.0,
                    idle_seconds: float = 0.0) -> internal_pb2.StepResult:
    return internal_pb2.StepResult(step_id=result.step_id, rids=result.rids,
                                   next_token_ids=result.next_token_ids,
                                   forward_seconds=forward_seconds, idle_seconds=idle_seconds,
                                   cuda_graph=result.cuda_graph,
                                   backed_up_through=result.backed_up_through)


def result_from_proto(message: internal_pb2.StepResult) -> StepResult:
    return StepResult(message.step_id, list(message.rids), list(message.next_token_ids),
                      cuda_graph=message.cuda_graph,
                      backed_up_through=message.backed_up_through)


_WORKER_INFO_FIELDS = tuple(WorkerInfo.__dataclass_fields__)


def worker_info_to_proto(info: WorkerInfo) -> internal_pb2.WorkerInfo:
    return internal_pb2.WorkerInfo(**{name: getattr(info, name) for name in _WORKER_INFO_FIELDS})


def worker_info_from_proto(message: internal_pb2.WorkerInfo) -> WorkerInfo:
    values = {name: getattr(message, name) for name in _WORKER_INFO_FIELDS}
    values["eos_token_ids"] = tuple(message.eos_token_ids)
    values["tp_size"] = message.tp_size or 1  # a worker from before tensor parallelism
    return WorkerInfo(**values)


# ---- mesh -> front door -----------------------------------------------------------------------


def model_info_to_proto(info: ModelInfo) -> generate_pb2.ModelInfo:
    message = generate_pb2.ModelInfo(
        model_id=info.model_id, context_len=info.context_len, vocab_size=info.vocab_size,
        eos_token_ids=list(info.eos_token_ids), max_total_tokens=info.max_total_tokens,
        page_size=info.page_size, worker=info.worker)
    space = info.key_namespace
    if space is not None:  # its salt is a request's, never the node's
        message.key_namespace.CopyFrom(generate_pb2.PageKeyNamespace(
            model_id=space.model_id, weights_fingerprint=space.weights_fingerprint,
            kv_dtype=space.kv_dtype, page_size=space.page_size, tp_layout=space.tp_layout))
    return message


def model_info_from_proto(message: generate_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        model_id=message.model_id, context_len=message.context_len,
        vocab_size=message.vocab_size, eos_token_ids=tuple(message.eos_token_ids),
        max_total_tokens=message.max_total_tokens, page_size=message.page_size,
        worker=message.worker, key_namespace=_key_namespace_from_proto(message))


def _key_namespace_from_proto(message: generate_pb2.ModelInfo) -> KeyNamespace | None:
    """The namespace the message carries; None when unset or not a valid one (a peer's bad
    namespace only makes every page lookup miss, never a wrong page)."""
    if not message.HasField("key_namespace"):
        return None
    space = message.key_namespace
    try:
        return KeyNamespace(model_id=space.model_id,
                            weights_fingerprint=space.weights_fingerprint,
                            kv_dtype=space.kv_dtype, page_size=space.page_size,
                            tp_layout=space.tp_layout)
    except ValueError:
        return None


_LOAD_FIELDS = tuple(SchedulerLoad.__dataclass_fields__)


def scheduler_load_to_proto(load: SchedulerLoad) -> internal_pb2.SchedulerLoad:
    return internal_pb2.SchedulerLoad(**{name: getattr(load, name) for name in _LOAD_FIELDS})


def scheduler_load_from_proto(message: internal_pb2.SchedulerLoad) -> SchedulerLoad:
    return SchedulerLoad(**{name: getattr(message, name) for name in _LOAD_FIELDS})
