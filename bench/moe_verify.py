#!/usr/bin/env python3
"""Expert traffic of speculative decoding on an MoE target, and the grouped verify, measured.

    python bench/moe_verify.py --model DIR --drafter DIR [--max-tokens 200]

1. Expert loads per generated token (sum over MoE layers of unique experts per target forward,
   prefill excluded) and expert bytes, plain decoding vs fixed k = 1..8, greedy.
2. Time of one target forward of n = 1..9 tokens with tokens grouped by expert (sorted gather
   matmuls, each unique expert read once) vs mlx-lm's default (sorted only from 64 pairs up).
Prints markdown; says which device and BLAS it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import mlx.core as mx
import numpy as np

from mlx_spec.core.loading import load_pair
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids


def forward_time(target, n, repeats=20):
    cache = target.make_cache(max_rollback=16)
    target.forward(mx.array([[2] + list(range(10, 50))]), cache)
    ids = mx.array(np.random.RandomState(n).randint(5, target.vocab_size, size=(1, n)).astype(np.int32))
    best = float("inf")
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        mx.eval(target.forward(ids, cache))
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
        for c in cache:
            c.trim(n)
    target.moe.reset()
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args(argv)
    pair = load_pair(args.model, args.drafter)
    target = pair.adapter
    if target.moe is None:
        print("not an MoE target", file=sys.stderr)
        return 2
    blas = "OpenBLAS preloaded" if "openblas" in os.environ.get("LD_PRELOAD", "") else "MLX's bundled BLAS"
    p = target.moe.profile
    print(f"model {args.model}: {p.num_moe_layers} MoE layers, {p.num_experts} experts, top-{p.top_k}, "
          f"{p.expert_bytes[0] / 1e3:.1f} KB per expert; {platform.machine()} {platform.system()}, "
          f"mlx {mx.__version__}, {mx.default_device()}, {blas}")
    prompt = [2] + list(np.random.RandomState(0).randint(5, target.vocab_size, size=40))
    print("\n| k | target fwd / token | expert loads / token | expert MB / token | accepted / step |")
    print("|---|---|---|---|---|")
    for k in range(0, 9):
        stats = SpecStats()
        token_ids(speculative_generate_step(prompt, target, pair.drafter.module, draft_tokens=k, max_tokens=args.max_tokens, stats=stats))
        d = stats.to_dict()
        tokens = max(1, stats.generated - 1)
        decode_bytes = stats.expert_bytes * (stats.expert_loads - stats.prefill_expert_loads) / max(1, stats.expert_loads)
        print(f"| {k} | {(stats.target_forwards - 1) / tokens:.3f} | {d['decode_expert_loads_per_token']:.2f} | "
              f"{decode_bytes / tokens / 1e6:.3f} | {d['mean_accepted_per_step']:.2f} |")
    print("\n| verify tokens n | unique experts / layer (random tokens) | grouped ms | mlx-lm default ms | grouped / default |")
    print("|---|---|---|---|---|")
    for n in range(1, 10):
        for probe in target.moe.probes:
            probe.group_tokens = True
        grouped = forward_time(target, n)
        target.forward(mx.array([[5] * n]), target.make_cache())
        for probe in target.moe.probes:
            probe.group_tokens = False
        default = forward_time(target, n)
        cache = target.make_cache()
        mx.eval(target.forward(mx.array(np.random.RandomState(n).randint(5, target.vocab_size, size=(1, n)).astype(np.int32)), cache))
        target.moe.flush()
        unique = target.moe.per_forward[-1][1] / p.num_moe_layers
        target.moe.reset()
        print(f"| {n} | {unique:.2f} | {grouped * 1e3:.2f} | {default * 1e3:.2f} | {grouped / default:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
