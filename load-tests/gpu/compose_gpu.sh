#!/usr/bin/env bash
# Issue 15 ON THE GPU MACHINE (no Docker there): compose/compose.yaml's radixmesh services run
# as plain processes with the file's own commands and environment (compose/run_without_docker.py),
# serving the Llama-3.1-8B shape (dummy weights, as run.sh writes it); span_sink.py stands in
# for Jaeger. Once every service passes its own healthcheck: a gRPC generate, an OpenAI chat
# completion, and the decode-b1 and sharegpt-like benches through the composed stack.
#
#   bash load-tests/gpu/compose_gpu.sh          (carry .whl; results and logs in $OUT)
#
# The file's paths are made on the host: /models/<model> (a link to the 8B directory), /l3 and
# /kernel-cache (its volumes); its service names go into /etc/hosts as 127.0.0.1.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PY=${PY:-python3} OUT=${OUT:-/tmp/out}
source "$REPO/load-tests/gpu/lib.sh"  # install_wheels, write_llama8b_dir, gpu_name, gpu_record
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WHEELS=${WHEELS-$REPO/.whl}  # empty: the installed radixmesh (trying this on CPU)
install_wheels "$WHEELS" || { echo "!! installing the wheels failed"; exit 1; }
if [[ -z ${MODEL:-} ]]; then  # MODEL: another HF directory, e.g. a tiny one to try this on CPU
  MODEL=/tmp/llama-3.1-8b-dummy
  write_llama8b_dir "$MODEL" || { echo "!! writing $MODEL failed"; exit 1; }
fi
gpu_record "$OUT/gpu.txt"
mkdir -p /models /l3 /kernel-cache && ln -sfn "$MODEL" /models/radixmesh-gpu-check

# The hicache service's pool is a POSIX shared-memory segment: it must fit /dev/shm here.
shm_gb=$(df -B1G --output=avail /dev/shm | tail -n 1 | tr -d ' ')
HICACHE_GB=${HICACHE_GB:-$(( shm_gb / 2 < 16 ? shm_gb / 2 : 16 ))}
((HICACHE_GB >= 1)) || { echo "!! /dev/shm has ${shm_gb} GiB free: too small for the host pool"; exit 1; }
echo "== host pool ${HICACHE_GB} GiB (/dev/shm: ${shm_gb} GiB free)"

"$PY" "$REPO/load-tests/gpu/span_sink.py" 127.0.0.1:4317 >"$OUT/span-sink.log" 2>&1 &
sink=$!
label=$(gpu_name)
label=${label:-cpu}
cli="$PY -P -m radixmesh.cli"
checks="$cli generate 'The capital of France is' --server 127.0.0.1:30001 --max-new-tokens 16 &&
  $PY -P $REPO/load-tests/gpu/chat_check.py http://127.0.0.1:30000/v1 &&
  $cli bench --workload decode-b1 --server 127.0.0.1:30001 --device-label '$label' \
    --output-dir $OUT --no-progress ${BENCH_FLAGS:-} &&
  $cli bench --workload sharegpt-like --server 127.0.0.1:30001 --device-label '$label' \
    --output-dir $OUT --no-progress ${BENCH_FLAGS:-}"
# The file's defaults, but the dummy 8B model and host tiers that fit this machine.
RADIXMESH_MODEL=radixmesh-gpu-check RADIXMESH_LOAD_FORMAT=dummy \
  RADIXMESH_HICACHE_SIZE_GB=$HICACHE_GB RADIXMESH_L3_SIZE_GB=${L3_GB:-20} \
  "$PY" -P "$REPO/compose/run_without_docker.py" "$REPO/compose/compose.yaml" --add-hosts \
  --log-dir "$OUT" --timeout "${COMPOSE_TIMEOUT:-480}" --then "$checks"
status=$?
kill "$sink" && wait "$sink"
tail -n 2 "$OUT/span-sink.log"
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log 2>/dev/null)
echo "=== composed stack on the GPU: status $status; results and logs.tgz in $OUT"
exit "$status"
