"""Batch benchmark: batched plain vs batched speculative decoding at B = 1, 2, 4, 8, same prompts, same run.

For each batch size B the prompt set is cycled to B rows; every repeat runs, interleaved, our batched
plain decoding (the engine with k = 0), each requested draft configuration, and mlx-lm's own batched
decoding (`BatchGenerator`, what `mlx_lm.batch_generate` runs) on the same module and prompt ids.
Every row decodes `max_tokens` tokens with no stop token (so rows stay together and the controlled
drafter's rows keep their order). Reported per B and configuration: total and per-sequence decode
tokens/s, speedup over our batched plain at that B (paired per repeat, mean with a 95% CI), the ratio
to mlx-lm's batched decoding, plain's scaling over B = 1, draft lengths chosen, acceptance, target
forwards per token, MoE expert loads per generated token, peak memory, and whether every row's
tokens equal batched plain's (greedy).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
import numpy as np

from ..core.batch import BatchStats
from ..core.errors import MlxSpecError
from ..core.loading import SpeculativeModel
from ..core.settings import DraftSettings
from ..generate import batch_generate
from .bench import PLAIN, ControlledDrafter, config_label, progress_bar, pyplot, regime
from .stats import mean_ci


def mlx_lm_batch(module, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float, int, float]:
    """mlx-lm's batched greedy decoding, no stop tokens: (tokens per row, decode seconds after every
    row's first token, decode tokens, peak GB)."""
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(module, stop_tokens=[], max_tokens=max_tokens, prefill_batch_size=max(8, len(prompts)),
                         completion_batch_size=max(32, len(prompts)))
    mx.synchronize()
    mx.reset_peak_memory()
    uids = gen.insert(prompts, [max_tokens] * len(prompts))
    out = {u: [] for u in uids}
    t_first = None
    while responses := gen.next_generated():
        for r in responses:
            out[r.uid].append(int(r.token))
        if t_first is None and all(out[u] for u in uids):
            t_first = time.perf_counter()
    mx.synchronize()
    seconds = time.perf_counter() - (t_first or time.perf_counter())
    gen.close()
    tokens = [out[u] for u in uids]
    return tokens, seconds, sum(len(t) - 1 for t in tokens), mx.get_peak_memory() / 1e9


@dataclass
class BatchRun:
    batch: int
    config: str
    repeat: int
    decode_tps: float  # all rows together
    stats: dict
    peak_memory_gb: float
    same_as_plain: Optional[bool] = None


@dataclass
class BatchBench:
    model: SpeculativeModel
    tokenizer: object
    prompts: list[dict]  # {"name", "ids"}
    batches: list[int]
    configs: list[DraftSettings]
    max_tokens: int = 64
    repeats: int = 2
    alpha: Optional[float] = None
    peer: bool = True  # mlx-lm's batched decoding beside
    runs: list[BatchRun] = field(default_factory=list)

    def rows_for(self, batch: int) -> list[list[int]]:
        return [self.prompts[i % len(self.prompts)]["ids"] for i in range(batch)]

    def _once(self, rows: list[list[int]], draft: DraftSettings, plain=None, seed: int = 0) -> tuple[list[list[int]], BatchStats, float]:
        drafter = None
        if self.alpha is not None and plain is not None and draft.k_max:
            drafter = ControlledDrafter(self.model.draft_model, [ids + out for ids, out in zip(rows, plain)], self.alpha, seed=seed)
        stats = BatchStats()
        mx.synchronize()
        mx.reset_peak_memory()
        result = batch_generate(self.model, self.tokenizer, rows, max_tokens=self.max_tokens, draft=draft,
                                ignore_eos=True, drafter=drafter, stats=stats)
        mx.synchronize()
        return result.tokens, stats, mx.get_peak_memory() / 1e9

    def run(self, progress: bool = True) -> dict:
        if self.model.drafter is None:
            raise MlxSpecError("bench compares plain and speculative decoding: give a drafter.")
        bar = progress_bar(len(self.batches) * self.repeats * (1 + len(self.configs) + int(self.peer)), "batch bench", progress)
        for batch in self.batches:
            rows = self.rows_for(batch)
            plain = self._once(rows, PLAIN)[0]  # warm-up: compilation, allocation, the policy's cost tables
            for c, draft in enumerate(self.configs):
                self._once(rows, draft, plain, seed=c)
            if self.peer:
                mlx_lm_batch(self.model.target.module, rows, self.max_tokens)
            for repeat in range(self.repeats):
                plain = None
                for c, draft in enumerate([PLAIN, *self.configs]):
                    tokens, stats, peak = self._once(rows, draft, plain, seed=1000 * repeat + c)
                    if draft is PLAIN:
                        plain = tokens
                    decode_tokens = stats.generated - len(rows)
                    self.runs.append(BatchRun(batch, config_label(draft), repeat, decode_tokens / max(1e-9, stats.decode_time),
                                              stats.to_dict(), peak, None if draft is PLAIN else tokens == plain))
                    if bar is not None:
                        bar.update(1)
                if self.peer:
                    tokens, seconds, decode_tokens, peak = mlx_lm_batch(self.model.target.module, rows, self.max_tokens)
                    self.runs.append(BatchRun(batch, "mlx-lm batch (peer)", repeat, decode_tokens / max(1e-9, seconds),
                                              {}, peak, tokens == plain))
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return self.summary()

    def summary(self) -> dict:
        plain = {(r.batch, r.repeat): r for r in self.runs if r.config == "plain"}
        peer = {(r.batch, r.repeat): r for r in self.runs if r.config.startswith("mlx-lm")}
        plain_b1 = {r.repeat: r for r in self.runs if r.config == "plain" and r.batch == 1}
        rows = []
        for batch in self.batches:
            for config in ["plain", *map(config_label, self.configs)] + (["mlx-lm batch (peer)"] if self.peer else []):
                runs = [r for r in self.runs if r.batch == batch and r.config == config]
                if not runs:
                    continue
                speedup = mean_ci([r.decode_tps / plain[(r.batch, r.repeat)].decode_tps for r in runs])
                vs_peer = mean_ci([r.decode_tps / peer[(r.batch, r.repeat)].decode_tps for r in runs
                                   if (r.batch, r.repeat) in peer]) if peer else (None, None)
                scaling = mean_ci([r.decode_tps / plain_b1[r.repeat].decode_tps for r in runs if r.repeat in plain_b1]) if plain_b1 else (None, None)
                ours = [r for r in runs if r.stats]
                steps = sum(sum(r.stats["batch_sizes"]) for r in ours)
                decode_tokens = sum(r.stats["generated"] - batch for r in ours)
                ks = [k for r in ours for k in r.stats["draft_lengths"]]
                rows.append({
                    "batch": batch,
                    "config": config,
                    "decode_tps": float(np.mean([r.decode_tps for r in runs])),
                    "per_sequence_tps": float(np.mean([r.decode_tps for r in runs])) / batch,
                    "speedup": speedup[0], "speedup_ci95": speedup[1],
                    "vs_mlx_lm_batch": vs_peer[0], "vs_mlx_lm_batch_ci95": vs_peer[1],
                    "vs_plain_batch1": scaling[0],
                    "mean_k": float(np.mean(ks)) if ks else None,
                    "mean_accepted_length": (1 + sum(r.stats["accepted"] for r in ours) / steps) if steps else None,
                    "target_forwards_per_token": (sum(r.stats["steps"] for r in ours) * batch / decode_tokens) if decode_tokens and ours else None,
                    "expert_loads_per_token": float(np.mean([r.stats["decode_expert_loads_per_token"] for r in ours])) if ours else None,
                    "peak_memory_gb": max(r.peak_memory_gb for r in runs),
                    "lossless": None if config == "plain" else all(r.same_as_plain for r in runs),
                })
        return {
            "label": (f"controlled acceptance alpha={self.alpha}" if self.alpha is not None else "real drafter acceptance") + ", greedy",
            "alpha": self.alpha,
            "regime": regime(self.model.adapter),
            "model": self.model.target.name,
            "drafter": self.model.drafter.name,
            "prompts": [p["name"] for p in self.prompts],
            "max_tokens": self.max_tokens,
            "repeats": self.repeats,
            "batches": self.batches,
            "rows": rows,
            "runs": [r.__dict__ for r in self.runs],
        }


