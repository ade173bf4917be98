"""Loading targets and drafters from every on-disk form, and every validation error."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from conftest import FIXTURES, QUANTIZED, VARIANTS
from mlx_spec.core import configs
from mlx_spec.core.errors import ConfigError, ModelFilesError, PairMismatchError
from mlx_spec.core.loading import (
    check_pair,
    default_drafter,
    load_drafter,
    load_pair,
    load_target,
    load_tokenizer,
    resolve_path,
)
from mlx_spec.core.model_config import normalize_text_config


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- on-disk forms


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_saved_configs_load_like_released_ones(tiny, tmp_path, golden_arrays, variant):
    """transformers 5.24's save_pretrained writes per_layer_config instead of global_head_dim /
    num_global_key_value_heads; both forms give the same model."""
    g = golden_arrays(variant)
    target_dir = copy_model(tiny / variant / "target", tmp_path / "target")
    drafter_dir = copy_model(tiny / variant / "drafter", tmp_path / "drafter")
    for role, folder in (("target", target_dir), ("drafter", drafter_dir)):
        saved = json.loads((FIXTURES / "hf_saved" / f"{variant}-{role}.json").read_text())
        text = saved.get("text_config", saved)
        assert "per_layer_config" in text and "global_head_dim" not in text
        (folder / "config.json").write_text(json.dumps(saved))
    pair = load_pair(target_dir, drafter_dir)
    ids = mx.array(g["prompt_long"])[None]
    assert float(mx.abs(pair.target.module(ids)[0] - mx.array(g["target_logits_long"])).max()) <= 2e-4


def test_per_layer_config_normalisation():
    text = {"layer_types": ["sliding_attention", "full_attention"], "head_dim": 16, "attention_k_eq_v": True,
            "per_layer_config": {"1": {"head_dim": 32, "num_key_value_heads": 1}}}
    out = normalize_text_config(text)
    assert out["global_head_dim"] == 32 and out["num_global_key_value_heads"] == 1
    assert "per_layer_config" not in out
    with pytest.raises(ConfigError, match="sliding_attention"):
        normalize_text_config(dict(text, per_layer_config={"0": {"head_dim": 8}}))


def dequantized(module):
    from mlx_lm.utils import dequantize_model

    import copy

    return dequantize_model(copy.deepcopy(module))


@pytest.mark.parametrize("variant", QUANTIZED)
def test_quantized_copies_load_and_run(tiny, variant, golden_arrays):
    """The 4-bit MLX (mlx-community layout) copies load, are really quantized, and compute what their
    weights say: the quantized kernels match a dequantized float copy (max |diff| <= 1e-3). Against
    the float32 original they only correlate (> 0.5): 4-bit rounding of tiny random weights is coarse."""
    source = variant.removesuffix("-4bit")
    pair = load_pair(tiny / variant / "target", tiny / variant / "drafter")
    assert pair.target.config["quantization"]["bits"] == 4 and pair.drafter.config["quantization"]["bits"] == 4
    for module in (pair.target.module, pair.drafter.module):
        assert any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in module.named_modules())
    g = golden_arrays(source)
    ids = mx.array(g["prompt_long"])[None]
    logits = pair.target.module(ids)
    assert float(mx.abs(logits - dequantized(pair.target.module)(ids)).max()) <= 1e-3
    assert np.corrcoef(np.array(logits).ravel(), g["target_logits_long"].ravel())[0, 1] > 0.5

    kv = {"full_attention": (mx.array(g["kv_full_k"]), mx.array(g["kv_full_v"])),
          "sliding_attention": (mx.array(g["kv_sliding_k"]), mx.array(g["kv_sliding_v"]))}
    position, inputs = len(g["prompt_long"]), mx.array(g["draft_inputs"])
    dl, dh = pair.drafter.module(inputs, position, kv)
    assert dl.shape == (1, 1, 512) and dh.shape == (1, 1, 64)
    ref_l, ref_h = dequantized(pair.drafter.module)(inputs, position, kv)
    assert float(mx.abs(dl - ref_l).max()) <= 1e-3 and float(mx.abs(dh - ref_h).max()) <= 1e-3
    float_drafter = load_drafter(tiny / source / "drafter-trained").module  # what the 4-bit copy was made from
    fl, _ = float_drafter(inputs, position, kv)
    assert np.corrcoef(np.array(dl).ravel(), np.array(fl).ravel())[0, 1] > 0.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenizer_round_trips(tiny, variant):
    pair = load_pair(tiny / variant / "target", tiny / variant / "drafter", lazy=True)
    tok = load_tokenizer(pair.target.path, pair.target.config)
    text = "Speculative decoding on Apple silicon: 42 tokens!"
    ids = tok.encode(text)
    assert ids[0] == 2  # <bos>
    assert tok.decode(ids[1:]) == text
    assert 106 in tok.eos_token_ids


# ---------------------------------------------------------------- released configs


@pytest.mark.parametrize("target", configs.TARGETS)
def test_released_pairs_fit_and_cross_pairs_do_not(target):
    check_pair(configs.released_config(target), configs.released_config(target + "-assistant"), target, target + "-assistant")
    for other in configs.TARGETS:
        if other == target:
            continue
        with pytest.raises(PairMismatchError) as e:
            check_pair(configs.released_config(target), configs.released_config(other + "-assistant"), target, other + "-assistant")
        assert f"google/{target}-assistant" in str(e.value) and target in str(e.value) and other in str(e.value)


def test_default_drafter_names():
    assert default_drafter("google/gemma-4-E2B-it") == "google/gemma-4-E2B-it-assistant"
    assert default_drafter("mlx-community/gemma-4-26B-A4B-it-4bit") == "google/gemma-4-26B-A4B-it-assistant"
    assert default_drafter("someone/llama") is None


# ---------------------------------------------------------------- errors


def test_wrong_drafter_names_both_models(tiny):
    with pytest.raises(PairMismatchError) as e:
        load_pair(tiny / "e2b" / "target", tiny / "dense" / "drafter")
    msg = str(e.value)
    assert "e2b/target" in msg and "dense/drafter" in msg and "sliding_window" in msg
    with pytest.raises(PairMismatchError, match="backbone_hidden_size"):
        bad = json.loads((tiny / "dense" / "drafter" / "config.json").read_text())
        check_pair(json.loads((tiny / "dense" / "target" / "config.json").read_text()), dict(bad, backbone_hidden_size=128), "t", "d")


def test_head_geometry_mismatch(tiny):
    target = json.loads((tiny / "dense" / "target" / "config.json").read_text())
    drafter = json.loads((tiny / "dense" / "drafter" / "config.json").read_text())
    drafter["text_config"]["global_head_dim"] = 64
    with pytest.raises(PairMismatchError, match="global_head_dim"):
        check_pair(target, drafter, "t", "d")
    drafter["text_config"].update(global_head_dim=32, num_attention_heads=3)
    with pytest.raises(PairMismatchError, match="query heads"):
        check_pair(target, drafter, "t", "d")
    drafter["text_config"].update(num_attention_heads=4, vocab_size=1024)
    with pytest.raises(PairMismatchError, match="vocab_size"):
        check_pair(target, drafter, "t", "d")


def test_no_drafter_for_local_target(tiny):
    with pytest.raises(ModelFilesError, match="no drafter given"):
        load_pair(tiny / "dense" / "target")


def test_roles_swapped(tiny):
    with pytest.raises(ConfigError, match="not a target"):
        load_target(tiny / "dense" / "drafter")
    with pytest.raises(ConfigError, match="not a drafter: pass a Gemma 4 MTP drafter"):
        load_drafter(tiny / "dense" / "target")


def test_missing_and_corrupt_files(tiny, tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        resolve_path(tmp_path / "nowhere")
    folder = copy_model(tiny / "dense" / "target", tmp_path / "t")
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFilesError, match="corrupt|do not match"):
        load_target(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFilesError, match="no \\*.safetensors"):
        load_target(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFilesError, match="not valid JSON"):
        load_target(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFilesError, match="no config.json"):
        load_target(folder)

    drafter = copy_model(tiny / "dense" / "drafter", tmp_path / "d")
    (drafter / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFilesError, match="corrupt"):
        load_drafter(drafter)


def test_weights_that_do_not_match_config(tiny, tmp_path):
    target = copy_model(tiny / "dense" / "target", tmp_path / "t")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(dict(config, hidden_size=128)))
    with pytest.raises(ModelFilesError, match="do not match its config.json"):
        load_target(target)
    drafter = copy_model(tiny / "dense" / "drafter", tmp_path / "d")
    config = json.loads((drafter / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96
    (drafter / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFilesError, match="do not match its config.json"):
        load_drafter(drafter)


def test_bad_drafter_config(tiny, tmp_path):
    drafter = copy_model(tiny / "dense" / "drafter", tmp_path / "d")
    config = json.loads((drafter / "config.json").read_text())
    config["text_config"]["num_kv_shared_layers"] = 2
    (drafter / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="KV-shared"):
        load_drafter(drafter)
    config["text_config"]["num_kv_shared_layers"] = 4
    config.update(use_ordered_embeddings=True, num_centroids=7)
    (drafter / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="num_centroids"):
        load_drafter(drafter)
    del config["backbone_hidden_size"]
    (drafter / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="backbone_hidden_size"):
        load_drafter(drafter)


def test_not_an_mlx_lm_model(tiny, tmp_path):
    folder = copy_model(tiny / "dense" / "target", tmp_path / "t")
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    with pytest.raises(ConfigError, match="'no_such_arch'.*mlx-lm cannot load"):
        load_target(folder)


def test_other_architecture_config_over_gemma4_weights(tiny, tmp_path):
    """A loadable architecture whose config does not describe the weights: a clear error, no traceback."""
    folder = copy_model(tiny / "dense" / "target", tmp_path / "t")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
                                                    "num_attention_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 512}))
    with pytest.raises(ModelFilesError, match="do not match its config.json"):
        load_target(folder)


def test_missing_tokenizer(tiny, tmp_path):
    folder = copy_model(tiny / "dense" / "target", tmp_path / "t")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).unlink()
    with pytest.raises(ModelFilesError, match="no tokenizer files"):
        load_tokenizer(folder, {})


def test_offline_hub_id_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelFilesError, match="not in the local Hugging Face cache"):
        resolve_path("google/gemma-4-E2B-it")


def test_unified_config_without_per_layer_input_fields(tiny, tmp_path, golden_arrays):
    """A gemma4_unified config as transformers builds it from scratch has no per-layer-input or MoE
    fields (its Gemma4UnifiedTextConfig removes them), and mlx-lm's defaults for them would build a
    different model (256-wide per-layer inputs, 20 KV-shared layers, double-wide MLPs)."""
    target = copy_model(tiny / "unified" / "target", tmp_path / "target")
    config = json.loads((target / "config.json").read_text())
    for key in ("hidden_size_per_layer_input", "vocab_size_per_layer_input", "enable_moe_block", "num_experts",
                "top_k_experts", "moe_intermediate_size", "num_kv_shared_layers", "use_double_wide_mlp"):
        config["text_config"].pop(key, None)
    (target / "config.json").write_text(json.dumps(config))
    text = normalize_text_config(config["text_config"])
    assert text["hidden_size_per_layer_input"] == 0 and text["num_kv_shared_layers"] == 0 and not text["use_double_wide_mlp"]
    g = golden_arrays("unified")
    logits = load_target(target).module(mx.array(g["prompt_long"])[None])[0]
    assert float(mx.abs(logits - mx.array(g["target_logits_long"])).max()) <= 2e-4


def test_unified_names_and_bundled_configs():
    assert default_drafter("google/gemma-4-12B-it") == "google/gemma-4-12B-it-assistant"
    assert default_drafter("mlx-community/gemma-4-12B-it-4bit") == "google/gemma-4-12B-it-assistant"
    target, drafter = configs.released_config("gemma-4-12B-it"), configs.released_config("gemma-4-12B-it-assistant")
    assert target["model_type"] == "gemma4_unified" and drafter["model_type"] == "gemma4_unified_assistant"
    assert configs.released_target_like(target["text_config"]) == "gemma-4-12B-it"
