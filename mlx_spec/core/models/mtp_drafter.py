"""A Gemma-4-assistant-style MTP drafter for any mlx-lm target (`model_type: mlx_spec_mtp`).

The released Gemma 4 assistants exist only for Gemma 4. This is the same design, generalised and
trained with `mlx-spec distill`:

    inputs = [target embedding of the last seen token ; target (or drafter) last hidden]   (2 x backbone)
      -> RMSNorm each half -> pre_projection -> a few layers -> final norm -> post_projection
      -> next hidden h (backbone width): the next draft step's "last hidden"
      -> logits = head_norm(h) @ E[head_ids]^T, E the target's own output embedding (tied table or lm_head)

- Attention has queries only: each layer reads, in place, the KV of one target layer (the last
  sliding and the last full layer where the target has both, the last layer otherwise), rotating
  its queries with that layer's own RoPE at the fixed position of the last seen token. Full layers
  attend to every cached key, sliding layers to the newest `sliding_window`.
- The head scores `head_ids`, the target tokens the training data made most likely (the whole
  vocabulary when empty), with rows of the target's table gathered once when the drafter is
  attached: no second vocab x d matrix. Other tokens get -inf (probability 0 under the drafter).
- The config names the target it was trained for; `check_target` refuses any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.base import BaseModelArgs

from ..model_config import SLIDING
from ..target import Target, output_head, project_to_vocab, scatter_to_vocab

MODEL_TYPE = "mlx_spec_mtp"


@dataclass
class LayerArgs(BaseModelArgs):
    reads_layer: int  # index of the target layer whose KV this layer attends to
    layer_type: str  # FULL or SLIDING (that target layer's type)
    num_attention_heads: int
    num_key_value_heads: int  # the target layer's KV heads
    head_dim: int


@dataclass
class ModelArgs(BaseModelArgs):
    target: dict  # what it was trained for: name, model_type, hidden_size, vocab_size, num_hidden_layers
    backbone_hidden_size: int
    hidden_size: int
    intermediate_size: int
    layers: list
    head_size: int = 0  # number of target tokens the head scores (0: the whole vocabulary)
    sliding_window: Optional[int] = None
    rms_norm_eps: float = 1e-6
    model_type: str = MODEL_TYPE
    layer_args: list = field(init=False)

    def __post_init__(self):
        self.layer_args = [layer if isinstance(layer, LayerArgs) else LayerArgs.from_dict(layer) for layer in self.layers]


def target_signature(module: nn.Module, name: str) -> dict:
    """The facts about a target that a drafter trained on it depends on."""
    lm = getattr(module, "language_model", module)
    args = lm.args
    return {
        "name": name,
        "model_type": getattr(args, "model_type", type(lm).__module__.rsplit(".", 1)[-1]),
        "hidden_size": int(args.hidden_size),
        "vocab_size": int(args.vocab_size),
        "num_hidden_layers": int(args.num_hidden_layers),
    }


class DraftAttention(nn.Module):
    def __init__(self, hidden: int, spec: LayerArgs, eps: float):
        super().__init__()
        self.n_heads, self.head_dim = spec.num_attention_heads, spec.head_dim
        self.scale = spec.head_dim**-0.5
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=eps)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)

    def __call__(self, x: mx.array, kv: tuple[mx.array, mx.array], rope, position, mask) -> mx.array:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim)).transpose(0, 2, 1, 3)
        q = rope(q, offset=position)
        keys, values = kv
        out = mx.fast.scaled_dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    def __init__(self, args: ModelArgs, spec: LayerArgs):
        super().__init__()
        self.layer_type = spec.layer_type
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.self_attn = DraftAttention(args.hidden_size, spec, args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)

    def __call__(self, x, kv, rope, position, mask):
        x = x + self.self_attn(self.input_layernorm(x), kv, rope, position, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = MODEL_TYPE
        backbone, hidden = args.backbone_hidden_size, args.hidden_size
        self.embed_norm = nn.RMSNorm(backbone, eps=args.rms_norm_eps)
        self.hidden_norm = nn.RMSNorm(backbone, eps=args.rms_norm_eps)
        self.pre_projection = nn.Linear(2 * backbone, hidden, bias=False)
        self.layers = [DraftLayer(args, spec) for spec in args.layer_args]
        self.norm = nn.RMSNorm(hidden, eps=args.rms_norm_eps)
        self.post_projection = nn.Linear(hidden, backbone, bias=False)
        self.head_norm = nn.RMSNorm(backbone, eps=args.rms_norm_eps)  # the target's logits come from a normed hidden too
        self.head_ids = mx.zeros((args.head_size,), dtype=mx.int32)
        # Bound by attach(): the target layers' RoPE and the gathered head rows (not parameters).
        self._ropes: dict[str, Any] = {}
        self._head_rows: Optional[mx.array] = None
        self._lm = None  # the target's language model: its whole output embedding when head_size is 0

    # -- binding to the target ------------------------------------------------------------------
    def attach(self, target_module: nn.Module) -> "Model":
        """Borrow the target's RoPE modules and output-embedding rows (call once per target)."""
        lm = getattr(target_module, "language_model", target_module)
        layers = lm.model.layers
        self._ropes = {spec.layer_type: layers[spec.reads_layer].self_attn.rope for spec in self.args.layer_args}
        self._head_rows = None
        if self.args.head_size:
            self._head_rows = output_rows(lm, self.head_ids)
            mx.eval(self._head_rows)
        else:
            self._lm = lm
        return self

    @property
    def attached(self) -> bool:
        return bool(self._ropes)

    @property
    def sliding_span(self) -> int:
        """How many of the newest sliding-layer keys one draft step attends to."""
        return int(self.args.sliding_window or 0)

    @property
    def layer_types(self) -> list[str]:
        return [spec.layer_type for spec in self.args.layer_args]

    # -- one draft step ---------------------------------------------------------------------------
    def __call__(self, inputs_embeds, position, shared_kv, masks: Optional[dict] = None):
        """inputs_embeds [B, L, 2 * backbone] -> (logits [B, L, vocab], next hidden [B, L, backbone]).

        As gemma4_assistant.Model: `position` is the queries' RoPE position, `shared_kv` maps a layer
        type to the target's (K, V) [B, kv_heads, S, D]; `masks` (training) maps a layer type to a
        boolean [L, S] mask, with the queries then at positions position .. position + L - 1.
        """
        hidden = self.hidden_state(inputs_embeds, position, shared_kv, masks)
        return self.logits(hidden), hidden

    def hidden_state(self, inputs_embeds, position, shared_kv, masks=None) -> mx.array:
        if not self.attached:
            raise RuntimeError("attach(target) the drafter before drafting")
        backbone = self.args.backbone_hidden_size
        e, h = inputs_embeds[..., :backbone], inputs_embeds[..., backbone:]
        x = self.pre_projection(mx.concatenate([self.embed_norm(e), self.hidden_norm(h)], axis=-1))
        masks = masks or {}
        for layer in self.layers:
            kv = shared_kv[layer.layer_type]
            if masks.get(layer.layer_type) is None and layer.layer_type == SLIDING and kv[0].shape[-2] > self.sliding_span:
                kv = (kv[0][..., -self.sliding_span :, :], kv[1][..., -self.sliding_span :, :])
            x = layer(x, kv, self._ropes[layer.layer_type], position, masks.get(layer.layer_type))
        return self.post_projection(self.norm(x))

    def head_logits(self, hidden: mx.array) -> mx.array:
        """Logits over `head_ids` only ([..., head_size]); the whole vocabulary when head_size is 0."""
        hidden = self.head_norm(hidden)
        if self._head_rows is None:
            return project_to_vocab(self._lm, hidden)
        return hidden @ self._head_rows.T

    def logits(self, hidden: mx.array) -> mx.array:
        """Full-vocabulary logits: -inf outside head_ids."""
        scores = self.head_logits(hidden)
        if self._head_rows is None:
            return scores
        return scatter_to_vocab(scores, self.head_ids, self.args.target["vocab_size"])


