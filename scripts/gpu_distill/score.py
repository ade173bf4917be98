"""Score drafters on a held-out shard that the float32 target collects on this machine (the CPU): the
greedy acceptance per draft position and the sampled one at the first (distill's held-out measures).
  python scripts/gpu_distill/score.py TARGET SHARD.npz DRAFTER [DRAFTER ...] [--rows 48]
SHARD.npz is collected first when missing (its prompts drawn with the seed of the number in its name,
from --data: the corpus the drafters were distilled from, at other random places). --by-repetition
also splits the first position's acceptance by how much each continuation repeats itself (the share
of its tokens that end a 5-gram seen before in the sequence): a greedy small model often loops, and
loops are easy to draft, so the mean over all positions says little about ordinary text."""
import argparse
import json

import numpy as np
import re
import time
from pathlib import Path

from mlx_spec.cli import _distilled_drafter
from mlx_spec.core.loading import load_target, load_tokenizer
from mlx_spec.core.model_config import SLIDING
from mlx_spec.core.target import Target
from mlx_spec.tools import distill as D

p = argparse.ArgumentParser()
p.add_argument("target"), p.add_argument("shard"), p.add_argument("drafters", nargs="+")
p.add_argument("--rows", type=int, default=48)
p.add_argument("--by-repetition", action="store_true")
p.add_argument("--data", nargs="+", default=[f"/work/distill/data/{n}" for n in ("python-doc", "fortunes", "linux-doc")])
a = p.parse_args()
loaded = load_target(a.target)
tokenizer = load_tokenizer(loaded.path, loaded.config)
target = Target(loaded.module, {}, track_experts=False)
shard = Path(a.shard)
if not shard.exists():
    cfg = D.DistillConfig(seq_len=256, prompt_len=64, collect_batch=a.rows)
    made = D.collect_one(target, tokenizer, D.read_texts(a.data), cfg, shard.parent, int(re.findall(r"\d+", shard.stem)[-1]))
    made.rename(shard)
eos = list(getattr(tokenizer, "eos_token_ids", None) or [])
window = target.sliding_window if SLIDING in target.producers else None
shards = [D.Shard.load(shard)]


def repetition(tokens: np.ndarray, start: int, n: int = 5) -> float:
    seen, hits = set(), 0
    for i in range(n - 1, len(tokens)):
        gram = tuple(tokens[i - n + 1 : i + 1])
        hits += i >= start and gram in seen
        seen.add(gram)
    return hits / max(1, len(tokens) - start)


BANDS = ((0.0, 0.2), (0.2, 0.6), (0.6, 1.01))
for name in a.drafters:
    t = time.perf_counter()
    model = _distilled_drafter(name, loaded)
    r = D.evaluate(model, shards, target, D.DistillConfig(draft_tokens=4), window, eos)
    if a.by_repetition:
        s = shards[0]
        head = [int(i) for i in np.array(model.head_ids)] if model.args.head_size else []
        data = D.Batches(shards, target, head, 1, window, eos, False)
        rows = [D.free_running_acceptance(model, data, np.array([i]), 1, eos) for i in range(len(s.tokens))]
        rep = np.array([repetition(row, s.generated_from) for row in s.tokens])
        acc = np.array([x["acceptance_per_position"][0] for x in rows])
        drafted = np.array([x["drafted_per_position"][0] for x in rows])
        r["first_position_by_repetition"] = {
            f"{lo}-{min(hi, 1.0)}": {"sequences": int(sel.sum()), "positions": int(drafted[sel].sum()),
                                     "acceptance": float(np.average(acc[sel], weights=drafted[sel])) if drafted[sel].sum() else None}
            for lo, hi in BANDS for sel in [(rep >= lo) & (rep < hi)]}
    print(json.dumps({"drafter": name, "shard": str(shard), "sequences": len(shards[0].tokens), **r, "seconds": round(time.perf_counter() - t)}))
