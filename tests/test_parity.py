"""mlx-lm's targets and our drafter against transformers' golden outputs (float32).

Tolerances: target logits max |diff| <= 2e-4 (softcapped at 30; observed <= 7e-5), target final
hidden <= 2e-4, drafter logits and projected hidden <= 1e-4 (observed <= 5e-6), drafted tokens equal.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANTS
from mlx_spec.core.loading import load_drafter, load_target
from mlx_spec.core.model_config import FULL, SLIDING, kv_producer_layers

TARGET_ATOL = 2e-4
DRAFTER_ATOL = 1e-4


@pytest.fixture(scope="module")
def pairs(tiny):
    return {v: (load_target(tiny / v / "target"), load_drafter(tiny / v / "drafter")) for v in VARIANTS}


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max())


def language_model(module):
    return getattr(module, "language_model", module)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prompt", ["short", "long"])
def test_target_logits_and_hidden_match_transformers(pairs, golden_arrays, variant, prompt):
    target, _ = pairs[variant]
    g = golden_arrays(variant)
    ids = mx.array(g[f"prompt_{prompt}"])[None]
    logits = target.module(ids)
    assert max_diff(logits[0], g[f"target_logits_{prompt}"]) <= TARGET_ATOL
    hidden = language_model(target.module).model(ids)  # final-normed hidden, the drafter's input
    assert max_diff(hidden[0], g[f"target_hidden_{prompt}"]) <= TARGET_ATOL


def golden_kv(g):
    return {
        FULL: (mx.array(g["kv_full_k"]), mx.array(g["kv_full_v"])),
        SLIDING: (mx.array(g["kv_sliding_k"]), mx.array(g["kv_sliding_v"])),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_drafter_chain_matches_transformers(pairs, golden_arrays, golden, variant):
    """Three chained draft steps from the same position, as SinglePositionMultiTokenCandidateGenerator runs them."""
    target, drafter = pairs[variant]
    g, meta = golden_arrays(variant), golden["variants"][variant]["draft"]
    lm = language_model(target.module)
    kv = golden_kv(g)
    inputs = mx.array(g["draft_inputs"])
    scale = lm.model.embed_scale
    tokens = []
    for step in range(3):
        logits, hidden = drafter.module(inputs, meta["position"], kv)
        assert max_diff(logits[0, 0], g["draft_logits"][step]) <= DRAFTER_ATOL, f"step {step}"
        assert max_diff(hidden[0, 0], g["draft_hidden"][step]) <= DRAFTER_ATOL, f"step {step}"
        token = mx.argmax(logits[:, -1:], axis=-1)
        tokens.append(int(token.item()))
        inputs = mx.concatenate([lm.model.embed_tokens(token) * scale, hidden], axis=-1)
    assert tokens == meta["tokens"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_drafter_first_input_is_target_embedding_and_hidden(pairs, golden_arrays, golden, variant):
    """inputs_embeds = [target embed(first new token) * sqrt(hidden) ; target last hidden]."""
    target, _ = pairs[variant]
    g, meta = golden_arrays(variant), golden["variants"][variant]["draft"]
    lm = language_model(target.module)
    embed = lm.model.embed_tokens(mx.array([[meta["first_token"]]])) * lm.model.embed_scale
    ours = mx.concatenate([embed, mx.array(g["target_hidden_long"][-1:])[None]], axis=-1)
    assert max_diff(ours, g["draft_inputs"]) <= TARGET_ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_sliding_layers_read_last_window_plus_one(pairs, golden_arrays, golden, variant):
    """The drafter's sliding layers see exactly the newest sliding_window + 1 keys: passing only those
    gives the same logits, one key fewer does not."""
    _, drafter = pairs[variant]
    g, meta = golden_arrays(variant), golden["variants"][variant]["draft"]
    span = drafter.module.sliding_window + 1
    kv = golden_kv(g)
    inputs = mx.array(g["draft_inputs"])
    keys, values = kv[SLIDING]
    assert keys.shape[-2] > span, "the golden prompt must be longer than the window"
    exact = dict(kv, **{SLIDING: (keys[..., -span:, :], values[..., -span:, :])})
    logits, _ = drafter.module(inputs, meta["position"], exact)
    assert max_diff(logits[0, 0], g["draft_logits"][0]) <= DRAFTER_ATOL
    short = dict(kv, **{SLIDING: (keys[..., -span + 1 :, :], values[..., -span + 1 :, :])})
    logits, _ = drafter.module(inputs, meta["position"], short)
    assert max_diff(logits[0, 0], g["draft_logits"][0]) > 10 * DRAFTER_ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_target_cache_holds_the_kv_the_drafter_reads(pairs, golden_arrays, variant):
    """After an mlx-lm prefill, the KV of the target's producer layers (last non-shared layer of each
    type) is what transformers hands the assistant as shared_kv_states: read it in place."""
    target, _ = pairs[variant]
    g = golden_arrays(variant)
    lm = language_model(target.module)
    cache = lm.make_cache()
    ids = mx.array(g["prompt_long"])[None]
    target.module(ids, cache=cache)
    producers = kv_producer_layers(target.text_config)
    for kind, layer_type in (("full", FULL), ("sliding", SLIDING)):
        c = cache[producers[layer_type]]
        keys, values = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]  # no wrap yet after one prefill
        n = g[f"kv_{kind}_k"].shape[-2]
        assert max_diff(keys[..., -n:, :], g[f"kv_{kind}_k"]) <= TARGET_ATOL
        assert max_diff(values[..., -n:, :], g[f"kv_{kind}_v"]) <= TARGET_ATOL
