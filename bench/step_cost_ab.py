#!/usr/bin/env python3
"""One step's cost per kind, for the mlx_spec package of a given checkout: an A/B of two versions.

    LD_PRELOAD=... python bench/step_cost_ab.py CHECKOUT [--model DEMO_PAIR] [--temp 0.7]

Times build + read of one step (median of 15 after 2 warm-ups) over a 150-token context: plain, MTP
k = 1, 2, 4 and prompt-lookup k = 4, 8 (drafts given on the host), with the sampling strategy of
--temp. Run it for two checkouts alternately (A, B, A, B: the machine's pace wanders between runs),
e.g. `git worktree add /tmp/old REV`, then `python bench/step_cost_ab.py /tmp/old` and
`python bench/step_cost_ab.py .`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="a folder holding the mlx_spec package to time")
    parser.add_argument("--model", default=str(Path.home() / ".cache/mlx-spec/demo-models/smollm2-135m"))
    parser.add_argument("--temp", type=float, default=0.7)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(args.checkout).resolve()))
    import mlx.core as mx
    import mlx_spec
    from mlx_spec.core.cache import trim_all
    from mlx_spec.core.loop import build_block, read_block
    from mlx_spec.core.sampling import make_strategy
    from mlx_spec.core.settings import SamplingSettings

    model, _ = mlx_spec.load(args.model)
    target, drafter = model.adapter, model.draft_model
    cache = target.make_cache(max_rollback=9)
    _, hidden = target.forward(mx.array([list(range(100, 250))]), cache, last_only=True)
    mx.eval(hidden, [c.state for c in cache])
    token = mx.array([5], dtype=mx.int32)
    strategy = make_strategy(SamplingSettings(temp=args.temp, seed=0))
    cells = []
    for name, k, given in [("plain", 0, None), ("mtp1", 1, None), ("mtp2", 2, None), ("mtp4", 4, None),
                           ("lookup4", 4, list(range(300, 304))), ("lookup8", 8, list(range(300, 308)))]:
        seconds = []
        for _ in range(17):
            t0 = time.perf_counter()
            block = build_block(target, drafter, strategy, cache, token, hidden, k, given=given)
            read_block(block, target)
            seconds.append(time.perf_counter() - t0)
            trim_all(cache, block.k + 1)
        seconds = sorted(seconds[2:])
        cells.append(f"{name} {1e3 * seconds[len(seconds) // 2]:.0f} ms")
    print(f"{mlx_spec.__file__}: " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
