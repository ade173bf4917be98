#!/usr/bin/env python3
"""What a vocabulary-restricted drafter head costs in acceptance, on a real target (Gemma 3 270M demo).

Gemma 3 and Gemma 4 share the 262144-token vocabulary, so the Gemma 3 270M demo target is the
nearest real stand-in for ranking the tokens a Gemma 4 assistant's restricted head keeps
(`mlx-spec convert-drafter --head-size N --target T`, tools/head.py):

1. calibration: the target's own sampled generations (temperature 1, as convert-drafter does) from
   stretches of local text files (--calibration, default: /usr/share/doc and Python's stdlib
   sources), `--calibration-tokens` of them, counted per token;
2. held-out: the target's greedy replies to prompts it never saw (bench/prompts/heldout.jsonl and
   tools/prompts/categories.jsonl); coverage(N) = share of those greedy tokens among the top N;
3. acceptance: the same greedy runs (output identical: lossless) with the demo drafter at k = 4,
   its head scoring the whole vocabulary, its own trained head (16384 tokens), or the top N of
   calibration for N = 2k, 4k, 8k, 16k; per-position acceptance.

The demo drafter was trained with its 16384-token head, so that head (not the whole vocabulary,
which it never learned to score) is its reference. For a drafter trained on the whole vocabulary
(the released assistants) greedy restriction can only lose a draft whose token is outside the head:
acceptance(top N) >= acceptance(whole) - (1 - coverage(N)), i.e. a kept share >= 1 - (1 - coverage) / alpha;
the report gives that bound at alpha 0.8 beside the demo drafter's measured ratio.

    python scripts/restricted_head_coverage.py --summarize bench/restricted_head   # tables from coverage.json again

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
      python scripts/restricted_head_coverage.py --out bench/restricted_head
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_spec import stream_generate
from mlx_spec.core.loading import SpeculativeModel, load_pair, load_tokenizer
from mlx_spec.tools.distill import make_prompts, read_texts
from mlx_spec.tools.head import coverage, generation_counts, top_tokens

ROOT = Path(__file__).resolve().parent.parent
SIZES = (2048, 4096, 8192, 16384)


def heldout_prompts(limit: int) -> list[dict]:
    rows = []
    for file in (ROOT / "bench" / "prompts" / "heldout.jsonl", ROOT / "mlx_spec" / "tools" / "prompts" / "categories.jsonl"):
        rows += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return rows[:limit]


def restrict(drafter, target_module, ids) -> None:
    """Point the demo (mlx_spec_mtp) drafter's head at `ids` (None: the whole vocabulary)."""
    drafter.args.head_size = 0 if ids is None else len(ids)
    drafter.head_ids = mx.array(np.asarray(ids if ids is not None else [], dtype=np.int32))
    drafter.attach(target_module)


def run_heldout(pair, tokenizer, prompts, max_tokens: int, k: int) -> dict:
    tokens, drafted, accepted, seconds = [], np.zeros(k, int), np.zeros(k, int), 0.0
    for row in prompts:
        start = time.perf_counter()
        out = list(stream_generate(pair, tokenizer, row["prompt"], max_tokens=max_tokens, draft_tokens=k))
        seconds += time.perf_counter() - start
        tokens.append([r.token for r in out])
        stats = out[-1].stats
        drafted[: len(stats.drafted_per_position)] += stats.drafted_per_position
        accepted[: len(stats.accepted_per_position)] += stats.accepted_per_position
    return {"tokens": tokens, "acceptance_per_position": (accepted / np.maximum(drafted, 1)).round(4).tolist(),
            "accepted_per_step": float(accepted.sum() / max(1, drafted[0])), "drafted_per_position": drafted.tolist(),
            "seconds": round(seconds, 1)}


BOUND_ALPHA = 0.8


