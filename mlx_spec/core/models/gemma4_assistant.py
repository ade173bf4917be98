"""Gemma 4 multi-token-prediction drafter (`model_type: gemma4_assistant`) in MLX.

Mirrors transformers' `Gemma4AssistantForCausalLM`. One draft step takes

    inputs_embeds = [target_embed(last token) * sqrt(target hidden) ; target last hidden]   (2 * backbone)

projects it to the drafter width (`pre_projection`), runs a few decoder layers whose attention has
queries only: keys and values are the target's own KV of its last sliding and last full producer
layers, read in place (no drafter cache, no drafter prefill), with RoPE on the queries at the
fixed position of the last seen token. The final hidden state gives the logits (a dense tied head,
or the centroid-masked head of E2B/E4B) and, through `post_projection`, the "last hidden" input of
the next draft step.

A dense head can be restricted to `head_size` target tokens (`restrict_head`, `mlx-spec
convert-drafter --head-size`): the tied table keeps only their rows (`head_ids`), every other token
gets logit -inf, probability 0 under the drafter, so rejection sampling stays exact and a draft
step reads vocab / head_size times fewer head bytes. The assistants of 26B-A4B and 31B spend ~0.27B
of their ~0.42B parameters on the 262144-row head.

The decoder layers are mlx-lm's own `gemma4_text.DecoderLayer` (every layer KV-shared, so it
builds no k/v projections); this file adds the projections, the masked embedder and loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import gemma4_text
from mlx_lm.models.base import BaseModelArgs

from ..model_config import SLIDING, normalize_config
from ..target import scatter_to_vocab

@dataclass
class ModelArgs(BaseModelArgs):
    text_config: dict
    backbone_hidden_size: int
    model_type: str = "gemma4_assistant"
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32
    tie_word_embeddings: bool = True
    quantization: Optional[dict] = None
    head_size: int = 0  # rows of a restricted head (0: the whole vocabulary); see restrict_head
    text: gemma4_text.ModelArgs = field(init=False)

    def __post_init__(self):
        text = dict(self.text_config)
        # As in transformers: an assistant shares KV in every layer.
        if not text.get("num_kv_shared_layers"):
            text["num_kv_shared_layers"] = text["num_hidden_layers"]
        self.text = gemma4_text.ModelArgs.from_dict(text)


class MaskedEmbedder(nn.Module):
    """Centroid-masked LM head (E2B/E4B assistants).

    Tokens are grouped into `num_centroids` clusters by `token_ordering`; the top-k clusters by
    centroid score are scored exactly against the tied head, every other token gets the reference's
    fill value (the smallest computed logit minus one).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.top_k = args.centroid_intermediate_top_k
        self.num_centroids = args.num_centroids
        self.vocab_size = args.text.vocab_size
        self.centroids = nn.Linear(args.text.hidden_size, args.num_centroids, bias=False)
        self.token_ordering = mx.zeros((self.vocab_size,), dtype=mx.int32)

    def candidates(self, hidden: mx.array) -> mx.array:
        """Token ids scored exactly for each position: [B, L, top_k * vocab / num_centroids]."""
        scores = self.centroids(hidden)
        top = mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        per_cluster = self.token_ordering.reshape(self.num_centroids, -1)
        return per_cluster[top].reshape(*hidden.shape[:-1], -1)

    def __call__(self, hidden: mx.array, head: nn.Module) -> mx.array:
        ids = self.candidates(hidden)
        rows = head(ids)  # [B, L, n, D]; dequantizes rows of a quantized head
        logits = (rows @ hidden[..., None]).squeeze(-1).astype(hidden.dtype)
        fill = mx.min(logits) - 1.0
        out = mx.full((*hidden.shape[:-1], self.vocab_size), fill, dtype=logits.dtype)
        return mx.put_along_axis(out, ids, logits, axis=-1)


