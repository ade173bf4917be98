"""MoE-aware verify: exact expert counts, expert bytes, grouped verify, and the draft length they imply."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_spec.core import configs
from mlx_spec.core.loading import load_pair
from mlx_spec.core.moe import MoEProfile, expected_unique_experts
from mlx_spec.core.policy import AdaptivePolicy, StepCosts
from mlx_spec.tools.projection import BYTES_PER_PARAM, best_k, drafter_params, profile, speedup
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
from mlx_spec.core.target import Target
from test_policy import simulate

E, TOP_K, MOE_LAYERS = 8, 2, 6


class ForcedRouter(nn.Module):
    """Token i of a forward goes to experts {i mod E, (i + 1) mod E}: n tokens load min(E, n + 1)."""

    def __call__(self, x):
        i = mx.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:-1])
        indices = mx.stack([i % E, (i + 1) % E], axis=-1)
        return indices, mx.full(indices.shape, 0.5)


def load_target(tiny, variant="moe", **kw):
    drafter = "drafter-trained" if variant == "moe" else "drafter"
    pair = load_pair(tiny / variant / "target", tiny / variant / drafter)
    return Target(pair.target.module, pair.target.text_config, **kw), pair.drafter.module


@pytest.mark.parametrize("variant", ["moe", "moe-4bit"])
def test_counts_are_exact_on_forced_routing(tiny, variant):
    target, drafter = load_target(tiny, variant)
    for layer in target.lm.layers:
        layer.router = ForcedRouter()
    prompt = [2] + list(range(30, 45))
    for k in (0, 1, 3, 8):
        stats = SpecStats()
        token_ids(speculative_generate_step(prompt, target, drafter, draft_tokens=k, max_tokens=40, stats=stats))
        forwards = [len(prompt)] + [len(d) + 1 for d in stats.drafts_per_step]
        expected = MOE_LAYERS * sum(min(E, n + 1) for n in forwards)
        assert stats.expert_loads == expected, (k, stats.expert_loads, expected)
        assert stats.expert_bytes == pytest.approx(expected * target.moe.profile.expert_bytes[0])


def test_expert_bytes_follow_the_dtype(tiny):
    floats, _ = load_target(tiny, "moe")
    quant, _ = load_target(tiny, "moe-4bit")
    hidden, inter = 64, 32
    assert floats.moe.profile.expert_bytes[0] == 3 * hidden * inter * 4  # float32 gate, up, down
    # 4-bit, group 32: packed weights + float32 scale and bias per group
    packed = 3 * hidden * inter // 2
    scales = 3 * (hidden * inter // 32) * 2 * 4
    assert quant.moe.profile.expert_bytes[0] == packed + scales


@pytest.mark.parametrize("variant", ["moe", "moe-4bit"])
def test_greedy_identical_with_instrumentation(tiny, variant):
    """Counting and the grouped (sorted-by-expert) verify change no token: compared with mlx-lm's own path."""
    plain_target, drafter = load_target(tiny, variant, track_experts=False)
    prompt = [2] + list(np.random.RandomState(4).randint(5, 512, size=30))
    reference = token_ids(speculative_generate_step(prompt, plain_target, None, max_tokens=120))
    tracked, _ = load_target(tiny, variant)
    assert tracked.moe is not None and plain_target.moe is None
    for k in (0, 2, 5):
        stats = SpecStats()
        assert token_ids(speculative_generate_step(prompt, tracked, drafter, draft_tokens=k, max_tokens=120, stats=stats)) == reference
        assert stats.expert_loads > 0


def test_grouped_verify_matches_ungrouped_logits(tiny):
    target, _ = load_target(tiny, "moe")
    ids = mx.array([[2, 17, 9, 33, 41, 5, 77, 8, 100]])
    grouped = target.forward(ids, target.make_cache())[0]
    for probe in target.moe.probes:
        probe.group_tokens = False
    ungrouped = target.forward(ids, target.make_cache())[0]
    assert float(mx.abs(grouped - ungrouped).max()) < 1e-5


