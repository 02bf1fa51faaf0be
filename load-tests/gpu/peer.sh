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
# The peer's JSONs and its whole log (peer.log) land in $OUT/peer (copy the JSONs into
# load-tests/results/).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-python3} OUT=${OUT:-/tmp/out}
site=/tmp/site-peer
source "$REPO/load-tests/gpu/lib.sh"  # install_wheel_files
# Installed once per machine (a reinstall renews FlashInfer's sources' times and its JIT
# rebuilds), with a JIT cache of its own: the peer's FlashInfer is a second copy at another
# path, and sharing our cache, each of the two would rebuild what the other built last.
install_wheel_files "$site" "$REPO"/.whl/flashinfer_python-*.whl "$REPO"/.whl/apache_tvm_ffi-*.whl \
  "$REPO"/.whl/nvidia_cudnn_frontend-*.whl "$REPO"/.peers/wheels/*.whl ||
  { echo "!! installing the peer's wheels failed"; exit 1; }
export FLASHINFER_WORKSPACE_BASE=${PEER_FLASHINFER_CACHE:-/tmp/flashinfer-peer}
mkdir -p "$OUT/peer"
PYTHONPATH=$site timeout --kill-after=20 "${PEER_TIMEOUT:-480}" "$PY" "$REPO/.peers/bench/minisgl_bench.py" \
  --source "$REPO/.peers/minisgl" --out "$OUT/peer" --only "${1:-decode-b1,sharegpt-like,shared-prefix}" \
  2>&1 | tee "$OUT/peer/peer.log" | tail -n 40
