"""What the gRPC client hands back: plain dataclasses and one error type."""

from __future__ import annotations

from dataclasses import dataclass, field


class RadixMeshClientError(Exception):
    """A gRPC call failed: `code` is the status code's name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GenerateChunk:
    """One streamed message: new token ids and text since the previous chunk.

    `finish` ({"type", "matched"?, "message"?}) and `usage` ({"prompt_tokens",
    "completion_tokens", "total_tokens", "prompt_tokens_details": {"cached_tokens"}}) are set
    on the last chunk only.
    """

    rid: str
    token_ids: list[int]
    text: str
    finish: dict | None = None
    usage: dict | None = None


@dataclass(slots=True)
class Completion:
    """A whole generation, accumulated from its chunks."""

    rid: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish: dict | None = None
    usage: dict | None = None

    def add(self, chunk: GenerateChunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        if chunk.finish is not None:
            self.finish, self.usage = chunk.finish, chunk.usage


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server says about the model it serves."""

    model_id: str              # the name to use in OpenAI requests
    context_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_total_tokens: int      # KV pool size in tokens: prompt + output must fit
    page_size: int
    worker: str                # "model" or "null"