def test_json_stats_report_expert_traffic(tiny):
    res = subprocess.run([sys.executable, "-m", "mlx_spec.cli", "generate", "-m", str(tiny / "moe" / "target"),
                          "-d", str(tiny / "moe" / "drafter-trained"), "--prompt-ids", "2,17,9", "--max-tokens", "30",
                          "--draft-tokens", "3", "--ignore-eos", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)["stats"]
    assert stats["expert_loads"] > 0 and stats["expert_bytes"] > 0 and stats["decode_expert_loads_per_token"] > 0


def test_union_formula():
    assert expected_unique_experts(1, 128, 8) == pytest.approx(8)
    assert [round(expected_unique_experts(n, 128, 8), 1) for n in (2, 4, 8)] == [15.5, 29.1, 51.6]


def test_policy_picks_shorter_drafts_for_moe_than_dense():
    """Same acceptance, same drafter cost share: pricing the expert union shortens the draft."""
    prof = MoEProfile(dense_bytes=1.0, expert_bytes=[0.25 / 8] * 4, num_experts=128, top_k=8)  # experts: 50% of a step
    draft = 0.1 * prof.verify_bytes(1)
    moe_costs = StepCosts([k * draft + prof.verify_bytes(k + 1) for k in range(9)], smoothing=0.0)  # as byte_costs prices an MoE
    dense_costs = StepCosts([k * draft + prof.verify_bytes(1) for k in range(9)], smoothing=0.0)
    for alpha in (0.6, 0.8, 0.9):
        k_moe = int(np.median(simulate(AdaptivePolicy(8, moe_costs), alpha)[100:]))
        k_dense = int(np.median(simulate(AdaptivePolicy(8, dense_costs), alpha)[100:]))
        assert k_moe < k_dense, (alpha, k_moe, k_dense)


def test_projection_of_released_models():
    """26B-A4B 4-bit with the bf16 drafter: about 1.1x at best, policy k <= 2 or plain; 31B: long drafts."""
    moe = profile(configs.released_config("gemma-4-26B-A4B-it"), "4bit")
    dense = profile(configs.released_config("gemma-4-31B-it"), "4bit")
    moe_draft = drafter_params(configs.released_config("gemma-4-26B-A4B-it-assistant")) * BYTES_PER_PARAM["bf16"]
    dense_draft = drafter_params(configs.released_config("gemma-4-31B-it-assistant")) * BYTES_PER_PARAM["bf16"]
    assert max(speedup(moe, moe_draft, 0.9, k) for k in range(1, 9)) < 1.15
    assert best_k(moe, moe_draft, 0.7) == 0 and best_k(moe, moe_draft, 0.9) <= 2
    assert best_k(dense, dense_draft, 0.7) >= 4
    assert speedup(dense, dense_draft, 0.9, 4) == pytest.approx(3.36, abs=0.05)  # peers.md's bandwidth model
    assert best_k(moe, moe_draft, 0.9, expert_union=False) > best_k(moe, moe_draft, 0.9)


def test_projection_at_batch_trades_places():
    """At batch, the MoE's speedup grows with B (batched plain already loads most experts) and the
    dense 31B's shrinks (its batched plain step nears the compute roof)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import projections

    data = projections.build()["models"]

    def best(model, batch, alpha=0.8):
        return data[model]["batch"][batch]["alphas"][alpha]["roofline"]["speedup"]

    assert best("gemma-4-26B-A4B-it 4bit", 8) > best("gemma-4-26B-A4B-it 4bit", 1) + 0.2
    assert best("gemma-4-31B-it 4bit", 8) < best("gemma-4-31B-it 4bit", 1) - 1.0
    plain = [data["gemma-4-26B-A4B-it 4bit"]["batch"][b]["plain_tokens_per_s"] for b in (1, 2, 4, 8)]
    assert plain == sorted(plain) and plain[-1] < 8 * plain[0]  # more rows, more experts loaded per step
