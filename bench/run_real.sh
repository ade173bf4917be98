#!/usr/bin/env bash
# Real small targets, real drafters, held-out text: the demo models (SmolLM2-135M-Instruct and
# Gemma 3 270M, float32) with the drafters `mlx-spec distill` trained for them, on prompts from
# linux-doc (never trained on), greedy and temperature 0.7, with mlx-lm's own plain decoding as a
# same-run peer. float32 + OpenBLAS: the bandwidth-bound proxy regime. Writes bench/out/real-<name>/.
#   bash bench/run_real.sh [smollm2-135m|gemma3-270m ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/openblas.sh
DEMO=${DEMO:-$HOME/.cache/mlx-spec/demo-models}
[ -d "$DEMO/smollm2-135m/target" ] && [ -d "$DEMO/gemma3-270m/target" ] || mlx-spec demo-models "$DEMO"
for name in "${@:-smollm2-135m gemma3-270m}"; do
    for n in $name; do
        LD_PRELOAD=$BLAS mlx-spec bench --model "$DEMO/$n" --prompts bench/prompts/heldout.jsonl \
            --limit "${LIMIT:-8}" --max-tokens "${MAX_TOKENS:-64}" --repeats "${REPEATS:-2}" \
            --draft-tokens "${DRAFT_TOKENS:-1,2,3,4,auto}" --temp 0,0.7 --peers mlx-lm --out "bench/out/real-$n"
    done
done
