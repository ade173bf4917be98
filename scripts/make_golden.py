#!/usr/bin/env python3
"""Golden fixtures from the reference implementation (Hugging Face transformers + torch).

Developer-only: needs `pip install torch==2.13.0 transformers` (CI never runs this; it reads the
committed fixtures). Writes, for every tiny variant made by make_tiny_checkpoints.py:

  tests/fixtures/golden/<variant>.npz   float32 arrays:
      prompt_<name>            prompt ids
      target_logits_<name>     target logits for every prompt position      [L, V]
      target_hidden_<name>     target last hidden state (after final norm)   [L, H]
      kv_{full,sliding}_{k,v}  the target's shared KV after the long prompt (its producer layers),
                               as transformers hands it to the assistant       [1, heads, S, D]
      draft_inputs             drafter inputs_embeds for step 1               [1, 1, 2H]
      draft_logits             drafter logits for 3 chained draft steps       [3, V]
      draft_hidden             drafter projected hidden for the 3 steps      [3, H]
      draft_tokens             drafted ids of the 3 steps
  tests/fixtures/golden/golden.json     per variant: prompts, plain greedy continuations,
      transformers' assisted (MTP) greedy continuation, drafted tokens and accepted count of every
      step, the sha256 of the checkpoint files they were computed from, library versions.
  tests/fixtures/hf_saved/<variant>-{target,drafter}.json
      config.json as transformers' own save_pretrained writes it (the `per_layer_config` form).
  tests/fixtures/hf_saved/dense/{target,drafter}
      the dense target (with tokenizer) and its distilled drafter, written whole by save_pretrained.
  golden.json "assisted": transformers' assisted (MTP) greedy runs with the distilled drafters
      (drafter-trained, see train_tiny_drafters.py), k = 2 and 4, both with its shared KV as is
      ("reference") and restricted to the accepted tokens' KV ("fixed", our semantics; see AcceptedKV).

    python scripts/make_golden.py --checkpoints /tmp/tiny [--out tests/fixtures] [--variants unified ...]

Variants not named keep their entries in golden.json when it was made by the same library versions.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    Gemma4AssistantForCausalLM,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4UnifiedAssistantForCausalLM,
    Gemma4UnifiedForConditionalGeneration,
)
from transformers.generation import candidate_generator as cg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_checkpoints import VARIANTS  # noqa: E402

GREEDY_TOKENS = 60
ASSISTED_TOKENS = 60
ASSISTED_K = (2, 4)
SAVED_WHOLE = "dense"  # written whole by save_pretrained into tests/fixtures/hf_saved/dense/
DRAFT_STEPS = 3


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prompts_for(variant: str) -> dict[str, list[int]]:
    window = VARIANTS[variant]["text"]["sliding_window"]
    rng = np.random.RandomState(1234 + len(variant))
    return {
        "short": [2] + rng.randint(5, 512, size=5).tolist(),
        "long": [2] + rng.randint(5, 512, size=3 * window + 5).tolist(),  # crosses the window 3x
    }


TARGET_CLASSES = {"gemma4": Gemma4ForConditionalGeneration, "gemma4_text": Gemma4ForCausalLM,
                  "gemma4_unified": Gemma4UnifiedForConditionalGeneration}
DRAFTER_CLASSES = {"gemma4_assistant": Gemma4AssistantForCausalLM, "gemma4_unified_assistant": Gemma4UnifiedAssistantForCausalLM}


def load_drafter(path: Path):
    return DRAFTER_CLASSES[AutoConfig.from_pretrained(path).model_type].from_pretrained(path, dtype=torch.float32).eval()


def load_pair(root: Path, variant: str):
    target_dir, drafter_dir = root / variant / "target", root / variant / "drafter"
    cls = TARGET_CLASSES[AutoConfig.from_pretrained(target_dir).model_type]
    target = cls.from_pretrained(target_dir, dtype=torch.float32).eval()
    return target, load_drafter(drafter_dir), target_dir, drafter_dir


class AcceptedKV:
    """The target KV of exactly the tokens it has processed and accepted (positions < current_length - 1).

    transformers 5.24 hands the assistant `shared_kv_states[..., :current_length, :]` of the last
    target forward. Two bookkeeping accidents follow: (1) the slice is one entry too long, so after a
    partial rejection the assistant also attends to the first rejected draft's key (at the new token's
    position); (2) its sliding cache keeps only window - 1 keys between forwards, and past the window
    the slice is taken on a window-relative tensor: after a full rejection the assistant sees W keys
    instead of the W + 1 its own mask allows, and otherwise every rejected draft stays visible.
    This keeps a position-indexed history of the producer layers' keys (later forwards overwrite
    rejected positions) and hands the assistant positions 0 .. current_length - 2 of it; the
    assistant's own mask then keeps the newest sliding_window + 1 sliding keys, as it does after prefill.
    """

    def __init__(self):
        self.history = {}

    def __call__(self, shared_kv_states: dict, current_length: int) -> dict:
        end = shared_kv_states["full_attention"][0].shape[-2]  # full layers hold every position < end
        fixed = {}
        for key, (k, v) in shared_kv_states.items():
            hk, hv = self.history.get(key, (k.new_zeros(k.shape[:2] + (0, k.shape[-1])), v.new_zeros(v.shape[:2] + (0, v.shape[-1]))))
            start = end - k.shape[-2]
            hk = torch.cat([hk[:, :, :start], k], dim=2)
            hv = torch.cat([hv[:, :, :start], v], dim=2)
            self.history[key] = (hk, hv)
            fixed[key] = (hk[:, :, : current_length - 1], hv[:, :, : current_length - 1])
        return fixed


class AssistedRecorder:
    """Wraps SinglePositionMultiTokenCandidateGenerator.get_candidates to log every draft step,
    optionally handing the assistant only the KV of accepted tokens (see AcceptedKV)."""

    def __init__(self, fix_kv: bool):
        self.steps = []
        self.accepted_kv = AcceptedKV() if fix_kv else None
        self._orig = cg.SinglePositionMultiTokenCandidateGenerator.get_candidates

    def __enter__(self):
        recorder = self

        def get_candidates(gen, input_ids, model_kwargs=None, model_outputs=None, *args, **kwargs):
            if recorder.accepted_kv is not None and model_outputs is not None and getattr(model_outputs, "shared_kv_states", None):
                model_outputs = copy.copy(model_outputs)
                model_outputs.shared_kv_states = recorder.accepted_kv(model_outputs.shared_kv_states, input_ids.shape[1])
            out_ids, logits = recorder._orig(gen, input_ids, model_kwargs, model_outputs, *args, **kwargs)
            if not kwargs.get("is_first_iteration"):  # every verify step, drafts or not (budget end)
                recorder.steps.append({"length": int(input_ids.shape[1]), "drafted": out_ids[0, input_ids.shape[1]:].tolist()})
            return out_ids, logits

        cg.SinglePositionMultiTokenCandidateGenerator.get_candidates = get_candidates
        return self

    def __exit__(self, *exc):
        cg.SinglePositionMultiTokenCandidateGenerator.get_candidates = self._orig


def accepted_counts(steps: list[dict], final_length: int) -> list[int]:
    """Accepted drafts per step: the sequence grows by accepted + 1 (the target's own token)."""
    lengths = [s["length"] for s in steps] + [final_length]
    return [lengths[i + 1] - lengths[i] - 1 for i in range(len(steps))]


@torch.no_grad()
def variant_golden(root: Path, variant: str, out_dir: Path) -> dict:
    target, drafter, target_dir, drafter_dir = load_pair(root, variant)
    embed = target.get_input_embeddings()
    arrays, meta = {}, {"prompts": {}, "greedy": {}, "files": {}}
    for d in (target_dir, drafter_dir):
        for f in sorted(d.glob("*.safetensors")) + [d / "config.json"]:
            meta["files"][f"{d.name}/{f.name}"] = sha256(f)

    for name, ids in prompts_for(variant).items():
        input_ids = torch.tensor([ids])
        out = target(input_ids=input_ids, output_hidden_states=True, return_shared_kv_states=True, use_cache=True)
        arrays[f"prompt_{name}"] = np.array(ids, dtype=np.int32)
        arrays[f"target_logits_{name}"] = out.logits[0].float().numpy()
        arrays[f"target_hidden_{name}"] = out.hidden_states[-1][0].float().numpy()
        meta["prompts"][name] = ids
        greedy = target.generate(input_ids, do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, eos_token_id=None, pad_token_id=0)
        meta["greedy"][name] = greedy[0, len(ids):].tolist()

        if name == "long":
            # Drafter parity inputs: exactly what SinglePositionMultiTokenCandidateGenerator feeds after prefill.
            kv = out.shared_kv_states
            for kind, key in (("full", "full_attention"), ("sliding", "sliding_attention")):
                arrays[f"kv_{kind}_k"] = kv[key][0].float().numpy()
                arrays[f"kv_{kind}_v"] = kv[key][1].float().numpy()
            token = int(out.logits[0, -1].argmax())
            position = len(ids)  # the last seen token (the target's first new token) sits here
            hidden = out.hidden_states[-1][:, -1:]
            last = torch.tensor([[token]])
            logits_steps, hidden_steps, tokens = [], [], []
            for step in range(DRAFT_STEPS):
                inputs_embeds = torch.cat([embed(last), hidden], dim=-1)
                if step == 0:
                    arrays["draft_inputs"] = inputs_embeds.float().numpy()
                d = drafter(
                    inputs_embeds=inputs_embeds,
                    attention_mask=torch.ones(1, position + 1, dtype=torch.long),
                    position_ids=torch.tensor([[position]]),
                    shared_kv_states={k: (v[0], v[1]) for k, v in kv.items()},
                    use_cache=False,
                )
                last = d.logits.argmax(-1)
                hidden = d.last_hidden_state
                logits_steps.append(d.logits[0, 0].float().numpy())
                hidden_steps.append(hidden[0, 0].float().numpy())
                tokens.append(int(last))
            arrays["draft_logits"] = np.stack(logits_steps)
            arrays["draft_hidden"] = np.stack(hidden_steps)
            arrays["draft_tokens"] = np.array(tokens, dtype=np.int32)
            meta["draft"] = {"first_token": token, "position": position, "tokens": tokens}

    # transformers' own assisted (MTP) greedy decoding with the partly-right (distilled) drafter,
    # with the drafted tokens and accepted count of every step: "fixed" hands the assistant only the
    # KV of accepted tokens (our semantics), "reference" is transformers unchanged.
    trained_dir = root / variant / "drafter-trained"
    assistant = load_drafter(trained_dir) if trained_dir.exists() else drafter
    for f in sorted(trained_dir.glob("*.safetensors")) if trained_dir.exists() else []:
        meta["files"][f"drafter-trained/{f.name}"] = sha256(f)
    meta["assisted_drafter"] = "drafter-trained" if trained_dir.exists() else "drafter"
    meta["assisted"] = {}
    for name, ids in prompts_for(variant).items():
        for k in ASSISTED_K:
            for mode in ("fixed", "reference"):
                assistant.generation_config.num_assistant_tokens = k
                with AssistedRecorder(fix_kv=mode == "fixed") as rec:
                    seq = target.generate(
                        torch.tensor([ids]), assistant_model=assistant, do_sample=False,
                        max_new_tokens=ASSISTED_TOKENS, min_new_tokens=ASSISTED_TOKENS, eos_token_id=None, pad_token_id=0,
                    )
                tokens = seq[0, len(ids):].tolist()
                meta["assisted"][f"{name}-k{k}-{mode}"] = {
                    "prompt": name,
                    "num_assistant_tokens": k,
                    "kv": mode,
                    "tokens": tokens,
                    "steps": [dict(s, accepted=a) for s, a in zip(rec.steps, accepted_counts(rec.steps, seq.shape[1]))],
                    "equals_plain_greedy": tokens == meta["greedy"][name][: len(tokens)],
                }

    np.savez_compressed(out_dir / "golden" / f"{variant}.npz", **arrays)

    with tempfile.TemporaryDirectory() as tmp:
        target.save_pretrained(Path(tmp) / "t")
        drafter.save_pretrained(Path(tmp) / "d")
        (out_dir / "hf_saved" / f"{variant}-target.json").write_text((Path(tmp) / "t" / "config.json").read_text())
        (out_dir / "hf_saved" / f"{variant}-drafter.json").write_text((Path(tmp) / "d" / "config.json").read_text())
    if variant == SAVED_WHOLE:
        # One pair exactly as transformers writes it (weights and all), tokenizer through its own class.
        from transformers import AutoTokenizer

        whole = out_dir / "hf_saved" / variant
        shutil.rmtree(whole, ignore_errors=True)
        target.save_pretrained(whole / "target")
        AutoTokenizer.from_pretrained(target_dir).save_pretrained(whole / "target")
        assistant.save_pretrained(whole / "drafter")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="OUT_DIR of make_tiny_checkpoints.py")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    (args.out / "golden").mkdir(parents=True, exist_ok=True)
    (args.out / "hf_saved").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    file = args.out / "golden" / "golden.json"
    golden = json.loads(file.read_text()) if file.exists() else {}
    if golden.get("versions") != versions:  # variants made by other versions are remade, not mixed
        golden = {"generated_by": "scripts/make_golden.py", "versions": versions, "variants": {}}
    for variant in args.variants:
        golden["variants"][variant] = variant_golden(args.checkpoints, variant, args.out)
        steps = golden["variants"][variant]["assisted"]
        print(variant, {n: [s["accepted"] for s in a["steps"]] for n, a in steps.items()}, file=sys.stderr)
    file.write_text(json.dumps(golden, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
