"""An OpenAI-compatible HTTP server with continuous batching and speculation on.

    mlx-spec serve --model M [--drafter D] [--host 127.0.0.1] [--port 8080] [--max-batch 8]

`POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent events or not),
`GET /v1/models`, `GET /health`. Concurrent requests decode together in one `BatchEngine` (core/batch.py):
a request is prefilled and joins the batch at the next step, leaves when done, and a client that
disconnects frees its row at once; the draft length stays priced for the live batch. One engine
thread owns the model; the HTTP side (Starlette on uvicorn, the `server` extra) only parses requests,
detokenizes and streams.

A request becomes the same settings objects the CLI builds: `SamplingSettings` from `temperature`,
`top_p`, `top_k`, `min_p`, `seed`; fields it leaves out come from the model's `generation_config.json`
(Gemma 4 ships temperature 1.0, top_p 0.95, top_k 64), else greedy; `logit_bias` and the penalties
become a `ProcessorSettings`, applied at every drafted position. Stop strings end the text exactly
where they start (and the row leaves the batch). A prompt cache (core/prompt_cache.py) lets a request
that extends an earlier conversation prefill only its new part (`usage.prompt_tokens_details`). Bad
input is an HTTP 400 with an OpenAI-style error body; the server keeps serving every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .core.batch import BatchEngine, BatchStats, RowOutput
from .core.policy import BatchPolicy
from .core.errors import MlxSpecError
from .core.loading import SpeculativeModel, generation_defaults
from .core.loop import SpecStats, check_token_ids
from .core.prompt_cache import PromptCache
from .core.sampling import Processors, make_strategy
from .core.settings import NO_PROCESSORS, DraftSettings, ProcessorSettings, SamplingSettings
from .generate import batch_policy_for


class RequestError(MlxSpecError):
    """A request the server refuses (HTTP 400), with the field it is about."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


# ------------------------------------------------------------------------------------------------
# Requests


