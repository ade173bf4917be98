"""Score drafters on a held-out shard that the float32 target collects on this machine (the CPU): the
greedy acceptance per draft position and the sampled one at the first (distill's held-out measures).
  python scripts/gpu_distill/score.py TARGET SHARD.npz DRAFTER [DRAFTER ...] [--rows 48] [--requests FILE --shards N]
SHARD.npz is collected first when missing (its prompts drawn with the seed of the number in its name,
from --data: the corpus the drafters were distilled from, at other random places; with --requests,
every row a chat-wrapped request from FILE, which must hold none the drafters were trained on, and
--shards N consecutive shards from that number on, each at its own prompt length). --by-repetition
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
p.add_argument("--requests", help="held-out requests (see mlx-spec distill --requests)")
p.add_argument("--shards", type=int, default=1)
p.add_argument("--seq-len", type=int, default=256)
p.add_argument("--prompt-len", type=int, default=64)
p.add_argument("--data", nargs="+", default=[f"/work/distill/data/{n}" for n in ("python-doc", "fortunes", "linux-doc")])
a = p.parse_args()
loaded = load_target(a.target)
tokenizer = load_tokenizer(loaded.path, loaded.config)
target = Target(loaded.module, {}, track_experts=False)
first = Path(a.shard)
number = int(re.findall(r"\d+", first.stem)[-1])
paths = [first] + [first.parent / first.name.replace(str(number), str(number + i)) for i in range(1, a.shards)]
cfg = D.DistillConfig(seq_len=a.seq_len, prompt_len=a.prompt_len, collect_batch=a.rows, requests=a.requests, request_share=1.0)
missing = [i for i, shard in enumerate(paths) if not shard.exists()]
texts = D.read_texts(a.data) if missing and not a.requests else []
for i in missing:
    D.collect_one(target, tokenizer, texts, cfg, paths[i].parent, number + i).rename(paths[i])
eos = list(getattr(tokenizer, "eos_token_ids", None) or [])
window = target.sliding_window if SLIDING in target.producers else None
shards = [D.Shard.load(shard) for shard in paths]


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
        head = [int(i) for i in np.array(model.head_ids)] if model.args.head_size else []
        data = D.Batches(shards, target, head, 1, window, eos, False)
        rows = [D.free_running_acceptance(model, data, np.array([i]), 1, eos) for i in range(len(data))]
        rep = np.array([repetition(row, start) for row, start in zip(data.tokens, data.generated_from)])
        acc = np.array([x["acceptance_per_position"][0] for x in rows])
        drafted = np.array([x["drafted_per_position"][0] for x in rows])
        r["first_position_by_repetition"] = {
            f"{lo}-{min(hi, 1.0)}": {"sequences": int(sel.sum()), "positions": int(drafted[sel].sum()),
                                     "acceptance": float(np.average(acc[sel], weights=drafted[sel])) if drafted[sel].sum() else None}
            for lo, hi in BANDS for sel in [(rep >= lo) & (rep < hi)]}
    print(json.dumps({"drafter": name, "shards": [str(p) for p in paths], "sequences": sum(len(s.tokens) for s in shards), **r,
                      "seconds": round(time.perf_counter() - t)}))
