"""The public front door's edge (HTTP, OpenAI, native and gRPC APIs, request checks), shared by
a mesh's tokenizer service and the router in front of several meshes (`core.py`)."""