def markdown(result: dict) -> str:
    reg = result["regime"]
    lines = [
        f"**Batched decoding, {result['label']}** - model `{result['model']}`, drafter `{result['drafter']}`, "
        f"B rows cycled from {len(result['prompts'])} prompts, {result['max_tokens']} tokens per row, {result['repeats']} repeats; "
        f"{reg['device']}, {reg['machine']}, mlx {reg['mlx']}, weights {', '.join(reg['weight_dtypes'])}, {reg['blas']}.",
    ]
    if reg["warning"]:
        lines.append(f"Warning: {reg['warning']}.")
    lines += ["", "| B | config | total decode tok/s | per-sequence tok/s | speedup over batched plain (95% CI) | vs mlx-lm batch (95% CI) | vs plain B=1 | mean k | mean accepted length | target fwd/token | expert loads/token | peak GB | lossless |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(mean, half=None) -> str:
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return "-"
        return f"{mean:.2f}" + ("" if half is None or math.isnan(half) else f" +/- {half:.2f}")

    def num(x, fmt) -> str:
        return "-" if x is None else format(x, fmt)

    for r in result["rows"]:
        lossless = "-" if r["lossless"] is None else ("yes" if r["lossless"] else "NO")
        lines.append(f"| {r['batch']} | {r['config']} | {r['decode_tps']:.1f} | {r['per_sequence_tps']:.1f} | "
                     f"{ratio(r['speedup'], r['speedup_ci95'])} | {ratio(r['vs_mlx_lm_batch'], r['vs_mlx_lm_batch_ci95'])} | "
                     f"{ratio(r['vs_plain_batch1'])} | {num(r['mean_k'], '.2f')} | {num(r['mean_accepted_length'], '.2f')} | "
                     f"{num(r['target_forwards_per_token'], '.3f')} | {num(r['expert_loads_per_token'], '.1f')} | "
                     f"{r['peak_memory_gb']:.3f} | {lossless} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], out) -> list[str]:
    """Total decode tokens/s against B, one line per configuration and alpha (needs matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        tag = f" (alpha={res['alpha']})" if res["alpha"] is not None else ""
        configs = dict.fromkeys(r["config"] for r in res["rows"])
        for config in configs:
            rows = [r for r in res["rows"] if r["config"] == config]
            if config == "plain" or config.startswith("mlx-lm"):
                if res is not results[0]:
                    continue  # same in every table
                tag_here = ""
            else:
                tag_here = tag
            ax.plot([r["batch"] for r in rows], [r["decode_tps"] for r in rows], marker="o", label=config + tag_here)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("total decode tokens/s")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "batch_tps.png"
    fig.savefig(path, dpi=120)
    plt.close("all")
    return [str(path)]