class AssistantBody(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        text = args.text
        self.embed_tokens = nn.Embedding(args.head_size or text.vocab_size, text.hidden_size)  # the tied head
        self.layers = [gemma4_text.DecoderLayer(text, i) for i in range(text.num_hidden_layers)]
        self.norm = nn.RMSNorm(text.hidden_size, eps=text.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.sliding_window = args.text.sliding_window
        hidden, backbone = args.text.hidden_size, args.backbone_hidden_size
        self.model = AssistantBody(args)
        self.pre_projection = nn.Linear(2 * backbone, hidden, bias=False)
        self.post_projection = nn.Linear(hidden, backbone, bias=False)
        if args.use_ordered_embeddings:
            self.masked_embedding = MaskedEmbedder(args)
        if args.head_size:
            self.head_ids = mx.zeros((args.head_size,), dtype=mx.int32)  # the target tokens the head rows score

    @property
    def sliding_span(self) -> int:
        """How many of the newest sliding-layer keys one draft step attends to."""
        return self.sliding_window + 1

    @property
    def layer_types(self) -> list[str]:
        return list(self.args.text.layer_types)

    def __call__(
        self,
        inputs_embeds: mx.array,
        position,
        shared_kv: dict[str, tuple[mx.array, mx.array]],
        masks: Optional[dict[str, mx.array]] = None,
    ) -> tuple[mx.array, mx.array]:
        """One draft step.

        inputs_embeds: [B, L, 2 * backbone] (scaled target embedding ; target or drafter hidden).
        position: RoPE position of the queries (int or mx.array [B]), the last seen token's.
        shared_kv: {"full_attention": (K, V), "sliding_attention": (K, V)}, each [B, kv_heads, S, D],
            RoPE already applied, as the target's producer layers hold them. Full layers attend to all
            S entries, sliding layers to the last `sliding_window + 1` (no causal mask: the query
            stands after every key). The +1 is the reference's: transformers builds the assistant's
            sliding mask with `abs(q - kv) <= sliding_window`, an inclusive bound, so it sees one key
            more than the target's own sliding layers do. Key order within the window does not matter.
        masks: optional per-layer-type boolean masks [B, 1, L, S] instead of the windowing above
            (training on many positions of one sequence at once); the KV is then used whole.
        Returns (logits [B, L, vocab], next hidden [B, L, backbone]).
        """
        h = self.features(inputs_embeds, position, shared_kv, masks)
        return self.head(h), self.post_projection(h)

    def features(self, inputs_embeds, position, shared_kv, masks=None) -> mx.array:
        """The final-normed drafter hidden state of a draft step (see __call__)."""
        kv = dict(shared_kv)
        keys, values = kv[SLIDING]
        span = self.sliding_span
        if masks is None and keys.shape[-2] > span:
            kv[SLIDING] = (keys[..., -span:, :], values[..., -span:, :])
        masks = masks or {}
        h = self.pre_projection(inputs_embeds)
        for layer in self.model.layers:
            h, _, _ = layer(h, masks.get(layer.layer_type), None, shared_kv=kv[layer.layer_type], offset=position)
        return self.model.norm(h)

    def head(self, h: mx.array) -> mx.array:
        """Logits from the final-normed drafter hidden state."""
        if self.args.use_ordered_embeddings:
            return self.masked_embedding(h, self.model.embed_tokens)
        logits = self.model.embed_tokens.as_linear(h)
        if not self.args.head_size:
            return logits
        return scatter_to_vocab(logits, self.head_ids, self.args.text.vocab_size)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        out = {}
        for key, value in weights.items():
            if key == "lm_head.weight" or "rotary_emb" in key:
                continue  # tied to model.embed_tokens; RoPE tables are recomputed
            if key.endswith("token_ordering") or key == "head_ids":
                value = value.astype(mx.int32)
            out[key] = value
        return out


# ----------------------------------------------------------------------------------------------
# Loading and converting


def args_from_config(config: dict) -> ModelArgs:
    return ModelArgs.from_dict(normalize_config(config))


def load_weights(path: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))
    return weights


def build(config: dict, weights: dict[str, mx.array]) -> Model:
    """Instantiate from a config dict and raw (HF or MLX-converted, maybe quantized) weights."""
    model = Model(args_from_config(config))
    weights = model.sanitize(weights)
    if (quantization := config.get("quantization")) is not None:
        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            mode=quantization.get("mode", "affine"),
            class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{p}.scales" in weights,
        )
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def restrict_head(model: Model, config: dict, head_ids) -> None:
    """Keep only the head rows of `head_ids` (target token ids); other tokens get probability 0.
    Updates `config` (head_size) to match. Dense-head float drafters only."""
    if model.args.use_ordered_embeddings:
        raise ValueError("a centroid-masked head (E2B/E4B assistants) scores only a few clusters already; restrict dense heads")
    if model.args.head_size or config.get("quantization"):
        raise ValueError("restrict the head of the float drafter with its whole vocabulary")
    ids = mx.array(sorted({int(i) for i in head_ids}), dtype=mx.int32)
    vocab = model.args.text.vocab_size
    if ids.size == 0 or int(ids[0]) < 0 or int(ids[-1]) >= vocab:
        raise ValueError(f"head ids must be distinct token ids in 0..{vocab - 1}")
    rows = model.model.embed_tokens.weight[ids]
    model.args.head_size = config["head_size"] = int(ids.size)
    model.model.embed_tokens = nn.Embedding(int(ids.size), rows.shape[-1])
    model.model.embed_tokens.weight = rows
    model.head_ids = ids
    mx.eval(model.parameters(), model.head_ids)


def quantize(model: Model, group_size: int, bits: int, mode: str = "affine") -> None:
    """Quantize every Linear and the tied head whose input width fits the group size."""
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        mode=mode,
        class_predicate=lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0,
    )


def convert(src: Path, dst: Path, quantization: Optional[dict] = None, head_ids=None) -> None:
    """Write an MLX-layout copy of a drafter (optionally with its head restricted to `head_ids`,
    then optionally quantized), like mlx-lm's converter does."""
    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    model = build(config, load_weights(src))
    if head_ids is not None:
        restrict_head(model, config, head_ids)
    if quantization is not None:
        quantize(model, quantization["group_size"], quantization["bits"], quantization.get("mode", "affine"))
        config["quantization"] = dict(quantization)
        config["quantization_config"] = dict(quantization)
    dst.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dst / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ("generation_config.json",):
        if (src / extra).exists():
            (dst / extra).write_text((src / extra).read_text())
