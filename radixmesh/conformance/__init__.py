"""Conformance suites for the mesh's internal contracts (protos/internal.proto,
protos/hicache.proto): `radixmesh conformance SERVICE --target HOST:PORT` runs one against any
implementation of that service. Each check's docstring says what a replacement must do."""
