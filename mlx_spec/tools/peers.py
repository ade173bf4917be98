"""Same-run peers for `mlx-spec bench`: other MLX runtimes decoding the same prompt ids with the same
target checkpoint, greedy or sampled at the bench's temperature, for the same number of tokens,
timed the way our runs are.

- `mlx-lm`: mlx-lm's `generate_step` (plain decoding, mlx-lm's own caches and, above temperature 0,
  its `make_sampler`) on the target module we loaded (our MoE expert probes taken off while it runs).
- `mlx-lm-spec`: mlx-lm's `speculative_generate_step` with a separate small draft model
  (`--peer-draft-model`, an mlx-lm model with the target's tokenizer) drafting `--peer-draft-tokens`;
  above temperature 0 its acceptance is mlx-lm's (a draft is kept when the target's sampled token
  equals it), not rejection sampling.
  It is given plain `KVCache`s: mlx-lm's default `RotatingKVCache` on Gemma 4's sliding layers
  passes mlx-lm's "trimmable" check while empty but cannot be rolled back once it wraps, and the
  output then leaves the greedy sequence. Sliding layers still see only their window (the mask).
- `mlx-vlm`: mlx-vlm's Gemma 4 MTP speculative decoding (`mlx_vlm.generate.ar.generate_step` with
  the `gemma4_assistant` drafter, draft kind "mtp", its default block size) on the same target and
  drafter folders, loaded by mlx-vlm (a second copy of the weights).

A peer is one job: `run(ids, max_tokens, temp)` returns the tokens and timings (`PeerRun`). One that cannot
run keeps status "skipped" and says why (package missing, no draft model, incompatible checkpoint,
or the exception its warm-up raised).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlx.core as mx

from ..core.errors import MlxSpecError
from .stats import mean_ci

PEER_NAMES = ("mlx-lm", "mlx-lm-spec", "mlx-vlm")


@dataclass
class PeerRun:
    tokens: list[int]
    first_token_seconds: float  # prompt processing up to the first token (our "prefill")
    decode_tokens: int  # tokens after those the first target forward produced
    decode_seconds: float
    peak_memory_gb: float
    drafted: int = 0
    accepted: float = 0
    verify_steps: int = 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _short(error: Exception, limit: int = 240) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _timed(stream) -> tuple[list[int], list, float, float]:
    """Drain a generator of (token, extra); returns tokens, extras, seconds to the first token, total."""
    mx.synchronize()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    tokens, extras, first = [], [], None
    for token, extra in stream:
        if first is None:
            first = time.perf_counter() - t0
        tokens.append(int(token))
        extras.append(extra)
    mx.synchronize()
    return tokens, extras, first or 0.0, time.perf_counter() - t0


class Peer:
    name = ""
    description = ""

    def __init__(self):
        self.reason: str | None = None  # None: ready
        self.package: str | None = None
        self.draft_tokens: int | None = None
        self.draft_model: str | None = None
        self.note: str | None = None
        self.hint = ""  # appended to a failure's reason

    @property
    def status(self) -> str:
        return "skipped" if self.reason else "ran"

    def skip(self, reason: str) -> Peer:
        self.reason = reason
        return self

    def run(self, ids: list[int], max_tokens: int, temp: float = 0.0) -> PeerRun:
        raise NotImplementedError

    def info(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason, "description": self.description,
                "package": self.package, "draft_model": self.draft_model, "draft_tokens": self.draft_tokens,
                "note": self.note}


class MlxLmPlain(Peer):
    name = "mlx-lm"
    description = "mlx-lm generate_step, mlx-lm's own caches"

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.package = f"mlx-lm {_version('mlx-lm')}"

    def run(self, ids, max_tokens, temp=0.0):
        from mlx_lm.generate import generate_step

        tokens, _, first, total = _timed(generate_step(mx.array(ids), self.module, max_tokens=max_tokens, sampler=_sampler(temp)))
        return PeerRun(tokens, first, len(tokens) - 1, total - first, mx.get_peak_memory() / 1e9)


class _CachedLayers:
    """The target as mlx-lm's speculative_generate_step sees it when given a prompt_cache: it splits the
    list at len(model.layers), but Gemma 4's KV-shared layers (E2B, E4B) own no cache."""

    def __init__(self, module, cached: int):
        self.module, self.layers = module, module.layers[:cached]

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _trimmable_caches(module) -> list:
    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    return [KVCache() if isinstance(c, RotatingKVCache) else c for c in make_prompt_cache(module)]


