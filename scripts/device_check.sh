#!/usr/bin/env bash
# One prepared GPU check (MLX's CUDA backend on the device machine, see ../shared/notes/gpu.md):
#   1. the losslessness tests on GPU kernels: tie-aware greedy == plain for every variant and k,
#      the exact mode bit for bit, one host synchronisation per step, from_draft flags;
#   2. the 155M proxy in bf16 and 4-bit (bf16 drafter): our plain vs mlx-lm's plain, fixed k,
#      auto and exact-verify at controlled acceptance 0.5 / 0.7 / 0.9, in one bench run per dtype.
#   3. scripts/recheck_experiment.py: whether re-checking near-ties with the 1-row path (what some peers
#      do) reproduces plain decoding once the KV was written by a many-row verify.
# What comes back (the device tool returns at most 8 files): $OUT/tests.txt (device, versions, test
# output), $OUT/recheck.{md,json}, $OUT/bench-{bf16,q4}.{json,md}, $OUT/logs.txt. Plots are redrawn
# from the JSON afterwards. Measured on an H100 (2026-11-26): `tests` took 280 s and did not finish the
# tie-aware suite in 150 s; one dtype's bench does about one alpha per 80 s after a 40 s warm-up. Split
# the work over calls: TEST_TIMEOUT=300 ... tests; DTYPES=bf16 ALPHAS=0.7,0.9 ... bench.
# Run from the project root after `source .device/b/env.sh` (the project is not pip-installed there):
#   bash scripts/device_check.sh [tests|bench|all]
set -u
OUT=${OUT:-/tmp/mlx-spec-device}
WHAT=${1:-all}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ python -c "import mlx.core as mx, mlx_lm; print('mlx', mx.__version__, 'mlx-lm', mlx_lm.__version__, mx.default_device())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; nproc; date -u; } > "$OUT/tests.txt" 2>&1
cat "$OUT/tests.txt"
LOGS="$OUT/logs.txt"

if [ "$WHAT" != bench ]; then
  export MLX_SPEC_TINY=/tmp/mlx-spec-tiny  # made once, used by the experiment and the tests (hash-checked there)
  [ -d "$MLX_SPEC_TINY/dense/drafter-trained" ] || \
    python scripts/make_tiny_checkpoints.py "$MLX_SPEC_TINY" --trained-drafters tests/fixtures/drafters >> "$LOGS" 2>&1
  # does re-checking near-ties with the 1-row path reproduce plain decoding, once the KV came from a many-row verify?
  timeout ${RECHECK_TIMEOUT:-80} python scripts/recheck_experiment.py "$MLX_SPEC_TINY" --tokens 300 \
      --variants dense,moe,dense-4bit --json "$OUT/recheck.json" > "$OUT/recheck.md" 2>&1
  echo "recheck exit $?" >> "$OUT/recheck.md"
  # GPU kernels: the speculative tests are tie-aware there (tests/ties.py prints the margin at any divergence)
  timeout ${TEST_TIMEOUT:-150} python -m pytest -o addopts=-ra -v -p no:cacheprovider --durations=8 tests/test_speculative.py \
      -k "equals_plain or exact_verify or one_host or yields or stop_token or token_limit" >> "$OUT/tests.txt" 2>&1
  echo "tests exit $?" >> "$OUT/tests.txt"
  tail -n 25 "$OUT/tests.txt"
fi

if [ "$WHAT" != tests ]; then
  P=/tmp/mlx-spec-proxy
  bash scripts/make_proxy.sh "$P" >> "$LOGS" 2>&1
  for dtype in ${DTYPES:-bf16 q4}; do
    timeout ${BENCH_TIMEOUT:-130} python -m mlx_spec.cli bench --model "$P/$dtype" --drafter "$P/drafter-bf16" \
        --limit 3 --max-tokens 128 --repeats ${REPEATS:-2} --alpha ${ALPHAS:-0.5,0.7,0.9} \
        --draft-tokens 1,2,4,6,8,auto,exact-4 --peers mlx-lm --out "/tmp/bench-$dtype" >> "$LOGS" 2>&1
    echo "bench $dtype exit $?" >> "$LOGS"
    cp "/tmp/bench-$dtype/results.json" "$OUT/bench-$dtype.json" 2>/dev/null
    cp "/tmp/bench-$dtype/results.md" "$OUT/bench-$dtype.md" 2>/dev/null
    tail -n 3 "$LOGS"
  done
fi
ls -la "$OUT"
