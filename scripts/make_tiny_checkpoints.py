#!/usr/bin/env python3
"""Write tiny random Gemma 4 targets and their MTP drafters in the real on-disk formats.

    python scripts/make_tiny_checkpoints.py OUT_DIR [--no-quantized] [--trained-drafters tests/fixtures/drafters]

For each variant, OUT_DIR/<variant>/target and OUT_DIR/<variant>/drafter hold a Hugging Face
layout checkpoint (config.json, model.safetensors, tokenizer files), named and shaped exactly as
the released google/gemma-4-* checkpoints and their *-assistant drafters are:

  dense   31B-like: sliding + full layers, proportional partial RoPE on full layers, global head
          dim != head dim, attention_k_eq_v with num_global_key_value_heads, final logit
          softcapping. Text-only `gemma4_text` layout. Drafter with a plain (dense) head.
  moe     26B-A4B-like: as dense plus `enable_moe_block` (8 experts, top-2) beside the dense MLP.
          Multimodal `gemma4` layout (text config nested), as the real -it repos. Plain drafter.
  e2b     E2B-like: per-layer embeddings, KV-shared layers, double-wide MLP on shared layers.
          Multimodal layout. Drafter with the ordered / centroid masked embedder.
  unified 12B-like (`gemma4_unified`): 5 sliding + 1 full layers, k_eq_v full layers with one
          global KV head, no per-layer inputs, no MoE; the encoder-free vision and audio embedders'
          weights beside the text ones (a text runtime ignores them); the released 12B config's
          fields (tests/fixtures/hf_saved has the form transformers 5.24 saves: per_layer_config,
          no per-layer-input or MoE fields). Drafter `gemma4_unified_assistant`, dense head.
  dense-4bit, moe-4bit
          4-bit affine copies (MLX-converted, mlx-community layout) of the dense and MoE pairs,
          written with mlx-lm's own converter (target) and our drafter quantizer.

With --trained-drafters, OUT_DIR/<variant>/drafter-trained holds the same drafter config with
weights distilled from the target (scripts/train_tiny_drafters.py, committed under
tests/fixtures/drafters): random drafters are almost never accepted, these are partly right.

Sliding windows are tiny (8 or 12 tokens) so tests cross them many times. Weights are float32,
drawn from numpy's legacy RandomState (a frozen stream: the same bytes on every machine), so the
golden fixtures computed by transformers on them stay valid; tests check the hashes.
Needs numpy, safetensors and tokenizers (all installed with mlx-lm); mlx/mlx-lm for the 4-bit copies.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TOKENIZER_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens and the "
    "target verifies them in one pass. def main():\n    return 42\n"
    "Gemma runs on Apple silicon with MLX. Hello, world! How are you today? "
    "Once upon a time, in a small village by the sea, there lived a man."
)

ROPE_PARAMETERS = {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
}


def _text_config(**overrides) -> dict:
    config = {
        "model_type": "gemma4_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_k_eq_v": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "dtype": "float32",
        "enable_moe_block": False,
        "final_logit_softcapping": 30.0,
        "global_head_dim": 32,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 64,
        "hidden_size_per_layer_input": 0,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
        "max_position_embeddings": 4096,
        "moe_intermediate_size": None,
        "num_attention_heads": 4,
        "num_experts": None,
        "num_global_key_value_heads": None,
        "num_hidden_layers": 6,
        "num_key_value_heads": 2,
        "num_kv_shared_layers": 0,
        "rms_norm_eps": 1e-6,
        "rope_parameters": copy.deepcopy(ROPE_PARAMETERS),
        "sliding_window": 8,
        "tie_word_embeddings": True,
        "top_k_experts": None,
        "use_bidirectional_attention": None,
        "use_cache": True,
        "use_double_wide_mlp": False,
        "vocab_size": VOCAB_SIZE,
        "vocab_size_per_layer_input": VOCAB_SIZE,
    }
    config.update(overrides)
    config["num_hidden_layers"] = len(config["layer_types"])
    return config


VARIANTS = {
    "dense": {
        "layout": "text",
        "seed": 11,
        "text": _text_config(
            attention_k_eq_v=True, num_global_key_value_heads=1, use_bidirectional_attention="vision"
        ),
        "drafter": {"use_ordered_embeddings": False},
    },
    "moe": {
        "layout": "multimodal",
        "seed": 22,
        "text": _text_config(
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            use_bidirectional_attention="vision",
            enable_moe_block=True,
            num_experts=8,
            top_k_experts=2,
            moe_intermediate_size=32,
            intermediate_size=96,
        ),
        "drafter": {"use_ordered_embeddings": False},
    },
    "e2b": {
        "layout": "multimodal",
        "seed": 33,
        "text": _text_config(
            layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2,
            num_key_value_heads=1,
            num_kv_shared_layers=4,
            hidden_size_per_layer_input=8,
            use_double_wide_mlp=True,
            sliding_window=12,
        ),
        "drafter": {"use_ordered_embeddings": True, "num_centroids": 16, "centroid_intermediate_top_k": 4},
    },
    "unified": {
        "layout": "unified",
        "seed": 55,
        "text": _text_config(
            model_type="gemma4_unified_text",
            layer_types=["sliding_attention"] * 5 + ["full_attention"],
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            use_bidirectional_attention="vision",
            sliding_window=10,
        ),
        "drafter": {"use_ordered_embeddings": False},
    },
}
# small encoder-free vision / audio embedders (transformers' Gemma4UnifiedVisionConfig / AudioConfig)
UNIFIED_VISION = {"model_type": "gemma4_unified_vision", "mm_embed_dim": 64, "mm_posemb_size": 8, "output_proj_dims": 64,
                  "patch_size": 4, "pooling_kernel_size": 1, "rms_norm_eps": 1e-6, "initializer_range": 0.02}
UNIFIED_AUDIO = {"model_type": "gemma4_unified_audio", "audio_embed_dim": 16, "rms_norm_eps": 1e-6, "initializer_range": 0.02}
QUANTIZED = {"dense-4bit": "dense", "moe-4bit": "moe", "unified-4bit": "unified"}
# Not written by default: a ~155M-parameter dense shape (620 MB float32) big enough to be
# bandwidth-bound on a CPU with OpenBLAS (bench/run_proxy.sh), with a drafter ~9% of its size.
PROXY = {
    "proxy": {
        "layout": "text",
        "seed": 44,
        "text": _text_config(
            hidden_size=1024, intermediate_size=4096, num_attention_heads=8, head_dim=128, global_head_dim=256,
            num_key_value_heads=2, num_global_key_value_heads=1, attention_k_eq_v=True, vocab_size=32768,
            vocab_size_per_layer_input=32768, sliding_window=16,
            layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2,
        ),
        "drafter": {"use_ordered_embeddings": False},
        "drafter_width": 256,
    },
}
QUANTIZATION = {"group_size": 32, "bits": 4}


def drafter_config(target_text: dict, options: dict, width: int = 32) -> dict:
    """An assistant config shaped like the released *-assistant configs, sized for the target."""
    text = _text_config(
        hidden_size=width,
        intermediate_size=2 * width,
        vocab_size=target_text["vocab_size"],
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        num_kv_shared_layers=4,
        num_attention_heads=4,
        head_dim=target_text["head_dim"],
        global_head_dim=target_text["global_head_dim"],
        num_key_value_heads=target_text["num_key_value_heads"],
        num_global_key_value_heads=target_text["num_global_key_value_heads"],
        attention_k_eq_v=target_text["attention_k_eq_v"],
        sliding_window=target_text["sliding_window"],
        final_logit_softcapping=None,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
    )
    if target_text["model_type"] == "gemma4_unified_text":
        text["model_type"] = "gemma4_unified_text"
    config = {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": "gemma4_assistant",
        "backbone_hidden_size": target_text["hidden_size"],
        "use_ordered_embeddings": False,
        "num_centroids": 2048,
        "centroid_intermediate_top_k": 32,
        "tie_word_embeddings": True,
        "dtype": "float32",
        "text_config": text,
    }
    if target_text["model_type"] == "gemma4_unified_text":
        config.update(architectures=["Gemma4UnifiedAssistantForCausalLM"], model_type="gemma4_unified_assistant")
    config.update(options)
    return config


class _Weights:
    """Deterministic random tensors, named as in the Hugging Face checkpoints."""

    def __init__(self, seed: int):
        self.rng = np.random.RandomState(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def normal(self, name: str, shape, std: float) -> None:
        self.tensors[name] = (self.rng.standard_normal(shape) * std).astype(np.float32)

    def linear(self, name: str, out_dim: int, in_dim: int) -> None:
        self.normal(name, (out_dim, in_dim), in_dim**-0.5)

    def norm(self, name: str, dim: int) -> None:
        # Gemma 4 RMSNorm multiplies by the weight itself (no 1 + w): keep it near 1.
        self.tensors[name] = (1.0 + 0.1 * self.rng.standard_normal(dim)).astype(np.float32)


def _kv_producer_free(text: dict, layer: int) -> bool:
    """True for a KV-shared ("reuse") layer, which has no k/v projections of its own."""
    return layer >= text["num_hidden_layers"] - text["num_kv_shared_layers"]


def _attention_and_mlp(w: _Weights, prefix: str, text: dict, layer: int) -> None:
    hidden = text["hidden_size"]
    full = text["layer_types"][layer] == "full_attention"
    head_dim = text["global_head_dim"] if full else text["head_dim"]
    k_eq_v = text["attention_k_eq_v"] and full
    kv_heads = text["num_key_value_heads"]
    if k_eq_v and text["num_global_key_value_heads"] is not None:
        kv_heads = text["num_global_key_value_heads"]
    attn = f"{prefix}.self_attn"
    w.linear(f"{attn}.q_proj.weight", text["num_attention_heads"] * head_dim, hidden)
    w.norm(f"{attn}.q_norm.weight", head_dim)
    if not _kv_producer_free(text, layer):
        w.linear(f"{attn}.k_proj.weight", kv_heads * head_dim, hidden)
        if not k_eq_v:
            w.linear(f"{attn}.v_proj.weight", kv_heads * head_dim, hidden)
        w.norm(f"{attn}.k_norm.weight", head_dim)
    w.linear(f"{attn}.o_proj.weight", hidden, text["num_attention_heads"] * head_dim)

    inter = text["intermediate_size"]
    if text["use_double_wide_mlp"] and _kv_producer_free(text, layer):
        inter *= 2
    w.linear(f"{prefix}.mlp.gate_proj.weight", inter, hidden)
    w.linear(f"{prefix}.mlp.up_proj.weight", inter, hidden)
    w.linear(f"{prefix}.mlp.down_proj.weight", hidden, inter)
    for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
        w.norm(f"{prefix}.{norm}.weight", hidden)
    w.tensors[f"{prefix}.layer_scalar"] = np.array([1.0 + 0.05 * w.rng.standard_normal()], dtype=np.float32)

    if text["enable_moe_block"]:
        experts, moe_inter = text["num_experts"], text["moe_intermediate_size"]
        w.linear(f"{prefix}.router.proj.weight", experts, hidden)
        w.norm(f"{prefix}.router.scale", hidden)
        w.norm(f"{prefix}.router.per_expert_scale", experts)
        w.normal(f"{prefix}.experts.gate_up_proj", (experts, 2 * moe_inter, hidden), hidden**-0.5)
        w.normal(f"{prefix}.experts.down_proj", (experts, hidden, moe_inter), moe_inter**-0.5)
        for norm in ("post_feedforward_layernorm_1", "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2"):
            w.norm(f"{prefix}.{norm}.weight", hidden)

    per_layer = text["hidden_size_per_layer_input"]
    if per_layer:
        w.linear(f"{prefix}.per_layer_input_gate.weight", per_layer, hidden)
        w.linear(f"{prefix}.per_layer_projection.weight", hidden, per_layer)
        w.norm(f"{prefix}.post_per_layer_input_norm.weight", hidden)


def target_weights(text: dict, seed: int, prefix: str) -> dict[str, np.ndarray]:
    w = _Weights(seed)
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    w.normal(f"{prefix}.embed_tokens.weight", (text["vocab_size"], hidden), hidden**-0.5)
    for i in range(layers):
        _attention_and_mlp(w, f"{prefix}.layers.{i}", text, i)
    w.norm(f"{prefix}.norm.weight", hidden)
    per_layer = text["hidden_size_per_layer_input"]
    if per_layer:
        w.normal(f"{prefix}.embed_tokens_per_layer.weight", (text["vocab_size_per_layer_input"], layers * per_layer), 1.0)
        w.linear(f"{prefix}.per_layer_model_projection.weight", layers * per_layer, hidden)
        w.norm(f"{prefix}.per_layer_projection_norm.weight", per_layer)
    return w.tensors


def drafter_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    text = config["text_config"]
    w = _Weights(seed + 1000)
    hidden, backbone = text["hidden_size"], config["backbone_hidden_size"]
    w.normal("model.embed_tokens.weight", (text["vocab_size"], hidden), hidden**-0.5)
    for i in range(text["num_hidden_layers"]):
        _attention_and_mlp(w, f"model.layers.{i}", text, i)
    w.norm("model.norm.weight", hidden)
    w.linear("pre_projection.weight", hidden, 2 * backbone)
    w.linear("post_projection.weight", backbone, hidden)
    if config["use_ordered_embeddings"]:
        w.linear("masked_embedding.centroids.weight", config["num_centroids"], hidden)
        w.tensors["masked_embedding.token_ordering"] = w.rng.permutation(text["vocab_size"]).astype(np.int64)
    return w.tensors


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: tensors[k] for k in sorted(tensors)}, str(path), metadata={"format": "pt"})


def build_tokenizer():
    """A byte-level BPE tokenizer with Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3, turns 105/106)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = list(SPECIAL_TOKENS)
    specials += [f"<unused{i}>" for i in range(START_OF_TURN_ID - len(specials))]
    specials += ["<start_of_turn>", "<end_of_turn>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    assert tokenizer.token_to_id("<end_of_turn>") == END_OF_TURN_ID
    return tokenizer


def write_tokenizer(out: Path, tokenizer) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "add_bos_token": True,
            "model_max_length": 4096,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(out / "special_tokens_map.json", {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"})


def write_target(out: Path, spec: dict, tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = spec["text"]
    if spec["layout"] == "text":
        config = dict(text, architectures=["Gemma4ForCausalLM"], eos_token_id=[1, END_OF_TURN_ID])
        prefix = "model"
    else:
        config = {
            "architectures": ["Gemma4ForConditionalGeneration"],
            "model_type": "gemma4",
            "text_config": text,
            "vision_config": None,
            "audio_config": None,
            "eos_token_id": [1, END_OF_TURN_ID],
            "tie_word_embeddings": True,
            "dtype": "float32",
            # Released configs omit it (262144 is everyone's default); mlx-lm's gemma4 wrapper
            # copies this top-level value into the text config, so a tiny vocab must be stated.
            "vocab_size": text["vocab_size"],
        }
        prefix = "model.language_model"
    if spec["layout"] == "unified":
        config.update(architectures=["Gemma4UnifiedForConditionalGeneration"], model_type="gemma4_unified",
                      vision_config=UNIFIED_VISION, audio_config=UNIFIED_AUDIO)
        del config["vocab_size"]  # as the released 12B config: mlx-spec must take it from the text config
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, END_OF_TURN_ID], "pad_token_id": 0})
    weights = target_weights(text, spec["seed"], prefix)
    if spec["layout"] == "unified":
        weights.update(unified_embedder_weights(text["hidden_size"], spec["seed"]))
    _save_safetensors(out / "model.safetensors", weights)
    write_tokenizer(out, tokenizer)


def unified_embedder_weights(hidden: int, seed: int) -> dict[str, np.ndarray]:
    """The 12B's encoder-free vision and audio embedders (names and shapes as transformers saves them)."""
    w = _Weights(seed + 2000)
    v, a = UNIFIED_VISION, UNIFIED_AUDIO
    patch = 3 * (v["patch_size"] * v["pooling_kernel_size"]) ** 2
    w.normal("model.embed_vision.pos_embedding", (v["mm_posemb_size"], 2, v["mm_embed_dim"]), 0.02)
    for name, dim in (("patch_ln1", patch), ("patch_ln2", v["mm_embed_dim"]), ("pos_norm", v["mm_embed_dim"])):
        w.norm(f"model.embed_vision.{name}.weight", dim)
        w.normal(f"model.embed_vision.{name}.bias", (dim,), 0.02)
    w.linear("model.embed_vision.patch_dense.weight", v["mm_embed_dim"], patch)
    w.normal("model.embed_vision.patch_dense.bias", (v["mm_embed_dim"],), 0.02)
    w.linear("model.embed_vision.multimodal_embedder.embedding_projection.weight", hidden, v["mm_embed_dim"])
    w.linear("model.embed_audio.embedding_projection.weight", hidden, a["audio_embed_dim"])
    return w.tensors


def write_drafter(out: Path, spec: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = drafter_config(spec["text"], spec["drafter"], spec.get("drafter_width", 32))
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {"num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant"})
    _save_safetensors(out / "model.safetensors", drafter_weights(config, spec["seed"]))


def write_trained_drafter(out: Path, spec: dict, weights_file: Path) -> None:
    """The drafter's config with weights distilled by scripts/train_tiny_drafters.py (partly right drafts)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", drafter_config(spec["text"], spec["drafter"]))
    _write_json(out / "generation_config.json", {"num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant"})
    shutil.copyfile(weights_file, out / "model.safetensors")


def write_quantized(out_root: Path, name: str, source: str) -> None:
    """4-bit MLX copies: the target through mlx-lm's converter, the drafter through ours."""
    from mlx_lm import convert

    from mlx_spec.core.models import gemma4_assistant

    dst = out_root / name
    dst.mkdir(parents=True, exist_ok=True)
    target_dst = dst / "target"
    if target_dst.exists():
        shutil.rmtree(target_dst)
    if VARIANTS[source]["layout"] == "unified":
        _quantize_unified(out_root / source / "target", target_dst)
    else:
        convert(
            str(out_root / source / "target"),
            mlx_path=str(target_dst),
            quantize=True,
            q_bits=QUANTIZATION["bits"],
            q_group_size=QUANTIZATION["group_size"],
        )
    trained = out_root / source / "drafter-trained"
    drafter = trained if trained.exists() else out_root / source / "drafter"
    gemma4_assistant.convert(drafter, dst / "drafter", quantization=QUANTIZATION)


def _quantize_unified(src: Path, dst: Path) -> None:
    """mlx-lm has no gemma4_unified converter: load through mlx-spec (mlx-lm's gemma4 classes), quantize
    with mlx-lm, and save in its layout (language_model.model.*, config.json keeping model_type
    gemma4_unified and the multimodal sub-configs, as MLX conversions of the 12B do)."""
    from mlx_lm.utils import quantize_model, save_config, save_model

    from mlx_spec.core.loading import load_target

    config = json.loads((src / "config.json").read_text())
    model, config = quantize_model(load_target(src).module, config, QUANTIZATION["group_size"], QUANTIZATION["bits"])
    save_model(dst, model)
    save_config(config, dst / "config.json", keep_vision_config=True)
    for file in src.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copyfile(file, dst / file.name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--no-quantized", action="store_true", help="skip the 4-bit MLX copies (needs mlx)")
    parser.add_argument("--variants", nargs="*", default=None, help="subset of: " + ", ".join([*VARIANTS, *QUANTIZED, *PROXY]) + " (proxy only on request)")
    parser.add_argument(
        "--trained-drafters", type=Path, default=None,
        help="folder of <variant>.safetensors from train_tiny_drafters.py (tests/fixtures/drafters): "
        "also write <variant>/drafter-trained, and quantize those drafters for the 4-bit copies",
    )
    args = parser.parse_args(argv)
    wanted = args.variants or [*VARIANTS, *([] if args.no_quantized else QUANTIZED)]
    specs = {**VARIANTS, **PROXY}
    unknown = [v for v in wanted if v not in specs and v not in QUANTIZED]
    if unknown:
        parser.error(f"unknown variants {unknown}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Write into a temporary folder beside OUT_DIR and move into place: no partial checkpoints.
    tokenizer = build_tokenizer()

    def write_pair(root: Path, name: str) -> None:
        spec = specs[name]
        write_target(root / name / "target", spec, tokenizer)
        write_drafter(root / name / "drafter", spec)
        trained = args.trained_drafters / f"{name}.safetensors" if args.trained_drafters else None
        if trained is not None and trained.exists():
            write_trained_drafter(root / name / "drafter-trained", spec, trained)

    with tempfile.TemporaryDirectory(dir=args.out_dir, prefix=".tmp-") as tmp:
        tmp = Path(tmp)
        for name in wanted:
            source = QUANTIZED.get(name)
            if source is not None:
                if not (tmp / source / "target").exists():
                    write_pair(tmp, source)
                write_quantized(tmp, name, source)
            else:
                write_pair(tmp, name)
            print(f"wrote {name}", file=sys.stderr)
        for name in wanted:
            final = args.out_dir / name
            if final.exists():
                shutil.rmtree(final)
            (tmp / name).rename(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
