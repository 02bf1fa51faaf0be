"""Our results -> OpenAI response bodies, SSE events and error bodies: pure functions.

Shapes follow OpenAI's `text_completion`, `chat.completion` and `chat.completion.chunk`
objects. Finish reasons map "stop" -> "stop", "length" -> "length" and "abort" -> "abort"
(as SGLang reports it); like SGLang each choice also says which stop (`matched_stop`) ended
it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod

from radixmesh.shared.completion import TextCompletion
from radixmesh.shared.requests import FinishReason, TextDelta, Usage

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def error_body(message: str, param: str | None, code: int = 400,
               error_type: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _finish_fields(finish: FinishReason | None) -> dict:
    if finish is None:
        return {"finish_reason": None}
    return {"finish_reason": finish.kind.value, "matched_stop": finish.matched}


def _envelope(object_name: str, response_id: str, created: int, model: str,
              choices: list[dict]) -> dict:
    return {"id": response_id, "object": object_name, "created": created, "model": model,
            "choices": choices}


# ---- /v1/completions ------------------------------------------------------------------------


def completion_response(response_id: str, created: int, model: str, text: str,
                        finish: FinishReason, usage: Usage) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, **_finish_fields(finish)}
    body = _envelope("text_completion", response_id, created, model, [choice])
    body["usage"] = usage.to_dict()
    return body


def completion_chunk(response_id: str, created: int, model: str, text: str,
                     finish: FinishReason | None = None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, **_finish_fields(finish)}
    return _envelope("text_completion", response_id, created, model, [choice])


# ---- /v1/chat/completions -------------------------------------------------------------------


def chat_response(response_id: str, created: int, model: str, text: str,
                  finish: FinishReason, usage: Usage) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "logprobs": None, **_finish_fields(finish)}
    body = _envelope("chat.completion", response_id, created, model, [choice])
    body["usage"] = usage.to_dict()
    return body


def chat_chunk(response_id: str, created: int, model: str, delta: dict,
               finish: FinishReason | None = None) -> dict:
    """`delta` is {"role": "assistant", "content": ""} first, then {"content": text}, and {}
    on the finishing chunk."""
    choice = {"index": 0, "delta": delta, "logprobs": None, **_finish_fields(finish)}
    return _envelope("chat.completion.chunk", response_id, created, model, [choice])


# ---- both -----------------------------------------------------------------------------------


def usage_chunk(object_name: str, response_id: str, created: int, model: str,
                usage: Usage) -> dict:
    """The extra last chunk of a stream with `stream_options.include_usage`: no choices."""
    body = _envelope(object_name, response_id, created, model, [])
    body["usage"] = usage.to_dict()
    return body


def model_card(served_model: str, created: int, context_len: int) -> dict:
    """One `model` object, as `/v1/models/{id}` answers and `/v1/models` lists it."""
    return {"id": served_model, "object": "model", "created": created, "owned_by": "radixmesh",
            "max_model_len": context_len}


def models_list(served_model: str, created: int, context_len: int) -> dict:
    return {"object": "list", "data": [model_card(served_model, created, context_len)]}


# ---- per-endpoint shaping of a request's deltas ------------------------------------------


class ResponseFormat(ABC):
    """How one endpoint shapes a request's results; every call takes (response id, created,
    model) first."""

    id_prefix: str
    chunk_object: str

    def opening(self, response_id: str, created: int, model: str) -> list[dict]:
        """Chunks sent before any delta."""
        return []

    @abstractmethod
    def chunks(self, response_id: str, created: int, model: str,
               delta: TextDelta) -> list[dict]:
        """Stream chunks for one delta (none while text is held back)."""

    @abstractmethod
    def response(self, response_id: str, created: int, model: str,
                 completion: TextCompletion) -> dict:
        """The non-streaming body, from the whole (finished) completion."""


class CompletionFormat(ResponseFormat):
    id_prefix = "cmpl-"
    chunk_object = "text_completion"

    def chunks(self, response_id: str, created: int, model: str,
               delta: TextDelta) -> list[dict]:
        if not delta.text and delta.finish is None:
            return []  # text held back (a partial character, a possible stop string)
        return [completion_chunk(response_id, created, model, delta.text, delta.finish)]

    def response(self, response_id: str, created: int, model: str,
                 completion: TextCompletion) -> dict:
        return completion_response(response_id, created, model, completion.text,
                                   completion.finish, completion.usage)


class ChatFormat(ResponseFormat):
    id_prefix = "chatcmpl-"
    chunk_object = "chat.completion.chunk"

    def opening(self, response_id: str, created: int, model: str) -> list[dict]:
        return [chat_chunk(response_id, created, model, {"role": "assistant", "content": ""})]

    def chunks(self, response_id: str, created: int, model: str,
               delta: TextDelta) -> list[dict]:
        out = []
        if delta.text:
            out.append(chat_chunk(response_id, created, model, {"content": delta.text}))
        if delta.finish is not None:
            out.append(chat_chunk(response_id, created, model, {}, delta.finish))
        return out

    def response(self, response_id: str, created: int, model: str,
                 completion: TextCompletion) -> dict:
        return chat_response(response_id, created, model, completion.text, completion.finish,
                             completion.usage)
