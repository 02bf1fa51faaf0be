#!/usr/bin/env bash
# An A/B comparison in one lease (METHOD: alternate the arms, A, B, A at least, and report
# medians). Run ON THE GPU MACHINE from the repo root, carrying `.whl` and, for a baseline
# build, a second wheel folder (a radixmesh wheel built from the baseline commit, and its
# COMMIT file):
#
#   BASELINE_WHEELS=.whl-before bash load-tests/gpu/alternate.sh \
#       "mesh mesh@baseline mesh-trace mesh mesh@baseline mesh" decode-b1 sharegpt-like
#
# Each ARM is a mesh variant of run.sh (mesh, mesh-trace, mesh-hicache, ...), optionally
# `@baseline` to run it from the baseline wheel; each arm is one `radixmesh up` serving every
# WORKLOAD in turn, or only those it names after a colon (`mesh-trace:decode-b1,sharegpt-like`),
# so that two comparisons on different workloads share their A arms. The arm `peer` is
# mini-sglang on the same WORKLOADs (peer.sh: carry `.peers` too), so that ours and the peer's
# alternate as well: "peer mesh peer mesh peer". The result JSONs and logs come back in
# $OUT/alternate.tgz, and a table of each arm's figures with the per-arm medians in
# $OUT/alternate.txt.
# Environment: as run.sh's (SERVER_FLAGS, BENCH_FLAGS, MODEL, ...), and BASELINE_WHEELS.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export OUT=${OUT:-/tmp/out} PY=${PY:-python3}
read -r -a arms <<<"${1:?the arms, e.g. \"mesh mesh-trace mesh\"}"; shift
workloads=("${@:-decode-b1}")
work=/tmp/alternate && rm -rf "$work" && mkdir -p "$work" "$OUT"

source "$REPO/load-tests/gpu/lib.sh"  # install_wheel_dir, gpu_record

# Each arm runs in the background and is waited for, so that a TERM (the device call's time
# limit, `timeout`) is passed on to it and waited out: run.sh then stops its mesh before this
# script exits. Killed outright instead, run.sh died mid-stop and a worker kept 69 GB of the
# GPU into the next call, whose meshes then failed for memory.
child=""
run_child() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}
trap 'if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi
      (cd "$work" && tar czf "$OUT/alternate.tgz" .); exit 130' INT TERM
install_wheel_dir "$REPO/.whl" /tmp/site || { echo "!! installing .whl failed"; exit 1; }
if [[ " ${arms[*]} " == *@baseline* ]]; then
  install_wheel_dir "$REPO/${BASELINE_WHEELS:?set BASELINE_WHEELS for @baseline arms}" \
    /tmp/site-baseline ||
    { echo "!! installing $BASELINE_WHEELS failed"; exit 1; }
fi

# The peer on every workload, its JSONs and GPU line where a mesh arm leaves its own.
run_peer_arm() {
  local dir=$1 status=0
  mkdir -p "$dir/logs"
  echo "##### arm $index: peer"
  gpu_record "$dir/gpu.txt" >/dev/null
  OUT=$dir run_child bash "$REPO/load-tests/gpu/peer.sh" "$(IFS=,; echo "${arm_workloads[*]}")" \
    >/dev/null 2>&1 || status=$?
  mv "$dir/peer/peer.log" "$dir/logs/server-peer.log" 2>/dev/null
  grep -h '^{' "$dir/logs/server-peer.log"
  mv "$dir"/peer/*.json "$dir/" 2>/dev/null
  (cd "$dir/logs" && tar czf ../logs.tgz server-peer.log) && rm -rf "$dir/logs" "$dir/peer"
  return "$status"
}

failures=0 index=0
for arm_spec in "${arms[@]}"; do
  index=$((index + 1))
  arm=${arm_spec%%:*} arm_workloads=("${workloads[@]}")
  [[ $arm_spec == *:* ]] && IFS=, read -r -a arm_workloads <<<"${arm_spec#*:}"
  if [[ $arm == peer ]]; then
    run_peer_arm "$work/$(printf %02d "$index")-peer" || failures=$((failures + 1))
    (cd "$work" && tar czf "$OUT/alternate.tgz" .)
    continue
  fi
  variant=${arm%@baseline} site=/tmp/site wheels=$REPO/.whl
  if [[ $arm == *@baseline ]]; then
    site=/tmp/site-baseline:/tmp/site wheels=$REPO/$BASELINE_WHEELS
  fi
  steps=() && for workload in "${arm_workloads[@]}"; do steps+=("$variant:$workload"); done
  echo "##### arm $index: $arm"
  # The wheels are installed above: run.sh installs none (WHEELS empty) and runs what
  # PYTHONPATH names; the result JSONs name the commit of the wheel that ran.
  PYTHONPATH=$site RADIXMESH_COMMIT=$(<"$wheels/COMMIT") WHEELS= \
    OUT="$work/$(printf %02d "$index")-$arm" \
    run_child bash "$REPO/load-tests/gpu/run.sh" "${steps[@]}" ||
    failures=$((failures + 1))
  # After every arm, so a call cut off at its limit still brings back the arms that ran.
  (cd "$work" && tar czf "$OUT/alternate.tgz" .)
done

"$PY" - "$work" <<'PY' | tee "$OUT/alternate.txt"
import json, statistics, sys
from collections import defaultdict
from pathlib import Path

FIGURES = ("output_throughput", "median_itl_ms", "median_ttft_ms", "mean_ttft_ms")
by_arm = defaultdict(lambda: defaultdict(list))
for arm_dir in sorted(Path(sys.argv[1]).iterdir()):
    arm = arm_dir.name.split("-", 1)[1]
    for path in sorted(arm_dir.glob("*.json")):
        result = json.loads(path.read_text())
        metrics = result.get("metrics", {})
        figures = {k: metrics[k] for k in FIGURES if k in metrics}
        print(f"{arm_dir.name:28} {result['workload']:16} {result.get('commit', '?'):9}",
              " ".join(f"{k}={v}" for k, v in figures.items()))
        for key, value in figures.items():
            by_arm[(arm, result["workload"])][key].append(value)
print("medians:")
for (arm, workload), figures in sorted(by_arm.items()):
    print(f"  {arm:20} {workload:16}",
          " ".join(f"{k}={statistics.median(v):.4g} (n={len(v)})" for k, v in figures.items()))
PY
cp "$work"/01-*/gpu.txt "$OUT/" 2>/dev/null
echo "=== $failures arm(s) failed; results in $OUT/alternate.tgz"
((failures == 0))
