"""Load benchmark of `mlx-spec serve`: speculation on vs off, under C concurrent clients.

    mlx-spec bench-serve --model M [--drafter D] --clients 1,4,8 --requests-per-client 4 --max-tokens 128 --out DIR

The server runs as a subprocess (`ServerProcess`, also what tests/test_server_live.py starts), one per
mode: `on` (the drafter, `--draft-tokens auto` or what --draft-tokens says) and `off` (`--draft-tokens 0`:
batched plain decoding, same model, same batching). Both stay up for the whole run and each client
count is measured on `on`, then `off`, so slow drift of the machine hits both modes alike. At each
client count C, C threads each send `requests_per_client` streamed chat requests in a closed loop (the
next as soon as the last ends), prompts cycled from the prompt set so concurrent requests differ.

Reported per (mode, C): requests/s and completion tokens/s over the wall time of the round (tokens
from each reply's `usage`), mean / p50 / p95 latency, mean time to first token (first streamed chunk),
acceptance from each reply's `speculative` field, the speedup of on over off at the same C (tokens/s),
and, greedy, whether on and off gave every prompt the same text.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import MlxSpecError

# ------------------------------------------------------------------------------------------------
# The server as a subprocess


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m mlx_spec.cli serve ...` on a free port, started and waited for (GET /health), stopped
    on exit. Its output goes to a temporary file (a pipe nobody reads would block the server once full);
    `log()` reads it back, and a server that dies while starting raises MlxSpecError with that log."""

    def __init__(self, model: str, drafter: Optional[str] = None, *, max_batch: int = 8, draft_tokens: Optional[str] = None,
                 extra: Sequence[str] = (), host: str = "127.0.0.1", port: Optional[int] = None,
                 startup_timeout: float = 120.0, env: Optional[dict] = None):
        self.host, self.port = host, port or free_port(host)
        self.argv = [sys.executable, "-m", "mlx_spec.cli", "serve", "--model", str(model), "--host", host,
                     "--port", str(self.port), "--max-batch", str(max_batch)]
        if drafter is not None:
            self.argv += ["--drafter", str(drafter)]
        if draft_tokens is not None:
            self.argv += ["--draft-tokens", str(draft_tokens)]
        self.argv += list(extra)
        self.startup_timeout = startup_timeout
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self._log = None
        self.startup_seconds: Optional[float] = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> str:
        """The command as a person would type it (`mlx-spec serve ...`)."""
        return shlex.join(["mlx-spec", *self.argv[3:]])

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        with open(self._log.name, errors="replace") as f:
            return f.read()

    def start(self) -> "ServerProcess":
        import httpx

        self._log = tempfile.NamedTemporaryFile("w+", prefix="mlx-spec-serve-", suffix=".log", delete=False)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                log = self.log()
                self.stop()
                raise MlxSpecError(f"the server exited with code {self.process.returncode} while starting "
                                   f"({self.command}):\n{log[-4000:]}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise MlxSpecError(f"the server did not answer GET /health within {self.startup_timeout:.0f} s "
                                   f"({self.command}):\n{log[-4000:]}")
            time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - t0
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# Clients


@dataclass
class Reply:
    """One streamed request as the client saw it."""

    mode: str
    clients: int
    client: int
    prompt: str
    start: float  # seconds since the round started
    ttft: float  # seconds to the first streamed chunk
    latency: float  # seconds to the end of the stream
    completion_tokens: int = 0
    prompt_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    finish_reason: Optional[str] = None
    text: str = ""
    error: Optional[str] = None


