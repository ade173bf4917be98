#!/usr/bin/env bash
# The bandwidth-bound CPU proxy: float32 weights + OpenBLAS preloaded, so a 1-token and a 16-token
# matmul cost about the same, as decoding on an Apple GPU. Writes bench/out/proxy/results.{json,md}.
#   bash bench/run_proxy.sh [extra mlx-spec bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/openblas.sh
CKPT=${CKPT:-/tmp/mlx-spec-proxy}
[ -d "$CKPT/proxy" ] || python scripts/make_tiny_checkpoints.py "$CKPT" --variants proxy
# A separate small draft model (same tokenizer and vocab) for the mlx-lm speculative peer: a random
# 2-layer Gemma 4 shape, so its acceptance is near zero; it measures mlx-lm's loop overhead.
[ -d "$CKPT/proxy-draft" ] || python - "$CKPT/proxy-draft" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
import make_tiny_checkpoints as t
spec = {"layout": "text", "seed": 45, "text": t._text_config(
    hidden_size=256, intermediate_size=1024, vocab_size=32768, vocab_size_per_layer_input=32768, sliding_window=16,
    layer_types=["sliding_attention", "full_attention"])}
t.write_target(Path(sys.argv[1]), spec, t.build_tokenizer())
EOF
LD_PRELOAD=$BLAS mlx-spec bench --model "$CKPT/proxy/target" --drafter "$CKPT/proxy/drafter" \
    --limit 3 --max-tokens 64 --repeats 2 \
    --draft-tokens 1,2,4,8,auto --alpha 0.5,0.7,0.9 --peer-draft-model "$CKPT/proxy-draft" --out bench/out/proxy "$@"
