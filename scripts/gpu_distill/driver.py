"""Distil a demo drafter on the device machine (MLX CUDA; see README.md): mlx_spec.tools.distill.distill as
`mlx-spec distill` runs it, the target (/root/model/target, weights shipped as bfloat16) cast to float32,
the demo targets' dtype. Writes /root/out; prints a line per shard and per checkpoint.
  python3 driver.py NAME HEAD_SIZE BATCH STEPS BUDGET_MIN TOKENS COLLECT_BATCH DEADLINE_S
Optional, from the environment: SEQ_LEN (256), PROMPT_LEN (64), REQUESTS (a requests file, see
`mlx-spec distill --requests`) and REQUEST_SHARE (0.5)."""
import json
import os
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_spec.core.loading import load_target, load_tokenizer
from mlx_spec.tools import distill as D

T0 = time.perf_counter()


def say(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


say("mlx", mx.__version__, mx.default_device())

# top-16 by block maxima uses argpartition: check it against a sort on this backend, else sort
x = mx.random.normal((8, 49152)) * 3
try:
    ids, lp = D.top_tokens_of(x, 16)
    mx.eval(ids, lp)
    ref = np.sort(np.array(mx.argsort(-x, axis=-1)[:, :16]), axis=-1)
    ok = (np.sort(np.array(ids), axis=-1) == ref).all()
except Exception as e:  # noqa: BLE001
    ok = False
    say("top_tokens_of failed:", repr(e)[:300])
if not ok:
    say("top_tokens_of: falling back to argsort")

    def top_sorted(logits, k, block=64):
        lf = logits.astype(mx.float32)
        lse = mx.logsumexp(lf, axis=-1, keepdims=True)
        i = mx.argsort(-lf, axis=-1)[..., :k]
        return i.astype(mx.int32), (mx.take_along_axis(lf, i, axis=-1) - lse).astype(mx.float16)

    D.top_tokens_of = top_sorted
else:
    say("top_tokens_of ok")

# Three of distill's functions wrapped, its data path unchanged: a log line per shard and checkpoint
# (the call's output keeps its tail only: no progress bars), training bounded by the call's deadline
# once the data is in, and the head's token ids kept beside the checkpoint (a drafter can be rebuilt
# from the two if the call is cut off after training).
collect_one, checkpoint, most_frequent = D.collect_one, D._checkpoint, D.most_frequent


def collect_logged(target, tokenizer, texts, cfg, folder, index):
    t = time.perf_counter()
    path = collect_one(target, tokenizer, texts, cfg, folder, index)
    say(f"shard {index}: {cfg.collect_batch * cfg.seq_len} tokens in {time.perf_counter() - t:.1f}s")
    return path


def checkpoint_logged(model, optimizer, step, elapsed, folder, loss=float("nan")):
    checkpoint(model, optimizer, step, elapsed, folder, loss)
    say(f"step {step}: loss {loss:.3f}, {elapsed:.0f}s training")


def frequent_logged(counts, size, always=()):
    head, cover = most_frequent(counts, size, always)
    left = deadline - (time.perf_counter() - T0) - 75  # held-out evaluation and writing after training
    cfg.time_budget = max(0.5, min(budget, left / 60))
    say(f"collected; training for at most {cfg.time_budget:.2f} min")
    Path("/root/out").mkdir(parents=True, exist_ok=True)
    Path("/root/out/head_ids.json").write_text(json.dumps(head))
    return head, cover


D.collect_one, D._checkpoint, D.most_frequent = collect_logged, checkpoint_logged, frequent_logged

loaded = load_target("/root/model/target")
loaded.module.set_dtype(mx.float32)
tokenizer = load_tokenizer(loaded.path, loaded.config)
name, head = sys.argv[1], int(sys.argv[2])
batch, steps, budget, tokens, rows, deadline = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
cfg = D.DistillConfig(seq_len=int(os.environ.get("SEQ_LEN", 256)), prompt_len=int(os.environ.get("PROMPT_LEN", 64)), collect_batch=rows,
                      tokens=tokens, steps=steps, batch=batch, head_size=head, time_budget=budget, seed=0,
                      requests=os.environ.get("REQUESTS") or None, request_share=float(os.environ.get("REQUEST_SHARE", 0.5)))
say("config", cfg)
report = D.distill(loaded.module, name, tokenizer, ["/root/texts/python-doc", "/root/texts/fortunes", "/root/texts/linux-doc"],
                   Path("/root/out"), cfg, progress=False, echo=say)
say(f"done: {report.steps} steps in {report.train_seconds:.0f}s, {report.collected_tokens} tokens collected in {report.collect_seconds:.0f}s")
