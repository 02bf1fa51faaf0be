"""SGLang's native `/generate` body and answers: pure functions, no I/O.

A request is `{"text": str | "input_ids": [int], "sampling_params": {...}, "stream": bool,
"rid": str}` as SGLang documents it; sampling parameters take SGLang's names (ours are the
same; `sampling_seed` is SGLang's name for `seed`). SGLang's options that we do not implement
are accepted at their neutral value only and refused with 400 naming the field otherwise, as
are unknown fields. A batch (a list of texts or of id lists) is refused: one prompt a request.

The answer is `{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "cached_tokens", "e2e_latency"}}`; streamed, each SSE event carries the
text and ids generated so far (cumulative, as SGLang streams them by default), `finish_reason`
None until the last, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import FinishKind, FinishReason, Usage
from radixmesh.shared.sampling_params import (
    DEFAULT_LIMITS,
    SamplingLimits,
    SamplingParams,
    check_stop_lists,
)
from radixmesh.shared.text_checks import check_rid

SAMPLING_PARAMS = "sampling_params"
GENERATE_FIELDS = frozenset({"text", "input_ids", SAMPLING_PARAMS, "stream", "rid"})
# SGLang's options of a request, accepted at their neutral values only.
NEUTRAL_OPTIONS: dict[str, tuple[object, ...]] = {
    "return_logprob": (None, False), "logprob_start_len": (None, -1),
    "top_logprobs_num": (None, 0), "return_text_in_logprobs": (None, False),
    "lora_path": (None,), "image_data": (None,), "custom_logit_processor": (None,),
    "return_hidden_states": (None, False),
}
# SGLang's sampling parameters that we do not implement, accepted at their neutral values.
NEUTRAL_SAMPLING: dict[str, tuple[object, ...]] = {
    "n": (None, 1), "min_new_tokens": (None, 0), "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True), "no_stop_trim": (None, False),
    "json_schema": (None,), "regex": (None,), "ebnf": (None,), "structural_tag": (None,),
    "logit_bias": (None, {}), "custom_params": (None,),
}
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
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    known = GENERATE_FIELDS | frozenset(NEUTRAL_OPTIONS)
    unknown = sorted(str(key) for key in payload if key not in known)
    if unknown:
        raise InvalidRequestError(unknown[0], "unknown or unsupported parameter")
    _check_neutral(payload, NEUTRAL_OPTIONS, "")
    body = _prompt(payload)
    body.update(_sampling(payload.get(SAMPLING_PARAMS), limits))
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("stream", f"must be a boolean, got {stream!r}")
    rid = payload.get("rid")
    if rid is not None:
        check_rid(rid)
    return NativeRequest(body, rid, stream)


def _prompt(payload: Mapping) -> dict:
    present = [name for name in ("text", "input_ids") if payload.get(name) is not None]
    if len(present) != 1:
        raise InvalidRequestError("text", "exactly one of text or input_ids is required, got "
                                  + (", ".join(present) or "none"))
    name = present[0]
    value = payload[name]
    if isinstance(value, list) and value and all(isinstance(item, (str, list)) for item in value):
        raise InvalidRequestError(name, "batches are not supported; send one prompt per "
                                  "request")
    return {name: value}


def _sampling(params: object, limits: SamplingLimits) -> dict:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidRequestError(SAMPLING_PARAMS, "must be an object")
    known = OUR_SAMPLING | frozenset(NEUTRAL_SAMPLING) | frozenset(SAMPLING_ALIASES)
    unknown = sorted(str(key) for key in params if key not in known)
    if unknown:
        raise InvalidRequestError(f"{SAMPLING_PARAMS}.{unknown[0]}",
                                  "unknown or unsupported sampling parameter")
    _check_neutral(params, NEUTRAL_SAMPLING, f"{SAMPLING_PARAMS}.")
    ours = {SAMPLING_ALIASES.get(name, name): value for name, value in params.items()
            if name not in NEUTRAL_SAMPLING and value is not None}
    try:
        check_stop_lists(_as_list(ours.get("stop")), _as_list(ours.get("stop_token_ids")),
                         limits)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{SAMPLING_PARAMS}.{exc.field}", exc.message) from exc
    return ours


def _as_list(value: object) -> list | tuple:
    """A stop field as the list it stands for, for the limits; SamplingParams names wrong
    types."""
    if isinstance(value, str):
        return (value,)
    return value if isinstance(value, list) else ()


def _check_neutral(values: Mapping, neutral: dict[str, tuple[object, ...]], prefix: str) -> None:
    for name, allowed in neutral.items():
        if name in values and values[name] not in allowed:
            raise InvalidRequestError(f"{prefix}{name}", "is not supported except at its "
                                      f"default ({allowed[-1]!r})")


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
