# Helpers of load-tests/gpu/run.sh (sourced). They read the settings run.sh exports: PY, OUT,
# MODEL, MODEL_FLAGS, SERVER_FLAGS, BENCH_FLAGS, HF_FLAGS, LOG_LEVEL, SERVER_TIMEOUT,
# STEP_TIMEOUT, RUN_DIR. Functions return non-zero on failure instead of exiting, so one
# failed step never costs the results of the others.

# Mesh variants: the step prefix names the extra flags of the `radixmesh up` it runs against.
declare -A MESH_VARIANTS=(
  [mesh]=""
  [mesh-noradix]="--disable-radix-cache"
  [mesh-cascade]="--enable-cascade-attn"
  # Issue 16's `online` ITL: decodes ride along with each prefill chunk, and smaller chunks.
  [mesh-mixed]="--enable-mixed-chunk"
  [mesh-mixed-2k]="--enable-mixed-chunk --chunked-prefill-size 2048"
  [mesh-null]="--worker null"
  [mesh-hicache]="--enable-hierarchical-cache"
  # Tracing on, every request sampled, spans exported to span_sink.py (started with the mesh).
  [mesh-trace]="--enable-trace --otlp-traces-endpoint 127.0.0.1:4317"
  # Tracing on, spans sent to the bench itself, which prints the time of each stage (tokenize,
  # queue, prefill, decode, detokenize) per request: where a TTFT goes.
  [mesh-breakdown]="--enable-trace --otlp-traces-endpoint 127.0.0.1:4318"
  # Issue 22: FP8 weights; FP8 weights and KV cache; batch-invariant kernels; compiled decode.
  [mesh-fp8]="--quantization fp8"
  [mesh-fp8kv]="--quantization fp8 --kv-cache-dtype fp8_e4m3"
  [mesh-det]="--enable-deterministic-inference"
  [mesh-compile]="--enable-torch-compile"
)
# Extra bench flags of a mesh variant.
declare -A BENCH_VARIANT_FLAGS=(
  [mesh-breakdown]="--trace-breakdown 127.0.0.1:4318"
)
SINK_PID=""          # span_sink.py, while a traced mesh runs

SERVER_PID=""        # the running `radixmesh up`, if any
SERVER_VARIANT=""    # its variant; "failed:<variant>" after a start that failed
SERVER_CHILDREN=""   # its services' pids, checked gone after it stops
SERVER_STARTS=0
SERVER_LOG=""
SERVER_COMMAND=""    # as recorded in its benches' result JSONs

# install_wheel_files TARGET WHEEL...: pip-installs the WHEELs into TARGET, unless these very
# wheels are there already. A second call on a warm machine spent 135 s warming up again,
# against 2-3 s for a second mesh within one call; the likely cause: a reinstall gives
# FlashInfer's kernel sources new times, and its JIT (ninja) rebuilds what is older. (Skipping
# the reinstall, the next call's mesh was up in 19 s.)
install_wheel_files() {
  local target=$1 stamp && shift
  stamp=$(sha256sum "$@" | cut -d' ' -f1 | sha256sum | cut -c1-16) || return 1
  [[ -f $target/.wheels-stamp && $(<"$target/.wheels-stamp") == "$stamp" ]] && return 0
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$target" "$@" || return 1
  echo "$stamp" >"$target/.wheels-stamp"
}

