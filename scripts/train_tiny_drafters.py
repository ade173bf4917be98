#!/usr/bin/env python3
"""Train the tiny drafters to be partly right, so tests of accept / rollback see real acceptance.

A random drafter is almost never accepted. This distils each tiny drafter from its tiny target
(MLX, a minute on a CPU): the target samples sequences, and the drafter learns the multi-token
objective it is used for: k = 4 steps from the fixed position p of the last seen token, reading the
target's KV of positions < p (sliding layers: the newest window + 1), step 1 from the target's hidden
at p - 1, step i > 1 from its own projected hidden; the loss is the cross-entropy against the
target's greedy next token at p + i - 1 (teacher forcing). The centroid-masked drafter (e2b)
also learns its centroid scores (cluster of the target's argmax).

    python scripts/train_tiny_drafters.py --checkpoints OUT_DIR [--out tests/fixtures/drafters]

Writes <variant>.safetensors (Hugging Face names, float32) for make_tiny_checkpoints.py
--trained-drafters, which puts them in OUT_DIR/<variant>/drafter-trained. Weights are committed:
training is not bit-reproducible across machines, the golden data depends on the exact bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache

from mlx_spec.core.loading import load_drafter, load_target
from mlx_spec.core.model_config import FULL, SLIDING
from mlx_spec.core.target import Target

VARIANTS = ["dense", "moe", "e2b", "unified"]  # a variant's index seeds its training
K = 4
SEQ_LEN = 64
NUM_SEQS = 384
STEPS = 1000
BATCH = 128


def sample_sequences(target: Target, rng: np.random.RandomState) -> np.ndarray:
    """Target-generated sequences (temperature 0.8 after a random 6-token prefix)."""
    seqs = np.zeros((NUM_SEQS, SEQ_LEN), dtype=np.int32)
    prefix = rng.randint(5, target.vocab_size, size=(NUM_SEQS, 6))
    seqs[:, 0] = 2
    seqs[:, 1:7] = prefix
    cache = [KVCache() for _ in range(target.num_cached_layers)]
    tokens = mx.array(seqs[:, :7])
    logits, _ = target.forward(tokens, cache, last_only=True)
    for t in range(7, SEQ_LEN):
        nxt = mx.random.categorical(logits[:, -1] / 0.8)
        seqs[:, t] = np.array(nxt)
        logits, _ = target.forward(nxt[:, None], cache)
    return seqs


def teacher(target: Target, seqs: np.ndarray):
    """Target logits, final hidden and producer KV at every position (one causal forward)."""
    cache = [KVCache() for _ in range(target.num_cached_layers)]
    logits, hidden = target.forward(mx.array(seqs), cache)
    kv = {t: (cache[i].keys[..., :SEQ_LEN, :], cache[i].values[..., :SEQ_LEN, :]) for t, i in target.producers.items()}
    mx.eval(logits, hidden, kv)
    return logits, hidden, kv


def train(variant_dir: Path, seed: int) -> tuple[nn.Module, dict]:
    mx.random.seed(seed)
    rng = np.random.RandomState(seed)
    loaded_target = load_target(variant_dir / "target")
    target = Target(loaded_target.module, loaded_target.text_config)
    drafter = load_drafter(variant_dir / "drafter").module
    drafter.train()
    seqs = sample_sequences(target, rng)
    t_logits, t_hidden, kv = teacher(target, seqs)
    t_probs = mx.softmax(t_logits, axis=-1)
    window = drafter.sliding_window
    masked = drafter.args.use_ordered_embeddings
    if masked:
        ordering = np.array(drafter.masked_embedding.token_ordering)
        cluster_of = np.empty_like(ordering)
        cluster_of[ordering] = np.arange(len(ordering)) // (len(ordering) // drafter.args.num_centroids)
        cluster_of = mx.array(cluster_of)

    def batch_loss(model, rows, pos):
        kv_rows = {t: (k[rows], v[rows]) for t, (k, v) in kv.items()}
        kv_pos = mx.arange(SEQ_LEN)[None, None, None, :]
        p = pos[:, None, None, None]
        masks = {FULL: kv_pos <= p - 1, SLIDING: (kv_pos <= p - 1) & (kv_pos >= p - 1 - window)}
        hidden = t_hidden[rows, pos - 1][:, None]
        loss = 0.0
        for i in range(K):
            tok = mx.array(seqs)[rows, pos + i]
            inputs = mx.concatenate([target.embed(tok[:, None]), hidden], axis=-1)
            h = model.features(inputs, pos, kv_rows, masks)
            logits = model.model.embed_tokens.as_linear(h)[:, 0]
            probs = t_probs[rows, pos + i]
            # Greedy acceptance is what the tests need: learn the target's argmax (the soft
            # distribution of a random tiny target is nearly flat and teaches little).
            loss = loss + nn.losses.cross_entropy(logits, mx.argmax(probs, axis=-1)).mean()
            if masked:
                label = cluster_of[mx.argmax(probs, axis=-1)]
                loss = loss + nn.losses.cross_entropy(model.masked_embedding.centroids(h)[:, 0], label).mean()
            hidden = model.post_projection(h)
        return loss / K

    opt = optim.Adam(learning_rate=optim.cosine_decay(3e-3, STEPS, 3e-4))
    step_fn = nn.value_and_grad(drafter, batch_loss)
    for step in range(STEPS):
        rows = mx.array(rng.randint(0, NUM_SEQS, size=BATCH))
        pos = mx.array(rng.randint(1, SEQ_LEN - K, size=BATCH))
        loss, grads = step_fn(drafter, rows, pos)
        opt.update(drafter, grads)
        mx.eval(drafter.parameters(), opt.state)
        if step % 100 == 0 or step == STEPS - 1:
            print(f"{variant_dir.name} step {step} loss {loss.item():.3f}", file=sys.stderr)
    drafter.eval()
    return drafter


def hf_weights(drafter: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, value in tree_flatten(drafter.parameters()):
        array = np.array(value)
        out[name] = array.astype(np.int64) if name.endswith("token_ordering") else array.astype(np.float32)
    return out


def main(argv=None) -> int:
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "drafters")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        drafter = train(args.checkpoints / variant, seed=100 + VARIANTS.index(variant))
        weights = hf_weights(drafter)
        save_file({k: weights[k] for k in sorted(weights)}, str(args.out / f"{variant}.safetensors"), metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
