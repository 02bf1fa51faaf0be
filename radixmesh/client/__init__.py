"""Python clients of the gRPC `Generation` API: `AsyncClient` (asyncio) and `Client` (blocking).

    async with AsyncClient("127.0.0.1:30001") as client:
        async for chunk in client.generate(text="Hello", max_new_tokens=32, temperature=0):
            print(chunk.text, end="", flush=True)
"""

from radixmesh.client.async_client import DEFAULT_ADDRESS, AsyncClient
from radixmesh.client.sync_client import Client
from radixmesh.client.types import Completion, GenerateChunk, ModelInfo, RadixMeshClientError

__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "Client", "Completion", "GenerateChunk",
           "ModelInfo", "RadixMeshClientError"]
