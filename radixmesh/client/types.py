"""What the gRPC client hands back: plain dataclasses (the services' own where they are the
same) and one error type."""

from __future__ import annotations

from dataclasses import dataclass

# A whole generation, accumulated from its chunks: the same accumulator the front door and the
# engine use. Over GenerateChunks its `finish` and `usage` are the chunks' dicts.
from radixmesh.shared.completion import Completion

# What the server says about the model it serves (`model_id` is the name for OpenAI requests).
from radixmesh.shared.mesh_info import ModelInfo

__all__ = ["Completion", "GenerateChunk", "ModelInfo", "RadixMeshClientError"]


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
