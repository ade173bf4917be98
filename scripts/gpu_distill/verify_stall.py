#!/usr/bin/env python3
"""Why do multi-row verify steps stall on MLX's CUDA backend? A prepared device check (~2 minutes).

    python scripts/gpu_distill/verify_stall.py [--out DIR]      # one JSON line per arm (+ DIR/verify_stall.json)

Seen on an H100 (bench/RESULTS.md, seventh session): plain steps 5-9 ms, speculative steps bimodal
(median 17 ms, 22% at 63-107 ms), verify-only lookup steps too. The suspect, from MLX 0.32's source
(mlx/backend/cuda/scaled_dot_product_attention.cpp): a (k + 1)-row causal attention in bf16 runs
through cuDNN, whose graph cache is keyed on the exact key length (only the 1-row decode path rounds
it to the cache buffer's), and the graph is built on the host inside eval. A verify's key length is
new every step, so every step would build one graph (tens of ms). `MLX_CUDA_USE_CUDNN_SDPA=0`
(read once, before import: hence one subprocess per arm) turns cuDNN attention off: fewer than four
query rows then take MLX's vector kernel, more take matmul + softmax; prefill loses cuDNN too.

Each arm, in its own process, with a random-weight bfloat16 target of SmolLM2-135M's shape (no
download; timing only):
1. attention alone (SmolLM2's 9 query / 3 key-value heads, head dim 64, keys a view of a 1024-token
   buffer): 3, 5 and 9 query rows, 40 calls each at a new key length every call and 40 at one fixed
   length; host time (graph build and encode, up to async_eval) apart from the wait for the device;
2. the runtime's own steps (loop.build_block + read_block, prompt-lookup style: drafts given on the
   host, none accepted, so the cache grows by one token per step as in a real run, a new key length
   every step): plain and k = 2, 4, 8, 40 steps each after 5 warm-up ones, per-step milliseconds;
   then the same with the full-attention caches bucketed (cache.BucketedKVCache: verify keys padded
   to a multiple of 256 with an array mask, so one graph serves 256 steps). Attention alone is also
   timed that way (`padded_new_length`).
Arms: default; MLX_CUDA_USE_CUDNN_SDPA=0; MLX_USE_CUDA_GRAPHS=0. If the default arm's new-length
attention calls take tens of ms on the host against < 1 ms at a fixed length, and the no-cuDNN arm's
verify steps lose their slow mode, the stall is cuDNN's per-shape graph build. Runs on a CPU too
(the variables then change nothing): a check that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ARMS = {"default": {}, "no_cudnn_sdpa": {"MLX_CUDA_USE_CUDNN_SDPA": "0"}, "no_cuda_graphs": {"MLX_USE_CUDA_GRAPHS": "0"}}
SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
           "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
           "max_position_embeddings": 8192, "tie_word_embeddings": True, "vocab_size": 49152, "head_dim": 64,
           "rope_traditional": True}


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median": round(median(ms), 2), "p90": round(ms[int(0.9 * (len(ms) - 1))], 2), "max": round(ms[-1], 2),
            "over_3x_median": sum(x > 3 * median(ms) for x in ms)}


def attention(mx) -> dict:
    heads, kv_heads, dim, buffer = 9, 3, 64, 1024
    keys = mx.random.normal((1, kv_heads, buffer, dim)).astype(mx.bfloat16)
    values = mx.random.normal((1, kv_heads, buffer, dim)).astype(mx.bfloat16)
    mx.eval(keys, values)

    def call(rows: int, length: int) -> tuple[float, float]:
        q = mx.random.normal((1, heads, rows, dim)).astype(mx.bfloat16)
        mx.eval(q)
        t0 = time.perf_counter()
        out = mx.fast.scaled_dot_product_attention(q, keys[:, :, :length], values[:, :, :length], scale=dim ** -0.5, mask="causal")
        mx.async_eval(out)
        t1 = time.perf_counter()
        mx.eval(out)
        return 1e3 * (t1 - t0), 1e3 * (time.perf_counter() - t1)

    def padded(rows: int, length: int) -> tuple[float, float]:  # what cache.BucketedKVCache hands a verify block
        q = mx.random.normal((1, heads, rows, dim)).astype(mx.bfloat16)
        end = -(-length // 256) * 256
        mask = mx.arange(end)[None] <= mx.arange(length - rows, length)[:, None]
        mx.eval(q, mask)
        t0 = time.perf_counter()
        out = mx.fast.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], scale=dim ** -0.5, mask=mask)
        mx.async_eval(out)
        t1 = time.perf_counter()
        mx.eval(out)
        return 1e3 * (t1 - t0), 1e3 * (time.perf_counter() - t1)

    call(3, 64), call(9, 64)  # first use: handles, kernels
    out = {}
    for rows in (3, 5, 9):
        new = [call(rows, length) for length in range(300, 420, 3)]
        call(rows, 700)
        same = [call(rows, 700) for _ in range(40)]
        pad = [padded(rows, length) for length in range(430, 550, 3)]  # crosses one bucket edge (512)
        out[f"rows{rows}"] = {"new_length_host": summary([h for h, _ in new]), "new_length_wait": summary([w for _, w in new]),
                              "same_length_host": summary([h for h, _ in same]), "same_length_wait": summary([w for _, w in same]),
                              "padded_new_length_host": summary([h for h, _ in pad]), "padded_new_length_wait": summary([w for _, w in pad])}
    return out


def verify_steps(mx, configs=((0, False), (2, False), (4, False), (8, False), (0, True), (2, True), (4, True), (8, True))) -> dict:
    from mlx_lm.models import llama

    from mlx_spec.core.loop import build_block, read_block
    from mlx_spec.core.cache import trim_all
    from mlx_spec.core.sampling import GREEDY
    from mlx_spec.core.target import Target

    module = llama.Model(llama.ModelArgs.from_dict(SMOLLM2))
    module.set_dtype(mx.bfloat16)
    mx.eval(module.parameters())
    out = {}
    for k, bucketed in configs:
        target = Target(module, SMOLLM2, bucket_keys=bucketed)
        cache = target.make_cache(max_rollback=8)
        _, hidden = target.forward(mx.array([list(range(10, 266))]), cache, last_only=True)  # a 256-token prompt
        token = mx.array([7], dtype=mx.int32)
        mx.eval(hidden, [c.state for c in cache])
        ms = []
        for step in range(45):
            t0 = time.perf_counter()
            block = build_block(target, None, GREEDY, cache, token, hidden, k, given=[11 + (step + i) % 50 for i in range(k)] if k else None)
            n, _, following = read_block(block, target)
            trim_all(cache, k - n)  # the rejected drafts: the cache keeps one new token, as a real step
            token, hidden = mx.array([following], dtype=mx.int32), block.hidden
            if step >= 5:
                ms.append(1e3 * (time.perf_counter() - t0))
        out[f"k{k}" + ("_bucketed" if bucketed else "") + ("_again" if f"k{k}" + ("_bucketed" if bucketed else "") in out else "")] = summary(ms)
    return out


def child() -> None:
    import mlx.core as mx

    result = {"mlx": mx.__version__, "device": str(mx.default_device())}
    result["attention"] = attention(mx)
    result["verify_steps"] = verify_steps(mx)
    print(json.dumps(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for verify_stall.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps-only", action="store_true", help="this process only: bucketed verify steps first, then plain")
    args = parser.parse_args(argv)
    if args.steps_only:
        import mlx.core as mx

        print(json.dumps(verify_steps(mx, ((0, False), (2, True), (4, True), (8, True), (0, True), (0, False), (4, False)))))
        return 0
    if args.child:
        child()
        return 0
    results = {}
    for name, env in ARMS.items():
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=300)
        line = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
        results[name] = json.loads(line) if line.startswith("{") else {"error": run.stderr[-1500:]}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "verify_stall.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
