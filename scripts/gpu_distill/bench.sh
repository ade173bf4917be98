#!/usr/bin/env bash
# A device call right after run.sh, on the same warm machine (its target in /root/model/target): the
# target as shipped (bfloat16) with a drafter carried in this call (run.sh's output comes back here
# and is gone from the device: $OUT is emptied after each call), on the bundled category prompts
# (never trained on), temperature 0 and 0.7, mlx-lm's plain decoding as the same-run peer.
# Writes $OUT/gpu-bench-NAME/.
#   bash scripts/gpu_distill/bench.sh NAME DRAFTER_DIR [TIMEOUT_S]
set -x
source /root/stage/env.sh
timeout "${3:-300}" python3 -m mlx_spec.cli bench --model /root/model/target --drafter "$2" \
    --prompts mlx_spec/tools/prompts/categories.jsonl --max-tokens 96 --repeats "${REPEATS:-1}" --temp 0,0.7 --peers mlx-lm \
    --draft-tokens "${DRAFT_TOKENS:-2,auto,lookup-4,lookup-auto,auto+lookup}" --out "$OUT/gpu-bench-$1" 2>&1 | tail -40
echo "bench rc=$?"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
