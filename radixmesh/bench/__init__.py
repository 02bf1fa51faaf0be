"""`radixmesh bench`: the standard workloads of design §8, run through the mesh or in-process.

`workloads` builds the requests, `mesh_path` / `offline_path` drive them and timestamp every
chunk into `RequestTrace`s, `metrics` turns traces into figures, `results` writes the JSON.
"""