def output_rows(lm: nn.Module, ids: mx.array) -> mx.array:
    """Rows `ids` of the target's output embedding, dequantized if it is quantized."""
    head = output_head(lm)
    if isinstance(head, (nn.Embedding, nn.QuantizedEmbedding)):
        return head(ids)
    if isinstance(head, nn.QuantizedLinear):
        return mx.dequantize(head.weight[ids], head.scales[ids], head.get("biases")[ids] if "biases" in head else None,
                             head.group_size, head.bits)
    return head.weight[ids]


# ----------------------------------------------------------------------------------------------
# Building, saving, loading


def new(target_module: nn.Module, target_name: str, layers: Optional[int] = None, hidden_size: Optional[int] = None,
        intermediate_size: Optional[int] = None, head_ids: Optional[list[int]] = None) -> Model:
    """A fresh drafter shaped for `target_module` (see the module docstring for the layer choice)."""
    target = Target(target_module, {}, track_experts=False)
    lm = target.lm
    backbone = target.hidden_size
    hidden_size = hidden_size or backbone
    reads = sorted(target.producers.items(), key=lambda item: item[1])  # (type, layer index)
    specs = []
    for layer_type, index in reads:
        attn = lm.model.layers[index].self_attn
        n_kv = int(getattr(attn, "n_kv_heads", getattr(attn, "num_key_value_heads", lm.args.num_key_value_heads)))
        head_dim = int(getattr(attn, "head_dim", backbone // lm.args.num_attention_heads))
        n_heads = int(getattr(attn, "n_heads", getattr(attn, "num_attention_heads", lm.args.num_attention_heads)))
        specs.append({"reads_layer": index, "layer_type": layer_type, "num_attention_heads": n_heads,
                      "num_key_value_heads": n_kv, "head_dim": head_dim})
    if layers and layers > len(specs):  # extra layers read the last full (or only) layer again
        specs += [dict(specs[-1]) for _ in range(layers - len(specs))]
    args = ModelArgs(
        target=target_signature(target_module, target_name),
        backbone_hidden_size=backbone,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        layers=specs,
        head_size=len(head_ids or []),
        sliding_window=target.sliding_window if SLIDING in target.producers else None,
    )
    model = Model(args)
    if head_ids:
        model.head_ids = mx.array(head_ids, dtype=mx.int32)
    return model


def config_of(model: Model) -> dict:
    a = model.args
    return {
        "model_type": MODEL_TYPE,
        "target": a.target,
        "backbone_hidden_size": a.backbone_hidden_size,
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "layers": [dict(spec.__dict__) for spec in a.layer_args],
        "head_size": a.head_size,
        "sliding_window": a.sliding_window,
        "rms_norm_eps": a.rms_norm_eps,
    }


def save(model: Model, out: Path, dtype=mx.float16, extra: Optional[dict] = None) -> None:
    """config.json + model.safetensors (float weights stored as `dtype`, head_ids as int32)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = config_of(model)
    if extra:
        config.update(extra)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build(config: dict, weights: dict[str, mx.array], dtype=mx.float32) -> Model:
    model = Model(ModelArgs.from_dict(config))
    weights = {k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v.astype(mx.int32)) for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def check_target(config: dict, target_module: nn.Module, target_name: str, drafter_name: str) -> list[str]:
    """Mismatches between the target a drafter was trained for and `target_module` (empty: fits)."""
    want, have = config.get("target") or {}, target_signature(target_module, target_name)
    problems = [f"{key}: trained for {want.get(key)}, target has {have[key]}"
                for key in ("model_type", "hidden_size", "vocab_size", "num_hidden_layers") if want.get(key) != have[key]]
    if not problems:
        lm = getattr(target_module, "language_model", target_module)
        for spec in config.get("layers", []):
            attn = lm.model.layers[spec["reads_layer"]].self_attn
            if int(getattr(attn, "head_dim", spec["head_dim"])) != spec["head_dim"]:
                problems.append(f"layer {spec['reads_layer']} head_dim: drafter {spec['head_dim']}, target {attn.head_dim}")
    return problems
