"""SGLang's native `/generate` body, declared: `{"text" | "input_ids", "sampling_params",
"stream", "rid"}` with SGLang's names (`sampling_seed` is SGLang's name for our `seed`).

SGLang's options that we do not implement are accepted at their defaults only and refused by
name otherwise, as are unknown fields. A batch (a list of texts or of id lists) is refused:
one prompt a request.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator

from radixmesh.shared.front_door.declared_fields import (
    STRICT,
    Float,
    Int,
    StopStrings,
    TokenIds,
    neutral,
    not_a_batch,
)


class NativeSampling(BaseModel):
    """SGLang's `sampling_params`."""

    model_config = STRICT

    max_new_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Int | None = None
    min_p: Float | None = None
    seed: Int | None = None
    sampling_seed: Int | None = None  # SGLang's name for `seed`
    stop: StopStrings | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool | None = None
    frequency_penalty: Float | None = None
    presence_penalty: Float | None = None
    repetition_penalty: Float | None = None
    hicache_remote_policy: str | None = None  # ours: SamplingParams.validate names the choices
    # Not implemented: their defaults only.
    n: Annotated[Any, neutral(1)] = None
    min_new_tokens: Annotated[Any, neutral(0)] = None
    skip_special_tokens: Annotated[Any, neutral(True)] = None
    spaces_between_special_tokens: Annotated[Any, neutral(True)] = None
    no_stop_trim: Annotated[Any, neutral(False)] = None
    json_schema: Annotated[Any, neutral()] = None
    regex: Annotated[Any, neutral()] = None
    ebnf: Annotated[Any, neutral()] = None
    structural_tag: Annotated[Any, neutral()] = None
    logit_bias: Annotated[Any, neutral({})] = None
    custom_params: Annotated[Any, neutral()] = None


class GenerateRequest(BaseModel):
    model_config = STRICT

    text: Annotated[str | None, BeforeValidator(not_a_batch("texts"))] = None
    input_ids: Annotated[TokenIds | None, BeforeValidator(not_a_batch("id lists"))] = None
    sampling_params: NativeSampling | None = None
    stream: bool | None = None
    rid: str | None = None
    cache_salt: str | None = None  # vLLM's prefix-cache isolation, as the OpenAI bodies take it
    # Not implemented: their defaults only.
    return_logprob: Annotated[Any, neutral(False)] = None
    logprob_start_len: Annotated[Any, neutral(-1)] = None
    top_logprobs_num: Annotated[Any, neutral(0)] = None
    return_text_in_logprobs: Annotated[Any, neutral(False)] = None
    lora_path: Annotated[Any, neutral()] = None
    image_data: Annotated[Any, neutral()] = None
    custom_logit_processor: Annotated[Any, neutral()] = None
    return_hidden_states: Annotated[Any, neutral(False)] = None


class AbortRequestBody(BaseModel):
    """`POST /abort_request`: one request by id (aborting all of them is not supported)."""

    model_config = STRICT

    rid: str
    abort_all: Annotated[Any, neutral(False)] = None
