#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repo root (the device tool: carry `.whl`), after
# load-tests/gpu/prepare.sh ran here. Installs the carried wheels, writes a Llama-3.1-8B
# config (weights are dummy: `--load-format dummy`), runs the GPU tests and the workloads
# given as arguments (default: decode-b1), and copies results and logs to $OUT.
#   bash load-tests/gpu/run.sh decode-b1 sharegpt-like
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# Work outside the checkout: its radixmesh/ folder would shadow the installed package, whose
# radixmesh.services and radixmesh.shared the install maps from the top-level folders.
rm -rf /tmp/gpurun && mkdir -p /tmp/gpurun && cp -r tests /tmp/gpurun/ && cd /tmp/gpurun
MODEL=/tmp/llama-3.1-8b-dummy
python3 - "$MODEL" <<'PY'
import sys
from transformers import LlamaConfig
LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
            max_position_embeddings=131072, rms_norm_eps=1e-5, dtype="bfloat16",
            bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
            architectures=["LlamaForCausalLM"]).save_pretrained(sys.argv[1])
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/worker 2>&1 | tee "$OUT/gpu-tests.txt" | tail -5 || true
for workload in "${@:-decode-b1}"; do
  python3 -m radixmesh.cli --log-level info bench --workload "$workload" --path offline \
    --model-path "$MODEL" --load-format dummy --dtype bfloat16 --no-progress \
    --output-dir "$OUT" ${BENCH_FLAGS:-} 2>&1 | tee "$OUT/$workload.log" | tail -25
done
