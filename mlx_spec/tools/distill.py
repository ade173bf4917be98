"""`mlx-spec distill`: train an MTP drafter (models/mtp_drafter.py) for any mlx-lm target.

1. Data (`collect`): prompts cut from the user's text files (chat-wrapped when the tokenizer has a
   chat template, every other batch) and, with `requests`, requests like the ones the drafter will
   serve (a chat app's questions, code and rewrite tasks; `request_share` of the batches), continued
   by the target's own greedy decoding in batches. One
   pass records what the drafter will read at inference: the target's final hidden state at every
   position, the KV of the layers the drafter attends to, and the target's greedy token after every
   position. Continuations are the target's own output, so along them the multi-token labels are
   exactly what the verify step would accept (the prompt part is teacher-forced text).
2. Training (`train`): the objective the drafter is used with. From every position p at once:
   step 1 reads [embed(x_p) ; target hidden at p - 1], step j > 1 [embed(x_{p+j-1}) ; the drafter's
   own hidden of step j - 1], all at RoPE position p, attending to the target's keys < p; each step
   is scored against the target's greedy token after x_{p+j-1} (cross-entropy over the head's
   tokens) and, with weight `soft_weight`, against the target's own distribution there (its top
   `soft_top` tokens at temperature 1, recorded while collecting): under rejection sampling a draft
   is accepted with probability sum_x min(p(x), q(x)), which depends on q matching p, not on the
   argmax alone. Labels after the end of a reply (its first end-of-sequence token) are not scored.
   Unrolled k steps as at inference, gradients through all of them.
3. Held-out evaluation (`evaluate`): on the held-out continuations, the drafter drafts k tokens
   free-running (its own tokens and hidden states) from every position, and each draft position's
   acceptance is what greedy verification would measure: the fraction of drafts at position i that
   match the target's continuation, given that the ones before matched; and, for sampling, the
   first position's expected acceptance sum_x min(p(x), q(x)) at temperature 1 (p over the target's
   recorded top tokens: a lower bound). An earlier drafter given as the baseline is scored on the same
   held-out continuations (before/after on the same data).

Checkpoints (weights, optimizer, step) let an interrupted run resume; a time budget stops training
and still writes the drafter.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.models.cache import KVCache

from ..core.errors import MlxSpecError
from ..core.model_config import FULL, SLIDING
from ..core.models import mtp_drafter
from ..core.target import Target

TEXT_SUFFIXES = {".txt", ".rst", ".md", ".text", ".py", ".c", ".h", ".html", ".tex", ""}
CHAT_INSTRUCTIONS = ["Explain this:", "Summarize the following text.", "Continue this text:", "What does this mean?", "Rewrite this more simply:"]


@dataclass
class DistillConfig:
    seq_len: int = 256
    prompt_len: int = 48
    collect_batch: int = 16
    tokens: int = 200_000  # collected (prompt + continuation) tokens, training + held-out
    heldout: float = 0.05
    draft_tokens: int = 4  # k: unrolled steps
    head_size: int = 8192  # target tokens the head scores (0: whole vocabulary)
    soft_weight: float = 0.5  # weight of the target-distribution (KL) term; 1 - it on the greedy label
    soft_top: int = 16  # target tokens per position recorded for it
    layers: Optional[int] = None
    hidden_size: Optional[int] = None
    intermediate_size: Optional[int] = None
    batch: int = 8
    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 50
    time_budget: Optional[float] = None  # minutes of training
    checkpoint_every: int = 100  # steps
    checkpoint_minutes: float = 5.0  # and at least this often (a step takes seconds on a CPU)
    collect_workers: int = 1  # processes collecting at once (a CPU machine: one BLAS thread each)
    train_workers: int = 1  # data-parallel training processes (the same)
    requests: Optional[str] = None  # a file of user requests (JSONL "prompt" fields, or text blocks between blank lines)
    request_share: float = 0.5  # of the batches, with `requests`: prompts are requests, chat-wrapped, at their own length
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# Corpus


def read_texts(paths: Iterable[str | Path]) -> list[str]:
    """Text of every file under `paths` (folders walked; .gz decompressed; binary files skipped)."""
    texts = []
    for root in paths:
        root = Path(root).expanduser()
        if not root.exists():
            raise MlxSpecError(f"--data {root} does not exist: pass text files or folders of them.")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            suffix = file.suffixes[-2] if file.suffix == ".gz" and len(file.suffixes) > 1 else ("" if file.suffix == ".gz" else file.suffix)
            if suffix.lower() not in TEXT_SUFFIXES:
                continue
            try:
                raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
            except (OSError, EOFError):
                continue
            if b"\0" in raw[:4096]:
                continue
            text = raw.decode("utf-8", errors="ignore").strip()
            if len(text) > 200:
                texts.append(text)
    if not texts:
        raise MlxSpecError(f"no text found in {', '.join(map(str, paths))}: pass .txt/.rst/.md files (or .gz of them) or folders.")
    return texts


def chat_frame(tokenizer, instruction: str) -> Optional[tuple[list[int], list[int]]]:
    """Token ids before and after the user's text in a one-turn chat prompt (None: no chat template);
    the instruction ("": none) and a blank line come before the text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\u2063MLXSPEC\u2063"
    content = f"{instruction}\n\n{marker}" if instruction else marker
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    before, _, after = text.partition(marker)
    return tokenizer.encode(before, add_special_tokens=False), tokenizer.encode(after, add_special_tokens=False)


