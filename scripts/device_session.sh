#!/usr/bin/env bash
# One prepared GPU run for the batch engine, the processors / lookup / prompt-cache paths and the server
# (MLX's CUDA backend on the device machine, ../shared/notes/gpu.md). Run from the project root after
# `source .device/b/env.sh`, with the server's wheels carried in .device/c:
#   bash scripts/device_session.sh
# 1. tie-aware tests on GPU kernels: batched rows == their plain greedy output, the prompt cache, lookup
#    drafting, logits processors (exact verify: bit for bit);
# 2. `mlx-spec bench --batch 1,2,4,8` on the 155M proxy in bf16 (bf16 drafter), controlled acceptance 0.8,
#    batched plain vs k=2 and auto, mlx-lm's BatchGenerator in the same run;
# 3. `mlx-spec bench-serve` on the same pair: 1, 4, 8 concurrent clients, speculation on vs off.
# Results under $OUT (at most 8 files): tests.txt, batch.{json,md}, serve.{json,md}, logs.txt.
set -u
OUT=${OUT:-/tmp/mlx-spec-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOGS="$OUT/logs.txt"
{ python -c "import mlx.core as mx, mlx_lm; print('mlx', mx.__version__, 'mlx-lm', mlx_lm.__version__, mx.default_device())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; nproc; date -u; git log --oneline -1 2>/dev/null; } > "$OUT/tests.txt" 2>&1

# the server's stack (starlette, uvicorn, httpx), from wheels carried along
S=/tmp/srv-site
W=$(ls -d .device/c 2>/dev/null || echo /root/stage/c)
[ -d $S ] || python -m pip install -q --no-index --no-deps --target $S $W/*.whl >> "$LOGS" 2>&1
export PYTHONPATH=$PYTHONPATH:$S

export MLX_SPEC_TINY=/tmp/mlx-spec-tiny
[ -d "$MLX_SPEC_TINY/dense/drafter-trained" ] || \
  python scripts/make_tiny_checkpoints.py "$MLX_SPEC_TINY" --trained-drafters tests/fixtures/drafters >> "$LOGS" 2>&1
timeout ${TEST_TIMEOUT:-150} python -m pytest -o addopts=-ra -v -p no:cacheprovider --durations=6 \
    tests/test_batch.py tests/test_lookup.py "tests/test_speculative.py::test_logits_processors_greedy_equals_mlx_lm_with_the_same_processors" \
    -k "rows_equal or prompt_cache or lossless or processors or stop_token or cancel" >> "$OUT/tests.txt" 2>&1
echo "tests exit $?" >> "$OUT/tests.txt"
tail -n 20 "$OUT/tests.txt"

P=/tmp/mlx-spec-proxy
bash scripts/make_proxy.sh "$P" >> "$LOGS" 2>&1

timeout ${BATCH_TIMEOUT:-170} python -m mlx_spec.cli bench --model "$P/bf16" --drafter "$P/drafter-bf16" --batch 1,2,4,8 \
    --alpha 0.8 --draft-tokens 2,auto --limit 4 --max-tokens 96 --repeats 2 --peers mlx-lm --out /tmp/batch >> "$LOGS" 2>&1
echo "batch bench exit $?" >> "$LOGS"
cp /tmp/batch/batch_results.json "$OUT/batch.json" 2>/dev/null; cp /tmp/batch/batch_results.md "$OUT/batch.md" 2>/dev/null
tail -n 3 "$LOGS"

timeout ${SERVE_TIMEOUT:-200} python -m mlx_spec.cli bench-serve --model "$P/bf16" --drafter "$P/drafter-bf16" --clients 1,4,8 \
    --requests-per-client 3 --max-tokens 96 --out /tmp/serve --no-progress >> "$LOGS" 2>&1
echo "bench-serve exit $?" >> "$LOGS"
cp /tmp/serve/serve_results.json "$OUT/serve.json" 2>/dev/null; cp /tmp/serve/serve_results.md "$OUT/serve.md" 2>/dev/null
tail -n 5 "$LOGS"
ls -la "$OUT"
