#!/usr/bin/env bash
# The whole GPU measurement of heed (issue #14), in one run: training and generation for GPT-2 medium
# and Gemma 3 270M against the original design's loop and transformers.Trainer, at batch 8 and at
# >= 8K tokens a step packed into 1,024-token rows, generation at batch 1 and 64, plus the CUDA
# ablations that decide the per-device defaults (heed's head vs torch's linear_cross_entropy,
# FlexAttention vs a dense mask for packed rows). Every row reaches the results file as soon as it is
# measured; each model has 5 minutes (--time-limit 300), so a slow piece costs only the rows after it.
# On CUDA the bench measures the rows the targets below are read against first (TARGET_ROWS in
# src/heed/commands/bench_config.py): the reference loop and the fast path at batch 8, the token-budget
# step, the Trainer peer, compiled generation at batch 1 and 64, the head ablation, the compiled
# token-budget step; the rest (packing at batch 8, the reference generation: 64 prompts one at a time
# without a KV cache, the other caches and ablations) comes after them.
#
#   scripts/gpu-check.sh [DATA] [RESULTS]
#     DATA     instruction records (default: ../shared/data/instruction-data.json, else built-in tasks)
#     RESULTS  the results file (default: gpu-check-<UTC date and time>.md); appended to, never replaced
#   PYTHON=/path/to/python scripts/gpu-check.sh    to pick the interpreter (default: python)
#
# The targets it is read against are in BENCHMARKS.md ("The GPU path: targets").
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/instruction-data.json}
RESULTS=${2:-gpu-check-$(date -u +%Y%m%d-%H%M).md}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
[ -f "$DATA" ] || { echo "gpu-check: $DATA not found; using heed's built-in tasks" >&2; DATA=""; }

{
  echo "# heed gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "| transformers", transformers.__version__)' 2>&1
  echo '```'
} >> "$RESULTS"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: no CUDA device; nothing measured" | tee -a "$RESULTS" >&2
  exit 1
fi

status=0
for MODEL in random:gpt2-medium gemma-3-270m; do
  echo "gpu-check: $MODEL ..." >&2
  # batch 8 (the original recipe) and the token-budget step (>= 8K tokens, 1,024-token rows), the
  # Trainer peer row at batch 8, generation at batch 1 and 64 (128 new tokens), the ablations; the
  # target rows first (above).
  "$PY" -m heed bench --model "$MODEL" ${DATA:+--data "$DATA"} --device cuda --batch-size 8 --steps 10 \
      --pack-length 1024 --tokens-per-step 8192 --gen-prompts 64 --gen-tokens 128 --ablation \
      --time-limit 300 --out "$RESULTS" || status=$?
done

{
  echo
  echo "Targets (BENCHMARKS.md): batch 8 >= 3x the reference loop; GPT-2 medium >= 200,000 non-padding"
  echo "tokens/s at >= 8K tokens/step (train_budget rows) with <= 10 GB peak; >= 3x transformers.Trainer"
  echo "at batch 8; generation batch 1 >= 1,500 and batch 64 >= 20,000 tokens/s (generate_compiled rows)."
} >> "$RESULTS"
echo "gpu-check: results in $RESULTS" >&2
exit $status
