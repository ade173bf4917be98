"""Where a batched speculative step's time goes: for B rows and k drafts, the median seconds of
(a) a whole MTP step (draft k, verify B x (k + 1), accept, rollback), (b) a verify-only step (k drafts
given, as prompt lookup drafts), (c) the k drafter forwards alone, and the same step's host-side graph
building time. A device run's diagnostic (scripts/device_session.sh): on a launch-bound GPU the
per-step host work and the number of kernels matter more than bytes.

    python scripts/batch_step_profile.py TARGET DRAFTER [--rows 1,4,8] [--ks 0,1,2,4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import mlx.core as mx
import numpy as np

from mlx_spec.core.batch import BatchEngine, build_rows_block, read_rows_block
from mlx_spec.core.cache import trim_all
from mlx_spec.core.draft import propose_rows
from mlx_spec.core.loading import load_pair
from mlx_spec.core.policy import BatchPolicy
from mlx_spec.core.sampling import GREEDY, draft_rows


def median_time(fn, repeats=9, warmup=3):
    out = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out[warmup:]))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("drafter")
    ap.add_argument("--rows", default="1,4,8")
    ap.add_argument("--ks", default="0,1,2,4")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    pair = load_pair(args.target, args.drafter)
    t, d = pair.adapter, pair.draft_model
    rng = np.random.RandomState(0)
    results = []
    print(f"device {mx.default_device()}")
    print("| B | k | MTP step ms | its host build ms | verify-only step ms | drafter alone ms |")
    print("|---|---|---|---|---|---|")
    for B in [int(x) for x in args.rows.split(",")]:
        engine = BatchEngine(t, d, BatchPolicy(8, fixed=0), max_rollback=16)
        for _ in range(B):
            engine.add([2] + rng.randint(5, t.vocab_size, size=127).tolist(), max_tokens=1 << 20)
        engine._merge([])
        caches, rows, tokens, hidden = engine.caches, engine.rows, engine.tokens, engine.hidden
        given = [int(x) for x in rng.randint(5, t.vocab_size, size=8)]
        for k in [int(x) for x in args.ks.split(",")]:
            builds = []

            def mtp():
                t0 = time.perf_counter()
                block = build_rows_block(t, d, rows, caches, tokens, hidden, k)
                builds.append(time.perf_counter() - t0)
                read_rows_block(block, t)
                trim_all(caches, k + 1)

            def verify_only():
                inputs = mx.concatenate([tokens[:, None], mx.array([given[:k]] * B, dtype=mx.int32)], axis=1)
                logits, _ = t.forward(inputs, caches)
                mx.eval(mx.argmax(logits, axis=-1))
                trim_all(caches, k + 1)

            def drafter_alone():
                drafts, _ = propose_rows(d, t, caches, tokens, hidden, k, lambda lg: draft_rows([GREEDY] * B, lg))
                mx.eval(drafts)

            row = {"rows": B, "k": k, "mtp_ms": 1000 * median_time(mtp), "build_ms": 1000 * float(np.median(builds[3:])),
                   "verify_only_ms": 1000 * median_time(verify_only),
                   "drafter_ms": 1000 * median_time(drafter_alone) if k else 0.0}
            results.append(row)
            print(f"| {B} | {k} | {row['mtp_ms']:.2f} | {row['build_ms']:.2f} | {row['verify_only_ms']:.2f} | {row['drafter_ms']:.2f} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