# install_wheel_dir DIR TARGET: every wheel of DIR, as install_wheel_files.
install_wheel_dir() {
  install_wheel_files "$2" "$1"/*.whl
}

# Installs the carried wheels into /tmp/site (the GPU image lacks them; see prepare.sh).
install_wheels() {
  local dir=$1
  [[ -n $dir ]] || return 0
  install_wheel_dir "$dir" /tmp/site || return 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # Result JSONs name the commit prepare.sh saw; the GPU machine has no git checkout.
  [[ -f $dir/COMMIT ]] && export RADIXMESH_COMMIT=$(<"$dir/COMMIT")
  return 0
}

# A Llama-3.1-8B-shaped model directory: config.json only (weights come from
# `--load-format dummy`) and a tokenizer padded to the 128256-id vocabulary, so the mesh's
# detokenizer does its real work on every generated id.
write_llama8b_dir() {
  write_llama_dir "$1" 4096 32 14336 32
}

# Llama-3.1-70B whole (issue 22: served in FP8 on one card; dummy weights are drawn and
# quantized a layer at a time, so its 141 GB of bf16 never exist).
write_llama70b_dir() {
  write_llama_dir "$1" 8192 64 28672 80
}

# Llama-3.1-70B's layer shape cut to 8 layers (issue 20: KV cheap against compute, 32 KiB a
# token), otherwise as write_llama8b_dir.
write_llama70b_8layer_dir() {
  write_llama_dir "$1" 8192 64 28672 8
}

# write_llama_dir DIR HIDDEN HEADS INTERMEDIATE LAYERS: a Llama-3.1 config of that shape (8 KV
# heads of 128, Llama-3.1's vocabulary and RoPE) and its padded tokenizer, unless DIR has them.
write_llama_dir() {
  local dir=$1
  [[ -f $dir/config.json && -f $dir/tokenizer.json ]] && return 0
  "$PY" -P - "$@" <<'PY'  # -P: the checkout's folders (kernels/) must not shadow packages
import sys
from pathlib import Path
from transformers import LlamaConfig
from radixmesh.make_model.tokenizer import train_tokenizer
directory, hidden, heads, intermediate, layers = sys.argv[1], *map(int, sys.argv[2:])
LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=8, intermediate_size=intermediate, vocab_size=128256,
            max_position_embeddings=131072, rms_norm_eps=1e-5, dtype="bfloat16",
            bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
            architectures=["LlamaForCausalLM"]).save_pretrained(directory)
train_tokenizer(Path(directory), 128256, model_max_length=131072)
PY
}

gpu_name() {
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -n1
  return 0
}

# gpu_record FILE: the GPU's name, UUID, memory and driver, printed and kept in FILE (what
# ab_record.py and the results name the card by); nothing where there is no nvidia-smi.
gpu_record() {
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv | tee "$1"
  return 0
}

# run_logged LOG CMD...: runs CMD (cut off after STEP_TIMEOUT s; 0: never), its output to LOG
# and the tail to the terminal (the device tool returns only the last 12,000 characters).
run_logged() {
  local log=$1; shift
  local status=0
  timeout --signal=INT --kill-after=30 "${STEP_TIMEOUT:-0}" "$@" >"$log" 2>&1 || status=$?
  tail -n 25 "$log"
  return "$status"
}

# Adds KEY=VALUE string fields to the result JSON a bench named in LOG ("result: PATH").
annotate_result() {
  local log=$1; shift
  local json
  json=$(sed -n 's/^result: //p' "$log" | tail -n1)
  [[ -n $json ]] || return 0
  "$PY" - "$json" "$@" <<'PY'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
result = json.load(open(path))
result.update(pair.split("=", 1) for pair in pairs)
open(path, "w").write(json.dumps(result, indent=2) + "\n")
PY
}

start_server() {
  local variant=$1
  SERVER_STARTS=$((SERVER_STARTS + 1))
  local log="$OUT/server-$variant-$SERVER_STARTS.log"
  SERVER_LOG=$log
  # shellcheck disable=SC2086  # the flag variables are word lists on purpose
  local -a argv=("$PY" -m radixmesh.cli --log-level "$LOG_LEVEL" up --model-path "$MODEL"
                 $MODEL_FLAGS ${MESH_VARIANTS[$variant]} $SERVER_FLAGS)
  echo "== starting: ${argv[*]}  (log: $log)"
  if [[ " ${argv[*]} " == *" --enable-trace "* ]]; then
    "$PY" "$RUN_DIR/span_sink.py" 127.0.0.1:4317 >>"$OUT/span-sink-$SERVER_STARTS.log" 2>&1 &
    SINK_PID=$!
  fi
  : >"$log"  # before the poll below reads it
  "${argv[@]}" >>"$log" 2>&1 &
  SERVER_PID=$! SERVER_VARIANT=$variant SERVER_COMMAND="radixmesh ${argv[*]:3}"
  local deadline=$((SECONDS + SERVER_TIMEOUT))
  # The launcher prints "radixmesh is up:" once every service reports SERVING on gRPC health.
  until grep -q '^radixmesh is up' "$log"; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      local status=0; wait "$SERVER_PID" || status=$?
      echo "!! radixmesh up exited (status $status) before it was up; its log ends:"
      tail -n 40 "$log"
      SERVER_PID="" SERVER_VARIANT="failed:$variant"
      return 1
    fi
    startup_stacks "$SERVER_PID" "$OUT/startup-stacks-$SERVER_STARTS.log"
    if ((SECONDS > deadline)); then
      echo "!! radixmesh up not up after ${SERVER_TIMEOUT}s; its log ends:"
      tail -n 40 "$log"
      stop_server
      SERVER_VARIANT="failed:$variant"
      return 1
    fi
    sleep 1
  done
  SERVER_CHILDREN=$(children_of "$SERVER_PID")
  echo "== mesh up after $((SECONDS - deadline + SERVER_TIMEOUT))s (services: $SERVER_CHILDREN)"
}

# startup_stacks PID LOG: with STARTUP_STACKS=N, every N s while the mesh starts, the Python
# stacks of PID's services (py-spy, carried in .whl) appended to LOG: where a slow start spends
# its time (a second mesh of one call spent 68 s in its forward warm-up on an H100, where one
# of an earlier lease took 1 s).
startup_stacks() {
  [[ -n ${STARTUP_STACKS:-} ]] && ((SECONDS % STARTUP_STACKS == 0)) || return 0
  local spy pid
  spy=$(command -v py-spy || echo /tmp/site/bin/py-spy)
  [[ -x $spy ]] || return 0
  for pid in $(children_of "$1"); do
    { echo "=== $(date +%T) pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
      "$spy" dump --pid "$pid" 2>&1 | head -n 60; } >>"$2"
  done
}

# The pids whose parent is $1 (from /proc: the image may lack procps).
children_of() {
  local stat line fields
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$stat" || continue
    # After the ")" that closes the command name come the state, then the parent's pid.
    read -r -a fields <<<"${line##*) }"
    [[ ${fields[1]} == "$1" ]] || continue
    stat=${stat#/proc/}; printf '%s ' "${stat%/stat}"
  done
}

# SIGTERM to the launcher, which stops its services in order; then make sure none outlived it.
stop_server() {
  [[ -n $SERVER_PID ]] || { stop_sink; return 0; }
  echo "== stopping radixmesh up (pid $SERVER_PID)"
  SERVER_CHILDREN+=" $(children_of "$SERVER_PID")"  # also those started since it was up
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local waited=0
  while kill -0 "$SERVER_PID" 2>/dev/null && ((waited < 60)); do sleep 1; waited=$((waited + 1)); done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  local status=0; wait "$SERVER_PID" 2>/dev/null || status=$?
  echo "== radixmesh up exited with status $status after ${waited}s"
  local pid
  for pid in $SERVER_CHILDREN; do
    # Still a service (the pid not reused since)? `up` runs each as `-m radixmesh.serve`.
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'radixmesh\.serve'; then
      echo "!! service pid $pid outlived radixmesh up: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  SERVER_PID="" SERVER_VARIANT="" SERVER_CHILDREN=""
  stop_sink  # after the mesh: its last spans are flushed at shutdown
}

stop_sink() {
  [[ -n $SINK_PID ]] || return 0
  kill -TERM "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null
  SINK_PID=""
}

step_tests() {
  # One line per test (the log is the record) and a per-test limit, so one hang is one failure.
  # shellcheck disable=SC2086
  run_logged "$OUT/gpu-tests.log" "$PY" -m pytest -v --timeout 150 -p no:cacheprovider \
    ${TESTS:-tests/kernels tests/worker}
}

# Sweeps the tilings of the Triton GEMMs that read kernels/configs/ (kernels/tuned_configs.py):
# this GPU's tables go into the installed package, so the meshes started after it on this
# machine use them, and into $OUT/configs, to be copied into kernels/configs/ and committed.
step_tune() {
  local status=0 bench
  for bench in tests.quantization.bench_fp8_gemm tests.kernels.bench_invariant_mm; do
    run_logged "$OUT/tune-${bench##*.}.log" "$PY" -m "$bench" --sweep --configs-out "$OUT/configs" \
      --commit "${RADIXMESH_COMMIT:-?}" --json "$OUT/${bench##*.}.json" || status=$?
  done
  return "$status"
}

step_offline() {
  local workload=$1 log="$OUT/offline-$1.log"
  # shellcheck disable=SC2086
  run_logged "$log" "$PY" -m radixmesh.cli --log-level "$LOG_LEVEL" bench --workload "$workload" \
    --path offline --model-path "$MODEL" $MODEL_FLAGS --no-progress --output-dir "$OUT" \
    $BENCH_FLAGS
  local status=$?
  annotate_result "$log" "recipe=bash load-tests/gpu/run.sh offline:$workload"
  return "$status"
}

step_mesh() {
  local variant=$1 workload=$2 log="$OUT/$1-$2.log"
  if [[ $SERVER_VARIANT != "$variant" && $SERVER_VARIANT != "failed:$variant" ]]; then
    stop_server  # one mesh at a time: each holds most of the GPU's memory
    start_server "$variant" || return 1
  fi
  [[ $SERVER_VARIANT == "$variant" ]] || { echo "!! skipped: its mesh is down"; return 1; }
  check_server || return 1
  local -a label=()
  [[ -n $GPU_NAME ]] && label=(--device-label "$GPU_NAME")
  # shellcheck disable=SC2086
  run_logged "$log" "$PY" -m radixmesh.cli --log-level "$LOG_LEVEL" bench --workload "$workload" \
    --path mesh --no-progress --output-dir "$OUT" "${label[@]}" $BENCH_FLAGS \
    ${BENCH_VARIANT_FLAGS[$variant]:-}
  local status=$?
  annotate_result "$log" "recipe=bash load-tests/gpu/run.sh $variant:$workload" \
    "server_command=$SERVER_COMMAND"
  check_server || return 1
  return "$status"
}

# Fails (and stops what is left of it) when the running mesh lost a service: the launcher
# then says "...; stopping the mesh" and exits, which may take it a few seconds.
check_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null && ! grep -q '^radixmesh up: .*stopping the mesh' "$SERVER_LOG"
  then
    return 0
  fi
  echo "!! the mesh died; its log ends:"
  tail -n 40 "$SERVER_LOG"
  local variant=$SERVER_VARIANT
  stop_server
  SERVER_VARIANT="failed:$variant"
  return 1
}

step_hf() {
  # shellcheck disable=SC2086
  run_logged "$OUT/hf-generate.log" "$PY" "$RUN_DIR/hf_generate.py" --model-path "$MODEL" \
    --output-dir "$OUT" $HF_FLAGS
}
