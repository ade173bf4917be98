"""The tiny checkpoints exercise every feature of the released models, with the released field names."""

from __future__ import annotations

import json

import pytest

from conftest import VARIANTS
from mlx_spec.core import configs
from mlx_spec.core.model_config import text_config_of


def test_variants_cover_every_released_feature(tiny):
    texts = {v: text_config_of(json.loads((tiny / v / "target" / "config.json").read_text())) for v in VARIANTS}
    drafters = {v: json.loads((tiny / v / "drafter" / "config.json").read_text()) for v in VARIANTS}
    assert all({"sliding_attention", "full_attention"} <= set(t["layer_types"]) for t in texts.values())
    assert all(t["sliding_window"] <= 16 for t in texts.values())
    assert all(t["rope_parameters"]["full_attention"]["rope_type"] == "proportional" for t in texts.values())
    assert all(t["global_head_dim"] != t["head_dim"] for t in texts.values())
    assert all(t["final_logit_softcapping"] for t in texts.values())
    assert texts["dense"]["attention_k_eq_v"] and texts["dense"]["num_global_key_value_heads"]
    assert texts["moe"]["enable_moe_block"] and texts["moe"]["num_experts"] == 8 and texts["moe"]["top_k_experts"] == 2
    assert texts["e2b"]["hidden_size_per_layer_input"] and texts["e2b"]["num_kv_shared_layers"]
    assert not drafters["dense"]["use_ordered_embeddings"] and drafters["e2b"]["use_ordered_embeddings"]
    layouts = {v: json.loads((tiny / v / "target" / "config.json").read_text())["model_type"] for v in VARIANTS}
    assert set(layouts.values()) == {"gemma4", "gemma4_text", "gemma4_unified"}
    assert texts["unified"]["model_type"] == "gemma4_unified_text" and drafters["unified"]["model_type"] == "gemma4_unified_assistant"
    assert not texts["unified"]["hidden_size_per_layer_input"] and not texts["unified"]["enable_moe_block"]
    from safetensors import safe_open

    with safe_open(str(tiny / "unified" / "target" / "model.safetensors"), "np") as f:  # the 12B's multimodal embedders
        assert any(k.startswith("model.embed_vision.") for k in f.keys()) and any(k.startswith("model.embed_audio.") for k in f.keys())


@pytest.mark.parametrize("variant", VARIANTS)
def test_field_names_are_the_released_ones(tiny, variant):
    """Every field our tiny configs use appears in the released configs of the same kind."""
    released = ("gemma-4-26B-A4B-it", "gemma-4-E2B-it", "gemma-4-12B-it")
    real_target = set().union(*(configs.released_config(name)["text_config"] for name in released))
    real_drafter = set(configs.released_config("gemma-4-E2B-it-assistant")) | set(configs.released_config("gemma-4-12B-it-assistant"))
    ours_target = set(text_config_of(json.loads((tiny / variant / "target" / "config.json").read_text())))
    ours_drafter = set(json.loads((tiny / variant / "drafter" / "config.json").read_text()))
    assert ours_target - real_target - {"architectures"} == set()  # top level in the gemma4_text layout
    assert ours_drafter - real_drafter == set()


def test_script_leaves_no_partial_output(tmp_path):
    import make_tiny_checkpoints

    with pytest.raises(SystemExit):
        make_tiny_checkpoints.main([str(tmp_path), "--variants", "dense", "nope"])
    assert list(tmp_path.iterdir()) == []
