"""Length limits the front door applies once it knows the served model: the context window and
the KV pool. A request past either would fail later or wait forever in the scheduler's queue.

A prompt that leaves no room is blamed on the prompt field; otherwise a default
`max_new_tokens` shrinks to the room left (the client never chose it), and one the client
chose is checked as given and blamed on `max_new_tokens`.
"""

from __future__ import annotations

import dataclasses

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams


def apply_limits(request: TokenizedRequest, prompt_field: str, context_len: int,
                 max_total_tokens: int, max_new_tokens_given: bool) -> TokenizedRequest:
    check_prompt_room(len(request.input_ids), prompt_field, context_len, max_total_tokens)
    sampling = fit_to_context(request.sampling, len(request.input_ids), context_len,
                              max_new_tokens_given)
    request = dataclasses.replace(request, sampling=sampling)
    return fit_to_kv_pool(request, max_total_tokens, max_new_tokens_given)


def check_prompt_room(prompt_len: int, prompt_field: str, context_len: int,
                      max_total_tokens: int) -> None:
    """At least one output token must fit after the prompt."""
    for limit, what in ((context_len, "the context length"),
                        (max_total_tokens, "the KV cache capacity")):
        if prompt_len >= limit:
            raise InvalidRequestError(
                prompt_field, f"prompt of {prompt_len} tokens is too long: {what} is {limit} "
                "tokens, prompt and output included")


def fit_to_kv_pool(request: TokenizedRequest, max_total_tokens: int,
                   max_new_tokens_given: bool) -> TokenizedRequest:
    """Like `fit_to_context`, for the KV pool: a request that can never fit it would wait in
    the scheduler's queue forever."""
    prompt_len, wanted = len(request.input_ids), request.sampling.max_new_tokens
    room = max_total_tokens - prompt_len
    if not max_new_tokens_given and 1 <= room < wanted:
        sampling = dataclasses.replace(request.sampling, max_new_tokens=room)
        return dataclasses.replace(request, sampling=sampling)
    if prompt_len + wanted > max_total_tokens:
        raise InvalidRequestError(
            "max_new_tokens", f"prompt of {prompt_len} tokens + max_new_tokens {wanted} = "
            f"{prompt_len + wanted} exceeds the KV cache capacity of {max_total_tokens} tokens")
    return request


def fit_to_context(params: SamplingParams, prompt_len: int, context_len: int,
                   max_new_tokens_given: bool) -> SamplingParams:
    """Checks that prompt and output fit the context window.

    A default `max_new_tokens` shrinks to the room left rather than failing a request over a
    value the client never chose; one the client chose is checked as given.
    """
    room = context_len - prompt_len
    if not max_new_tokens_given and 1 <= room < params.max_new_tokens:
        return dataclasses.replace(params, max_new_tokens=room)
    if prompt_len + params.max_new_tokens > context_len:
        raise InvalidRequestError(
            "max_new_tokens",
            f"prompt of {prompt_len} tokens + max_new_tokens {params.max_new_tokens} = "
            f"{prompt_len + params.max_new_tokens} exceeds the context length {context_len}")
    return params
