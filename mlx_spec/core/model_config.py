"""Reading and normalising Gemma 4 config.json files (targets and drafters).

Released configs carry `global_head_dim` and `num_global_key_value_heads`; transformers >= 5.24
`save_pretrained` writes a `per_layer_config` (per full-attention layer `head_dim` and
`num_key_value_heads`) instead, which mlx-lm ignores. `normalize_text_config` turns the second form
into the first so both load the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError, ModelFilesError

TARGET_TYPES = ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text")
DRAFTER_TYPE = "gemma4_assistant"
ASSISTANT_TYPES = (DRAFTER_TYPE, "gemma4_unified_assistant")  # the released MTP drafters (12B: unified)
DRAFTER_TYPES = (*ASSISTANT_TYPES, "mlx_spec_mtp")
# Gemma 4 12B (`gemma4_unified`): its text decoder is gemma4_text's computation without per-layer
# inputs or MoE (transformers' Gemma4UnifiedTextDecoderLayer: Gemma 2 norms, Gemma 4 attention and
# MLP, layer_scalar; tests/test_parity.py checks it against transformers), so mlx-lm's gemma4 /
# gemma4_text run it. transformers' unified config omits the per-layer-input and MoE fields, whose
# mlx-lm defaults differ (a 256-wide per-layer input, 20 KV-shared layers, a double-wide MLP):
# the unified values are stated explicitly.
MLX_LM_TYPE = {"gemma4_unified": "gemma4", "gemma4_unified_text": "gemma4_text"}
UNIFIED_TEXT_FIXED = {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0, "enable_moe_block": False,
                      "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None}
UNIFIED_TEXT_DEFAULTS = {"num_key_value_heads": 4, "num_kv_shared_layers": 0, "use_double_wide_mlp": False, "attention_k_eq_v": False,
                         "final_logit_softcapping": None, "sliding_window": 1024, "max_position_embeddings": 262144}
SLIDING, FULL = "sliding_attention", "full_attention"


def read_config(path: Path) -> dict:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ModelFilesError(
            f"{path} has no config.json: point to a model folder in the Hugging Face or MLX layout "
            "(config.json, *.safetensors, tokenizer files)."
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFilesError(f"{file} is not valid JSON ({e}); re-download or re-convert the model.") from None
    if not isinstance(config, dict):
        raise ModelFilesError(f"{file} does not hold a JSON object; re-download or re-convert the model.")
    return config


def text_config_of(config: dict) -> dict:
    """The language-model part: nested `text_config` (gemma4, gemma4_assistant) or the top level."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def normalize_text_config(text: dict, where: str = "config.json") -> dict:
    """Return a copy with `global_head_dim` / `num_global_key_value_heads` set (from `per_layer_config` if needed)."""
    text = dict(text)
    if text.get("model_type") == "gemma4_unified_text":
        text = {**UNIFIED_TEXT_DEFAULTS, **text, **UNIFIED_TEXT_FIXED}
    per_layer = text.pop("per_layer_config", None)
    if not per_layer or "global_head_dim" in text:
        return text
    layer_types = text.get("layer_types") or []
    overrides = {}
    for index, values in per_layer.items():
        try:
            layer_type = layer_types[int(index)]
        except (ValueError, IndexError):
            layer_type = index  # keyed by layer type
        if layer_type != FULL:
            raise ConfigError(f"{where}: per_layer_config overrides a {layer_type} layer ({index}); only full-attention overrides are supported.")
        for key, value in values.items():
            if overrides.setdefault(key, value) != value:
                raise ConfigError(f"{where}: per_layer_config gives full-attention layers different {key} values.")
    unknown = set(overrides) - {"head_dim", "num_key_value_heads"}
    if unknown:
        raise ConfigError(f"{where}: per_layer_config sets {sorted(unknown)}, which this runtime does not support.")
    text["global_head_dim"] = overrides.get("head_dim", text.get("head_dim"))
    text["num_global_key_value_heads"] = overrides.get("num_key_value_heads")
    return text


def mlx_lm_overrides(config: dict) -> dict:
    """What mlx-lm's loader must be told on top of a normalised config.json: the text part in the
    normalised form (nested: with the vocabulary size mlx-lm's gemma4 wrapper copies from the top
    level, default 262144), and the mlx-lm model type for the 12B (`gemma4_unified` -> `gemma4`)."""
    overrides: dict = {}
    if isinstance(config.get("text_config"), dict):
        text = dict(config["text_config"])
        if text.get("model_type") in MLX_LM_TYPE:
            text["model_type"] = MLX_LM_TYPE[text["model_type"]]
        overrides.update(text_config=text, vocab_size=text.get("vocab_size", 262144))
    elif config.get("model_type") == "gemma4_unified_text":
        overrides.update({k: v for k, v in config.items() if k in (*UNIFIED_TEXT_FIXED, *UNIFIED_TEXT_DEFAULTS)})
    if config.get("model_type") in MLX_LM_TYPE:
        overrides["model_type"] = MLX_LM_TYPE[config["model_type"]]
    for key in ("global_head_dim", "num_global_key_value_heads"):
        if key in config and "text_config" not in overrides:
            overrides[key] = config[key]
    return overrides


def normalize_config(config: dict, where: str = "config.json") -> dict:
    """Normalise the text part in place of a copy of `config` (nested or top level)."""
    config = dict(config)
    if isinstance(config.get("text_config"), dict):
        config["text_config"] = normalize_text_config(config["text_config"], where)
        return config
    return normalize_text_config(config, where)


def kv_heads(text: dict, layer_type: str) -> int:
    """Number of KV heads the target's layers of this type produce."""
    if layer_type == FULL and text.get("attention_k_eq_v") and text.get("num_global_key_value_heads"):
        return int(text["num_global_key_value_heads"])
    return int(text["num_key_value_heads"])


def head_dim(text: dict, layer_type: str) -> int:
    if layer_type == FULL and text.get("global_head_dim"):
        return int(text["global_head_dim"])
    return int(text["head_dim"])


def kv_producer_layers(text: dict) -> dict[str, int]:
    """Index of the layer whose KV the drafter reads, per layer type: the last non-KV-shared layer of that type."""
    layer_types = text["layer_types"]
    first_shared = len(layer_types) - int(text.get("num_kv_shared_layers") or 0)
    producers = {}
    for i, layer_type in enumerate(layer_types[:first_shared]):
        producers[layer_type] = i
    return producers
