"""Score drafters on a held-out shard that the float32 target collects on this machine (the CPU): the
greedy acceptance per draft position and the sampled one at the first (distill's held-out measures).
  python scripts/gpu_distill/score.py TARGET SHARD.npz DRAFTER [DRAFTER ...] [--rows 48]
SHARD.npz is collected first when missing (its prompts drawn with the seed of the number in its name,
from --data: the corpus the drafters were distilled from, at other random places)."""
import argparse
import json
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
for name in a.drafters:
    t = time.perf_counter()
    r = D.evaluate(_distilled_drafter(name, loaded), shards, target, D.DistillConfig(draft_tokens=4), window, eos)
    print(json.dumps({"drafter": name, "shard": str(shard), "sequences": len(shards[0].tokens), **r, "seconds": round(time.perf_counter() - t)}))