def make_prompts(texts: list[str], tokenizer, n: int, length: int, rng: np.random.RandomState, chat: bool) -> np.ndarray:
    """n prompts of exactly `length` tokens: a random stretch of a random document, chat-wrapped if asked."""
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None and tokenizer.encode("a")[:1] == [tokenizer.bos_token_id] else []
    frame = chat_frame(tokenizer, CHAT_INSTRUCTIONS[rng.randint(len(CHAT_INSTRUCTIONS))]) if chat else None
    head, tail = (frame if frame is not None else (bos, []))
    body = length - len(head) - len(tail)
    if body < 8:
        raise MlxSpecError(f"prompt length {length} is too short for the chat template ({len(head) + len(tail)} tokens).")
    prompts = np.zeros((n, length), dtype=np.int32)
    for i in range(n):
        for _ in range(20):
            text = texts[rng.randint(len(texts))]
            start = rng.randint(max(1, len(text) - 8 * body))
            ids = tokenizer.encode(text[start : start + 8 * body], add_special_tokens=False)[1:]  # drop a cut first token
            if len(ids) >= body:
                break
        ids = (ids + [ids[-1]] * body)[:body] if ids else [0] * body
        prompts[i] = head + ids[:body] + tail
    return prompts


def read_requests(path: str | Path) -> list[str]:
    """User requests from a .jsonl file (each line's "prompt", or "text") or a text file (blocks between blank lines)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MlxSpecError(f"--requests {path} is not a file: pass a .jsonl file with a \"prompt\" per line, or a text file of requests between blank lines.")
    raw = path.read_text(encoding="utf-8", errors="ignore")
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    raise MlxSpecError(f"{path}:{number} is not JSON: each line of a .jsonl requests file is one JSON object.") from None
                text = item.get("prompt", item.get("text")) if isinstance(item, dict) else None
                if isinstance(text, str) and text.strip():
                    out.append(text.strip())
    else:
        out = [block.strip() for block in raw.split("\n\n") if block.strip()]
    if not out:
        raise MlxSpecError(f"no requests in {path}: give a .jsonl file with a \"prompt\" per line, or requests between blank lines.")
    return out


def make_request_prompts(requests: list[str], tokenizer, n: int, max_length: int, rng: np.random.RandomState) -> np.ndarray:
    """n chat-wrapped requests of one length, as a batch needs: that of a random request (at most
    `max_length` tokens); the batch's rows are requests about that long, each cut to it at the end of
    its text (a pasted passage loses its tail, the chat template's frame stays whole)."""
    frame = chat_frame(tokenizer, "")
    if frame is None:
        raise MlxSpecError("--requests needs a target with a chat template (requests are sent as user turns).")
    head, tail = frame
    pick = rng.choice(len(requests), size=min(len(requests), 4 * n + 1), replace=False)
    bodies = [tokenizer.encode(requests[i], add_special_tokens=False) for i in pick]
    room = max_length - len(head) - len(tail)
    if room < 8:
        raise MlxSpecError(f"prompt length {max_length} is too short for the chat template ({len(head) + len(tail)} tokens).")
    body = min(max(len(bodies[0]), 4), room)  # the batch's body length: the first (random) request's
    fits = sorted((b for b in bodies[1:] if len(b) >= body), key=len)[:n]  # the closest in length: least cut
    rows = ([bodies[0]] if len(bodies[0]) >= body else []) + fits
    if not rows:
        raise MlxSpecError("the requests are too short (fewer than 4 tokens): give requests of a few words at least.")
    while len(rows) < n:  # too few as long: repeat (identical prompts continue identically; rare)
        rows.append(rows[rng.randint(len(rows))])
    return np.array([head + b[:body] + tail for b in rows[:n]], dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Collection: the target's greedy continuations and what the drafter reads along them


@dataclass
class Shard:
    tokens: np.ndarray  # [B, T] int32
    hidden: np.ndarray  # [B, T - 1, H] float16: target final hidden at positions 0 .. T - 2
    labels: np.ndarray  # [B, T - 1] int32: target greedy token after positions 0 .. T - 2
    kv: dict  # layer type -> (K, V) [B, kv_heads, T - 1, D] float16
    generated_from: int  # first position whose token the target generated
    top_ids: Optional[np.ndarray] = None  # [B, T - 1, K] int32: the target's K likeliest tokens after 0 .. T - 2
    top_logp: Optional[np.ndarray] = None  # [B, T - 1, K] float16: their log-probabilities (temperature 1)
    seconds: Optional[float] = None  # what collecting it took, wall clock (None: not recorded, older shards)
    cpu_seconds: Optional[float] = None  # and in CPU time of the process (all threads; pauses not counted)

    def save(self, path: Path) -> None:
        arrays = {"tokens": self.tokens, "hidden": self.hidden, "labels": self.labels, "generated_from": np.array(self.generated_from)}
        if self.seconds is not None:
            arrays["seconds"], arrays["cpu_seconds"] = np.array(self.seconds), np.array(self.cpu_seconds or 0.0)
        if self.top_ids is not None:
            arrays["top_ids"], arrays["top_logp"] = self.top_ids, self.top_logp
        for layer_type, (k, v) in self.kv.items():
            arrays[f"k.{layer_type}"], arrays[f"v.{layer_type}"] = k, v
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> "Shard":
        z = np.load(path)
        kv = {name[2:]: (z[name], z["v." + name[2:]]) for name in z.files if name.startswith("k.")}
        top = (z["top_ids"], z["top_logp"]) if "top_ids" in z.files else (None, None)
        seconds = float(z["seconds"]) if "seconds" in z.files else None
        cpu = float(z["cpu_seconds"]) if "cpu_seconds" in z.files else None
        return cls(z["tokens"], z["hidden"], z["labels"], kv, int(z["generated_from"]), *top, seconds, cpu)


def top_tokens_of(logits: mx.array, k: int, block: int = 64) -> tuple[mx.array, mx.array]:
    """The k likeliest tokens of logits [..., V] (in no particular order) and their log-probabilities
    (temperature 1). Two small partitions instead of one over the vocabulary (MLX's CPU argpartition
    over 49k-262k tokens was most of a collection step's cost beyond the forward): the k blocks of
    `block` tokens with the highest maxima hold the k highest logits (each of those lies in a block whose
    maximum is at least it), so only those k x block candidates are partitioned."""
    x = logits.astype(mx.float32)
    lse = mx.logsumexp(x, axis=-1, keepdims=True)
    pad = -x.shape[-1] % block
    if pad:
        x = mx.concatenate([x, mx.full((*x.shape[:-1], pad), -mx.inf, dtype=x.dtype)], axis=-1)
    blocks = x.reshape(*x.shape[:-1], -1, block)
    kb = min(k, blocks.shape[-2])
    best = mx.argpartition(-blocks.max(axis=-1), kth=kb - 1, axis=-1)[..., :kb]  # [..., kb] block indices
    candidates = mx.take_along_axis(blocks, best[..., None], axis=-2).reshape(*x.shape[:-1], kb * block)
    pick = mx.argpartition(-candidates, kth=k - 1, axis=-1)[..., :k]
    ids = mx.take_along_axis(best, pick // block, axis=-1) * block + pick % block
    return ids.astype(mx.int32), (mx.take_along_axis(candidates, pick, axis=-1) - lse).astype(mx.float16)


# Prompt logits per prefill chunk at most. A whole batch's prompt logits can be more than one array
# should hold: 512 prompts x 64 positions x Gemma 3's 262,144 tokens are 8.6e9 elements (34 GB in
# float32), and MLX's CUDA backend died of a floating point exception there (H100; 96 prompts ran).
MAX_PREFILL_LOGITS = 1 << 28


def collect_shard(target: Target, prompts: np.ndarray, seq_len: int, soft_top: int = 0) -> Shard:
    """Greedy-continue a batch of equal-length prompts to seq_len tokens, recording hidden, labels, KV
    (and the target's `soft_top` likeliest tokens after every position, when > 0)."""
    B, P = prompts.shape
    # Every key is kept (the drafter trains on the whole sequence); mlx-lm's KVCache windows the
    # sliding layers' masks itself, so the target computes exactly what it does when decoding.
    cache = [KVCache() for _ in range(target.num_cached_layers)]
    hiddens, labels, tops = [], [], []
    step = max(1, MAX_PREFILL_LOGITS // (B * target.vocab_size))  # prompt positions per prefill chunk
    for start in range(0, P, step):
        logits, hidden = target.forward(mx.array(prompts[:, start : start + step]), cache)
        hiddens.append(hidden)
        labels.append(mx.argmax(logits, axis=-1))
        if soft_top:
            tops.append(top_tokens_of(logits, soft_top))
        mx.async_eval(labels[-1], hidden, *(tops[-1] if soft_top else ()))
    tokens = [mx.array(prompts)]
    nxt = labels[-1][:, -1:]
    for _ in range(seq_len - P):
        tokens.append(nxt)
        if sum(t.shape[1] for t in tokens) == seq_len:
            break
        logits, hidden = target.forward(nxt, cache)
        nxt = mx.argmax(logits, axis=-1)
        hiddens.append(hidden)
        labels.append(nxt)
        if soft_top:
            tops.append(top_tokens_of(logits, soft_top))
        mx.async_eval(nxt)
    toks = np.array(mx.concatenate(tokens, axis=1))
    kv = {}
    for layer_type, index in target.producers.items():
        c = cache[index]
        kv[layer_type] = tuple(np.array(a[..., : seq_len - 1, :].astype(mx.float16)) for a in (c.keys, c.values))
    top = tuple(np.array(mx.concatenate([t[i] for t in tops], axis=1)) for i in (0, 1)) if tops else (None, None)
    return Shard(toks, np.array(mx.concatenate(hiddens, axis=1).astype(mx.float16)), np.array(mx.concatenate(labels, axis=1)).astype(np.int32),
                 kv, P, *top)


def collect(target: Target, tokenizer, texts: list[str], cfg: DistillConfig, folder: Path, progress: bool = True,
            source: Optional[tuple[str, list[str]]] = None) -> list[Path]:
    """Write shards to `folder` until cfg.tokens tokens are collected. Existing shards are kept (resume),
    also when --collect-batch changed (a bigger batch decodes faster); seq and prompt length must match.
    Shard i's prompts depend on i alone, so shards can be collected in any order: with
    cfg.collect_workers > 1, that many processes (`source`: the target and data as the command line
    named them) collect the missing ones, and a run cut off leaves gaps the next one fills."""
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in folder.glob("shard_*.npz") if not p.name.endswith(".tmp.npz"))  # tmp: cut off mid-write
    shards, have = [], 0  # the existing shards that count (the first of them, if --tokens shrank)
    for path in found:
        if have >= cfg.tokens and len(shards) >= 2:
            break
        with np.load(path) as z:
            rows, length = z["tokens"].shape
            prompt = int(z["generated_from"])
        if length != cfg.seq_len or (prompt != cfg.prompt_len and not (cfg.requests and prompt < cfg.prompt_len)):
            raise MlxSpecError(f"{folder} holds sequences collected with --seq-len {length} --prompt-len {prompt}: pass "
                               f"those to resume, or another --out (or delete {folder}) to collect anew.")
        shards.append(path)
        have += rows * length
    needed = max(2 - len(shards), math.ceil((cfg.tokens - have) / (cfg.collect_batch * cfg.seq_len)))  # >= 1 to train on, 1 held out
    taken = {int(p.stem.split("_")[1]) for p in found}
    todo = [i for i in range(len(taken) + max(0, needed)) if i not in taken][: max(0, needed)]
    bar = _bar(len(shards) + len(todo), "collecting target continuations", "shard", progress, initial=len(shards))
    if cfg.collect_workers > 1 and len(todo) > 1:
        if source is None:
            raise MlxSpecError("collecting with several workers needs the target and data as paths or names (source).")
        _collect_in_workers(source, cfg, folder, todo, bar)
    else:
        for i in todo:
            collect_one(target, tokenizer, texts, cfg, folder, i)
            bar.update(1)
    bar.close()
    return sorted(shards + [shard_path(folder, i) for i in todo])


def is_request_shard(cfg: DistillConfig, index: int) -> bool:
    """Whether shard `index` holds requests (cfg.requests): request_share of the shards, spread evenly."""
    return bool(cfg.requests) and math.floor((index + 1) * cfg.request_share) > math.floor(index * cfg.request_share)


@functools.lru_cache(maxsize=2)
def _requests(path: str) -> list[str]:
    return read_requests(path)


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard_{index:05d}.npz"


def collect_one(target: Target, tokenizer, texts: list[str], cfg: DistillConfig, folder: Path, index: int) -> Path:
    """Collect and write shard `index` (its prompts drawn with a seed of its own)."""
    rng = np.random.RandomState(cfg.seed * 100003 + index)
    t0, c0 = time.perf_counter(), time.process_time()
    if is_request_shard(cfg, index):
        prompts = make_request_prompts(_requests(cfg.requests), tokenizer, cfg.collect_batch, cfg.prompt_len, rng)
    else:
        chat = getattr(tokenizer, "chat_template", None) is not None and index % 2 == 1
        prompts = make_prompts(texts, tokenizer, cfg.collect_batch, cfg.prompt_len, rng, chat)
    shard = collect_shard(target, prompts, cfg.seq_len, cfg.soft_top if cfg.soft_weight > 0 else 0)
    shard.seconds, shard.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    path = shard_path(folder, index)
    shard.save(path)
    return path


# One BLAS thread per worker: on a 2-core CPU two single-threaded processes collected 1.5-1.75x the
# tokens per second of one two-threaded one, and trained 1.75x the steps (small matmuls and memory-bound
# ops do not split across threads).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1"}


def _run_workers(entry: str, jobs: list[dict], folder: Path, poll: Callable[[], None], env_of: Callable[[int], dict] = lambda w: {},
                 inherit_output: Optional[int] = None) -> None:
    """Run `entry(job)` of this module in one process per job, one BLAS thread each (worker w's environment
    also gets env_of(w)), calling poll() every second. The first to fail stops the others and raises with the tail of its log (folder/ENTRY_W.log;
    worker `inherit_output` writes to this process's console instead, its progress bar included)."""
    procs, logs = [], []
    try:
        for w, job in enumerate(jobs):
            log = None if w == inherit_output else folder / f"{entry}_{w}.log"
            logs.append(log)
            out = open(log, "w") if log is not None else None
            try:
                procs.append(subprocess.Popen([sys.executable, "-c", f"from mlx_spec.tools.distill import {entry}; {entry}()", json.dumps(job)],
                                              env={**os.environ, **WORKER_ENV, **env_of(w)},
                                              stdout=out, stderr=subprocess.STDOUT if out else None))
            finally:
                if out is not None:
                    out.close()
        while True:
            codes = [p.poll() for p in procs]
            poll()
            failed = [w for w, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                w = failed[0]
                tail = " | ".join(logs[w].read_text(errors="replace").strip().splitlines()[-5:]) if logs[w] else "see its output above"
                raise MlxSpecError(f"{entry} {w} of {len(jobs)} failed (exit {codes[w]}): {tail}")
            if all(code == 0 for code in codes):
                break
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    for log in logs:
        if log is not None:
            log.unlink(missing_ok=True)


def _collect_in_workers(source: tuple[str, list[str]], cfg: DistillConfig, folder: Path, todo: list[int], bar) -> None:
    """cfg.collect_workers processes, each collecting every n-th of `todo`; progress from the files."""
    n = min(cfg.collect_workers, len(todo))
    done = [0]

    def poll():
        now = sum(shard_path(folder, i).exists() for i in todo)
        bar.update(now - done[0])
        done[0] = now

    jobs = [{"target": source[0], "data": list(source[1]), "cfg": asdict(cfg), "folder": str(folder), "indices": todo[w::n],
             "parent": os.getpid()} for w in range(n)]
    _run_workers("collect_worker", jobs, folder, poll)
    missing = [i for i in todo if not shard_path(folder, i).exists()]
    if missing:
        raise MlxSpecError(f"collection workers ended without shards {missing[:5]}: run again (it resumes).")


def collect_worker(argv: Optional[list[str]] = None) -> None:
    """A collection worker process (see `_collect_in_workers`): argv[1] is its job as JSON. It stops
    before its next shard when the run that started it has gone (killed without the chance to stop it)."""
    from ..core.loading import load_target, load_tokenizer, model_folders

    job = json.loads((argv or sys.argv)[1])
    loaded = load_target(model_folders(job["target"])[0])
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    target = Target(loaded.module, {}, track_experts=False)
    texts = read_texts(job["data"])
    cfg = DistillConfig(**job["cfg"])
    for index in job["indices"]:
        if os.getppid() != job["parent"]:
            return
        collect_one(target, tokenizer, texts, cfg, Path(job["folder"]), index)


# ----------------------------------------------------------------------------------------------
# Training


def most_frequent(counts: np.ndarray, size: int, always: Iterable[int] = ()) -> tuple[list[int], float]:
    """The `size` most counted token ids (+ `always`; ties: lower ids first), sorted, and the share of
    the counts they cover."""
    priority = counts.astype(np.float64)
    priority[list(always)] = np.inf
    top = np.argsort(-priority, kind="stable")[:size]
    return sorted(int(t) for t in top), float(counts[top].sum()) / max(1, int(counts.sum()))


class Batches:
    """Training/eval arrays for the k-step objective from stacked shards."""

    def __init__(self, shards: list[Shard], target: Target, head_ids: list[int], k: int, window: Optional[int],
                 eos: Iterable[int] = (), soft: bool = False):
        self.tokens = np.concatenate([s.tokens for s in shards])
        self.hidden = np.concatenate([s.hidden for s in shards])
        self.labels = np.concatenate([s.labels for s in shards])
        if soft and any(s.top_ids is None for s in shards):
            raise MlxSpecError("the collected data has no target distributions (collected by an older version or with "
                               "--soft-weight 0): delete OUT/.distill/data to collect again, or train with --soft-weight 0.")
        self.top_ids = np.concatenate([s.top_ids for s in shards]) if soft else None
        self.top_logp = np.concatenate([s.top_logp for s in shards]) if soft else None
        self.kv = {t: tuple(np.concatenate([s.kv[t][i] for s in shards]) for i in (0, 1)) for t in shards[0].kv}
        self.generated_from = np.concatenate([np.full(len(s.tokens), s.generated_from) for s in shards])  # per row: requests vary
        self.k, self.target = k, target
        vocab = target.vocab_size
        self.lookup = np.full(vocab, -1, dtype=np.int32)
        if head_ids:
            self.lookup[np.array(head_ids)] = np.arange(len(head_ids), dtype=np.int32)
        else:
            self.lookup[:] = np.arange(vocab, dtype=np.int32)
        S = self.hidden.shape[1]  # stored positions 0 .. S - 1; queries p = 1 .. S - 1
        # labels[q] (the token after position q) count while q + 1 <= the reply's first end token
        self.label_end = np.full(len(self.tokens), S, dtype=np.int64)
        for i, row in enumerate(self.tokens):
            hits = np.flatnonzero(np.isin(row[self.generated_from[i] :], list(eos)))
            if hits.size:
                self.label_end[i] = self.generated_from[i] + hits[0]
        p = np.arange(1, S)[:, None]
        key = np.arange(S)[None]
        self.masks = {FULL: mx.array(key < p)}
        if SLIDING in self.kv:
            self.masks[SLIDING] = mx.array((key < p) & (key >= p - (window or S)))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def get(self, rows: np.ndarray):
        """(step token embeddings [k, B, L, H], first hidden [B, L, H], KV, head labels [k, B, L], weights [k, B, L],
        soft targets: (head indices [k, B, L, K], probabilities [k, B, L, K]) or None)."""
        S = self.hidden.shape[1]
        L = S - 1
        toks, labs = self.tokens[rows], self.labels[rows]
        B = len(rows)
        step_tokens = np.zeros((self.k, B, L), dtype=np.int32)
        step_labels = np.zeros((self.k, B, L), dtype=np.int32)
        weights = np.zeros((self.k, B, L), dtype=np.float32)
        soft = self.top_ids is not None
        if soft:
            K = self.top_ids.shape[-1]
            soft_ids = np.zeros((self.k, B, L, K), dtype=np.int32)
            soft_p = np.zeros((self.k, B, L, K), dtype=np.float32)
        in_reply = (np.arange(S)[None] + 1) <= self.label_end[rows][:, None]  # [B, S]: label q still inside the reply
        for j in range(self.k):
            n = L - j  # positions p with p + j <= S - 1
            q = slice(1 + j, 1 + j + n)  # label positions of step j
            step_tokens[j, :, :n] = toks[:, q]
            head = self.lookup[labs[:, q]]
            step_labels[j, :, :n] = np.maximum(head, 0)
            weights[j, :, :n] = (head >= 0) & in_reply[:, q]
            if soft:
                ids = self.lookup[self.top_ids[rows][:, q]]
                prob = np.exp(self.top_logp[rows][:, q].astype(np.float32)) * (ids >= 0)
                soft_ids[j, :, :n] = np.maximum(ids, 0)
                soft_p[j, :, :n] = prob / np.maximum(prob.sum(-1, keepdims=True), 1e-9)
        embeds = self.target.embed(mx.array(step_tokens))
        kv = {t: (mx.array(k[rows]).astype(mx.float32), mx.array(v[rows]).astype(mx.float32)) for t, (k, v) in self.kv.items()}
        targets = (mx.array(soft_ids), mx.array(soft_p)) if soft else None
        return embeds, mx.array(self.hidden[rows, :L]).astype(mx.float32), kv, mx.array(step_labels), mx.array(weights), targets


def k_step_loss(model: mtp_drafter.Model, embeds, hidden, kv, labels, weights, masks, soft=None, soft_weight: float = 0.0, scored=None):
    """Mean over scored (position, step) pairs of (1 - soft_weight) x cross-entropy against the target's
    greedy token + soft_weight x cross-entropy against its distribution (top tokens, renormalised over
    the head): the KL divergence from it up to a constant. With w the weights on the picked tokens
    (the greedy one and the soft ones), that is logsumexp(logits) x sum(w) - sum(w x logits[picked]):
    one log-sum-exp and one gather, no log-softmax over the head materialised (the exp over the head's
    tokens is most of a training step on a CPU: 10.3 -> 7.2 s a step with one pass instead of two, 6.3 s
    without the materialised log-softmax; SmolLM2, batch 6 x 256, k = 4). `scored`: the number of scored
    pairs to divide by, when this batch is one process's share of a larger one (default: its own)."""
    total, count = mx.array(0.0), mx.array(0.0)
    h = hidden
    for j in range(embeds.shape[0]):
        h = model.hidden_state(mx.concatenate([embeds[j], h], axis=-1), 1, kv, masks)
        logits = model.head_logits(h)
        lse = mx.logsumexp(logits, axis=-1)
        picked = labels[j][..., None]
        if soft is not None and soft_weight > 0:
            picked = mx.concatenate([picked, soft[0][j]], axis=-1)
            w = mx.concatenate([mx.full(labels[j].shape + (1,), 1 - soft_weight), soft_weight * soft[1][j]], axis=-1)
            loss = lse * w.sum(-1) - (w * mx.take_along_axis(logits, picked, axis=-1)).sum(-1)
        else:
            loss = lse - mx.take_along_axis(logits, picked, axis=-1).squeeze(-1)
        total = total + (loss * weights[j]).sum()
        count = count + weights[j].sum()
    return total / (scored if scored is not None else mx.maximum(count, 1.0))


def sampled_acceptance(model: mtp_drafter.Model, data: Batches, rows: np.ndarray) -> float:
    """First draft position's expected acceptance under rejection sampling at temperature 1, sum_x
    min(p(x), q(x)), over the reply positions: p the target's recorded top tokens (a lower bound: its
    tail is not recorded), q the drafter's distribution."""
    total, count = 0.0, 0
    for start in range(0, len(rows), 4):
        r = rows[start : start + 4]
        embeds, hidden, kv, _, weights, soft = data.get(r)
        h = model.hidden_state(mx.concatenate([embeds[0], hidden], axis=-1), 1, kv, data.masks)
        q = mx.softmax(model.head_logits(h), axis=-1)
        ids = data.lookup[data.top_ids[r][:, 1 : hidden.shape[1] + 1]]  # unrenormalised p, tokens outside the head: q = 0
        p = np.exp(data.top_logp[r][:, 1 : hidden.shape[1] + 1].astype(np.float32))
        qx = np.take_along_axis(np.array(q), np.maximum(ids, 0), axis=-1) * (ids >= 0)
        scored = np.array(weights[0]) > 0
        scored &= np.arange(hidden.shape[1])[None] + 1 >= data.generated_from[r][:, None] - 1  # the target's own continuations
        total += float((np.minimum(p, qx).sum(-1) * scored).sum())
        count += int(scored.sum())
    return total / max(1, count)


def free_running_acceptance(model: mtp_drafter.Model, data: Batches, rows: np.ndarray, k: int, eos: Iterable[int] = ()) -> dict:
    """Greedy acceptance per draft position on continuations the target generated (see module doc),
    up to each continuation's first end-of-sequence token (what follows it is not a reply)."""
    head_ids = np.array(model.head_ids) if model.args.head_size else None
    drafted, accepted = np.zeros(k), np.zeros(k)
    for start in range(0, len(rows), 4):
        r = rows[start : start + 4]
        embeds, hidden, kv, _, _, _ = data.get(r)
        S = data.hidden.shape[1]
        toks = data.tokens[r]
        p = np.arange(1, S)
        start = data.generated_from[r]
        alive = p[None] >= start[:, None] - 1  # x_{p+1} generated by the target
        stop = np.full(len(r), S, dtype=np.int64)  # last position whose token is part of the reply
        for i, row in enumerate(toks):
            hits = np.flatnonzero(np.isin(row[start[i] :], list(eos)))
            if hits.size:
                stop[i] = start[i] + hits[0]
        token = mx.array(toks[:, 1:S])
        h = hidden
        for j in range(k):
            valid = p[None] + j + 1 <= stop[:, None]
            h = model.hidden_state(mx.concatenate([data.target.embed(token), h], axis=-1), 1, kv, data.masks)
            best = np.array(mx.argmax(model.head_logits(h), axis=-1))
            draft = head_ids[best] if head_ids is not None else best
            truth = np.take_along_axis(toks, np.minimum(p + j + 1, S)[None].repeat(len(r), 0), axis=1)
            counted = alive & valid
            drafted[j] += counted.sum()
            ok = counted & (draft == truth)
            accepted[j] += ok.sum()
            alive = ok
            token = mx.array(draft.astype(np.int32))
    acceptance = [float(a / d) if d else 0.0 for a, d in zip(accepted, drafted)]
    chain = np.cumprod(acceptance)
    return {"acceptance_per_position": acceptance, "drafted_per_position": drafted.astype(int).tolist(),
            "expected_accepted_at_k": {str(i + 1): float(chain[: i + 1].sum()) for i in range(k)}}


@dataclass
class Report:
    target: str
    data_files: list[str]
    collected_tokens: int = 0
    train_sequences: int = 0
    heldout_sequences: int = 0
    head_size: int = 0
    head_coverage: float = 0.0
    steps: int = 0
    collect_seconds: float = 0.0  # wall clock over every run that collected the data (shards that recorded it)
    collect_cpu_seconds: float = 0.0  # CPU time of those runs (all threads; a paused run's pause not counted)
    shards_without_seconds: int = 0  # collected before shards recorded their time
    train_seconds: float = 0.0
    final_loss: float = float("nan")
    heldout: dict = field(default_factory=dict)
    baseline: Optional[str] = None  # an earlier drafter, evaluated on the same held-out data
    baseline_heldout: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def evaluate(model: mtp_drafter.Model, shards: list[Shard], target: Target, cfg: DistillConfig, window: Optional[int],
             eos: list[int]) -> dict:
    """Held-out acceptance of `model` (the module doc's step 3) on `shards`, scored over its own head."""
    soft = all(s.top_ids is not None for s in shards)  # the sampled measure needs the recorded distributions
    head_ids = [int(t) for t in np.array(model.head_ids)] if model.args.head_size else []
    data = Batches(shards, target, head_ids, cfg.draft_tokens, window, eos, soft)
    rows = np.arange(len(data))
    result = free_running_acceptance(model, data, rows, cfg.draft_tokens, eos)
    if soft:
        result["sampled_acceptance_first_position"] = sampled_acceptance(model, data, rows)
    return result


def describe(heldout: dict) -> str:
    sampled = heldout.get("sampled_acceptance_first_position")
    return ("greedy acceptance per draft position: " + ", ".join(f"{a:.2f}" for a in heldout["acceptance_per_position"])
            + (f"; sampled (temperature 1) at the first {sampled:.2f}" if sampled is not None else ""))


def distill(target_module: nn.Module, target_name: str, tokenizer, data_files: list[str], out: Path,
            cfg: DistillConfig, progress: bool = True, echo: Callable[[str], None] = print,
            baseline: Optional[tuple[str, mtp_drafter.Model]] = None) -> Report:
    """Collect, train, evaluate; write the drafter to `out` (work files under out/.distill). `baseline`:
    (name, an earlier drafter attached to this target), evaluated on the same held-out data."""
    out = Path(out).expanduser()
    work = out / ".distill"
    target = Target(target_module, {}, track_experts=False)
    window = target.sliding_window if SLIDING in target.producers else None
    report = Report(target_name, [str(f) for f in data_files], config=asdict(cfg))
    texts = read_texts(data_files)
    source = (target_name, [str(f) for f in data_files])
    paths = collect(target, tokenizer, texts, cfg, work / "data", progress, source)
    n_heldout = max(1, int(round(len(paths) * cfg.heldout)))
    train_paths, heldout_paths = paths[:-n_heldout], paths[-n_heldout:]
    counts = np.zeros(target.vocab_size, dtype=np.int64)
    for i, path in enumerate(paths):  # a key at a time: the training data is loaded by the training processes themselves
        with np.load(path) as z:
            report.collected_tokens += int(z["tokens"].size)
            report.collect_seconds += float(z["seconds"]) if "seconds" in z.files else 0.0
            report.collect_cpu_seconds += float(z["cpu_seconds"]) if "cpu_seconds" in z.files else 0.0
            report.shards_without_seconds += "seconds" not in z.files
            if i < len(train_paths):
                report.train_sequences += len(z["tokens"])
                np.add.at(counts, z["labels"].reshape(-1), 1)
            else:
                report.heldout_sequences += len(z["tokens"])
    eos = list(getattr(tokenizer, "eos_token_ids", None) or [])
    head_ids, report.head_coverage = most_frequent(counts, cfg.head_size, eos) if 0 < cfg.head_size < target.vocab_size else ([], 1.0)
    report.head_size = len(head_ids)
    echo(f"data: {report.collected_tokens} tokens ({report.train_sequences} training / {report.heldout_sequences} held-out sequences of {cfg.seq_len}); "
         f"head: {report.head_size or 'all'} tokens covering {report.head_coverage:.1%} of the target's greedy tokens")
    model = new_drafter(target_module, target_name, cfg, head_ids)
    optimizer = make_optimizer(cfg)
    folder = work / "checkpoint"
    workers = min(cfg.train_workers, len(train_paths))  # each trains on shards of its own
    if workers > 1:
        step, _, _ = _state(folder)
        if step < cfg.steps:
            _train_in_workers(model, optimizer, source, cfg, work, train_paths, head_ids, window, eos, workers, progress)
        step, elapsed, loss = _state(folder)
        _resume(model, optimizer, folder)
    else:
        step, elapsed, loss = train(model, optimizer, target, train_paths, head_ids, cfg, folder, window, eos, progress, echo)
    report.steps, report.train_seconds, report.final_loss = step, elapsed, loss
    heldout_shards = [Shard.load(p) for p in heldout_paths]
    report.heldout = evaluate(model, heldout_shards, target, cfg, window, eos)
    echo(f"held-out {describe(report.heldout)}")
    if baseline is not None:
        report.baseline, report.baseline_heldout = baseline[0], evaluate(baseline[1], heldout_shards, target, cfg, window, eos)
        echo(f"held-out, {baseline[0]}: {describe(report.baseline_heldout)}")
    write_drafter(model, out, report)
    return report


def new_drafter(target_module: nn.Module, target_name: str, cfg: DistillConfig, head_ids: list[int]) -> mtp_drafter.Model:
    """A fresh drafter for the target, attached to it, its head's token ids frozen."""
    mx.random.seed(cfg.seed)  # every training process starts from the same weights
    model = mtp_drafter.new(target_module, target_name, cfg.layers, cfg.hidden_size, cfg.intermediate_size, head_ids)
    model.attach(target_module)
    model.freeze(keys=["head_ids"], strict=False)
    return model


def make_optimizer(cfg: DistillConfig) -> optim.Optimizer:
    schedule = optim.join_schedules(
        [optim.linear_schedule(cfg.lr * 0.01, cfg.lr, cfg.warmup), optim.cosine_decay(cfg.lr, max(1, cfg.steps - cfg.warmup), cfg.lr * 0.05)],
        [cfg.warmup],
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=0.01)


def train(model: mtp_drafter.Model, optimizer: optim.Optimizer, target: Target, paths: list[Path], head_ids: list[int],
          cfg: DistillConfig, folder: Path, window: Optional[int], eos: list[int], progress: bool = True,
          echo: Callable[[str], None] = print, group=None, parent: Optional[int] = None) -> tuple[int, float, float]:
    """The training loop, from the checkpoint in `folder` if there is one; returns (steps, seconds, loss of
    the last 20 steps). With a distributed `group` of n processes (`_train_in_workers`), process r trains
    on shards r, r + n, ... and draws its share of each step's cfg.batch sequences from them; the loss is
    normalised by the scored positions of the whole batch and the gradients summed, so a step is the
    gradient of the whole batch's mean loss, as one process computes it. Process 0 checkpoints, shows
    progress and decides (for all) when the time budget is spent or `parent` has gone."""
    rank, size = (group.rank(), group.size()) if group is not None else (0, 1)
    shards = [Shard.load(p) for p in paths[rank::size]]
    data = Batches(shards, target, head_ids, cfg.draft_tokens, window, eos, cfg.soft_weight > 0)
    del shards  # stacked in `data`: the per-shard copies would double the memory (~4.5 GB at 2.3M SmolLM2 tokens)
    rows_per_step = cfg.batch // size + (rank < cfg.batch % size)
    step, elapsed = _resume(model, optimizer, folder)
    if step and rank == 0:
        echo(f"resuming at step {step} ({elapsed / 60:.1f} min trained)")
    loss_and_grad = nn.value_and_grad(model, k_step_loss)
    rng = np.random.RandomState(cfg.seed + step + 104729 * rank)
    bar = _bar(cfg.steps, "training drafter", "step", progress and rank == 0, initial=step)
    start, losses = time.perf_counter() - elapsed, []
    saved = time.perf_counter()  # when the last checkpoint was written
    while step < cfg.steps:
        spent = rank == 0 and cfg.time_budget is not None and time.perf_counter() - start >= cfg.time_budget * 60
        stop = spent or (rank == 0 and parent is not None and os.getppid() != parent)
        if group is not None:
            stop = mx.distributed.all_sum(mx.array(float(stop)), group=group).item() > 0
        if stop:
            if spent:
                echo(f"time budget of {cfg.time_budget} min reached at step {step}")
            break
        rows = rng.choice(len(data), size=min(rows_per_step, len(data)), replace=False)
        embeds, hidden, kv, labels, weights, targets = data.get(rows)
        scored = None if group is None else mx.maximum(mx.distributed.all_sum(weights.sum(), group=group), 1.0)
        loss, grads = loss_and_grad(model, embeds, hidden, kv, labels, weights, data.masks, targets, cfg.soft_weight, scored)
        if group is not None:
            loss = mx.distributed.all_sum(loss, group=group)
            grads = tree_map(lambda g: mx.distributed.all_sum(g, group=group), grads)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        now = time.perf_counter()
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps or now - saved >= cfg.checkpoint_minutes * 60):
            _checkpoint(model, optimizer, step, now - start, folder, np.mean(losses[-20:]))
            saved = now
    bar.close()
    elapsed, loss = time.perf_counter() - start, float(np.mean(losses[-20:])) if losses else _state(folder)[2]
    if rank == 0:
        _checkpoint(model, optimizer, step, elapsed, folder, loss)
    return step, elapsed, loss


def _train_in_workers(model, optimizer, source: tuple[str, list[str]], cfg: DistillConfig, work: Path, paths: list[Path],
                      head_ids: list[int], window: Optional[int], eos: list[int], n: int, progress: bool) -> None:
    """n processes of one BLAS thread each train data-parallel (`train`), joined by MLX's ring backend
    over local sockets. They start from the same checkpoint: the run's, or this fresh model's."""
    folder = work / "checkpoint"
    if not (folder / "state.json").exists():
        optimizer.init(model.trainable_parameters())
        _checkpoint(model, optimizer, 0, 0.0, folder)
    hosts = work / "train_hosts.json"
    hosts.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in _free_ports(n)]))
    job = {"target": source[0], "cfg": asdict(cfg), "folder": str(folder), "paths": [str(p) for p in paths], "head_ids": head_ids,
           "window": window, "eos": eos, "parent": os.getpid(), "progress": progress}
    _run_workers("train_worker", [job] * n, work, lambda: None, lambda w: {"MLX_HOSTFILE": str(hosts), "MLX_RANK": str(w)}, inherit_output=0)
    hosts.unlink(missing_ok=True)


