"""The mlx-spec command: typer's runner and a real subprocess; errors are one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from mlx_spec.cli import app, main

runner = CliRunner()


def test_check_json(tiny):
    result = runner.invoke(app, ["check", "--model", str(tiny / "e2b" / "target"), "--drafter", str(tiny / "e2b" / "drafter"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["target"]["kv_producer_layers"] == {"sliding_attention": 2, "full_attention": 3}
    assert out["drafter"]["head"] == "centroid-masked"


def test_check_errors_are_one_line(tiny, capsys):
    code = main(["check", "--model", str(tiny / "e2b" / "target"), "--drafter", str(tiny / "dense" / "drafter")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: drafter") and err.count("\n") == 1


def test_subprocess_quantized_pair_and_offline_error(tiny, tmp_path):
    exe = [sys.executable, "-m", "mlx_spec.cli"]
    ok = subprocess.run(exe + ["check", "-m", str(tiny / "moe-4bit" / "target"), "-d", str(tiny / "moe-4bit" / "drafter")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "MoE" in ok.stdout and "pair OK" in ok.stdout
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"))
    bad = subprocess.run(exe + ["check", "-m", "google/gemma-4-E2B-it"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "local Hugging Face cache" in bad.stderr