def _load_mlx_lm_model(path: str):
    from mlx_lm.utils import load_model

    from ..core.loading import load_target, resolve_path

    folder = resolve_path(path)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type") if (folder / "config.json").is_file() else None
    if model_type in ("gemma4", "gemma4_text"):
        return load_target(folder).module, folder  # mlx-lm's model, with the vocab fix our loader applies
    return load_model(folder)[0], folder


class MlxLmSpeculative(Peer):
    name = "mlx-lm-spec"
    description = "mlx-lm speculative_generate_step with a separate draft model"

    def __init__(self, module, tokenizer, draft_model: str | None, draft_tokens: int = 3):
        super().__init__()
        self.module, self.draft_tokens = module, draft_tokens
        self.package = f"mlx-lm {_version('mlx-lm')}"
        self.draft_model = str(draft_model) if draft_model else None
        self.note = ("plain KVCache on every layer: mlx-lm's default RotatingKVCache cannot roll back once the "
                     "sliding window wraps (greedy output then drifts)")
        if draft_model is None:
            self.skip("no --peer-draft-model given (a small mlx-lm model with the target's tokenizer)")
            return
        try:
            from mlx_lm.utils import load_tokenizer

            self.draft, folder = _load_mlx_lm_model(draft_model)
            draft_vocab = load_tokenizer(folder).vocab_size
        except (MlxSpecError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            self.skip(f"draft model {draft_model} could not be loaded by mlx-lm ({_short(e)})")
            return
        if draft_vocab != tokenizer.vocab_size:
            self.skip(f"draft model {draft_model} has a {draft_vocab}-token tokenizer, the target {tokenizer.vocab_size}")
            return
        cached = len(module.make_cache()) if hasattr(module, "make_cache") else len(module.layers)
        self.target = module if cached == len(module.layers) else _CachedLayers(module, cached)

    def run(self, ids, max_tokens, temp=0.0):
        from mlx_lm.generate import speculative_generate_step

        k = self.draft_tokens
        caches = _trimmable_caches(self.module) + _trimmable_caches(self.draft)
        stream = speculative_generate_step(mx.array(ids), self.target, self.draft, num_draft_tokens=k,
                                           max_tokens=max_tokens, prompt_cache=caches, sampler=_sampler(temp))
        tokens, from_draft, first, total = _timed((t, d) for t, _, d in stream)
        # Rounds as mlx-lm runs them: each drafts min(k, tokens left), yields its accepted drafts, then
        # (unless max_tokens cut it) the target's own token.
        drafted = accepted = steps = produced = i = 0
        first_burst = None
        while i < len(tokens):
            steps += 1
            drafted += min(k, max_tokens - produced)
            while i < len(tokens) and from_draft[i]:
                accepted, produced, i = accepted + 1, produced + 1, i + 1
            if i < len(tokens):
                produced, i = produced + 1, i + 1
            first_burst = i if first_burst is None else first_burst
        burst = first_burst or 1
        return PeerRun(tokens, first, len(tokens) - burst, total - first, mx.get_peak_memory() / 1e9,
                       drafted, accepted, steps)


class MlxVlmMtp(Peer):
    name = "mlx-vlm"
    description = "mlx-vlm Gemma 4 MTP speculative decoding (gemma4_assistant drafter, draft kind mtp)"

    def __init__(self, target_path: Path, drafter_path: Path | None):
        super().__init__()
        version = _version("mlx-vlm")
        self.package = f"mlx-vlm {version}" if version else None
        self.draft_model = str(drafter_path) if drafter_path else None
        self.note = "target and drafter loaded again by mlx-vlm (a second copy); mlx-vlm's default draft block size"
        try:
            from mlx_vlm import load
            from mlx_vlm.speculative.drafters import load_drafter
        except ImportError as e:
            self.skip(f"mlx-vlm not installed ({_short(e)}); pip install mlx-vlm to run this peer")
            return
        if drafter_path is None:
            self.skip("no drafter: mlx-vlm's MTP path needs the gemma4_assistant drafter")
            return
        # What mlx-vlm 0.7.10 does with such checkpoints, said beside the error if it fails.
        config = json.loads((Path(target_path) / "config.json").read_text())
        if config.get("model_type") == "gemma4_text":
            self.hint = ("; the target is the text-only gemma4_text layout: mlx-vlm's gemma4_text model returns neither "
                         "the hidden state nor the shared KV its MTP loop reads (only its multimodal gemma4 model does)")
        elif "vision_config" in config and not config["vision_config"]:
            self.hint = ("; the target's vision_config is null: mlx-vlm's gemma4 model always builds a vision tower "
                         "from it (text-only conversions such as the tiny test checkpoints)")
        try:
            self.model, _ = load(str(target_path))
            self.drafter, self.kind = load_drafter(str(drafter_path))
        except Exception as e:  # noqa: BLE001 - a peer's failure is reported, never fatal
            self.skip(f"mlx-vlm {version} could not load the target or drafter ({_short(e)}){self.hint}")

    def run(self, ids, max_tokens, temp=0.0):
        from mlx_vlm.generate.ar import generate_step
        from mlx_vlm.speculative.common import speculative_stats_snapshot

        before = speculative_stats_snapshot(self.drafter)
        stream = generate_step(mx.array([ids]), self.model, None, None, max_tokens=max_tokens, temperature=temp,
                               draft_model=self.drafter, draft_kind=self.kind)
        tokens, _, first, total = _timed(stream)
        rounds, accepted, drafted = (b - a for a, b in zip(before, speculative_stats_snapshot(self.drafter)))
        # The first token comes from the prefill alone, then MTP rounds.
        return PeerRun(tokens, first, len(tokens) - 1, total - first, mx.get_peak_memory() / 1e9,
                       int(drafted), float(accepted), int(rounds))


def parse_peers(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown:
        raise MlxSpecError(f"unknown peer {', '.join(unknown)}: --peers takes {','.join(PEER_NAMES)} or none.")
    return names


def make_peers(names: list[str], model, tokenizer, draft_model: str | None = None, draft_tokens: int = 3) -> list[Peer]:
    """Peers for a loaded SpeculativeModel, in the order given; unavailable ones come back skipped."""
    module = model.target.module
    drafter_path = model.drafter.path if model.drafter is not None else None
    build = {
        "mlx-lm": lambda: MlxLmPlain(module),
        "mlx-lm-spec": lambda: MlxLmSpeculative(module, tokenizer, draft_model, draft_tokens),
        "mlx-vlm": lambda: MlxVlmMtp(model.target.path, drafter_path),
    }
    return [build[name]() for name in names]


def _sampler(temp: float):
    """mlx-lm's sampler for a temperature (None: its greedy argmax)."""
    if temp <= 0:
        return None
    from mlx_lm.sample_utils import make_sampler

    return make_sampler(temp)


def warm_up(peer: Peer, ids: list[int], max_tokens: int, temp: float = 0.0) -> None:
    """One unmeasured run; a peer that fails here is skipped with the error as its reason."""
    if peer.reason:
        return
    try:
        peer.run(ids, max_tokens, temp)
    except Exception as e:  # noqa: BLE001 - a peer's failure is reported, never fatal
        peer.skip(f"{peer.package or peer.name} failed on this checkpoint ({_short(e)}){peer.hint}")


def record(peer: Peer, ids: list[int], max_tokens: int, prompt: str, repeat: int, plain_tokens: list[int],
           plain_decode_tps: float, temp: float = 0.0) -> dict | None:
    """Run the peer once, measured; its numbers beside our plain run of the same prompt and repeat
    (its tokens compared with ours only when greedy: sampled runs differ by design)."""
    if peer.reason:
        return None
    try:
        r = peer.run(ids, max_tokens, temp)
    except Exception as e:  # noqa: BLE001
        peer.skip(f"{peer.package or peer.name} failed during the measured runs ({_short(e)}){peer.hint}")
        return None
    decode_tps = max(0, r.decode_tokens) / max(1e-9, r.decode_seconds)
    return {"prompt": prompt, "repeat": repeat, "tokens": len(r.tokens),
            "prefill_tps": len(ids) / max(1e-9, r.first_token_seconds), "decode_tps": decode_tps,
            "speedup_vs_our_plain": decode_tps / plain_decode_tps, "same_as_our_plain": r.tokens == plain_tokens if temp <= 0 else None,
            "drafted": r.drafted, "accepted": r.accepted, "verify_steps": r.verify_steps,
            "peak_memory_gb": r.peak_memory_gb}


def summarize(peer: Peer, runs: list[dict]) -> dict:
    row = peer.info()
    if peer.reason or not runs:
        return row
    mean, half = mean_ci([r["speedup_vs_our_plain"] for r in runs])
    drafted, accepted, steps = (sum(r[key] for r in runs) for key in ("drafted", "accepted", "verify_steps"))
    row.update({
        "prefill_tps": sum(r["prefill_tps"] for r in runs) / len(runs),
        "decode_tps": sum(r["decode_tps"] for r in runs) / len(runs),
        "speedup_vs_our_plain": mean,
        "speedup_vs_our_plain_ci95": half,
        "tokens_per_run": sorted({r["tokens"] for r in runs}),
        "same_as_our_plain": None if any(r["same_as_our_plain"] is None for r in runs) else all(r["same_as_our_plain"] for r in runs),
        "acceptance": accepted / drafted if drafted else None,
        "mean_accepted_length": 1 + accepted / steps if steps else None,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in runs),
        "runs": runs,
    })
    return row


def markdown_lines(rows: list[dict]) -> list[str]:
    """The peers table under our rows (speedups over our plain decode tokens/s, same prompts and runs)."""
    if not rows:
        return []
    lines = ["", "Same-run peers (same prompts, target checkpoint and token count, after a warm-up; speedup over our plain row):", "",
             "| peer | status | decode tok/s | prefill tok/s | speedup vs our plain (95% CI) | acceptance | mean accepted length | same tokens as our plain | peak GB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        what = r["package"] or r["name"]
        if r["draft_model"] and r["name"] != "mlx-vlm":
            what += f", draft `{r['draft_model']}` k={r['draft_tokens']}"
        if r["status"] != "ran" or "decode_tps" not in r:
            lines.append(f"| {r['name']} | skipped | - | - | - | - | - | - | - | {r['reason']} |")
            continue
        ci = r["speedup_vs_our_plain_ci95"]
        ci = "" if math.isnan(ci) else f" +/- {ci:.2f}"
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        length = "-" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}"
        lines.append(f"| {r['name']} | ran | {r['decode_tps']:.1f} | {r['prefill_tps']:.1f} | {r['speedup_vs_our_plain']:.2f}{ci} | "
                     f"{acc} | {length} | {'-' if r['same_as_our_plain'] is None else 'yes' if r['same_as_our_plain'] else 'NO'} | {r['peak_memory_gb']:.3f} | "
                     f"{what}{'; ' + r['note'] if r['note'] else ''} |")
    return lines
