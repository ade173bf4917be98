#!/usr/bin/env bash
# Issue 16's table: the demo models (float32) with their distilled drafters on the bundled category
# prompts (chat, code, edit/rewrite, summarise a document; never trained on), temperature 0 and 0.7:
# plain vs MTP (fixed k = 2 and auto) vs prompt lookup (fixed 4 and auto) vs combined (2+lookup,
# auto+lookup), acceptance by position and by source, mlx-lm's plain decoding as a same-run peer.
# float32 + OpenBLAS; run it alone (timings). Writes bench/out/categories-<name>/.
#   bash bench/run_categories.sh [smollm2-135m|gemma3-270m ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/openblas.sh
DEMO=${DEMO:-$HOME/.cache/mlx-spec/demo-models}
[ -d "$DEMO/smollm2-135m/target" ] && [ -d "$DEMO/gemma3-270m/target" ] || mlx-spec demo-models "$DEMO"
for n in ${@:-smollm2-135m gemma3-270m}; do
    LD_PRELOAD=$BLAS mlx-spec bench --model "$DEMO/$n" --prompts mlx_spec/tools/prompts/categories.jsonl \
        --max-tokens "${MAX_TOKENS:-96}" --repeats "${REPEATS:-1}" --temp 0,0.7 --peers mlx-lm \
        --draft-tokens "${DRAFT_TOKENS:-2,auto,lookup-4,lookup-auto,2+lookup,auto+lookup}" --out "bench/out/categories-$n"
done
