"""The mlx-spec command: typer's runner and a real subprocess; errors are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from mlx_spec.cli import app, main
from mlx_spec.core.errors import MlxSpecError

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


def test_subprocess_quantized_pair(tiny):
    """(Offline hub-id errors in a real process: tests/test_chat.py::test_clear_errors.)"""
    exe = [sys.executable, "-m", "mlx_spec.cli"]
    ok = subprocess.run(exe + ["check", "-m", str(tiny / "moe-4bit" / "target"), "-d", str(tiny / "moe-4bit" / "drafter")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "MoE" in ok.stdout and "pair OK" in ok.stdout


def test_bad_prompt_ids_are_one_line_errors_not_crashes(tiny):
    """An id past the embedding table used to crash the process (segmentation fault); negative ids
    were accepted silently. Both are now one line and exit code 2, in a real subprocess."""
    exe = [sys.executable, "-m", "mlx_spec.cli", "generate", "-m", str(tiny / "dense" / "target"),
           "-d", str(tiny / "dense" / "drafter-trained"), "--max-tokens", "4", "--prompt-ids"]
    res = subprocess.run(exe + ["2,5,99999"], capture_output=True, text=True, timeout=120)  # the old segmentation fault
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "99999" in res.stderr, res.stderr
    for ids, shown in (("2,-3,7", "-3"), ("2,x", "comma-separated")):  # the same path, in process
        result = runner.invoke(app, exe[3:] + [ids])
        assert result.exit_code != 0 and isinstance(result.exception, MlxSpecError) and shown in str(result.exception), ids


def test_draft_tokens_range_is_the_same_everywhere(tiny, capsys):
    """0..32 for generate, chat and bench alike (chat's cache is made with the slack the setting needs)."""
    import mlx_spec
    from mlx_spec.chat import ChatSession

    for command in ("generate", "chat", "bench"):
        code = main([command, "-m", str(tiny / "dense" / "target"), "--draft-tokens", "33", "--prompt-ids", "2"][: 5 if command != "generate" else 7])
        assert code == 2 and "0 to 32" in capsys.readouterr().err, command
    model, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained")
    session = ChatSession(model, tokenizer, max_tokens=40, draft_tokens=20, ignore_eos=True)
    replies = [r.token for r in session.ask("hello")] + [r.token for r in session.ask("again")]
    assert len(replies) == 80 and session.last_stats.drafted > 0


def test_drafter_lookup_from_the_command_line(tiny):
    """--drafter lookup: prompt lookup alone (no weights), same tokens as plain decoding; check describes it."""
    target = str(tiny / "dense" / "target")
    ids = ",".join(str(t) for t in [2] + list(range(40, 52)) * 3)
    outs = []
    for extra in (["--drafter", "lookup", "--draft-tokens", "4"], ["--drafter", "lookup", "--no-draft"]):
        result = runner.invoke(app, ["generate", "--model", target, "--prompt-ids", ids, "--max-tokens", "60", "--json", *extra])
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.output.strip().splitlines()[-1]))
    assert outs[0]["tokens"] == outs[1]["tokens"]
    assert outs[0]["stats"]["lookup_steps"] > 0 and outs[0]["stats"]["drafter_forwards"] == 0
    result = runner.invoke(app, ["check", "--model", target, "--drafter", "lookup", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["drafter"]["name"] == "prompt lookup"


def test_convert_drafter_quantizes_and_refuses_bad_input(tiny, tmp_path):
    src = str(tiny / "dense" / "drafter-trained")
    out = tmp_path / "q8"
    result = runner.invoke(app, ["convert-drafter", src, "--out", str(out), "--q-bits", "8", "--group-size", "32"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8} and not (tmp_path / "q8.partial").exists()
    result = runner.invoke(app, ["check", "--model", str(tiny / "dense" / "target"), "--drafter", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["drafter"]["quantization"]["bits"] == 8
    for argv in (["--q-bits", "3"], ["--group-size", "48"]):
        assert runner.invoke(app, ["convert-drafter", src, "--out", str(tmp_path / "x"), *argv]).exit_code != 0
    assert runner.invoke(app, ["convert-drafter", src, "--out", str(out)]).exit_code != 0  # not empty
    assert runner.invoke(app, ["convert-drafter", str(out), "--out", str(tmp_path / "y"), "--q-bits", "4"]).exit_code != 0  # quantized


def test_convert_drafter_restricts_the_head_and_stays_lossless(tiny, tmp_path):
    """--head-size N --target T: the head keeps the N tokens the target's own generations use most
    (always its end tokens); those logits are unchanged, all others -inf; greedy output is the target's."""
    import mlx.core as mx
    import numpy as np

    from mlx_spec import stream_generate
    from mlx_spec.core.loading import load_drafter, load_pair, load_tokenizer

    src, target, out = tiny / "dense" / "drafter-trained", tiny / "dense" / "target", tmp_path / "head"
    result = runner.invoke(app, ["convert-drafter", str(src), "--out", str(out), "--head-size", "256", "--target", str(target),
                                 "--head-tokens", "600"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "head.json").read_text())
    assert report["head_size"] == 256 and report["generated_tokens"] >= 600 and 0.5 < report["coverage"] < 1.0
    assert json.loads((out / "config.json").read_text())["head_size"] == 256

    full, restricted = load_drafter(src).module, load_drafter(out).module
    ids = np.array(restricted.head_ids)
    assert len(set(ids.tolist())) == 256 and {1, 106} <= set(ids.tolist())
    h = mx.random.normal((2, 1, full.args.text.hidden_size), key=mx.random.key(0))
    a, b = np.array(full.head(h)), np.array(restricted.head(h))
    outside = np.setdiff1d(np.arange(a.shape[-1]), ids)
    np.testing.assert_allclose(b[..., ids], a[..., ids], rtol=1e-5, atol=1e-5)
    assert np.isneginf(b[..., outside]).all()

    pair = load_pair(target, out)
    tokenizer = load_tokenizer(pair.target.path, pair.target.config)
    prompt = [2, 40, 41, 42, 43, 44, 45]
    runs = {k: list(stream_generate(pair, tokenizer, prompt, max_tokens=48, draft_tokens=k)) for k in (0, 3)}
    assert [r.token for r in runs[3]] == [r.token for r in runs[0]]
    stats = runs[3][-1].stats
    assert stats.accepted > 0 and all(t in set(ids.tolist()) for step in stats.drafts_per_step for t in step)

    for argv in (["--head-size", "256"], ["--head-size", "512", "--target", str(target)], ["--target", str(target)]):
        assert runner.invoke(app, ["convert-drafter", str(src), "--out", str(tmp_path / "x"), *argv]).exit_code != 0
    e2b = runner.invoke(app, ["convert-drafter", str(tiny / "e2b" / "drafter"), "--out", str(tmp_path / "y"), "--head-size", "64",
                              "--target", str(tiny / "e2b" / "target")])
    assert e2b.exit_code != 0 and "centroid" in str(e2b.exception)


def test_distill_settings_are_checked_before_any_work(tiny, tmp_path, capsys):
    """Bad distill settings are one line naming the options (exit 2), before a model loads or a file is written."""
    base = ["distill", "--target", str(tiny / "dense" / "target"), "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    for extra, words in ((["--train-workers", "3", "--batch", "2"], "--train-workers <= --batch"),
                         (["--collect-workers", "0"], "--collect-workers >= 1"),
                         (["--soft-weight", "2"], "--soft-weight")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: distill needs") and words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