def train_worker(argv: Optional[list[str]] = None) -> None:
    """A data-parallel training process (see `_train_in_workers`): argv[1] is its job as JSON."""
    from ..core.loading import load_target, model_folders

    job = json.loads((argv or sys.argv)[1])
    group = mx.distributed.init(backend="ring", strict=True)
    loaded = load_target(model_folders(job["target"])[0])
    cfg = DistillConfig(**job["cfg"])
    model = new_drafter(loaded.module, job["target"], cfg, job["head_ids"])
    train(model, make_optimizer(cfg), Target(loaded.module, {}, track_experts=False), [Path(p) for p in job["paths"]], job["head_ids"],
          cfg, Path(job["folder"]), job["window"], job["eos"], job["progress"], group=group, parent=job["parent"])


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_drafter(model: mtp_drafter.Model, out: Path, report: Report) -> None:
    """config.json + model.safetensors + distill.json, written next to each other then moved in."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".distill" / "drafter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    mtp_drafter.save(model, tmp)
    (tmp / "distill.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    for name in ("config.json", "model.safetensors", "distill.json"):
        (tmp / name).replace(out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _checkpoint(model, optimizer, step: int, elapsed: float, folder: Path, loss: float = float("nan")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "weights.tmp.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    mx.save_safetensors(str(folder / "optimizer.tmp.safetensors"), dict(tree_flatten(optimizer.state)))
    (folder / "weights.tmp.safetensors").replace(folder / "weights.safetensors")
    (folder / "optimizer.tmp.safetensors").replace(folder / "optimizer.safetensors")
    (folder / "state.tmp.json").write_text(json.dumps({"step": step, "elapsed": elapsed, "loss": float(loss)}))
    (folder / "state.tmp.json").replace(folder / "state.json")


def _state(folder: Path) -> tuple[int, float, float]:
    """(step, seconds trained, recent loss) of the checkpoint in `folder` ((0, 0, nan) without one)."""
    if not (folder / "state.json").exists():
        return 0, 0.0, float("nan")
    state = json.loads((folder / "state.json").read_text())
    return int(state["step"]), float(state["elapsed"]), float(state.get("loss", "nan"))


def _resume(model, optimizer, folder: Path) -> tuple[int, float]:
    if not (folder / "state.json").exists():
        return 0, 0.0
    step, elapsed, _ = _state(folder)
    model.load_weights(list(mx.load(str(folder / "weights.safetensors")).items()), strict=False)
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    return step, elapsed


def _bar(total: int, desc: str, unit: str, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled)
