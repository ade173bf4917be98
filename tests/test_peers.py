"""Same-run peers in mlx-spec bench: mlx-lm plain and speculative decode the same greedy tokens as our
plain run on float32 tiny checkpoints; a peer that cannot run is reported as skipped, with the reason."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT
from typer.testing import CliRunner

import mlx_spec
from mlx_spec.core.settings import DraftSettings
from mlx_spec.tools.bench import Bench, load_prompts, markdown
from mlx_spec.cli import app
from mlx_spec.core.errors import MlxSpecError
from mlx_spec.tools.peers import make_peers, parse_peers

PROMPTS = ROOT / "mlx_spec" / "tools" / "prompts" / "default.jsonl"


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory):
    """A small random gemma4_text model (2 layers, width 32) with the tiny targets' tokenizer."""
    import make_tiny_checkpoints as tiny

    out = tmp_path_factory.mktemp("peer-draft") / "draft"
    spec = {"layout": "text", "seed": 99,
            "text": tiny._text_config(layer_types=["sliding_attention", "full_attention"], hidden_size=32, intermediate_size=64)}
    tiny.write_target(out, spec, tiny.build_tokenizer())
    return out


def test_bench_with_peers_end_to_end(tiny, draft_model, tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "-m", str(tiny / "dense" / "target"), "-d", str(tiny / "dense" / "drafter-trained"),
        "--prompts", str(PROMPTS), "--limit", "1", "--max-tokens", "24", "--repeats", "1", "--draft-tokens", "2",
        "--peers", "mlx-lm,mlx-lm-spec,mlx-vlm", "--peer-draft-model", str(draft_model), "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())[0]
    peers = {p["name"]: p for p in data["peers"]}
    assert list(peers) == ["mlx-lm", "mlx-lm-spec", "mlx-vlm"]
    for name in ("mlx-lm", "mlx-lm-spec"):
        assert peers[name]["status"] == "ran", peers[name]["reason"]
        assert peers[name]["same_as_our_plain"] is True  # greedy, float32: token for token our plain output
        assert peers[name]["tokens_per_run"] == [24] and peers[name]["decode_tps"] > 0
        assert peers[name]["speedup_vs_our_plain"] > 0
    spec = peers["mlx-lm-spec"]
    assert spec["draft_tokens"] == 3 and spec["draft_model"] == str(draft_model)
    assert 0 <= spec["acceptance"] <= 1 and spec["mean_accepted_length"] >= 1
    # mlx-vlm: not installed here, or (0.7.10) no MTP on the text-only gemma4_text layout.
    assert peers["mlx-vlm"]["status"] == "skipped" and peers["mlx-vlm"]["reason"]
    if importlib.util.find_spec("mlx_vlm") is None:
        assert "not installed" in peers["mlx-vlm"]["reason"]
    md = (tmp_path / "results.md").read_text()
    assert "| mlx-lm | ran |" in md and "| mlx-lm-spec | ran |" in md and "| mlx-vlm | skipped |" in md


def test_peers_sample_at_the_bench_temperature(tiny, draft_model):
    """At temperature > 0 the peers sample too (mlx-lm's sampler: plain, and its speculative loop with
    its own acceptance), so the sampled tables get a same-run peer; tokens are not compared there."""
    model, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained")
    prompts = load_prompts(PROMPTS, tokenizer, limit=1)
    peers = make_peers(["mlx-lm", "mlx-lm-spec"], model, tokenizer, draft_model=str(draft_model), draft_tokens=2)
    result = Bench(model, tokenizer, prompts, [DraftSettings(2)], max_tokens=24, repeats=2, temp=1.0, peers=peers).run(progress=False)
    for peer in result["peers"]:
        assert peer["status"] == "ran", peer["reason"]
        assert peer["same_as_our_plain"] is None and peer["decode_tps"] > 0 and peer["tokens_per_run"] == [24]
    greedy = make_peers(["mlx-lm"], model, tokenizer)[0].run(prompts[0]["ids"], 24).tokens
    sampled = [make_peers(["mlx-lm"], model, tokenizer)[0].run(prompts[0]["ids"], 24, temp=1.0).tokens for _ in range(2)]
    assert sampled[0] != greedy or sampled[1] != greedy  # sampled at 1.0 on a tiny target: not its greedy text
    assert "| mlx-lm | ran |" in markdown(result)


def test_peer_without_draft_model_is_skipped(tiny):
    model, tokenizer = mlx_spec.load(tiny / "e2b" / "target", tiny / "e2b" / "drafter-trained")
    prompts = load_prompts(PROMPTS, tokenizer, limit=1)
    peers = make_peers(["mlx-lm-spec", "mlx-lm"], model, tokenizer, draft_model=None)
    result = Bench(model, tokenizer, prompts, [DraftSettings(2)], max_tokens=12, repeats=1, peers=peers).run(progress=False)
    skipped, plain = result["peers"]
    assert skipped["status"] == "skipped" and "--peer-draft-model" in skipped["reason"]
    assert "decode_tps" not in skipped
    assert plain["status"] == "ran" and plain["same_as_our_plain"]  # E2B layout: KV-shared layers
    assert "| mlx-lm-spec | skipped |" in markdown(result)


def test_mlx_lm_spec_lossless_on_kv_shared_and_moe_targets(tiny, draft_model):
    """mlx-lm's speculative loop gets one trimmable cache per cached layer (E2B shares KV; MoE runs
    mlx-lm's own expert blocks, not our probes)."""
    for variant in ("e2b", "moe"):
        model, tokenizer = mlx_spec.load(tiny / variant / "target", tiny / variant / "drafter-trained")
        prompts = load_prompts(PROMPTS, tokenizer, limit=1)
        peers = make_peers(["mlx-lm-spec"], model, tokenizer, draft_model=str(draft_model), draft_tokens=2)
        result = Bench(model, tokenizer, prompts, [DraftSettings(2)], max_tokens=40, repeats=1, peers=peers).run(progress=False)
        row = result["peers"][0]
        assert row["status"] == "ran" and row["same_as_our_plain"], (variant, row)
        if variant == "moe":
            assert next(r for r in result["rows"] if r["config"] == "k=2")["expert_loads_per_token"] > 0


def test_unknown_peer_is_refused():
    assert parse_peers("mlx-lm, mlx-vlm") == ["mlx-lm", "mlx-vlm"]
    assert parse_peers("none") == []
    with pytest.raises(MlxSpecError, match="unknown peer llama.cpp"):
        parse_peers("mlx-lm,llama.cpp")
