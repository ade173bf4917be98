#!/usr/bin/env bash
# The bandwidth-bound CPU proxy: float32 weights + OpenBLAS preloaded, so a 1-token and a 16-token
# matmul cost about the same, as decoding on an Apple GPU. Writes bench/out/proxy/results.{json,md}.
#   bash bench/run_proxy.sh [extra mlx-spec bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
BLAS=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ ! -e "$BLAS" ]; then
    echo "OpenBLAS missing: apt-get install libopenblas0-pthread" >&2
    exit 2
fi
CKPT=${CKPT:-/tmp/mlx-spec-proxy}
[ -d "$CKPT/proxy" ] || python scripts/make_tiny_checkpoints.py "$CKPT" --variants proxy
LD_PRELOAD=$BLAS mlx-spec bench --model "$CKPT/proxy/target" --drafter "$CKPT/proxy/drafter" \
    --prompts bench/prompts/default.jsonl --limit 3 --max-tokens 64 --repeats 2 \
    --draft-tokens 1,2,4,8,auto --alpha 0.5,0.7,0.9 --out bench/out/proxy "$@"
