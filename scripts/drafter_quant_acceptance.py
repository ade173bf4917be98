"""What quantizing a gemma4_assistant drafter costs in acceptance, and what it saves in bytes per draft step.

For each tiny variant (its trained drafter: partly right, so acceptance can move either way), the
float drafter and its 8-bit and 4-bit conversions (`mlx-spec convert-drafter`, i.e.
`gemma4_assistant.convert`) draft k = 4 greedy on the same prompts; reported: acceptance by position,
mean accepted length, the drafter's bytes (all of it is read per draft step), and whether the output
stayed the target's plain greedy output (it must: quantizing the drafter only changes proposals).

    python scripts/drafter_quant_acceptance.py TINY_DIR [--variants dense,moe,e2b,unified] [--tokens 120] [--head-size N] [--json OUT]

--head-size N adds each dense-head drafter restricted to the N tokens its target's own sampled replies
use most (`convert-drafter --head-size`), float and 4-bit.

With --demo NAME (smollm2-135m, gemma3-270m; after `mlx-spec demo-models`): the same on a real target and
its trained demo drafter (`mlx-spec distill`'s kind: its layers quantized with MLX's nn.quantize, group 64;
its head rows are the target's own table and stay as they are), on held-out prompts (bench/prompts/heldout.jsonl
and tools/prompts/categories.jsonl, as scripts/restricted_head_coverage.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from mlx_spec.core.loading import load_pair
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
from mlx_spec.core.models import gemma4_assistant
from mlx_spec.core.moe import parameter_bytes


def measure(target, drafter, prompts, tokens, k=4):
    drafted, accepted, steps, lossless = np.zeros(k), np.zeros(k), 0, True
    for prompt in prompts:
        stats = SpecStats()
        out = token_ids(speculative_generate_step(prompt, target, drafter, draft_tokens=k, max_tokens=tokens, stats=stats))
        plain = token_ids(speculative_generate_step(prompt, target, None, max_tokens=tokens))
        lossless &= out == plain
        drafted[: len(stats.drafted_per_position)] += stats.drafted_per_position
        accepted[: len(stats.accepted_per_position)] += stats.accepted_per_position
        steps += stats.steps
    return {"acceptance_per_position": (accepted / np.maximum(drafted, 1)).round(3).tolist(),
            "mean_accepted_length": float(1 + accepted.sum() / max(1, steps)), "lossless": bool(lossless)}


def head_ids(target_dir: Path, drafter_dir: Path, size: int, tokens: int) -> list[int]:
    """The head `mlx-spec convert-drafter --head-size` keeps: the top tokens of the target's own sampled replies."""
    from mlx_spec.core.loading import load_drafter
    from mlx_spec.tools.head import choose_head

    return choose_head(str(target_dir), load_drafter(drafter_dir), size, None, tokens).ids


def demo(name: str, prompts: int, tokens: int) -> list[dict]:
    import copy

    import mlx.nn as nn
    from mlx_spec.core.loading import load_tokenizer
    from restricted_head_coverage import heldout_prompts

    pair = load_pair(name)
    tokenizer = load_tokenizer(pair.target.path, pair.target.config)
    ids = [list(tokenizer.encode(row["prompt"])) for row in heldout_prompts(prompts)]
    rows, float_bytes = [], parameter_bytes(pair.draft_model)
    for bits in (None, 8, 4):
        drafter = pair.draft_model
        if bits is not None:
            drafter = copy.deepcopy(pair.draft_model)
            nn.quantize(drafter, group_size=64, bits=bits, class_predicate=lambda p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0)
            drafter.attach(pair.target.module)
        nbytes = parameter_bytes(drafter)
        row = {"variant": name, "bits": bits, "bytes": nbytes, **measure(pair.adapter, drafter, ids, tokens)}
        rows.append(row)
        acc = " ".join(f"{a:.2f}" for a in row["acceptance_per_position"])
        print(f"| {name} | {'float32' if bits is None else f'{bits}-bit'} | {nbytes:,} | {nbytes / float_bytes:.2f} | {acc} | "
              f"{row['mean_accepted_length']:.2f} | {'yes' if row['lossless'] else 'NO'} |", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("tiny", nargs="?")
    ap.add_argument("--demo", action="append", default=[], help="a demo model name (repeatable)")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts for --demo")
    ap.add_argument("--variants", default="dense,moe,e2b,unified")
    ap.add_argument("--head-size", type=int, default=0, help="also the dense-head drafters restricted to this many tokens (float and 4-bit)")
    ap.add_argument("--head-tokens", type=int, default=4096, help="target-generated tokens that rank the head")
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    print("| variant | drafter | bytes per draft step | vs float | acceptance by position (k = 4) | mean accepted length | lossless |")
    print("|---|---|---|---|---|---|---|")
    for name in args.demo:
        rows += demo(name, args.prompts, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        for variant in (args.variants.split(",") if args.tiny else []):
            src = Path(args.tiny) / variant / "drafter-trained"
            float_bytes = None
            configs = [(None, None), (8, None), (4, None)]
            dense_head = not json.loads((src / "config.json").read_text()).get("use_ordered_embeddings")
            if args.head_size and dense_head:
                ids = head_ids(Path(args.tiny) / variant / "target", src, args.head_size, args.head_tokens)
                configs += [(None, ids), (4, ids)]
            for bits, head in configs:
                path = src
                if bits is not None or head is not None:
                    path = Path(tmp) / f"{variant}-q{bits}-h{len(head) if head else 0}"
                    gemma4_assistant.convert(src, path, None if bits is None else {"group_size": args.group_size, "bits": bits}, head)
                pair = load_pair(Path(args.tiny) / variant / "target", path)
                target = pair.adapter
                rng = np.random.RandomState(0)
                prompts = [[2] + rng.randint(5, target.vocab_size, size=n - 1).tolist() for n in (6, 3 * target.sliding_window + 7, 40)]
                nbytes = parameter_bytes(pair.draft_model)
                float_bytes = float_bytes or nbytes
                row = {"variant": variant, "bits": bits, "head_size": len(head) if head else None, "bytes": nbytes,
                       **measure(target, pair.draft_model, prompts, args.tokens)}
                rows.append(row)
                acc = " ".join(f"{a:.2f}" for a in row["acceptance_per_position"])
                label = ("float32" if bits is None else f"{bits}-bit") + (f", head {len(head)}" if head else "")
                print(f"| {variant} | {label} | {nbytes:,} | {nbytes / float_bytes:.2f} | {acc} | "
                      f"{row['mean_accepted_length']:.2f} | {'yes' if row['lossless'] else 'NO'} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
