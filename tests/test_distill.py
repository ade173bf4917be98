"""The generic MTP drafter and `mlx-spec distill` on tiny non-Gemma-4 targets (llama, gemma3_text).

The targets are random mlx-lm models in their on-disk layout with the tiny checkpoints' tokenizer.
Distillation runs a smoke version (seconds); the drafter it writes must load through the public
API, fit only its own target, and leave greedy output identical to plain decoding.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_spec import generate, load
from mlx_spec.tools import distill as distill_module
from mlx_spec.tools.distill import (Batches, DistillConfig, Shard, collect, collect_shard, distill, free_running_acceptance, k_step_loss,
                                    read_texts, top_tokens_of)
from mlx_spec.core.errors import MlxSpecError, PairMismatchError
from mlx_spec.core.loading import load_target, load_tokenizer
from mlx_spec.core.model_config import FULL, SLIDING
from mlx_spec.core.models import mtp_drafter
from mlx_spec.core.loop import speculative_generate_step, token_ids
from mlx_spec.core.target import Target

CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=48, num_hidden_layers=3, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5, vocab_size=512, rope_theta=10000.0,
                  rope_traditional=True, tie_word_embeddings=True, max_position_embeddings=2048),
    "gemma3": dict(model_type="gemma3_text", hidden_size=48, num_hidden_layers=4, intermediate_size=96, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, vocab_size=512, rope_theta=1e6,
                   rope_local_base_freq=10000.0, sliding_window=8, sliding_window_pattern=2, query_pre_attn_scalar=16,
                   max_position_embeddings=2048),
}
CORPUS = (
    "Speculative decoding drafts several tokens with a small model and verifies them with the large one in one pass. "
    "The output is the same as plain decoding, token for token, because every draft is checked. "
) * 20


def write_target(kind: str, out: Path, tokenizer_from: Path) -> Path:
    from mlx_lm.utils import _get_classes

    config = CONFIGS[kind]
    model_class, args_class = _get_classes(config)
    mx.random.seed(7)
    model = model_class(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    weights.pop("lm_head.weight", None)
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


@pytest.fixture(scope="module")
def targets(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generic")
    return {kind: write_target(kind, root / kind, tiny / "dense" / "target") for kind in CONFIGS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "a.txt").write_text(CORPUS)
    (folder / "b.rst").write_text(CORPUS[::-1])
    (folder / "binary.txt").write_bytes(b"\0\1\2" * 100)
    return folder


SMOKE = dict(seq_len=64, prompt_len=44, collect_batch=4, tokens=4 * 64 * 3, draft_tokens=3, head_size=64, batch=4,
             steps=30, lr=3e-3, warmup=5, checkpoint_every=10)


@pytest.fixture(scope="module")
def distilled(targets, corpus, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    out = {}
    for kind, path in targets.items():
        loaded = load_target(path)
        tokenizer = load_tokenizer(loaded.path, loaded.config)
        folder = tmp_path_factory.mktemp(f"drafter-{kind}")
        report = distill(loaded.module, str(path), tokenizer, [str(corpus)], folder, DistillConfig(**SMOKE), progress=False, echo=lambda _: None)
        out[kind] = (folder, report)
    return out


def test_generic_target_adapter(targets):
    llama = Target(load_target(targets["llama"]).module, {})
    gemma3 = Target(load_target(targets["gemma3"]).module, {})
    assert llama.producers == {FULL: 2} and llama.embed_scale == 1.0
    assert gemma3.layer_types == [SLIDING, FULL, SLIDING, FULL] and gemma3.producers == {SLIDING: 2, FULL: 3}
    ids = mx.array([[2, 17, 9, 40, 41, 42, 43, 44, 45, 46, 47, 48]])  # past the window of 8
    for target in (llama, gemma3):
        logits, _ = target.forward(ids, target.make_cache())
        assert mx.allclose(logits, target.module(ids), atol=1e-5)


def test_new_drafter_reads_one_layer_per_attention_type(targets):
    llama = load_target(targets["llama"]).module
    gemma3 = load_target(targets["gemma3"]).module
    d = mtp_drafter.new(llama, "llama")
    assert [(s.reads_layer, s.layer_type, s.num_key_value_heads) for s in d.args.layer_args] == [(2, FULL, 2)]
    d = mtp_drafter.new(gemma3, "gemma3", head_ids=[1, 5, 9])
    assert [(s.reads_layer, s.layer_type) for s in d.args.layer_args] == [(2, SLIDING), (3, FULL)]
    assert d.sliding_span == 8
    d.attach(gemma3)
    # The head reuses the target's table: logits over head_ids equal hidden @ E[ids]^T, -inf elsewhere.
    h = mx.random.normal((1, 1, 48))
    logits = d.logits(h)
    E = gemma3.model.embed_tokens.weight
    assert mx.allclose(logits[0, 0, mx.array([1, 5, 9])], (d.head_norm(h) @ E[mx.array([1, 5, 9])].T)[0, 0], atol=1e-5)
    assert mx.isinf(logits[0, 0, 0]).item() and mx.isinf(logits).sum().item() == 512 - 3


def test_distill_writes_a_drafter_that_learned_and_loads(distilled):
    for kind, (folder, report) in distilled.items():
        for name in ("config.json", "model.safetensors", "distill.json"):
            assert (folder / name).exists(), (kind, name)
        saved = json.loads((folder / "distill.json").read_text())
        assert saved["steps"] == 30 and saved["collected_tokens"] == 3 * 4 * 64
        assert 0 < report.head_coverage <= 1 and report.head_size == 64
        acc = report.heldout["acceptance_per_position"]
        drafted = report.heldout["drafted_per_position"]
        assert len(acc) == 3 and drafted[0] > 0
        for j in range(2):  # draft j + 2 is scored only where draft j + 1 was right
            assert drafted[j + 1] <= round(acc[j] * drafted[j]), (kind, acc, drafted)
        assert report.heldout["expected_accepted_at_k"]["1"] == pytest.approx(acc[0])
        assert 0 < report.heldout["sampled_acceptance_first_position"] < 1  # the soft objective's measure (default on)
        assert (folder / ".distill" / "checkpoint" / "state.json").exists()


def test_distill_loss_decreases(targets, corpus, tmp_path):
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    losses = {}
    for steps in (1, 40):
        cfg = DistillConfig(**{**SMOKE, "steps": steps, "warmup": 1})
        report = distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path / str(steps), cfg, progress=False, echo=lambda _: None)
        losses[steps] = report.final_loss
    assert losses[40] < 0.8 * losses[1], losses


def test_distill_resumes_from_checkpoint(targets, corpus, tmp_path):
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    cfg = DistillConfig(**{**SMOKE, "steps": 10})
    distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path, cfg, progress=False, echo=lambda _: None)
    shards = sorted((tmp_path / ".distill" / "data").glob("shard_*.npz"))
    stamp = [p.stat().st_mtime_ns for p in shards]
    said = []
    report = distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path, DistillConfig(**{**SMOKE, "steps": 15}), progress=False, echo=said.append)
    assert report.steps == 15 and any("resuming at step 10" in s for s in said)
    assert report.collect_seconds > 0 and report.collect_cpu_seconds > 0 and report.shards_without_seconds == 0  # the first run's
    assert [p.stat().st_mtime_ns for p in shards] == stamp  # collected data reused, not recollected


def test_collection_resumes_by_tokens_with_another_batch(targets, corpus, tmp_path):
    """Resuming counts the tokens already collected, whatever batch collected them; a shard cut off
    mid-write is ignored; sequences of another length are refused with what to pass."""
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    target, texts = Target(loaded.module, {}, track_experts=False), read_texts([corpus])
    cfg = DistillConfig(**{**SMOKE, "tokens": 2 * 4 * 64})
    first = collect(target, tokenizer, texts, cfg, tmp_path, progress=False)
    assert [Shard.load(p).tokens.shape for p in first] == [(4, 64)] * 2
    assert all(Shard.load(p).seconds > 0 and Shard.load(p).cpu_seconds > 0 for p in first)  # summed by the report
    (tmp_path / "shard_00002.tmp.npz").write_bytes(b"cut off")
    more = collect(target, tokenizer, texts, DistillConfig(**{**SMOKE, "tokens": 2 * 4 * 64 + 8 * 64, "collect_batch": 8}), tmp_path, progress=False)
    assert more[:2] == first and len(more) == 3 and Shard.load(more[2]).tokens.shape == (8, 64)
    assert collect(target, tokenizer, texts, cfg, tmp_path, progress=False) == first  # fewer tokens asked: a prefix
    with pytest.raises(MlxSpecError, match="--seq-len 64 --prompt-len 44"):
        collect(target, tokenizer, texts, DistillConfig(**{**SMOKE, "prompt_len": 40}), tmp_path, progress=False)


def test_collection_workers_write_the_same_shards_and_fill_gaps(targets, corpus, tmp_path):
    """Two worker processes collect the shards one process would (shard i's prompts depend on i alone);
    a shard missing from the middle (a run cut off) is collected again, the others kept."""
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    target, texts = Target(loaded.module, {}, track_experts=False), read_texts([corpus])
    cfg = DistillConfig(**{**SMOKE, "tokens": 3 * 4 * 64})
    alone = collect(target, tokenizer, texts, cfg, tmp_path / "alone", progress=False)
    source = (str(targets["llama"]), [str(corpus)])
    with pytest.raises(MlxSpecError, match="source"):
        collect(target, tokenizer, texts, DistillConfig(**{**SMOKE, "collect_workers": 2}), tmp_path / "w", progress=False)
    workers = collect(target, tokenizer, texts, DistillConfig(**{**asdict(cfg), "collect_workers": 2}), tmp_path / "w", False, source)
    assert [p.name for p in workers] == [p.name for p in alone] == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    assert not list((tmp_path / "w").glob("worker_*.log"))
    for a, b in zip(alone, workers):
        a, b = Shard.load(a), Shard.load(b)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.hidden.astype(np.float32), b.hidden.astype(np.float32), atol=2e-2)
    stamp = workers[0].stat().st_mtime_ns
    workers[1].unlink()
    again = collect(target, tokenizer, texts, cfg, tmp_path / "w", progress=False)
    assert again == workers and workers[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(Shard.load(again[1]).tokens, Shard.load(alone[1]).tokens)


def test_data_parallel_shares_sum_to_the_whole_batch_gradient(targets, corpus, tmp_path):
    """Each training process's loss is divided by the whole batch's scored positions, so the summed
    gradients of the shares are the gradient of the whole batch's mean loss."""
    from mlx_spec.tools.distill import new_drafter

    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    target = Target(loaded.module, {}, track_experts=False)
    cfg = DistillConfig(**SMOKE)
    shards = [Shard.load(p) for p in collect(target, tokenizer, read_texts([corpus]), cfg, tmp_path, progress=False)]
    data = Batches(shards, target, list(range(64)), 3, None, soft=True)
    model = new_drafter(loaded.module, "llama", cfg, list(range(64)))
    grad = nn.value_and_grad(model, k_step_loss)

    def loss_and_grads(rows, scored=None):
        *batch, soft = data.get(np.array(rows))
        return grad(model, *batch, data.masks, soft, 0.5, scored)

    whole_loss, whole = loss_and_grads([0, 1, 2, 3])
    scored = sum(data.get(np.array(r))[4].sum() for r in ([0, 1], [2, 3]))
    (loss_a, a), (loss_b, b) = loss_and_grads([0, 1], scored), loss_and_grads([2, 3], scored)
    assert float(loss_a + loss_b) == pytest.approx(float(whole_loss), rel=1e-5)
    for (name, g), (_, ga), (_, gb) in zip(tree_flatten(whole), tree_flatten(a), tree_flatten(b)):
        np.testing.assert_allclose(np.array(ga + gb), np.array(g), rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.allclose(np.array(tree_flatten(a)[0][1]), np.array(tree_flatten(whole)[0][1]))  # a share alone is not the whole


def test_training_workers_train_and_write_the_drafter(targets, corpus, tmp_path):
    """Two data-parallel processes (MLX ring backend on local sockets) run every step, leave the
    checkpoint the run resumes from, and the drafter is written and loads; a failing worker is
    reported with its log."""
    from mlx_spec.tools.distill import _run_workers

    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    cfg = DistillConfig(**{**SMOKE, "steps": 6, "train_workers": 2})
    report = distill(loaded.module, str(targets["llama"]), tokenizer, [str(corpus)], tmp_path, cfg, progress=False, echo=lambda _: None)
    assert report.steps == 6 and np.isfinite(report.final_loss) and report.train_seconds > 0
    assert json.loads((tmp_path / ".distill" / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not list((tmp_path / ".distill").glob("*.log")) and not (tmp_path / ".distill" / "train_hosts.json").exists()
    pair, _ = load(str(targets["llama"]), str(tmp_path))
    assert pair.drafter is not None
    with pytest.raises(MlxSpecError, match="collect_worker 0 of 1 failed"):
        _run_workers("collect_worker", [{"target": str(tmp_path / "missing")}], tmp_path, lambda: None)


def test_time_budget_stops_training_and_still_writes(targets, corpus, tmp_path):
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    said = []
    report = distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path, DistillConfig(**{**SMOKE, "steps": 10**6, "time_budget": 0.0}),
                     progress=False, echo=said.append)
    assert report.steps == 0 and any("time budget" in s for s in said)
    assert (tmp_path / "model.safetensors").exists()


def test_checkpoints_are_written_by_time_too(targets, corpus, tmp_path, monkeypatch):
    """A session can end at any moment: besides every `checkpoint_every` steps, a checkpoint is written
    once `checkpoint_minutes` have passed since the last (0 here: after every step)."""
    from mlx_spec.tools import distill as module

    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    written, real = [], module._checkpoint
    monkeypatch.setattr(module, "_checkpoint", lambda model, opt, step, *a: (written.append(step), real(model, opt, step, *a)))
    cfg = DistillConfig(**{**SMOKE, "steps": 3, "checkpoint_every": 1000, "checkpoint_minutes": 0.0})
    distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path, cfg, progress=False, echo=lambda _: None)
    assert written[:3] == [1, 2, 3]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_distilled_pair_is_lossless_past_the_window(kind, targets, distilled, tmp_path):
    folder, _ = distilled[kind]
    pair, _ = load(str(targets[kind]), str(folder))
    target = Target(pair.target.module, pair.target.text_config)
    prompt = [2, 40, 41, 42, 43, 44, 45]
    plain = token_ids(speculative_generate_step(prompt, target, None, draft_tokens=0, max_tokens=60))
    for k in (1, 3, 5):
        spec = token_ids(speculative_generate_step(prompt, target, pair.drafter.module, draft_tokens=k, max_tokens=60))
        assert spec == plain, (kind, k)


def test_baseline_drafter_is_scored_on_the_same_heldout_data(tiny, targets, corpus, distilled, tmp_path):
    """--baseline: an earlier drafter's held-out acceptance on the new run's held-out shards. Same seed,
    same corpus, same target: the same shards the earlier drafter was scored on, so its numbers come
    back (up to its float16 weights; its own head mapped, not the new drafter's); drafters it cannot score are refused."""
    from mlx_spec.cli import _distilled_drafter

    folder, trained = distilled["llama"]
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    earlier = _distilled_drafter(str(folder), loaded)
    cfg = DistillConfig(**{**SMOKE, "steps": 1, "head_size": 32})
    report = distill(loaded.module, "llama", tokenizer, [str(corpus)], tmp_path, cfg, progress=False, echo=lambda _: None,
                     baseline=(str(folder), earlier))
    assert report.baseline == str(folder) and report.head_size == 32
    for key in ("acceptance_per_position", "sampled_acceptance_first_position"):  # saved as float16: nearly the same
        assert report.baseline_heldout[key] == pytest.approx(trained.heldout[key], abs=0.02), key
    assert report.heldout["acceptance_per_position"] != trained.heldout["acceptance_per_position"]
    with pytest.raises(MlxSpecError, match="not a drafter from `mlx-spec distill`"):
        _distilled_drafter(str(tiny / "dense" / "drafter"), loaded)
    with pytest.raises(PairMismatchError, match="was trained for .*, not "):
        _distilled_drafter(str(distilled["gemma3"][0]), loaded)


def test_demo_layout_folder_finds_its_drafter(targets, distilled, tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    shutil.copytree(targets["llama"], root / "target")
    shutil.copytree(distilled["llama"][0], root / "drafter", ignore=shutil.ignore_patterns(".distill"))
    pair, tokenizer = load(str(root))
    assert isinstance(pair.drafter.module, mtp_drafter.Model)
    text = generate(pair, tokenizer, "hello", max_tokens=8, draft_tokens=2)
    assert isinstance(text, str)


def test_drafter_for_another_target_is_refused(targets, distilled):
    with pytest.raises(PairMismatchError, match="trained for .*mlx-spec distill"):
        load(str(targets["gemma3"]), str(distilled["llama"][0]))


def test_gemma4_assistant_on_a_generic_target_is_refused(tiny, targets):
    with pytest.raises(PairMismatchError, match="Gemma 4 assistant.*distill"):
        load(str(targets["llama"]), str(tiny / "dense" / "drafter"))


def test_free_running_acceptance_of_a_perfect_oracle():
    """A drafter that always drafts the continuation must score 1.0 at every position, a wrong one 0."""

    class Data:
        def __init__(self, tokens):
            self.tokens = tokens
            self.hidden = np.zeros((tokens.shape[0], tokens.shape[1] - 1, 4), np.float16)
            self.generated_from = np.full(len(tokens), 3)  # per row, as Batches holds it
            self.masks = {}
            self.target = type("T", (), {"embed": staticmethod(lambda t: mx.zeros((*t.shape, 4)))})()

        def get(self, rows):
            return None, mx.zeros((len(rows), self.hidden.shape[1] - 1, 4)), {}, None, None, None

    tokens = np.arange(3, 3 + 2 * 12).reshape(2, 12).astype(np.int32)

    class Oracle:
        args = type("A", (), {"head_size": 0})()
        head_ids = None
        step = 0

        def hidden_state(self, x, position, kv, masks):
            self.step += 1
            return x[..., 4:] + 1  # counts steps in the hidden state

        def head_logits(self, h):
            # Draft step j (h holds j + 1) from position p must give token p + j + 1 of its row; rows count up by one.
            v = int(h[0, 0, 0].item())
            want = mx.array(tokens[:, :1]) + mx.arange(1, 11)[None] + v
            return (mx.arange(64)[None, None, :] == want[..., None]).astype(mx.float32)

    result = free_running_acceptance(Oracle(), Data(tokens), np.arange(2), 3)
    assert result["acceptance_per_position"] == [1.0, 1.0, 1.0]
    # Drafts are scored only up to the reply's end-of-sequence token.
    cut = free_running_acceptance(Oracle(), Data(tokens), np.arange(2), 3, eos=[int(tokens[0, 8])])
    assert cut["acceptance_per_position"] == [1.0, 1.0, 1.0]
    assert cut["drafted_per_position"][0] == result["drafted_per_position"][0] - (11 - 8)


def test_soft_targets_and_reply_end_mask(targets):
    """Labels after a reply's first end token get weight 0; soft targets are the recorded top tokens,
    mapped into the head and renormalised; the soft term is the cross-entropy against them."""
    module = load_target(targets["llama"]).module
    target = Target(module, {}, track_experts=False)
    T, K, H = 10, 3, target.hidden_size
    rng = np.random.RandomState(0)
    tokens = rng.randint(5, 60, size=(2, T)).astype(np.int32)
    tokens[0, 6] = 1  # row 0's reply ends at position 6 (generated from 4)
    kv = {FULL: (np.zeros((2, 2, T - 1, 12), np.float16), np.zeros((2, 2, T - 1, 12), np.float16))}
    top_ids = np.stack([tokens[:, 1:], tokens[:, 1:] + 1, np.full((2, T - 1), 200)], axis=-1).astype(np.int32)
    top_logp = np.log(np.broadcast_to([0.6, 0.3, 0.1], (2, T - 1, K))).astype(np.float16)
    shard = Shard(tokens, rng.standard_normal((2, T - 1, H)).astype(np.float16), tokens[:, 1:].copy(), kv, 4, top_ids, top_logp)
    head = sorted(set(range(0, 64)))  # token 200 is outside the head
    data = Batches([shard], target, head, 2, None, eos=[1], soft=True)
    _, _, _, labels, weights, (soft_ids, soft_p) = data.get(np.arange(2))
    w = np.array(weights)
    assert w[0, 0, :5].all() and not w[0, 0, 5:].any()  # step 1, row 0: labels of positions 1..5 (tokens 2..6) only
    assert w[1, 0, :4].all() and not w[1, 0, 4:].any()  # step 2 from positions 1..7: labels 2..5 inside
    assert w[0, 1].all() and w[1, 1, : T - 3].all()  # row 1 has no end token
    np.testing.assert_allclose(np.array(soft_p)[0, 1, 0], [0.6 / 0.9, 0.3 / 0.9, 0.0], rtol=1e-3)
    assert np.array(soft_ids)[0, 1, 0, 0] == tokens[1, 2]
    with pytest.raises(MlxSpecError, match="soft-weight"):
        Batches([Shard(tokens, shard.hidden, shard.labels, kv, 4)], target, head, 2, None, soft=True)

    model = mtp_drafter.new(module, "llama", head_ids=head)
    model.attach(module)
    embeds, hidden, kvs, labels, weights, soft = data.get(np.arange(2))
    hard = k_step_loss(model, embeds, hidden, kvs, labels, weights, data.masks)
    h, ce = hidden, []  # the hard loss is the weighted mean of MLX's cross-entropy over the unrolled steps
    for j in range(embeds.shape[0]):
        h = model.hidden_state(mx.concatenate([embeds[j], h], axis=-1), 1, kvs, data.masks)
        ce.append((nn.losses.cross_entropy(model.head_logits(h), labels[j], reduction="none") * weights[j]).sum())
    assert float(hard) == pytest.approx(float(sum(ce) / weights.sum()), rel=1e-5)
    assert float(k_step_loss(model, embeds, hidden, kvs, labels, weights, data.masks, soft, 0.0)) == pytest.approx(float(hard))
    # soft weight 1 with the soft target put on the greedy label alone is the hard loss again
    one_hot = (mx.broadcast_to(labels[..., None], soft[0].shape).astype(mx.int32), mx.concatenate(
        [mx.ones(soft[1].shape[:-1] + (1,)), mx.zeros(soft[1].shape[:-1] + (K - 1,))], axis=-1))
    assert float(k_step_loss(model, embeds, hidden, kvs, labels, weights, data.masks, one_hot, 1.0)) == pytest.approx(float(hard), rel=1e-5)
    assert float(k_step_loss(model, embeds, hidden, kvs, labels, weights, data.masks, soft, 1.0)) != pytest.approx(float(hard), rel=1e-3)


def test_prefill_in_chunks_collects_the_same_shard(targets, monkeypatch):
    """A batch whose prompt logits exceed MAX_PREFILL_LOGITS is prefilled a few positions at a time
    (across the sliding window too) and records the same continuation, labels, top tokens, hidden and KV."""
    target = Target(load_target(targets["gemma3"]).module, {}, track_experts=False)  # sliding window 8
    prompts = np.random.RandomState(0).randint(5, 500, size=(3, 20)).astype(np.int32)
    whole = collect_shard(target, prompts, 32, soft_top=4)
    monkeypatch.setattr(distill_module, "MAX_PREFILL_LOGITS", 3 * 3 * target.vocab_size)  # 3 positions a chunk
    chunked = collect_shard(target, prompts, 32, soft_top=4)
    np.testing.assert_array_equal(chunked.tokens, whole.tokens)
    np.testing.assert_array_equal(chunked.labels, whole.labels)
    np.testing.assert_array_equal(chunked.top_ids, whole.top_ids)
    np.testing.assert_allclose(chunked.hidden.astype(np.float32), whole.hidden.astype(np.float32), atol=2e-3)
    for layer_type in whole.kv:
        for a, b in zip(chunked.kv[layer_type], whole.kv[layer_type]):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
    assert chunked.hidden.shape == whole.hidden.shape == (3, 31, target.hidden_size)


@pytest.mark.parametrize("vocab", [1000, 1024, 40])
def test_top_tokens_are_the_likeliest_with_their_log_probabilities(vocab):
    """The block-wise top-k returns exactly the k highest logits (also when they crowd into one block,
    and for a vocabulary that is not a multiple of the block or smaller than k blocks) with log-softmax values."""
    rng = np.random.RandomState(vocab)
    logits = rng.standard_normal((3, 5, vocab)).astype(np.float32) * 3
    logits[0, 0, 64:80] += 20  # row (0, 0): the whole top 16 in one block
    ids, logp = top_tokens_of(mx.array(logits), 16)
    ids, logp = np.array(ids), np.array(logp).astype(np.float32)
    want = np.argsort(-logits, axis=-1)[..., :16]
    np.testing.assert_array_equal(np.sort(ids, axis=-1), np.sort(want, axis=-1))
    exact = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(logp, np.take_along_axis(exact, ids, axis=-1), atol=2e-2)


def test_read_texts_skips_binary_and_reports_missing(corpus, tmp_path):
    texts = read_texts([corpus])
    assert len(texts) == 2
    with pytest.raises(MlxSpecError, match="does not exist"):
        read_texts([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MlxSpecError, match="no text"):
        read_texts([tmp_path / "empty"])


def test_request_shards_hold_chat_wrapped_requests_at_their_own_length(targets, corpus, tmp_path):
    """With --requests, request_share of the shards start from a request in the chat template, every
    row of a shard at that shard's length (<= prompt_len, a long request cut at its end, the frame
    whole); training data mixing both kinds scores each row from its own first generated token."""
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = "{% for m in messages %}<start_of_turn>user\n{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
    asks = ["How do I verify drafts?", "Rewrite this more simply:\n\n" + CORPUS[:400], "Summarize: " + CORPUS[:150], "Why is the output the same?"]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": a}) for a in asks) + "\n\n")
    target, texts = Target(loaded.module, {}, track_experts=False), read_texts([corpus])
    cfg = DistillConfig(**{**SMOKE, "tokens": 4 * 4 * 64, "requests": str(path), "request_share": 0.5})
    assert [distill_module.is_request_shard(cfg, i) for i in range(6)] == [False, True, False, True, False, True]
    shards = [Shard.load(p) for p in collect(target, tokenizer, texts, cfg, tmp_path / "data", progress=False)]
    assert [s.generated_from == SMOKE["prompt_len"] for s in shards] == [True, False, True, False]
    head, tail = distill_module.chat_frame(tokenizer, "")
    for s in (shards[1], shards[3]):
        P = s.generated_from
        assert s.tokens.shape == (4, 64) and len(head) + len(tail) < P < SMOKE["prompt_len"]
        for row in s.tokens[:, :P].tolist():
            assert row[: len(head)] == head and row[P - len(tail) : P] == tail
            body = tokenizer.decode(row[len(head) : P - len(tail)])
            assert any(a.startswith(body.strip()[:12]) for a in asks), body
    data = Batches(shards, target, [], 3, None, eos=[])
    assert data.generated_from.tolist() == sum(([s.generated_from] * 4 for s in shards), [])
    drafter = mtp_drafter.new(loaded.module, "llama").attach(loaded.module)
    scored = free_running_acceptance(drafter, data, np.arange(len(data)), 3)
    expected = sum(64 - 1 - (s.generated_from - 1) for s in shards for _ in range(4))  # first positions, from each row's own start
    assert scored["drafted_per_position"][0] == expected


def test_request_prompts_from_very_short_requests(targets):
    """A batch anchored on a request shorter than 4 tokens still has rows of one length; requests all
    that short are refused with what to do."""
    loaded = load_target(targets["llama"])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = "{% for m in messages %}<start_of_turn>user\n{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
    asks = ["ok"] + [f"speculative decoding drafts {i} tokens and verifies them" for i in range(6)]
    for seed in range(8):
        prompts = distill_module.make_request_prompts(asks, tokenizer, 4, 40, np.random.RandomState(seed))
        assert prompts.shape[0] == 4 and prompts.dtype == np.int32
    with pytest.raises(MlxSpecError, match="too short"):
        distill_module.make_request_prompts(["a", "b"], tokenizer, 4, 40, np.random.RandomState(0))


def test_read_requests_formats_and_errors(tmp_path):
    (tmp_path / "r.txt").write_text("First request\nstill first.\n\nSecond one.\n\n\n")
    assert distill_module.read_requests(tmp_path / "r.txt") == ["First request\nstill first.", "Second one."]
    (tmp_path / "r.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    assert distill_module.read_requests(tmp_path / "r.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(MlxSpecError, match="bad.jsonl:2 is not JSON"):
        distill_module.read_requests(tmp_path / "bad.jsonl")
    with pytest.raises(MlxSpecError, match="is not a file"):
        distill_module.read_requests(tmp_path / "missing.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(MlxSpecError, match="no requests"):
        distill_module.read_requests(tmp_path / "empty.txt")
