"""Bandwidth-bound projections from the released configs (no weights needed).

Every weight byte a step touches is read once from memory: a target step reads its dense weights, the
whole tied head, one embedding row and, per MoE layer, the union of the experts its tokens route to;
a drafter step reads the drafter (its dense tied head in full). Tokens per second = bandwidth / bytes
per token; speculative = E[tokens per step] / (time of k drafter steps + one verify of k + 1 tokens).
KV-cache traffic, activations and kernel overheads are ignored: these are ceilings, labelled as
projections everywhere they are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model_config import FULL, head_dim, kv_heads, text_config_of
from ..core.moe import MoEProfile, expected_unique_experts
from ..core.policy import expected_tokens

BYTES_PER_PARAM = {"bf16": 2.0, "8bit": 1.0625, "4bit": 0.5625}  # MLX affine, group 64: +0.5 bit of scale/bias

CHIPS_GBPS = {"M2 Max": 400, "M3 Max": 400, "M4 Max": 546, "M3 Ultra": 819}
# GPU peak (TFLOPS, fp16/fp32 shader rate, top GPU configuration): an assumption for the compute roof
# of batched steps, where B x (k + 1) tokens per weight pass stop being free.
CHIPS_TFLOPS = {"M2 Max": 13.6, "M3 Max": 14.2, "M4 Max": 18.4, "M3 Ultra": 28.4}


@dataclass
class ParamCounts:
    dense: float  # read by every token: attention, dense MLP, norms, router, plus the head
    head: float  # tied V x H head (read in full per token); the input embedding row is negligible
    expert: float  # one expert of one MoE layer
    moe_layers: int
    num_experts: int
    top_k: int


def _attention_params(text: dict, layer_type: str, has_kv: bool = True) -> float:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    d = head_dim(text, layer_type)
    q_o = 2 * hidden * heads * d
    if not has_kv:
        return q_o
    kv = kv_heads(text, layer_type) * d * hidden
    k_eq_v = text.get("attention_k_eq_v") and layer_type == FULL
    return q_o + kv * (1 if k_eq_v else 2)


def target_params(config: dict) -> ParamCounts:
    text = text_config_of(config)
    hidden, layers = text["hidden_size"], text["layer_types"]
    shared = int(text.get("num_kv_shared_layers") or 0)
    dense = 0.0
    for i, layer_type in enumerate(layers):
        dense += _attention_params(text, layer_type, has_kv=i < len(layers) - shared)
        inter = text["intermediate_size"] * (2 if text.get("use_double_wide_mlp") and i >= len(layers) - shared else 1)
        dense += 3 * hidden * inter
        if text.get("hidden_size_per_layer_input"):
            dense += 2 * hidden * text["hidden_size_per_layer_input"]
    moe = bool(text.get("enable_moe_block"))
    if moe:
        dense += len(layers) * hidden * text["num_experts"]  # routers
    return ParamCounts(
        dense=dense,
        head=float(text["vocab_size"] * hidden),
        expert=float(3 * hidden * text["moe_intermediate_size"]) if moe else 0.0,
        moe_layers=len(layers) if moe else 0,
        num_experts=int(text.get("num_experts") or 0),
        top_k=int(text.get("top_k_experts") or 0),
    )


def drafter_params(config: dict, head_size: int = 0) -> float:
    """Parameters a draft step reads; `head_size` > 0: a dense head restricted to that many rows
    (`mlx-spec convert-drafter --head-size`)."""
    text, backbone = text_config_of(config), config["backbone_hidden_size"]
    hidden = text["hidden_size"]
    total = 3 * hidden * backbone  # pre_projection (2 backbone -> hidden) + post_projection
    for layer_type in text["layer_types"]:
        total += _attention_params(text, layer_type, has_kv=False) + 3 * hidden * text["intermediate_size"]
    if config.get("use_ordered_embeddings"):
        top = config.get("centroid_intermediate_top_k", 32) / config.get("num_centroids", 2048)
        return total + hidden * config.get("num_centroids", 2048) + text["vocab_size"] * hidden * top
    return total + (head_size or text["vocab_size"]) * hidden


def profile(config: dict, dtype: str) -> MoEProfile:
    p, b = target_params(config), BYTES_PER_PARAM[dtype]
    return MoEProfile(
        dense_bytes=(p.dense + p.head) * b,
        expert_bytes=[p.expert * b] * p.moe_layers,
        num_experts=max(p.num_experts, 1),
        top_k=max(p.top_k, 1),
    )


def verify_bytes(prof: MoEProfile, n: int, expert_union: bool) -> float:
    if not prof.num_moe_layers:
        return prof.dense_bytes
    unique = expected_unique_experts(n, prof.num_experts, prof.top_k) if expert_union else prof.top_k
    return prof.verify_bytes(n, unique)


def speedup(prof: MoEProfile, draft_bytes: float, alpha: float, k: int, expert_union: bool = True) -> float:
    """Speculative over plain tokens/s at per-position acceptance alpha (k = 0: 1.0)."""
    if k == 0:
        return 1.0
    step = verify_bytes(prof, k + 1, expert_union) + k * draft_bytes
    return expected_tokens([alpha] * k, k) * verify_bytes(prof, 1, expert_union) / step


def best_k(prof: MoEProfile, draft_bytes: float, alpha: float, k_max: int = 8, expert_union: bool = True) -> int:
    return max(range(k_max + 1), key=lambda k: (speedup(prof, draft_bytes, alpha, k, expert_union), -k))


# ----------------------------------------------------------------------------------------------
# At batch B: a step reads the weights once for all rows; its time is the larger of bytes over
# bandwidth and FLOPs over peak compute (a roofline; attention and KV ignored).


def active_params(p: ParamCounts) -> float:
    """Parameters one token multiplies by: dense part, head, and its top-k experts per MoE layer."""
    return p.dense + p.head + p.moe_layers * p.top_k * p.expert


def step_seconds(prof: MoEProfile, tokens: int, target_flops: float, draft_bytes: float, draft_flops: float,
                 k: int, rows: int, gbps: float, tflops: float) -> float:
    """One batched step: k drafter steps over `rows` rows, then a verify of `tokens` = rows x (k + 1)."""
    verify = max(verify_bytes(prof, tokens, True) / (gbps * 1e9), tokens * target_flops / (tflops * 1e12))
    draft = k * max(draft_bytes / (gbps * 1e9), rows * draft_flops / (tflops * 1e12))
    return verify + draft


def batch_tokens_per_s(prof: MoEProfile, target_flops: float, draft_bytes: float, draft_flops: float, alpha: float,
                       k: int, rows: int, gbps: float, tflops: float = float("inf")) -> float:
    """Total tokens/s of `rows` rows drafting k at per-position acceptance alpha (k = 0: batched plain)."""
    seconds = step_seconds(prof, rows * (k + 1), target_flops, draft_bytes, draft_flops, k, rows, gbps, tflops)
    return rows * expected_tokens([alpha] * k, k) / seconds


def best_batch_k(prof, target_flops, draft_bytes, draft_flops, alpha, rows, gbps, tflops, k_max: int = 8) -> int:
    return max(range(k_max + 1), key=lambda k: (batch_tokens_per_s(prof, target_flops, draft_bytes, draft_flops, alpha, k, rows, gbps, tflops), -k))
