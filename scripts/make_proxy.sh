#!/usr/bin/env bash
# The 155M proxy pair for GPU runs (scripts/device_check.sh, scripts/device_session.sh): the float target
# and drafter (make_tiny_checkpoints.py --variants proxy), the target in bf16 and 4-bit (mlx-lm convert)
# and the drafter in bf16, as the released assistants ship. Usage: bash scripts/make_proxy.sh DIR
set -eu
P=$1
[ -d "$P/drafter-bf16" ] && exit 0
python scripts/make_tiny_checkpoints.py "$P" --variants proxy
python -m mlx_lm convert --hf-path "$P/proxy/target" --mlx-path "$P/bf16" --dtype bfloat16
python -m mlx_lm convert --hf-path "$P/proxy/target" --mlx-path "$P/q4" -q
python - "$P/proxy/drafter" "$P/drafter-bf16" <<'EOF'
import shutil, sys
from pathlib import Path
import mlx.core as mx
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, dst)
for f in dst.glob("*.safetensors"):
    w = {k: (v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in mx.load(str(f)).items()}
    mx.save_safetensors(str(f), w)
EOF