def summarize(folder: Path) -> list[str]:
    """Add the kept shares to coverage.json and write coverage.md: first-position acceptance and accepted
    drafts per step against the trained head (the demo drafter's reference) and the whole vocabulary, and
    the coverage bound for a drafter trained on the whole vocabulary at alpha 0.8."""
    report = json.loads((folder / "coverage.json").read_text())
    heads = report["heads"]
    trained = next(name for name in heads if name.startswith("trained head"))
    for r in heads.values():
        r.pop("accepted_per_step_vs_whole", None)
        for ref, key in ((trained, "vs_trained_head"), ("whole vocabulary", "vs_whole_vocabulary")):
            base = heads[ref]
            r[key] = {"first_position": round(r["acceptance_per_position"][0] / base["acceptance_per_position"][0], 4),
                      "accepted_per_step": round(r["accepted_per_step"] / base["accepted_per_step"], 4)}
        r["kept_bound_at_alpha_0.8"] = round(max(0.0, 1 - (1 - r["coverage"]) / BOUND_ALPHA), 4)
    (folder / "coverage.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Gemma 3 270M demo pair, {report['heldout_prompts']} held-out prompts x {report['max_tokens']} greedy tokens "
             f"({report['heldout_generated_tokens']} tokens, {report['heldout_distinct_tokens']} distinct), k = {report['k']}; head ranks from "
             f"{report['calibration']['generated_tokens']} calibration tokens ({report['calibration']['distinct_tokens']} distinct) the target sampled "
             f"at temperature 1. {report['machine']}. `{report['command']}`", "",
             "| head | rows | coverage of held-out greedy tokens | acceptance per position (k = 4) | accepted / step | first position vs trained head | vs whole vocabulary | kept >= (whole-vocabulary drafter, alpha 0.8) |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, r in heads.items():
        lines.append(f"| {name} | {r['head_size']} | {r['coverage']:.3f} | {', '.join(f'{a:.2f}' for a in r['acceptance_per_position'])} | "
                     f"{r['accepted_per_step']:.3f} | {r['vs_trained_head']['first_position']:.3f} | {r['vs_whole_vocabulary']['first_position']:.3f} | "
                     f"{r['kept_bound_at_alpha_0.8']:.3f} |")
    (folder / "coverage.md").write_text("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "restricted_head")
    parser.add_argument("--calibration", nargs="*", default=["/usr/share/doc", "/usr/lib/python3.11/email", "/usr/lib/python3.11/json"])
    parser.add_argument("--calibration-tokens", type=int, default=32768)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--summarize", type=Path, default=None, help="only rewrite the tables of an earlier run's folder")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        print("\n".join(summarize(args.summarize)))
        return 0
    pair = load_pair(args.model)
    tokenizer = load_tokenizer(pair.target.path, pair.target.config)
    drafter, target_module = pair.drafter.module, pair.target.module
    vocab = int(drafter.args.target["vocab_size"])
    trained_head = np.array(drafter.head_ids).tolist()

    start = time.perf_counter()
    texts = read_texts(args.calibration)
    cal_prompts = [list(map(int, p)) for p in make_prompts(texts, tokenizer, 64, 48, np.random.RandomState(0), chat=False)]
    counts = generation_counts(SpeculativeModel(pair.target, None), tokenizer, cal_prompts, args.calibration_tokens, vocab,
                               max_tokens=128, batch=16, progress=lambda n: print(f"\rcalibration {n}", end="", file=sys.stderr))
    calibration_seconds = time.perf_counter() - start
    print(file=sys.stderr)

    prompts = heldout_prompts(args.prompts)
    heads = {"whole vocabulary": None, f"trained head ({len(trained_head)})": trained_head}
    for n in SIZES:
        heads[f"top {n}"] = top_tokens(counts, n, always=sorted(tokenizer.eos_token_ids)).ids
    results, reference = {}, None
    for name, ids in heads.items():
        restrict(drafter, target_module, ids)
        r = run_heldout(pair, tokenizer, prompts, args.max_tokens, args.k)
        if reference is None:
            reference = r["tokens"]
            held = np.zeros(vocab, dtype=np.int64)
            for row in reference:
                np.add.at(held, np.asarray(row, dtype=np.int64), 1)
        assert r["tokens"] == reference, f"{name}: greedy output changed (must be lossless)"
        results[name] = {"head_size": vocab if ids is None else len(ids), "coverage": round(coverage(held, ids if ids is not None else range(vocab)), 4),
                         **{k: v for k, v in r.items() if k != "tokens"}}
        print(name, results[name], file=sys.stderr)
    restrict(drafter, target_module, trained_head)

    report = {
        "model": args.model, "k": args.k, "greedy": True, "heldout_prompts": len(prompts), "max_tokens": args.max_tokens,
        "heldout_generated_tokens": int(held.sum()), "heldout_distinct_tokens": int((held > 0).sum()),
        "calibration": {"files": args.calibration, "generated_tokens": int(counts.sum()), "distinct_tokens": int((counts > 0).sum()),
                        "temperature": 1.0, "seconds": round(calibration_seconds, 1)},
        "heads": results,
        "machine": f"{platform.machine()} {platform.system()}, mlx {mx.__version__}, float32 weights",
        "command": "python scripts/restricted_head_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = summarize(args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
