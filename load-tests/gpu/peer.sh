#!/usr/bin/env bash
# mini-sglang beside us (issue 16): runs ../shared/peers/minisgl_bench.py ON THE GPU MACHINE
# from the repo root, in the same lease as our own runs. Carry `.peers`, made here beforehand
# (the peer's source is never committed):
#   mkdir -p .peers && git --git-dir=<mini-sglang git dir> archive 20fcd7f python |
#     tar -x -C .peers && mv .peers/python .peers/minisgl
#   cp -r ../shared/peers .peers/bench
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     -d .peers/wheels pyzmq
# and `.whl` (prepare.sh with WITH_FLASHINFER=1 holds the FlashInfer wheels the peer needs).
#   bash load-tests/gpu/peer.sh [WORKLOADS]   (default decode-b1,sharegpt-like,shared-prefix)
# The peer's JSONs land in $OUT/peer (copy them into load-tests/results/).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-python3} OUT=${OUT:-/tmp/out}
site=/tmp/site-peer
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  "$REPO"/.whl/flashinfer_python-*.whl "$REPO"/.whl/apache_tvm_ffi-*.whl \
  "$REPO"/.whl/nvidia_cudnn_frontend-*.whl "$REPO"/.peers/wheels/*.whl ||
  { echo "!! installing the peer's wheels failed"; exit 1; }
mkdir -p "$OUT/peer"
PYTHONPATH=$site timeout --kill-after=20 "${PEER_TIMEOUT:-480}" "$PY" "$REPO/.peers/bench/minisgl_bench.py" \
  --source "$REPO/.peers/minisgl" --out "$OUT/peer" --only "${1:-decode-b1,sharegpt-like,shared-prefix}" \
  2>&1 | tail -n 40
