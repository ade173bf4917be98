#!/usr/bin/env python3
"""Target forwards per generated token, acceptance and time per step, for k = 0..8.

    python bench/forwards_by_k.py --model DIR --drafter DIR [--prompt-len 40] [--max-tokens 300]

Greedy; checks every run against plain decoding (k = 0) and prints a markdown table. Times are
wall-clock on this machine (the tiny checkpoints are far too small for speed claims: the table is
about how often the target runs and what one step costs as k grows; a step is draft + verify +
acceptance, read back once).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import mlx.core as mx
import numpy as np

from mlx_spec.core.loading import load_pair
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--prompt-len", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pair = load_pair(args.model, args.drafter)
    target = pair.adapter
    prompt = [2] + np.random.RandomState(args.seed).randint(5, target.vocab_size, size=args.prompt_len - 1).tolist()
    print(f"model {args.model}, drafter {args.drafter}, prompt {args.prompt_len} tokens, {args.max_tokens} new, "
          f"greedy; {platform.machine()} {platform.system()}, mlx {mx.__version__}, device {mx.default_device()}")
    print()
    print("| k | target fwd / token | accepted / step | acceptance by position | ms / step | prefill ms | total ms | = plain |")
    print("|---|---|---|---|---|---|---|---|")
    plain = None
    for k in range(0, 9):
        stats = SpecStats()
        t0 = time.perf_counter()
        out = token_ids(speculative_generate_step(prompt, target, pair.drafter.module, draft_tokens=k, max_tokens=args.max_tokens, stats=stats))
        total = time.perf_counter() - t0
        plain = out if k == 0 else plain
        acc = " ".join(f"{a:.2f}" for a in stats.acceptance_per_position) or "-"
        print(f"| {k} | {stats.target_forwards / stats.generated:.3f} | {stats.accepted / max(1, stats.steps):.2f} | {acc} | "
              f"{stats.decode_time / max(1, stats.steps) * 1e3:.2f} | {stats.prefill_time * 1e3:.0f} | {total * 1e3:.0f} | "
              f"{'yes' if out == plain else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
