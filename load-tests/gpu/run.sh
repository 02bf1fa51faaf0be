#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repo root (the device tool: carry `.whl`), after
# load-tests/gpu/prepare.sh ran here. Installs the carried wheels, writes a Llama-3.1-8B-shaped
# model directory (weights are dummy), runs the STEPs in order and leaves every result JSON and
# log in $OUT.
#
#   bash load-tests/gpu/run.sh [STEP ...]        (default: offline:decode-b1)
#
# STEPs: tests                 tests/kernels and tests/worker
#        tune                  sweep the Triton GEMMs' tilings (step_tune): this GPU's tables
#                              in $OUT/configs and used by the meshes started after it
#        offline:WORKLOAD      `radixmesh bench --path offline` (the engine in-process)
#        mesh:WORKLOAD         `radixmesh bench --path mesh` against `radixmesh up`
#        mesh-noradix:WORKLOAD ... against `radixmesh up --disable-radix-cache`
#        mesh-null:WORKLOAD    ... against `radixmesh up --worker null`
#        mesh-hicache:WORKLOAD ... against `radixmesh up --enable-hierarchical-cache`
#        mesh-cascade, mesh-mixed, mesh-mixed-2k:WORKLOAD ... with cascade attention; with
#                              decodes mixed into prefill steps (and 2,048-token chunks)
#        mesh-trace:WORKLOAD   ... against `radixmesh up --enable-trace` (every request traced,
#                              spans exported to span_sink.py on 127.0.0.1:4317)
#        mesh-breakdown:WORKLOAD ... traced into the bench itself (`--trace-breakdown`): the
#                              median and p99 time of each stage of a request
#        mesh-fp8, mesh-fp8kv, mesh-det, mesh-compile:WORKLOAD ... with FP8 weights, FP8
#                              weights and KV cache, deterministic inference, torch.compile
#        hf                    HF transformers `generate`, batch 1 and 256 (hf_generate.py)
# Consecutive steps of one mesh variant share one `radixmesh up`; any other step stops it
# first (one model on the GPU at a time), so keep each variant's steps together.
#
# Environment: BENCH_FLAGS (every bench), SERVER_FLAGS (every `radixmesh up`), HF_FLAGS;
# MODEL (a model dir to use as is; default: the MODEL_SHAPE-shaped one, written: 8b (default),
# 70b, or 70b_8layer), MODEL_FLAGS (default
# "--load-format dummy --dtype bfloat16"), OUT (default /tmp/out), WHEELS (default .whl; empty:
# use the installed radixmesh), SERVER_TIMEOUT (s to wait for the mesh, default 420),
# STEP_TIMEOUT (s per bench/test step, default 0: none), LOG_LEVEL (default info), TESTS (the
# tests step's pytest paths, default "tests/kernels tests/worker"), STARTUP_STACKS (N: while a
# mesh starts, its services' Python stacks every N s into startup-stacks-*.log).
# On a CPU: OUT=/tmp/rtest WHEELS= MODEL=<tiny dir> MODEL_FLAGS= BENCH_FLAGS="--num-prompts 8
# --scale 0.05" HF_FLAGS="--device cpu --dtype float32 --batch-sizes 1 2 --input-len 8
# --max-new-tokens 8" bash load-tests/gpu/run.sh offline:sharegpt-like mesh:sharegpt-like hf
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PY=${PY:-python3} OUT=${OUT:-/tmp/out} LOG_LEVEL=${LOG_LEVEL:-info}
export MODEL_FLAGS=${MODEL_FLAGS-"--load-format dummy --dtype bfloat16"}
export SERVER_FLAGS=${SERVER_FLAGS:-} BENCH_FLAGS=${BENCH_FLAGS:-} HF_FLAGS=${HF_FLAGS:-}
export SERVER_TIMEOUT=${SERVER_TIMEOUT:-420} STEP_TIMEOUT=${STEP_TIMEOUT:-0}
MODEL_SHAPE=${MODEL_SHAPE:-8b}
export RUN_DIR=/tmp/gpurun
WHEELS=${WHEELS-$REPO/.whl}
source "$REPO/load-tests/gpu/lib.sh"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

install_wheels "$WHEELS" || { echo "!! installing the wheels failed"; exit 1; }
# Work outside the checkout: its radixmesh/ folder would shadow the installed package, whose
# radixmesh.services and radixmesh.shared the install maps from the top-level folders.
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"
cp -r "$REPO/tests" "$REPO/pyproject.toml" "$REPO"/load-tests/gpu/*.py "$RUN_DIR/"
cd "$RUN_DIR" || exit 1
if [[ -z ${MODEL:-} ]]; then
  MODEL=/tmp/llama-3.1-${MODEL_SHAPE}-dummy
  "write_llama${MODEL_SHAPE}_dir" "$MODEL" || { echo "!! writing $MODEL failed"; exit 1; }
fi
export MODEL
GPU_NAME=$(gpu_name)
gpu_record "$OUT/gpu.txt"
trap stop_server EXIT
trap 'exit 130' INT TERM   # through the EXIT trap: never leave a mesh behind

failures=0
for step in "${@:-offline:decode-b1}"; do
  kind=${step%%:*} workload=${step#*:}
  [[ $kind == mesh* ]] || stop_server
  echo "=== $step"
  started=$SECONDS status=0
  case $kind in
    tests) step_tests || status=$? ;;
    tune) step_tune || status=$? ;;
    hf) step_hf || status=$? ;;
    offline) step_offline "$workload" || status=$? ;;
    *) if [[ -v "MESH_VARIANTS[$kind]" && $workload != "$step" ]]; then
         step_mesh "$kind" "$workload" || status=$?
       else
         echo "!! unknown step $step"; status=2
       fi ;;
  esac
  ((status == 0)) || failures=$((failures + 1))
  printf '%-32s status %-3s %5ss\n' "$step" "$status" $((SECONDS - started)) |
    tee -a "$OUT/summary.txt"
done
stop_server
# The device tool brings back only a few files per run: the result JSONs come back as they
# are, the logs (and summary) in one archive.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log summary.txt 2>/dev/null)
echo "=== $failures step(s) failed; results in $OUT, logs in $OUT/logs.tgz"
((failures == 0))
