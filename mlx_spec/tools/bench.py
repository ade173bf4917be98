"""Benchmark engine: plain vs speculative decoding on the same prompts, in one process, interleaved.

For each prompt and repeat, plain decoding runs first, then every requested draft length, so slow
drift of the machine hits all configurations alike; a warm-up pass precedes the measured ones.
Reported per configuration: prefill and decode tokens/s, speedup over plain (paired per prompt and
repeat, mean with a 95% confidence interval), mean accepted length, acceptance per position, target
forwards per token, milliseconds per step (median over runs), expert loads per token (MoE), peak memory, and the ratio
to mlx-lm's own plain decoding when that peer runs. Every result
records the regime: device, MLX version, weight dtype, BLAS, and whether it looks compute-bound.

Same-run peers (`peers`, tools/peers.py: mlx-lm plain, mlx-lm speculative, mlx-vlm MTP) run after our
configurations on each prompt and repeat, greedy, with the same token count, after their own warm-up.

Controlled acceptance (`alpha`): random-weight drafters are almost never accepted, so the real
drafter runs at full cost but each proposal is replaced, with probability alpha, by the target's own
greedy token from a precomputed plain run (greedy only). Every output containing it says so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from . import peers as peer_runtime
from .stats import mean_ci
from ..core.errors import MlxSpecError
from ..core.loading import SpeculativeModel
from ..core.loop import SpecStats
from ..core.settings import DraftSettings, SamplingSettings
from ..generate import decode, user_turn_tokens

class ControlledDrafter:
    """The real drafter at full cost; with probability alpha each proposal becomes the target's own token.

    `sequences`: per row (one for a single generation, one per batch row in the engine's order) the
    prompt followed by the target's own greedy continuation. The replacement is decided on the host
    (a fixed random stream) and applied on the device, so drafts still flow into the verify without a
    host read. Rows must not leave the batch before the end (the benchmark gives every row the same
    token count and no stop token)."""

    def __init__(self, drafter, sequences, alpha: float, seed: int = 0):
        if sequences and isinstance(sequences[0], int):
            sequences = [sequences]
        self.drafter, self.alpha = drafter, alpha
        width = max(len(s) for s in sequences)
        self.lengths = mx.array([len(s) for s in sequences])
        self.sequences = mx.array([list(s) + [0] * (width - len(s)) for s in sequences], dtype=mx.int32)
        self.rng = np.random.default_rng(seed)
        self.sliding_span = drafter.sliding_span
        self.position, self.step = None, 0

    def __call__(self, inputs, position, shared_kv, masks=None):
        logits, hidden = self.drafter(inputs, position, shared_kv, masks)
        new_block = position is not self.position if isinstance(position, mx.array) else position != self.position
        if new_block:
            self.position, self.step = position, 0
        self.step += 1
        rows = logits.shape[0]
        index = mx.broadcast_to(mx.array(position) + self.step, (rows,))  # the token this draft step proposes
        lengths, sequences = self.lengths[:rows], self.sequences[:rows]
        wanted = mx.take_along_axis(sequences, mx.minimum(index, sequences.shape[1] - 1)[:, None], axis=1)  # [B, 1]
        replace = mx.array(self.rng.random(rows) < self.alpha) & (index < lengths)
        onehot = mx.where(mx.arange(logits.shape[-1])[None] == wanted, 1e9, -1e9).astype(logits.dtype)[:, None]
        return mx.where(replace[:, None, None], onehot, logits), hidden


def progress_bar(total: int, desc: str, show: bool = True):
    """A tqdm bar over benchmark runs (None when not shown)."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run")


@dataclass
class Run:
    config: str
    prompt: str
    repeat: int
    prefill_tps: float
    decode_tps: float
    tokens: int
    stats: dict
    peak_memory_gb: float
    same_as_plain: Optional[bool] = None


def _sum_positions(lists: list[list[int]]) -> np.ndarray:
    total = np.zeros(max((len(x) for x in lists), default=0))
    for x in lists:
        total[: len(x)] += x
    return total


