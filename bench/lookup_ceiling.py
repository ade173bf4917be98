#!/usr/bin/env python3
"""What prompt lookup alone can buy on the category prompts, greedy and sampled: a model, exact in law.

    LD_PRELOAD=... python bench/lookup_ceiling.py --model TARGET [--prompts mlx_spec/tools/prompts/categories.jsonl]
        [--max-tokens 96] [--temps 0,0.7] [--seeds 1,2,3] [--k-max 8[,16]] [--continuations FILE] [--out NAME]

A lookup draft is deterministic given the context (q one-hot), so under rejection sampling it is
accepted exactly when the target's own sample agrees with it: drawing the reply y by plain sampling
first and accepting drafts while they equal y gives the same joint law of (output, accepted counts)
as the speculative loop (P(accept d) = p(d); after a rejection the token follows p without d). So one
plain reply per prompt and seed (cached in --continuations) tells how many tokens every lookup step
would have gained, at temperature 0.7 as at 0, with no timing noise.

Each reply is then stepped with a fixed rule: draft the longest-match proposal (lookup.NgramIndex, up
to k_max tokens) whenever there is a match, else a plain step; a step verifying k drafts costs the
verify-only table measured here (loop.measure_step_costs, the sampling strategy's accept included)
and a plain step before a lookup step costs `--switch` more (it could not be pipelined). The modeled
speedup of a reply is its plain time over that. The rule is not the adaptive policy (which also
declines unpromising matches); it shows how much of a category's text copies its context, reply by
reply. Several `--k-max` values are modeled on one measured cost table (a column each).
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
from mlx_spec.core.lookup import NgramIndex
from mlx_spec.core.loop import measure_step_costs
from mlx_spec.core.sampling import make_strategy
from mlx_spec.core.settings import DraftSettings, SamplingSettings
from mlx_spec.generate import decode
from mlx_spec.tools.bench import load_prompts


def modeled_speedup(prompt: list[int], reply: list[int], cost: list[float], switch: float, k_max: int) -> tuple[float, int]:
    """(plain time / lookup time, lookup steps) for one reply under the fixed rule (module docstring)."""
    index = NgramIndex()
    index.extend(prompt + reply[:1])
    j, seconds, steps, after_plain = 0, 0.0, 0, True
    while j < len(reply) - 1:
        proposal, n = index.propose(min(k_max, len(reply) - 1 - j))
        accepted = 1
        if n:
            future = reply[j + 1 : j + 1 + len(proposal)]
            a = 0
            while a < len(proposal) and proposal[a] == future[a]:
                a += 1
            seconds += cost[len(proposal)] + (switch if after_plain else 0.0)
            accepted, after_plain, steps = a + 1, False, steps + 1
        else:
            seconds += cost[0]
            after_plain = True
        index.extend(reply[j + 1 : j + 1 + accepted])
        j += accepted
    return cost[0] * (len(reply) - 1) / seconds, steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a mlx-spec demo pair folder or target (its drafter is not used)")
    parser.add_argument("--drafter")
    parser.add_argument("--prompts", default="mlx_spec/tools/prompts/categories.jsonl")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temps", default="0,0.7")
    parser.add_argument("--seeds", default="1,2,3", help="sampled replies per prompt at each temperature > 0")
    parser.add_argument("--k-max", default="8", help="longest lookup draft; a list (8,16) models each on one cost table")
    parser.add_argument("--switch", type=float, default=0.3, help="extra cost, in plain steps, of a plain step before a lookup step")
    parser.add_argument("--continuations", help="JSON cache of the plain replies (generated when missing)")
    parser.add_argument("--out", help="write NAME.json and NAME.md")
    args = parser.parse_args(argv)
    k_maxes = [int(k) for k in str(args.k_max).split(",")]

    pair = load_pair(args.model, args.drafter)
    tokenizer = load_tokenizer(pair.target.path, pair.target.config)
    temps = [float(t) for t in args.temps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cached = Path(args.continuations) if args.continuations else None
    if cached is not None and cached.is_file():
        replies = json.loads(cached.read_text())
    else:
        replies = []
        for temp in temps:
            for seed in (seeds if temp else [0]):
                for p in load_prompts(Path(args.prompts), tokenizer):
                    sampling = SamplingSettings(temp=temp, seed=seed if temp else None)
                    tokens = [t for t, _ in decode(pair, p["ids"], sampling, DraftSettings(draft_tokens=0), max_tokens=args.max_tokens)]
                    replies.append(dict(name=p["name"], category=p["category"], temp=temp, seed=seed, prompt=p["ids"], tokens=tokens))
                    print(f"{p['name']} temp {temp} seed {seed}: {len(tokens)} tokens", file=sys.stderr)
        if cached is not None:
            cached.write_text(json.dumps(replies))

    lines = [f"Prompt lookup alone, modeled from plain replies (exact in law; bench/lookup_ceiling.py), {args.model}, "
             f"{args.max_tokens} tokens, k_max {args.k_max}, switch {args.switch}; {platform.machine()} {platform.system()}, "
             f"mlx {mx.__version__}", ""]
    results = {"model": args.model, "max_tokens": args.max_tokens, "k_max": k_maxes[0], "switch": args.switch, "temps": {}}
    for temp in temps:
        strategy = make_strategy(SamplingSettings(temp=temp, seed=0))
        table = measure_step_costs(pair.adapter, None, max(k_maxes), strategy, repeats=15).measured
        cost = [t / table[0] for t in table]
        by_k = {}
        for k_max in k_maxes:
            by_k[k_max] = [dict(name=r["name"], category=r["category"], seed=r["seed"],
                                speedup=modeled_speedup(r["prompt"], r["tokens"], cost, args.switch, k_max)[0])
                           for r in replies if r["temp"] == temp]
        runs = by_k[k_maxes[0]]
        categories = sorted({r["category"] for r in runs})
        results["temps"][str(temp)] = {"verify_only_cost": cost, "runs": runs,
                                       **({"runs_by_k_max": {str(k): v for k, v in by_k.items()}} if len(k_maxes) > 1 else {})}
        head = " | ".join(f"mean (k_max {k}) | median reply | best reply" for k in k_maxes)
        lines += [f"temperature {temp}: {len(runs)} replies; verify-only step cost by k (plain = 1): "
                  + " ".join(f"{c:.2f}" for c in cost), "",
                  f"| category | replies | {head} |", "| --- | --- |" + " --- | --- | --- |" * len(k_maxes)]
        for name in categories + ["all"]:
            cells = []
            for k_max in k_maxes:
                values = [r["speedup"] for r in by_k[k_max] if name == "all" or r["category"] == name]
                cells.append(f"{np.mean(values):.2f} | {np.median(values):.2f} | {max(values):.2f}")
            lines.append(f"| {name} | {len(values)} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(results, indent=1))
        Path(args.out + ".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
