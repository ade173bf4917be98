#!/usr/bin/env python3
"""Replay the adaptive policy on the category prompts' recorded acceptance (mlx_spec/tools/replay.py).

    python bench/policy_replay.py --model TARGET --drafter DRAFTER --bench BENCH.json [--config k=auto]
        [--prompts mlx_spec/tools/prompts/categories.jsonl] [--max-tokens 96] [--matches FILE] [--out NAME]
        [--drift 0.08 --slow 0.1 --seeds 30]

Greedy. Step the prompts' greedy continuations with the MTP drafter drafting k_max at every position
(cached in --matches), fit step intervals by neighbours from a bench run's recorded steps, then replay
`auto` over the prompts in order and print its modeled speedup per prompt and category; --out writes
NAME.json and NAME.md. --drift SD, --slow SD: the step intervals wander as the machine's do (replay.Drift), and
each figure is the mean over --seeds replays.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_spec.core.loading import load_pair, load_tokenizer
from mlx_spec.tools.bench import load_prompts
from mlx_spec.tools.replay import Drift, StepTimes, load_bench_runs, match_lengths, replay


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--bench", required=True, help="a mlx-spec bench JSON whose runs recorded step intervals")
    parser.add_argument("--config", default="k=auto")
    parser.add_argument("--prompts", default="mlx_spec/tools/prompts/categories.jsonl")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--matches", help="JSON cache of the match lengths (computed when missing)")
    parser.add_argument("--out", help="write NAME.json and NAME.md")
    parser.add_argument("--drift", type=float, default=0.0, help="relative sd of the step intervals' fast drift (0: none)")
    parser.add_argument("--slow", type=float, default=0.0, help="relative sd of their slow drift (replay.Drift)")
    parser.add_argument("--seeds", type=int, default=30, help="replays averaged with --drift")
    args = parser.parse_args(argv)

    cached = Path(args.matches) if args.matches else None
    if cached is not None and cached.is_file():
        matches = json.loads(cached.read_text())
    else:
        pair = load_pair(args.model, args.drafter)
        tokenizer = load_tokenizer(pair.target.path, pair.target.config)
        matches = []
        for prompt in load_prompts(Path(args.prompts), tokenizer):
            tokens, m = match_lengths(pair.adapter, pair.draft_model, prompt["ids"], args.max_tokens, args.k_max)
            matches.append({"name": prompt["name"], "category": prompt["category"], "tokens": tokens, "m": m})
            print(f"{prompt['name']}: position-1 match {np.mean([x > 0 for x in m]):.2f}", file=sys.stderr)
        if cached is not None:
            cached.write_text(json.dumps(matches))
    times = StepTimes.from_runs(load_bench_runs(Path(args.bench), args.config), args.k_max)
    sequence = [(x["name"], x["m"]) for x in matches]
    runs = [replay(sequence, args.max_tokens, times, args.k_max, drift=Drift(args.drift, seed=seed, slow=args.slow))
            for seed in range(args.seeds if args.drift or args.slow else 1)]
    results = runs[0]
    speedup = {r.name: float(np.mean([run[i].speedup for run in runs])) for i, r in enumerate(results)}
    category = {x["name"]: x["category"] for x in matches}
    lines = [f"Modeled `auto` (policy replay), {args.model}, drafter {args.drafter}, {args.max_tokens} tokens, greedy; "
             f"step times from {args.bench} ({args.config})"
             + (f", drifting {args.drift:.0%} fast and {args.slow:.0%} slow (mean of {args.seeds} replays; steps and accepts "
               "from the first)" if args.drift or args.slow else "")
             + f"; {platform.machine()} {platform.system()}, mlx {mx.__version__}",
             "", f"step intervals (ms): plain {1e3 * times.plain:.0f}, before a draft {1e3 * times.before:.0f}, after one "
             f"{1e3 * times.after:.0f}; k = 1..4 in a run {', '.join(f'{1e3 * times.run[k]:.0f}' for k in range(1, 5))}, "
             f"queued behind plain {', '.join(f'{1e3 * times.queued[k]:.0f}' for k in range(1, 5))}", "",
             "| prompt | category | position-1 match | drafting steps | accepted | modeled speedup |", "| --- | --- | --- | --- | --- | --- |"]
    m_of = {x["name"]: x["m"] for x in matches}
    for r in results:
        lines.append(f"| {r.name} | {category[r.name]} | {np.mean([x > 0 for x in m_of[r.name]]):.2f} | "
                     f"{r.drafting_steps} of {len(r.ks)} | {sum(r.accepted)} | {speedup[r.name]:.3f} |")
    lines += ["", "| category | modeled speedup (mean of prompts) |", "| --- | --- |"]
    by_category: dict[str, list[float]] = {}
    for r in results:
        by_category.setdefault(category[r.name], []).append(speedup[r.name])
    for name, values in by_category.items():
        lines.append(f"| {name} | {np.mean(values):.3f} |")
    lines.append(f"| all | {np.mean(list(speedup.values())):.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text + "\n")
        Path(args.out + ".json").write_text(json.dumps({
            "model": args.model, "drafter": args.drafter, "bench": args.bench, "config": args.config,
            "max_tokens": args.max_tokens, "drift": args.drift, "slow": args.slow,
            "seeds": args.seeds if args.drift or args.slow else 1, "times": times.__dict__,
            "prompts": [{"name": r.name, "category": category[r.name], "speedup": speedup[r.name], "ks": r.ks,
                         "accepted": r.accepted} for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