def regime(target) -> dict:
    dtypes = sorted({str(v.dtype) for _, v in tree_flatten(target.module.parameters())})
    device = str(mx.default_device())
    preload = os.environ.get("LD_PRELOAD", "")
    blas = "OpenBLAS (LD_PRELOAD)" if "openblas" in preload.lower() else ("Accelerate/Metal" if platform.system() == "Darwin" else "MLX's bundled reference BLAS")
    compute_bound = "cpu" in device.lower() and (blas.startswith("MLX's") or "mlx.core.float32" not in dtypes or len(dtypes) > 1)
    return {
        "device": device,
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "mlx": mx.__version__,
        "weight_dtypes": dtypes,
        "blas": blas,
        "compute_bound": compute_bound,
        "warning": ("compute-bound regime (CPU without float32 + OpenBLAS): verifying k+1 tokens costs more than one, "
                    "so speedups understate a bandwidth-bound Apple GPU") if compute_bound else None,
    }


def config_label(draft: DraftSettings) -> str:
    if draft.k_max == 0:
        return "plain"
    return ("exact " if draft.exact_verify else "") + f"k={draft.label()}"


def parse_configs(text: str) -> list[DraftSettings]:
    """`1,2,4,auto,exact-4,exact-auto` -> draft settings (exact-: verify with plain decoding's 1-row forwards)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            exact = item.startswith("exact-")
            out.append(DraftSettings.parse(item.removeprefix("exact-"), exact_verify=exact))
    return out


PLAIN = DraftSettings(0)


@dataclass
class Bench:
    model: SpeculativeModel
    tokenizer: object
    prompts: list[dict]  # {"name", "category", "ids"}
    configs: list[DraftSettings]
    max_tokens: int = 128
    repeats: int = 3
    alpha: Optional[float] = None
    temp: float = 0.0  # > 0: sampled runs (rejection sampling); outputs then differ run to run by design
    runs: list[Run] = field(default_factory=list)
    peers: list = field(default_factory=list)  # peers.Peer: other runtimes, run after ours on each prompt/repeat
    peer_runs: dict = field(default_factory=dict)

    def _once(self, ids, draft: DraftSettings, plain_tokens=None, seed=0) -> tuple[list[int], SpecStats, float, float]:
        stats = SpecStats()
        drafter = self.model.draft_model
        if self.alpha is not None and plain_tokens is not None and draft.k_max and drafter is not None:
            drafter = ControlledDrafter(drafter, ids + plain_tokens, self.alpha, seed=seed)
        # unseeded: a seed would make the adaptive policy price steps by weight bytes instead of timings
        steps = decode(self.model, ids, SamplingSettings(temp=self.temp), draft, max_tokens=self.max_tokens,
                       stats=stats, drafter=drafter)
        mx.synchronize()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        tokens = [token for token, _ in steps]
        mx.synchronize()
        total = time.perf_counter() - t0
        return tokens, stats, total, mx.get_peak_memory() / 1e9

    def run(self, progress: bool = True) -> dict:
        if self.model.drafter is None and any(c.mtp and not self.model.lookup for c in self.configs):
            raise MlxSpecError("bench compares plain and speculative decoding: give a drafter (or --drafter lookup "
                               "with lookup-K configs).")
        bar = progress_bar(len(self.prompts) * self.repeats * (1 + len(self.configs) + len(self.peers)), "bench", progress)
        warm = self.prompts[0]["ids"]
        for draft in [PLAIN, *self.configs]:  # compilation, allocation, the adaptive policy's cost table
            self._once(warm, draft)
        for peer in self.peers:
            peer_runtime.warm_up(peer, warm, self.max_tokens, self.temp)
        for repeat in range(self.repeats):
            for index, prompt in enumerate(self.prompts):
                plain = None
                for c, draft in enumerate([PLAIN, *self.configs]):
                    seed = (repeat * len(self.prompts) + index) * 100 + c  # independent draws per run
                    tokens, stats, seconds, peak = self._once(prompt["ids"], draft, plain, seed)
                    if draft is PLAIN:
                        plain = tokens
                    decode_tokens = max(1, stats.generated - 1)
                    decode_seconds = max(1e-9, seconds - stats.prefill_time)
                    self.runs.append(Run(
                        config=config_label(draft), prompt=prompt["name"], repeat=repeat,
                        prefill_tps=len(prompt["ids"]) / max(1e-9, stats.prefill_time),
                        decode_tps=decode_tokens / decode_seconds, tokens=stats.generated,
                        stats=stats.to_dict(), peak_memory_gb=peak,
                        same_as_plain=None if draft is PLAIN or self.temp > 0 else tokens == plain,
                    ))
                    if bar is not None:
                        bar.update(1)
                plain_tps = next(r.decode_tps for r in self.runs[::-1] if r.config == "plain")
                for peer in self.peers:
                    row = peer_runtime.record(peer, prompt["ids"], self.max_tokens, prompt["name"], repeat, plain, plain_tps, self.temp)
                    if row is not None:
                        self.peer_runs.setdefault(peer.name, []).append(row)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return self.summary()

    def _rows(self, runs_of: list[Run]) -> list[dict]:
        plain = {(r.prompt, r.repeat): r for r in runs_of if r.config == "plain"}

        def normalized(r: Run) -> float:
            speedup = r.decode_tps / plain[(r.prompt, r.repeat)].decode_tps
            pace, base = plain_pace(r.stats), plain_pace(plain[(r.prompt, r.repeat)].stats)
            return speedup if pace is None or base is None else speedup * pace / base

        mlx_lm = {(r["prompt"], r["repeat"]): r for r in self.peer_runs.get("mlx-lm", [])}
        rows = []
        for config in ["plain", *map(config_label, self.configs)]:
            runs = [r for r in runs_of if r.config == config]
            mean, half = mean_ci([r.decode_tps / plain[(r.prompt, r.repeat)].decode_tps for r in runs])
            steady, steady_half = mean_ci([normalized(r) for r in runs])
            vs_mlx_lm = mean_ci([r.decode_tps / mlx_lm[(r.prompt, r.repeat)]["decode_tps"] for r in runs
                                 if (r.prompt, r.repeat) in mlx_lm]) if mlx_lm else (None, None)
            drafted = _sum_positions([r.stats["drafted_per_position"] for r in runs])
            accepted = _sum_positions([r.stats["accepted_per_position"] for r in runs])
            steps = sum(r.stats["steps"] for r in runs)
            accepted_total = sum(r.stats["accepted"] for r in runs)
            tokens = sum(max(1, r.stats["generated"] - 1) for r in runs)
            spec_steps = sum(len([d for d in r.stats["drafts_per_step"] if d]) for r in runs)
            lookup_drafted = sum(r.stats["lookup_drafted"] for r in runs)
            lookup_accepted = sum(r.stats["lookup_accepted"] for r in runs)
            drafted_total = sum(r.stats["drafted"] for r in runs)
            rows.append({
                "config": config,
                "prefill_tps": float(np.mean([r.prefill_tps for r in runs])),
                "decode_tps": float(np.mean([r.decode_tps for r in runs])),
                "speedup": mean,
                "speedup_ci95": half,
                "speedup_normalized": steady,
                "speedup_normalized_ci95": steady_half,
                "normalized_runs": sum(plain_pace(r.stats) is not None for r in runs),
                "vs_mlx_lm_plain": vs_mlx_lm[0],
                "vs_mlx_lm_plain_ci95": vs_mlx_lm[1],
                "mean_accepted_length": 1 + accepted_total / steps if steps else 1.0,
                "acceptance_per_position": [float(a / d) for a, d in zip(accepted, drafted) if d],
                "lookup_share": sum(r.stats["lookup_steps"] for r in runs) / spec_steps if spec_steps else 0.0,
                "lookup_acceptance": lookup_accepted / lookup_drafted if lookup_drafted else None,
                "mtp_acceptance": ((accepted_total - lookup_accepted) / (drafted_total - lookup_drafted)
                                   if drafted_total > lookup_drafted else None),
                "target_forwards_per_token": sum(r.stats["target_forwards"] - 1 for r in runs) / tokens,
                "ms_per_step": 1000 * float(np.median([r.stats["decode_time"] / r.stats["steps"] for r in runs if r.stats["steps"]] or [0.0])),
                "expert_loads_per_token": float(np.mean([r.stats["decode_expert_loads_per_token"] for r in runs])),
                "peak_memory_gb": max(r.peak_memory_gb for r in runs),
                "lossless": all(r.same_as_plain for r in runs) if config != "plain" and self.temp == 0 else None,
            })
        return rows

    def summary(self) -> dict:
        rows = self._rows(self.runs)
        categories = {}
        for category in dict.fromkeys(p["category"] for p in self.prompts):
            names = {p["name"] for p in self.prompts if p["category"] == category}
            categories[category or "-"] = self._rows([r for r in self.runs if r.prompt in names])
        return {
            "label": (f"controlled acceptance alpha={self.alpha} (drafts replaced by the target's own tokens)" if self.alpha is not None
                      else "real drafter acceptance") + (f", temperature {self.temp} (rejection sampling)" if self.temp > 0 else ", greedy"),
            "alpha": self.alpha,
            "temp": self.temp,
            "regime": regime(self.model.adapter),
            "model": self.model.target.name,
            "drafter": self.model.drafter.name if self.model.drafter is not None else "lookup",
            "prompts": [p["name"] for p in self.prompts],
            "max_tokens": self.max_tokens,
            "repeats": self.repeats,
            "rows": rows,
            "by_category": categories if len(categories) > 1 else {},
            "peers": [peer_runtime.summarize(p, self.peer_runs.get(p.name, [])) for p in self.peers],
            "runs": [r.__dict__ for r in self.runs],
        }


def default_prompts() -> Path:
    """The bundled prompt set (chat, code, summarisation), shipped inside the package."""
    return Path(str(resources.files("mlx_spec.tools") / "prompts" / "default.jsonl"))


PACE_STEPS = 16  # plain steps between plain steps a run needs for its pace to be read off them


def steps_by_neighbours(stats: dict) -> dict[tuple, list[float]]:
    """A run's step intervals grouped by the kind of step and its neighbours: ("plain", speculative
    before, speculative after) for plain steps; ("queued", k) for a speculative step right after a
    plain one (queued behind it), ("run", k) after another speculative one. A run's first and last
    steps, with one neighbour only, are left out."""
    ks = [len(d) for d in stats["drafts_per_step"]]
    seconds = stats["step_seconds"]
    groups: dict[tuple, list[float]] = {}
    for i in range(1, min(len(ks), len(seconds)) - 1):
        key = ("plain", ks[i - 1] > 0, ks[i + 1] > 0) if ks[i] == 0 else ("run" if ks[i - 1] else "queued", ks[i])
        groups.setdefault(key, []).append(seconds[i])
    return groups


def plain_pace(stats: dict) -> Optional[float]:
    """The median interval of a run's plain steps between plain steps (None when it has fewer than
    PACE_STEPS): the machine's pace during that run. On 2 CPU cores that pace wanders +/- 15% from run
    to run (the same plain steps took 111 ms in one run and 135 ms in the next), more than the effect
    `auto` is measured for; a speedup scaled by the two runs' paces (`speedup_normalized`) compares
    them at the same pace. Only runs that decode plain for a good share of their steps have one."""
    between = steps_by_neighbours(stats).get(("plain", False, False), [])
    return float(np.median(between)) if len(between) >= PACE_STEPS else None


def load_prompts(path: Path, tokenizer, limit: Optional[int] = None) -> list[dict]:
    if not Path(path).is_file():
        raise MlxSpecError(f"no prompt file {path}: pass --prompts FILE (JSON lines with name, category, prompt).")
    prompts = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        ids = user_turn_tokens(tokenizer, item["prompt"])
        prompts.append({"name": item["name"], "category": item.get("category", ""), "ids": ids})
    return prompts[:limit] if limit else prompts


def markdown(result: dict) -> str:
    reg = result["regime"]
    lines = [
        f"**{result['label']}** - model `{result['model']}`, drafter `{result['drafter']}`, "
        f"{len(result['prompts'])} prompts x {result['repeats']} repeats, {result['max_tokens']} tokens, "
        + (f"temperature {result['temp']}; " if result.get("temp") else "greedy; ")
        + f"{reg['device']}, {reg['machine']}, mlx {reg['mlx']}, weights {', '.join(reg['weight_dtypes'])}, {reg['blas']}.",
    ]
    if reg["warning"]:
        lines.append(f"Warning: {reg['warning']}.")
    lines += ["", "| config | prefill tok/s | decode tok/s | speedup (95% CI) | pace-normalized (runs) | vs mlx-lm plain (95% CI) | mean accepted length | acceptance by position | target fwd/token | ms/step | expert loads/token | peak GB | lossless |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(mean, half) -> str:
        if mean is None or math.isnan(mean):
            return "-"
        return f"{mean:.2f}" + ("" if half is None or math.isnan(half) else f" +/- {half:.2f}")

    for r in result["rows"]:
        acc = " ".join(f"{a:.2f}" for a in r["acceptance_per_position"]) or "-"
        lossless = "-" if r["lossless"] is None else ("yes" if r["lossless"] else "NO")
        lines.append(f"| {r['config']} | {r['prefill_tps']:.1f} | {r['decode_tps']:.1f} | {ratio(r['speedup'], r['speedup_ci95'])} | "
                     f"{normalized_cell(r)} | "
                     f"{ratio(r.get('vs_mlx_lm_plain'), r.get('vs_mlx_lm_plain_ci95'))} | "
                     f"{r['mean_accepted_length']:.2f} | {acc} | {r['target_forwards_per_token']:.3f} | {r['ms_per_step']:.2f} | "
                     f"{r['expert_loads_per_token']:.2f} | {r['peak_memory_gb']:.3f} | {lossless} |")
    if any(r["lookup_share"] for r in result["rows"]):
        lines += ["", "Draft sources: | config | lookup share of speculative steps | lookup acceptance | MTP acceptance |",
                  "|---|---|---|---|"]
        for r in result["rows"][1:]:
            def share(x):
                return "-" if x is None else f"{x:.2f}"
            lines.append(f"| {r['config']} | {r['lookup_share']:.2f} | {share(r['lookup_acceptance'])} | {share(r['mtp_acceptance'])} |")
    if result.get("by_category"):
        configs = [r["config"] for r in result["rows"][1:]]
        lines += ["", "Speedup over plain by category (95% CI; pace-normalized in brackets):", "",
                  "| category | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
        for category, rows in result["by_category"].items():
            lines.append(f"| {category} | " + " | ".join(ratio(r["speedup"], r["speedup_ci95"]) + f" [{normalized_cell(r)}]"
                                                         + ("" if r["lossless"] in (None, True) else " (NOT lossless)")
                                                         for r in rows[1:]) + " |")
    lines += peer_runtime.markdown_lines(result.get("peers", []))
    if any(r.get("normalized_runs") for r in result["rows"][1:]):
        lines += ["", f"Pace-normalized: each run's speedup scaled by the machine's pace during it and during its plain run (the "
                  f"median of their plain steps between plain steps; runs with fewer than {PACE_STEPS} such steps keep their raw speedup)."]
    return "\n".join(lines) + "\n"


def normalized_cell(row: dict) -> str:
    if row.get("speedup_normalized") is None or row["config"] == "plain":
        return "-"
    half = row["speedup_normalized_ci95"]
    return f"{row['speedup_normalized']:.2f}" + ("" if half is None or math.isnan(half) else f" +/- {half:.2f}") + f" ({row['normalized_runs']})"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None without the `bench` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(results: list[dict], out: Path) -> list[str]:
    """speedup vs k (one line per alpha) and speedup vs alpha (one line per k); needs matplotlib (extra `bench`)."""
    plt = pyplot()
    if plt is None:
        return []
    written = []

    def figure(name: str, xlabel: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("decode speedup over plain")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        written.append(str(out / name))

    def by_k(ax):
        for res in results:
            rows = [r for r in res["rows"] if r["config"].startswith("k=") and r["config"][2:].isdigit()]
            ax.errorbar([int(r["config"][2:]) for r in rows], [r["speedup"] for r in rows],
                        yerr=[0 if math.isnan(r["speedup_ci95"]) else r["speedup_ci95"] for r in rows], marker="o",
                        label=(f"alpha={res['alpha']}" if res["alpha"] is not None else "real drafter")
                        + (f", temperature {res['temp']}" if res.get("temp") else ", greedy"))

    figure("speedup_vs_k.png", "draft tokens k", by_k)
    alphas = [r for r in results if r["alpha"] is not None]
    if len(alphas) > 1:
        def by_alpha(ax):
            for config in [r["config"] for r in alphas[0]["rows"] if r["config"] != "plain"]:
                ax.plot([r["alpha"] for r in alphas], [next(x["speedup"] for x in r["rows"] if x["config"] == config) for r in alphas],
                        marker="o", label=config)

        figure("speedup_vs_alpha.png", "acceptance alpha (controlled)", by_alpha)
    plt.close("all")
    return written
