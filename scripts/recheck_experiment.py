#!/usr/bin/env python3
"""Does re-checking near-ties with the 1-row path make greedy speculative output equal plain decoding?

Peers re-verify positions whose verify logits are a near-tie with a 1-row forward. But the KV of
every token accepted so far was written by a many-row verify, whose rounding differs from plain
decoding's 1-row forwards on GPU kernels; later tokens are computed on that KV. This script measures
it: for each tiny checkpoint, prompt and mode it decodes greedily and reports the first position
where the output leaves plain decoding (our loop with k = 0), with plain's top-2 margin there.

Modes: `verify` (the default (k+1)-row verify), `recheck-T` (any verify row whose top-2 margin is
below T is recomputed with a 1-row forward on the cache as it stands, and the block ends there),
`exact` (every row verified by the 1-row forward: mlx-spec's --exact-verify).

    python scripts/recheck_experiment.py CHECKPOINTS_DIR [--tokens 300] [--k 4] [--json OUT]

On CPU every mode matches plain (no rounding difference to expose); run it on a GPU backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mlx_spec.core.cache import trim_all  # noqa: E402
from mlx_spec.core.draft import propose  # noqa: E402
from mlx_spec.core.loading import load_pair  # noqa: E402
from mlx_spec.core.loop import speculative_generate_step, token_ids  # noqa: E402
from mlx_spec.core.sampling import GREEDY  # noqa: E402
from ties import first_difference, plain_reference  # noqa: E402


def margins_of(logits: mx.array) -> mx.array:
    top2 = mx.topk(logits.astype(mx.float32), 2, axis=-1)
    return mx.max(top2, axis=-1) - mx.min(top2, axis=-1)


def recheck_decode(target, drafter, prompt, k, n, tol) -> tuple[list[int], int]:
    """Greedy speculative decoding where near-tie verify rows are recomputed with a 1-row forward."""
    cache = target.make_cache(max_rollback=k + 1)
    logits, hidden = target.forward(mx.array(prompt)[None], cache, last_only=True)
    token = int(mx.argmax(logits[0, -1]).item())
    out, rechecks = [token], 0
    while len(out) < n:
        drafts, _ = propose(drafter, target, cache, mx.array([token]), hidden, k, GREEDY.draft)
        inputs = [token] + drafts.tolist()
        logits, hidden_all = target.forward(mx.array(inputs)[None], cache)
        choices = mx.argmax(logits[0], axis=-1).tolist()
        margins = margins_of(logits[0]).tolist()
        for i in range(k + 1):
            if margins[i] < tol:  # near-tie: ask the 1-row path, on the KV the verify wrote for rows < i
                trim_all(cache, k + 1 - i)
                row_logits, row_hidden = target.forward(mx.array([[inputs[i]]]), cache)
                next_token, hidden, rechecks = int(mx.argmax(row_logits[0, -1]).item()), row_hidden, rechecks + 1
                break
            if i == k or drafts[i].item() != choices[i]:
                trim_all(cache, k - i)
                next_token, hidden = choices[i], hidden_all[:, i : i + 1]
                break
            out.append(inputs[i + 1])  # draft i accepted
        out.append(next_token)
        token = next_token
    return out[:n], rechecks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--variants", default="dense,moe,e2b,dense-4bit,moe-4bit")
    parser.add_argument("--tolerances", default="0.05,0.5")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    root = Path(args.checkpoints)
    rows = []
    print(f"device {mx.default_device()}, mlx {mx.__version__}, k={args.k}, {args.tokens} tokens")
    print("| variant | prompt | mode | first difference from plain | plain's top-2 margin there | rechecks |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        drafter_dir = root / variant / ("drafter" if variant.endswith("4bit") else "drafter-trained")
        pair = load_pair(root / variant / "target", drafter_dir)
        target, drafter = pair.adapter, pair.draft_model
        for seed in range(3):
            rng = np.random.RandomState(seed)
            prompt = [2] + rng.randint(5, target.vocab_size, size=8 + 13 * seed).tolist()
            reference, margins = plain_reference(target, prompt, args.tokens)
            plain = token_ids(speculative_generate_step(prompt, target, None, max_tokens=args.tokens))
            modes = {"verify": (token_ids(speculative_generate_step(prompt, target, drafter, draft_tokens=args.k, max_tokens=args.tokens)), 0),
                     "exact": (token_ids(speculative_generate_step(prompt, target, drafter, draft_tokens=args.k, max_tokens=args.tokens, exact_verify=True)), 0)}
            for tol in map(float, args.tolerances.split(",")):
                modes[f"recheck-{tol:g}"] = recheck_decode(target, drafter, prompt, args.k, args.tokens, tol)
            modes["plain loop vs 1-row reference"] = (plain, 0)
            for mode, (tokens, rechecks) in modes.items():
                j = first_difference(tokens, reference if mode.startswith("plain") else plain)
                margin = margins[j] if j is not None and j < len(margins) else None
                rows.append({"variant": variant, "prompt": seed, "mode": mode, "first_difference": j, "margin": margin, "rechecks": rechecks})
                print(f"| {variant} | {seed} | {mode} | {'none' if j is None else j} | {'-' if margin is None else f'{margin:.4g}'} | {rechecks} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(mx.default_device()), "mlx": mx.__version__, "k": args.k,
                                               "tokens": args.tokens, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
