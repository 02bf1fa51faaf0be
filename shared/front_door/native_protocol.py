"""SGLang's native `/generate` body and answers: pure functions, no I/O.

A request is validated against its declared model (`native_models.py`: `{"text": str |
"input_ids": [int], "sampling_params": {...}, "stream": bool, "rid": str}` as SGLang documents
it, options we do not implement at their defaults only, unknown fields refused) and becomes
`RequestBuilder`'s body; sampling parameters take SGLang's names (ours are the same;
`sampling_seed` is SGLang's name for `seed`).

The answer is `{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens", "e2e_latency"}}`; streamed, each SSE event carries the
text and ids generated so far (cumulative, as SGLang streams them by default), `finish_reason`
None until the last, then `data: [DONE]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.native_models import GenerateRequest, NativeSampling
from radixmesh.shared.front_door.validation_errors import validate_body
from radixmesh.shared.requests import FinishKind, FinishReason, Usage
from radixmesh.shared.sampling_params import (
    DEFAULT_LIMITS,
    SamplingLimits,
    SamplingParams,
    check_stop_lists,
)
from radixmesh.shared.text_checks import check_rid

SAMPLING_PARAMS = "sampling_params"
SAMPLING_ALIASES = {"sampling_seed": "seed"}
OUR_SAMPLING = frozenset(SamplingParams.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class NativeRequest:
    body: dict          # RequestBuilder's body: one prompt field + sampling fields
    rid: str | None
    stream: bool

    @staticmethod
    def param_name(field: str) -> str:
        """The name in the client's body of a field RequestBuilder blamed."""
        if field in OUR_SAMPLING:
            return f"{SAMPLING_PARAMS}.{field}"
        return "text" if field == "prompt" else field


def parse_generate_request(payload: object,
                           limits: SamplingLimits = DEFAULT_LIMITS) -> NativeRequest:
    request = validate_body(GenerateRequest, payload)
    body = _prompt(request)
    body.update(_sampling(request.sampling_params, limits))
    if request.cache_salt is not None:
        body["cache_salt"] = request.cache_salt  # RequestBuilder checks it
    if request.rid is not None:
        check_rid(request.rid)
    return NativeRequest(body, request.rid, bool(request.stream))


def _prompt(request: GenerateRequest) -> dict:
    present = {name: value for name, value in (("text", request.text),
                                               ("input_ids", request.input_ids))
               if value is not None}
    if len(present) != 1:
        raise InvalidRequestError("text", "exactly one of text or input_ids is required, got "
                                  + (", ".join(present) or "none"))
    return present


def _sampling(params: NativeSampling | None, limits: SamplingLimits) -> dict:
    if params is None:
        return {}
    if params.seed is not None and params.sampling_seed is not None:
        raise InvalidRequestError(f"{SAMPLING_PARAMS}.sampling_seed",
                                  "give either seed or sampling_seed, not both")
    ours = {}
    for name in type(params).model_fields:
        value = getattr(params, name)
        ours_name = SAMPLING_ALIASES.get(name, name)
        if value is not None and ours_name in OUR_SAMPLING:
            ours[ours_name] = value
    try:
        check_stop_lists(ours.get("stop", ()), ours.get("stop_token_ids", ()), limits)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{SAMPLING_PARAMS}.{exc.field}", exc.message) from exc
    return ours


# ---- answers ---------------------------------------------------------------------------------


def finish_reason(finish: FinishReason | None, num_output_tokens: int) -> dict | None:
    """SGLang's shape: {"type": "length", "length": n}, {"type": "stop", "matched": ...},
    {"type": "abort", "message": ...}."""
    if finish is None:
        return None
    out = finish.to_dict()
    if finish.kind is FinishKind.LENGTH:
        out["length"] = num_output_tokens
    return out


def generate_answer(rid: str, text: str, output_ids: list[int], finish: FinishReason | None,
                    usage: Usage | None, num_prompt_tokens: int, e2e_latency: float) -> dict:
    """One `/generate` answer: the whole response, or one streamed event (so far)."""
    meta = {"id": rid, "finish_reason": finish_reason(finish, len(output_ids)),
            "prompt_tokens": usage.prompt_tokens if usage else num_prompt_tokens,
            "completion_tokens": usage.completion_tokens if usage else len(output_ids),
            "cached_tokens": usage.cached_tokens if usage else 0,
            "e2e_latency": round(e2e_latency, 6)}
    return {"text": text, "output_ids": list(output_ids), "meta_info": meta}