@dataclass
class Job:
    """One parsed request: what the engine needs and what the response needs."""

    kind: str  # "chat" or "completion"
    prompt: list[int]
    sampling: SamplingSettings
    max_tokens: int
    stop: list[str]
    stream: bool
    include_usage: bool
    model: str
    processors: ProcessorSettings = NO_PROCESSORS
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _number(body: dict, name: str, default, kind=float, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise RequestError(f"'{name}' must be a {'whole number' if kind is int else 'number'} (got {value!r}).", name)
    value = kind(value)
    if low is not None and (value <= low if low_open else value < low):
        raise RequestError(f"'{name}' must be {'>' if low_open else '>='} {low} (got {value}).", name)
    if high is not None and value > high:
        raise RequestError(f"'{name}' must be <= {high} (got {value}).", name)
    return value


def parse_job(body: Any, kind: str, tokenizer, model_name: str, defaults: dict, max_context: int,
              vocab_size: int) -> Job:
    """A request body -> a Job, or RequestError saying which field is wrong and why."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object.")
    requested = body.get("model")
    if requested not in (None, "", model_name):
        raise RequestError(f"unknown model {requested!r}: this server serves {model_name!r} (GET /v1/models).", "model")
    if body.get("n", 1) != 1:
        raise RequestError("only n = 1 is supported.", "n")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise RequestError("'messages' must be a non-empty list of {role, content} objects.", "messages")
        messages = [{**m, "content": text_content(m.get("content"))} for m in messages]
        try:
            prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        except Exception as e:  # the template's own complaint (a role it does not know, ...)
            raise RequestError(f"the chat template could not format these messages: {e}", "messages") from None
    else:
        text = body.get("prompt")
        if isinstance(text, str):
            prompt = list(tokenizer.encode(text))
        elif isinstance(text, list) and text and all(isinstance(t, int) and not isinstance(t, bool) for t in text):
            prompt = text
        else:
            raise RequestError("'prompt' must be a string or a list of token ids.", "prompt")
    try:
        prompt = check_token_ids(prompt, vocab_size)
    except MlxSpecError as e:
        raise RequestError(str(e), "prompt" if kind == "completion" else "messages") from None
    if not prompt:
        raise RequestError("the prompt is empty.", "prompt")
    if len(prompt) >= max_context:
        raise RequestError(f"the prompt has {len(prompt)} tokens, the model's context is {max_context}: shorten it.",
                           "messages" if kind == "chat" else "prompt")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": limit}, "max_tokens", 256, int, low=1)
    max_tokens = min(max_tokens, max_context - len(prompt))
    temp = _number(body, "temperature", defaults.get("temperature", 0.0), float, low=0, high=2)
    top_p = _number(body, "top_p", defaults.get("top_p", 1.0), float, low=0, high=1, low_open=True)
    top_k = _number(body, "top_k", defaults.get("top_k", 0), int, low=0)
    min_p = _number(body, "min_p", defaults.get("min_p", 0.0), float, low=0, high=1)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f"'seed' must be an integer (got {seed!r}).", "seed")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError("'stop' must be a string or a list of up to 4 non-empty strings.", "stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", "stream_options")
    sampling = SamplingSettings(temp=temp, top_p=top_p if top_p < 1 else 0.0, top_k=top_k, min_p=min_p, seed=seed)
    return Job(kind, prompt, sampling, max_tokens, stop, bool(body.get("stream", False)),
               bool(options.get("include_usage", False)), model_name, parse_processors(body, vocab_size))


def text_content(content) -> str:
    """A message's content as text: a string, null (empty), or OpenAI's list of parts, whose text parts
    are joined; other parts (images, audio) are refused: this server serves a text model."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"only text content parts are supported (got {kind!r}).", "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError("a message's 'content' must be a string or a list of text parts.", "messages")


def parse_processors(body: dict, vocab_size: int) -> ProcessorSettings:
    """logit_bias ({"token id": -100..100}), frequency_penalty / presence_penalty (-2..2, OpenAI's ranges),
    repetition_penalty (> 0, mlx-lm's) and repetition_context_size: applied at every drafted position."""
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise RequestError("'logit_bias' must be an object mapping token ids to numbers from -100 to 100.", "logit_bias")
    parsed = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"'logit_bias' keys must be token ids (got {key!r}).", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise RequestError(f"'logit_bias' names token {token}, outside the vocabulary (0..{vocab_size - 1}).", "logit_bias")
        parsed[token] = _number({"logit_bias": value}, "logit_bias", 0.0, float, low=-100, high=100)
    return ProcessorSettings(
        logit_bias=parsed,
        frequency_penalty=_number(body, "frequency_penalty", 0.0, float, low=-2, high=2),
        presence_penalty=_number(body, "presence_penalty", 0.0, float, low=-2, high=2),
        repetition_penalty=_number(body, "repetition_penalty", None, float, low=0, low_open=True),
        repetition_context_size=_number(body, "repetition_context_size", 20, int, low=1),
    )


# ------------------------------------------------------------------------------------------------
# The engine thread


@dataclass
class Submission:
    """A job on its way through the engine; `events` receives RowOutputs (None: the engine failed)."""

    job: Job
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    row: Optional[int] = None
    stats: SpecStats = field(default_factory=SpecStats)
    cancelled: bool = False

    def deliver(self, item) -> None:
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # its event loop is gone: nobody is listening any more
            self.cancelled = True


class Worker:
    """Owns the BatchEngine: takes submissions, steps the batch, hands each row's tokens back."""

    def __init__(self, model: SpeculativeModel, draft: DraftSettings, max_batch: int = 8, stop_tokens=(),
                 prompt_cache_bytes: int = 2 << 30):
        drafter = model.draft_model if draft.k_max and draft.mtp else None
        if model.lookup and not draft.lookup:
            draft = replace(draft, lookup=True)
        # A few steps here, in the loading thread, on a scratch engine: arrays the model built lazily at
        # load (RoPE tables, scales) belong to this thread's MLX stream and must be evaluated before
        # another thread uses them.
        k = min(2, draft.k_max) if drafter is not None else 0
        scratch = BatchEngine(model.adapter, drafter, BatchPolicy(k, fixed=k))
        scratch.add([min(2, model.adapter.vocab_size - 1)], max_tokens=2 + k)
        while scratch.active:
            scratch.step()
        # one cost table per batch-size bucket (greedy steps price the sampled ones too), measured by the
        # engine thread before its first request: the port is open (GET /health says "loading") meanwhile
        self.policy = batch_policy_for(model, [SamplingSettings()], draft, drafter)
        self.prompt_cache = PromptCache(model.adapter, prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        self.engine = BatchEngine(model.adapter, drafter, self.policy, exact_verify=draft.exact_verify, prompt_cache=self.prompt_cache,
                                  lookup=draft.lookup)
        self.ready = threading.Event()
        self.warning: Optional[str] = None
        self.max_batch = max_batch
        self.stop_tokens = set(stop_tokens)
        self._cond = threading.Condition()
        self._waiting: deque[Submission] = deque()
        self._live: dict[int, Submission] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mlx-spec-engine", daemon=True)
        self._thread.start()

    def submit(self, sub: Submission) -> None:
        with self._cond:
            self._waiting.append(sub)
            self._cond.notify()

    def cancel(self, sub: Submission) -> None:
        """The client is gone (or a stop string matched): free the row at the next step."""
        with self._cond:
            sub.cancelled = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self.policy.prepare(self.max_batch)
        except Exception as e:  # never a server that stays "loading": serve, decoding plainly, and say why
            self.warning = f"measuring step costs failed ({type(e).__name__}: {e}); decoding without speculation"
            self.engine.policy = BatchPolicy(0, fixed=0)
        self.ready.set()
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self.engine.active:
                    self._cond.wait()
                if self._stopping:
                    return
                room = self.max_batch - self.engine.batch_size
                joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                gone = [s for s in self._live.values() if s.cancelled]
            for sub in gone:
                self.engine.remove(sub.row)
                del self._live[sub.row]
            for sub in joining:
                if sub.cancelled:
                    continue
                job = sub.job
                try:
                    processors = Processors(job.processors, self.engine.target.vocab_size) if job.processors.active else None
                    sub.row = self.engine.add(job.prompt, make_strategy(job.sampling), job.max_tokens, self.stop_tokens, processors)
                except Exception as e:  # a bad prompt, or an error inside MLX: this request fails, the others go on
                    sub.deliver(e if isinstance(e, MlxSpecError) else RuntimeError(f"prefill failed: {e}"))
                    continue
                sub.stats = self.engine.stats.rows[-1]
                self._live[sub.row] = sub
            if not self.engine.active:
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # never leave clients waiting: fail the live requests, start clean
                for sub in self._live.values():
                    sub.deliver(RuntimeError(f"the engine failed: {e}"))
                self._live.clear()
                self.engine.close()
                continue
            for out in outputs:
                sub = self._live.get(out.id)
                if sub is None:
                    continue
                sub.deliver(out)
                if out.finish_reason:
                    del self._live[out.id]
            if not self.engine.active or len(self.engine.stats.batch_sizes) > 10000:
                self.engine.stats = BatchStats()  # a long-running server keeps no per-step history


# ------------------------------------------------------------------------------------------------
# Responses


class TextStream:
    """Detokenizes one request's tokens and finds stop strings: text is released only when no stop
    string can still start inside it."""

    def __init__(self, tokenizer, stop: list[str]):
        self.detokenizer = tokenizer.detokenizer
        self.stop = stop
        self.held = ""  # text not yet released
        self.text = ""  # released so far
        self.stopped = False

    def add(self, tokens: list[int], final: bool) -> str:
        for t in tokens:
            self.detokenizer.add_token(t)
        if final:
            self.detokenizer.finalize()
        self.held += self.detokenizer.last_segment
        cut = min((i for i in (self.held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self.held, self.stopped = self.held[:cut], "", True
        elif final or not self.stop:
            out, self.held = self.held, ""
        else:
            keep = max(len(s) for s in self.stop) - 1  # a stop string may begin in the last few characters
            out, self.held = self.held[: max(0, len(self.held) - keep)], self.held[max(0, len(self.held) - keep):]
        self.text += out
        return out


def usage(job: Job, stats: SpecStats, completion_tokens: int) -> dict:
    """OpenAI's usage, with the prompt tokens the prompt cache supplied (not prefilled) as cached_tokens."""
    return {"prompt_tokens": len(job.prompt), "completion_tokens": completion_tokens,
            "total_tokens": len(job.prompt) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_prompt_tokens}}


def speculative(stats: SpecStats) -> dict:
    return {"drafted": stats.drafted, "accepted": stats.accepted, "steps": stats.steps,
            "acceptance_per_position": [round(a, 4) for a in stats.acceptance_per_position]}


def error_body(message: str, param: Optional[str] = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def make_app(model: SpeculativeModel, tokenizer, draft: Optional[DraftSettings] = None, max_batch: int = 8,
             model_name: Optional[str] = None, prompt_cache_bytes: int = 2 << 30):
    """The Starlette application (needs the `server` extra: starlette, uvicorn)."""
    try:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise MlxSpecError('the server needs its extra: pip install "mlx-spec[server]" (starlette, uvicorn).') from None

    name = model_name or model.target.name
    defaults = generation_defaults(model.target.path)
    stop_tokens = set(tokenizer.eos_token_ids)
    worker = Worker(model, draft or DraftSettings(), max_batch, stop_tokens, prompt_cache_bytes)
    target = model.adapter

    async def health(request):
        if not worker.ready.is_set():  # measuring step costs: requests wait in the queue
            return JSONResponse({"status": "loading", "model": name, "live_requests": 0}, status_code=503)
        body = {"status": "ok", "model": name, "live_requests": worker.engine.batch_size}
        return JSONResponse(body | ({"warning": worker.warning} if worker.warning else {}))

    card = {"id": name, "object": "model", "created": 0, "owned_by": "mlx-spec"}

    async def models(request):
        return JSONResponse({"object": "list", "data": [card]})

    async def model_card(request):
        if request.path_params["model"] != name:
            return JSONResponse(error_body(f"unknown model {request.path_params['model']!r}: this server serves {name!r}.", "model",
                                           "invalid_request_error"), status_code=404)
        return JSONResponse(card)

    async def run(job: Job):
        """Yield (text, finish_reason, completion tokens, stats) pieces of one job's output."""
        sub = Submission(job, asyncio.get_running_loop(), asyncio.Queue())
        worker.submit(sub)
        stream = TextStream(tokenizer, job.stop)
        tokens = 0
        try:
            while True:
                item = await sub.events.get()
                if isinstance(item, Exception):
                    raise item
                out: RowOutput = item
                kept = [t for t in out.tokens if t not in stop_tokens]
                tokens += len(out.tokens)
                text = stream.add(kept, final=out.finish_reason is not None)
                if stream.stopped:
                    worker.cancel(sub)
                    yield text, "stop", tokens, sub.stats
                    return
                finish = None if out.finish_reason is None else ("stop" if out.finish_reason == "stop" else "length")
                yield text, finish, tokens, sub.stats
                if finish:
                    return
        finally:
            if not stream.stopped and (sub.row is None or sub.row in worker._live):
                worker.cancel(sub)  # the client left (or the handler failed): free the row now

    def chunk(job: Job, text: str, finish: Optional[str], first: bool) -> dict:
        if job.kind == "chat":
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            kind = "text_completion"
        return {"id": job.id, "object": kind, "created": job.created, "model": job.model, "choices": [choice]}

    async def complete(request, kind: str):
        try:
            body = await request.json()
        except Exception:
            return JSONResponse(error_body("the request body is not valid JSON."), status_code=400)
        try:
            job = parse_job(body, kind, tokenizer, name, defaults, target.max_context, target.vocab_size)
        except MlxSpecError as e:
            return JSONResponse(error_body(str(e), getattr(e, "param", None)), status_code=400)
        if job.stream:
            async def events():
                first, last = True, None
                try:
                    async for text, finish, tokens, stats in run(job):
                        yield f"data: {json.dumps(chunk(job, text, finish, first))}\n\n"
                        first, last = False, (tokens, stats)
                except Exception as e:
                    yield f"data: {json.dumps(error_body(str(e), kind='server_error'))}\n\n"
                if job.include_usage and last is not None:
                    tokens, stats = last
                    extra = {"id": job.id, "object": chunk(job, '', None, False)["object"], "created": job.created,
                             "model": job.model, "choices": [], "usage": usage(job, stats, tokens), "speculative": speculative(stats)}
                    yield f"data: {json.dumps(extra)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, finish, tokens, stats = "", "length", 0, SpecStats()
        watcher = asyncio.ensure_future(_until_disconnected(request))
        runner = run(job)
        try:
            async for piece, finish_reason, tokens, stats in runner:
                text += piece
                finish = finish_reason or finish
                if watcher.done():  # the client left: stop generating for it
                    break
        except Exception as e:
            return JSONResponse(error_body(str(e), kind="server_error"), status_code=500)
        finally:
            watcher.cancel()
            await runner.aclose()
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            obj = "text_completion"
        return JSONResponse({"id": job.id, "object": obj, "created": job.created, "model": job.model, "choices": [choice],
                             "usage": usage(job, stats, tokens), "speculative": speculative(stats)})

    async def chat_completions(request):
        return await complete(request, "chat")

    async def completions(request):
        return await complete(request, "completion")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()  # the engine thread ends with the server

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_card, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ], lifespan=lifespan)
    app.state.worker = worker
    return app


async def _until_disconnected(request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


def serve(model: SpeculativeModel, tokenizer, host: str = "127.0.0.1", port: int = 8080, draft: Optional[DraftSettings] = None,
          max_batch: int = 8, prompt_cache_bytes: int = 2 << 30) -> None:
    """Run the server with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise MlxSpecError('the server needs its extra: pip install "mlx-spec[server]" (starlette, uvicorn).') from None
    uvicorn.run(make_app(model, tokenizer, draft, max_batch, prompt_cache_bytes=prompt_cache_bytes), host=host, port=port,
                log_level="info")