def stream_chat(client, url: str, messages: list[dict], max_tokens: int, temperature: float) -> dict:
    """POST a streamed chat request; the text, finish reason, usage and speculative stats, and the
    time of the first chunk (perf_counter), or an error."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    out = {"text": "", "finish_reason": None, "usage": None, "speculative": None, "first": None, "error": None}
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            out["error"] = f"HTTP {r.status_code}: {r.text[:300]}"
            return out
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                out["error"] = event["error"].get("message", str(event["error"]))
                continue
            if event.get("choices"):
                if out["first"] is None:
                    out["first"] = time.perf_counter()
                choice = event["choices"][0]
                out["text"] += choice.get("delta", {}).get("content") or ""
                out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
            if event.get("usage"):
                out["usage"], out["speculative"] = event["usage"], event.get("speculative")
    return out


def run_round(url: str, mode: str, clients: int, requests_per_client: int, prompts: list[dict], max_tokens: int,
              temperature: float, on_reply=None, timeout: float = 600.0) -> tuple[list[Reply], float]:
    """C client threads in a closed loop; (replies, wall seconds from the common start to the last end)."""
    import httpx

    replies: list[Reply] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    t0 = [0.0]

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=timeout) as client:
            barrier.wait()
            for i in range(requests_per_client):
                prompt = prompts[(c + i * clients) % len(prompts)]  # concurrent requests differ
                start = time.perf_counter()
                try:
                    got = stream_chat(client, url, [{"role": "user", "content": prompt["prompt"]}], max_tokens, temperature)
                except Exception as e:  # the server went away, a timeout: counted, the round goes on
                    got = {"error": f"{type(e).__name__}: {e}", "text": "", "finish_reason": None, "usage": None,
                           "speculative": None, "first": None}
                end = time.perf_counter()
                usage, spec = got["usage"] or {}, got["speculative"] or {}
                reply = Reply(mode, clients, c, prompt["name"], start - t0[0], (got["first"] or end) - start, end - start,
                              usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0), spec.get("drafted", 0),
                              spec.get("accepted", 0), spec.get("steps", 0), got["finish_reason"], got["text"], got["error"])
                with lock:
                    replies.append(reply)
                if on_reply is not None:
                    on_reply(reply)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    t0[0] = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    wall = max((r.start + r.latency for r in replies), default=0.0)
    return replies, wall


def summarize(mode: str, clients: int, replies: list[Reply], wall: float) -> dict:
    ok = [r for r in replies if r.error is None]
    latencies = [r.latency for r in ok]
    tokens = sum(r.completion_tokens for r in ok)
    drafted, accepted, steps = (sum(getattr(r, k) for r in ok) for k in ("drafted", "accepted", "steps"))
    return {
        "mode": mode,
        "clients": clients,
        "requests": len(replies),
        "errors": len(replies) - len(ok),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "completion_tokens": tokens,
        "latency_mean_s": float(np.mean(latencies)) if latencies else float("nan"),
        "latency_p50_s": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p95_s": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "ttft_mean_s": float(np.mean([r.ttft for r in ok])) if ok else float("nan"),
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / drafted if drafted else None,
        "mean_accepted_length": 1 + accepted / steps if steps and drafted else None,
        "speedup": None,  # filled in for `on` rows once `off` at the same C is measured
        "same_text_as_off": None,
    }


# ------------------------------------------------------------------------------------------------
# The benchmark


def read_prompts(path: Path, limit: Optional[int] = None) -> list[dict]:
    """JSON lines with name and prompt (the format of tools/prompts/default.jsonl)."""
    if not Path(path).is_file():
        raise MlxSpecError(f"no prompt file {path}: pass --prompts FILE (JSON lines with name, category, prompt).")
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            item = json.loads(line)
            if not isinstance(item.get("prompt"), str):
                raise MlxSpecError(f"{path}:{number}: each line needs a string 'prompt'.")
            prompts.append({"name": item.get("name", f"prompt-{number}"), "prompt": item["prompt"]})
    if not prompts:
        raise MlxSpecError(f"{path} holds no prompts.")
    return prompts[:limit] if limit else prompts


MODES = ("on", "off")


@dataclass
class ServeBench:
    model: str
    drafter: Optional[str]
    prompts: list[dict]
    clients: list[int]
    requests_per_client: int = 4
    max_tokens: int = 128
    temperature: float = 0.0
    max_batch: int = 8
    draft_tokens: str = "auto"  # the `on` mode's
    modes: Sequence[str] = MODES
    startup_timeout: float = 600.0
    command: str = ""
    regime: dict = field(default_factory=dict)
    echo: object = print
    replies: list[Reply] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    servers: dict = field(default_factory=dict)

    def server_for(self, mode: str) -> ServerProcess:
        return ServerProcess(self.model, self.drafter, max_batch=self.max_batch,
                             draft_tokens=self.draft_tokens if mode == "on" else "0", startup_timeout=self.startup_timeout)

    def run(self, progress: bool = True, on_table=None) -> dict:
        from .bench import progress_bar

        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            servers = {}
            for mode in self.modes:  # one after the other: each measures its step costs on a quiet machine
                server = self.server_for(mode)
                self.echo(f"starting the server, speculation {mode}: {server.command}")
                servers[mode] = stack.enter_context(server)
                self.servers[mode] = {"command": servers[mode].command, "startup_s": round(servers[mode].startup_seconds, 2)}
                self.echo(f"  ready in {servers[mode].startup_seconds:.1f} s at {servers[mode].base_url}")
            for mode, server in servers.items():  # warm-up: first requests, every batch size up to the largest round
                width = min(max(self.clients), self.max_batch)
                run_round(server.base_url, mode, width, 1, self.prompts, min(self.max_tokens, 16), self.temperature)
            total = sum(self.clients) * self.requests_per_client * len(servers)
            bar = progress_bar(total, "bench-serve", progress)
            for clients in self.clients:
                for mode, server in servers.items():
                    if not server.alive():
                        raise MlxSpecError(f"the {mode} server died:\n{server.log()[-4000:]}")
                    replies, wall = run_round(server.base_url, mode, clients, self.requests_per_client, self.prompts,
                                              self.max_tokens, self.temperature,
                                              on_reply=(lambda r: bar.update(1)) if bar is not None else None)
                    self.replies += replies
                    row = summarize(mode, clients, replies, wall)
                    self.rows.append(row)
                    line = (f"{mode:>3} C={clients}: {row['requests_per_s']:.2f} req/s, {row['tokens_per_s']:.1f} tok/s, "
                            f"p50 latency {row['latency_p50_s']:.2f} s, TTFT {row['ttft_mean_s']:.2f} s"
                            + (f", {row['errors']} errors" if row["errors"] else ""))
                    (bar.write if bar is not None else self.echo)(line)
                self._pair(clients)
                if on_table is not None:
                    on_table(self.result(time.perf_counter() - started))
            if bar is not None:
                bar.close()
        return self.result(time.perf_counter() - started)

    def _pair(self, clients: int) -> None:
        rows = {r["mode"]: r for r in self.rows if r["clients"] == clients}
        on, off = rows.get("on"), rows.get("off")
        if on is None or off is None:
            return
        on["speedup"] = on["tokens_per_s"] / off["tokens_per_s"] if off["tokens_per_s"] else None
        if self.temperature == 0:
            texts = {}
            for r in self.replies:
                if r.clients == clients and r.error is None:
                    texts.setdefault((r.mode, r.prompt), set()).add(r.text)
            prompts = {p for _, p in texts}
            on["same_text_as_off"] = all(texts.get(("on", p)) == texts.get(("off", p)) for p in prompts)

    def result(self, seconds: float) -> dict:
        return {
            "label": "mlx-spec serve under load, " + ("greedy" if self.temperature == 0 else f"temperature {self.temperature}"),
            "command": self.command,
            "servers": self.servers,
            "regime": self.regime,
            "model": self.model,
            "drafter": self.drafter,
            "prompts": [p["name"] for p in self.prompts],
            "clients": self.clients,
            "requests_per_client": self.requests_per_client,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "max_batch": self.max_batch,
            "draft_tokens": self.draft_tokens,
            "wall_s": round(seconds, 2),
            "rows": self.rows,
            "requests": [{k: v for k, v in asdict(r).items()} for r in self.replies],
        }


def markdown(result: dict) -> str:
    reg = result.get("regime") or {}
    lines = [
        f"**{result['label']}** - model `{result['model']}`"
        + (f", drafter `{result['drafter']}`" if result.get("drafter") else "")
        + f"; on: `--draft-tokens {result['draft_tokens']}`, off: `--draft-tokens 0`; max batch {result['max_batch']}; "
        f"C clients x {result['requests_per_client']} streamed chat requests each (closed loop), "
        f"{result['max_tokens']} max tokens, {len(result['prompts'])} prompts cycled"
        + (f"; {reg['device']}, {reg['machine']}, mlx {reg['mlx']}, weights {', '.join(reg['weight_dtypes'])}, {reg['blas']}" if reg else "")
        + f"; {result['wall_s']:.0f} s in all.",
        "",
        f"Command: `{result['command']}`",
    ]
    if reg.get("warning"):
        lines.append(f"Warning: {reg['warning']}.")
    lines += ["", "| clients | speculation | req/s | completion tok/s | speedup (tok/s) | latency mean / p50 / p95 s | TTFT mean s | acceptance | mean accepted length | same text as off | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(x, fmt) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    for r in result["rows"]:
        same = "-" if r["same_text_as_off"] is None else ("yes" if r["same_text_as_off"] else "NO")
        lines.append(f"| {r['clients']} | {r['mode']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {num(r['speedup'], '.2f')} | "
                     f"{num(r['latency_mean_s'], '.2f')} / {num(r['latency_p50_s'], '.2f')} / {num(r['latency_p95_s'], '.2f')} | "
                     f"{num(r['ttft_mean_s'], '.2f')} | {num(r['acceptance'], '.2f')} | {num(r['mean_accepted_length'], '.2f')} | "
                     f"{same} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], out: Path) -> list[str]:
    """Completion tokens/s and p50 latency against the client count, on vs off (needs matplotlib)."""
    from .bench import pyplot

    plt = pyplot()
    if plt is None:
        return []
    result = results[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for n, mode in enumerate(dict.fromkeys(r["mode"] for r in result["rows"])):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        label, color = f"speculation {mode}", f"C{n}"
        left.plot([r["clients"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", color=color, label=label)
        right.plot([r["clients"] for r in rows], [r["latency_p50_s"] for r in rows], marker="o", color=color, label=label + " (p50)")
        right.plot([r["clients"] for r in rows], [r["latency_p95_s"] for r in rows], marker="x", ls="--", color=color, label=label + " (p95)")
    for ax, ylabel in ((left, "completion tokens/s (all clients)"), (right, "request latency s")):
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.suptitle(f"mlx-spec serve: {Path(str(result['model'])).name}, {result['max_tokens']} max tokens", fontsize=10)
    fig.tight_layout()
    path = Path(out) / "serve_bench.png"
    fig.savefig(path, dpi=120)
    plt.close("all")
    return [str(path)]
