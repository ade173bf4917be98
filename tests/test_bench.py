"""mlx-spec bench: end to end on a tiny checkpoint, and controlled acceptance hits the requested alpha."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_spec
from mlx_spec.core.settings import DraftSettings
from mlx_spec.tools.bench import Bench, default_prompts, load_prompts
from mlx_spec.cli import app


def test_bench_end_to_end(tiny, tmp_path, monkeypatch):
    """From any folder, with the bundled prompts (package data): every configuration runs on every
    prompt and repeat, generating the requested tokens, and writes JSON and markdown."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [
        "bench", "-m", str(tiny / "moe" / "target"), "-d", str(tiny / "moe" / "drafter-trained"),
        "--limit", "1", "--max-tokens", "32", "--repeats", "2", "--draft-tokens", "2,auto,exact-2", "--out", "out",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["config"]: r for r in data[0]["rows"]}
    assert set(rows) == {"plain", "k=2", "k=auto", "exact k=2"}
    runs = data[0]["runs"]
    assert len(runs) == 1 * 2 * 4 and all(r["tokens"] == 32 for r in runs)  # prompts x repeats x configs, all tokens
    assert rows["k=2"]["lossless"] and rows["k=auto"]["lossless"] and rows["exact k=2"]["lossless"]
    assert rows["k=2"]["vs_mlx_lm_plain"] is not None  # the mlx-lm peer ran beside
    assert rows["k=2"]["target_forwards_per_token"] < 1.0 and rows["k=2"]["expert_loads_per_token"] > 0
    assert data[0]["regime"]["device"] and "blas" in data[0]["regime"]
    assert (tmp_path / "out" / "results.md").read_text().count("| k=") == 2


def test_controlled_acceptance_matches_alpha(tiny):
    """The random drafter is (almost) never right, so acceptance at position 1 is alpha and at
    position 2 alpha^2 (drafts counted whether or not the earlier ones were accepted); tolerance 0.08
    (about 3 standard errors with ~300 verify steps)."""
    model, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter")
    prompts = load_prompts(default_prompts(), tokenizer, limit=3)
    for alpha in (0.7,):
        result = Bench(model, tokenizer, prompts, [DraftSettings(4)], max_tokens=200, repeats=1, alpha=alpha).run(progress=False)
        row = next(r for r in result["rows"] if r["config"] == "k=4")
        assert abs(row["acceptance_per_position"][0] - alpha) < 0.08, row
        assert abs(row["acceptance_per_position"][1] - alpha ** 2) < 0.08, row
        assert row["lossless"]
        assert "controlled acceptance" in result["label"]
    assert np.isfinite(row["speedup"])


def test_sampled_bench_reports_temperature_and_no_token_identity(tiny, tmp_path):
    """At temperature > 0 outputs differ run to run by design (losslessness there is statistical,
    tests/test_sampling.py); the bench labels the setting and does not claim token identity."""
    result = CliRunner().invoke(app, [
        "bench", "-m", str(tiny / "dense" / "target"), "-d", str(tiny / "dense" / "drafter-trained"),
        "--limit", "1", "--max-tokens", "24",
        "--repeats", "1", "--draft-tokens", "2", "--temp", "0,0.7", "--peers", "none", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    greedy, sampled = json.loads((tmp_path / "results.json").read_text())
    assert greedy["temp"] == 0 and sampled["temp"] == 0.7 and "temperature 0.7" in sampled["label"]
    rows = {r["config"]: r for r in sampled["rows"]}
    assert rows["k=2"]["lossless"] is None and rows["k=2"]["acceptance_per_position"]
    bad = CliRunner().invoke(app, ["bench", "-m", str(tiny / "dense" / "target"), "-d", str(tiny / "dense" / "drafter"),
                                   "--temp", "0.7", "--alpha", "0.5", "--out", str(tmp_path)])
    assert bad.exit_code != 0


def test_batch_bench_end_to_end(tiny, tmp_path):
    """--batch: batched plain, batched speculative and mlx-lm's batched decoding at each B, every row
    checked against batched plain; expert loads per token on an MoE; bad batch sizes are one error."""
    result = CliRunner().invoke(app, [
        "bench", "-m", str(tiny / "moe" / "target"), "-d", str(tiny / "moe" / "drafter"), "--batch", "1,2",
        "--alpha", "0.8", "--limit", "2", "--max-tokens", "12", "--repeats", "1", "--draft-tokens", "2",
        "--peers", "mlx-lm", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "batch_results.json").read_text())[0]
    rows = {(r["batch"], r["config"]): r for r in data["rows"]}
    assert set(rows) == {(b, c) for b in (1, 2) for c in ("plain", "k=2", "mlx-lm batch (peer)")}
    assert all(rows[(b, c)]["lossless"] for b in (1, 2) for c in ("k=2", "mlx-lm batch (peer)"))
    assert rows[(2, "k=2")]["mean_accepted_length"] > 1.3  # controlled acceptance 0.8 with a random drafter
    assert rows[(2, "plain")]["expert_loads_per_token"] > 0 and rows[(2, "plain")]["vs_plain_batch1"] > 0
    assert len([r for r in data["runs"] if r["batch"] == 2 and r["config"] == "k=2"]) == 1
    assert (tmp_path / "batch_results.md").exists()
    bad = CliRunner().invoke(app, ["bench", "-m", str(tiny / "moe" / "target"), "--batch", "0,x", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "--batch takes batch sizes" in str(bad.exception)  # main() prints it as one line


def test_pace_normalized_speedup_reads_the_pace_off_plain_steps_between_plain_steps():
    """A run's pace is the median of its plain steps between plain steps (not the ones next to a
    speculative step, which are unpipelined); too few of them: no pace, the raw speedup stands."""
    from mlx_spec.tools.bench import PACE_STEPS, plain_pace

    ks = [0] * 20 + [1] + [0] * 20
    seconds = [0.1] * 41
    seconds[19], seconds[21] = 0.9, 0.9  # the neighbours of the speculative step
    seconds[5:8] = [0.5, 0.5, 0.5]  # a slow patch: the median holds
    stats = {"drafts_per_step": [[3] * k for k in ks], "step_seconds": seconds}
    assert plain_pace(stats) == pytest.approx(0.1)
    slow = {**stats, "step_seconds": [2 * s for s in seconds]}
    assert plain_pace(slow) == pytest.approx(0.2)
    few = {"drafts_per_step": [[3]] * 30 + [[]] * PACE_STEPS, "step_seconds": [0.1] * (30 + PACE_STEPS)}
    assert plain_pace(few) is None  # PACE_STEPS plain steps, only PACE_STEPS - 2 with plain on both sides
