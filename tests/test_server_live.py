"""`mlx-spec serve` as a real process on a real port, driven by the official `openai` client: greedy replies
equal plain greedy decoding in this process (alone and under concurrent load), nothing lost or mixed
between concurrent clients, a client that drops its stream frees its row, bad input is a 400 and the
server goes on; and `mlx-spec bench-serve` end to end on the tiny checkpoint."""

from __future__ import annotations

import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import mlx_spec  # noqa: E402
from mlx_spec.core.errors import MlxSpecError  # noqa: E402
from mlx_spec.generate import user_turn_tokens  # noqa: E402
from mlx_spec.tools.serve_bench import ServerProcess  # noqa: E402

TOKENS = 16  # per request: the tiny model decodes ~100 tokens/s on 2 CPU cores
PROMPTS = [f"Request {i}: tell me something about topic number {i * 7 + 3}." for i in range(32)]


@pytest.fixture(scope="module")
def server(tiny):
    """The server on a free port of 127.0.0.1; a fixed draft length (auto would measure step costs at
    every batch size first, ~15 s on 2 cores)."""
    proc = ServerProcess(tiny / "dense" / "target", tiny / "dense" / "drafter-trained", max_batch=8, draft_tokens="3",
                         startup_timeout=60)
    try:
        proc.start()
    except MlxSpecError as e:
        pytest.fail(f"the server did not start: {e}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model_name(client):
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def reference(tiny):
    """(text, completion tokens, finish reason) of plain greedy decoding (k = 0) of one user message, in this
    process: what the server must give at temperature 0, batched and speculating or not."""
    model, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained")
    lock = threading.Lock()

    @functools.lru_cache(maxsize=None)
    def ref(content: str, max_tokens: int = TOKENS):
        with lock:
            ids = user_turn_tokens(tokenizer, content)
            text, last = "", None
            for last in mlx_spec.stream_generate(model, tokenizer, ids, max_tokens=max_tokens, draft_tokens=0):
                text += last.text
            return text, last.generation_tokens, last.finish_reason

    return ref


def ask(client, model_name, content: str, stream: bool, max_tokens: int = TOKENS):
    """(text, completion tokens, finish reason, speculative stats) of one chat request through the openai client."""
    messages = [{"role": "user", "content": content}]
    if not stream:
        r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason, r.speculative
    text, finish, usage, spec, roles = "", None, None, None, []
    for chunk in client.chat.completions.create(model=model_name, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            delta = chunk.choices[0].delta
            roles.append(delta.role)
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage, spec = chunk.usage, chunk.speculative
    assert roles and roles[0] == "assistant"
    assert usage is not None, "no usage chunk despite stream_options.include_usage"
    return text, usage.completion_tokens, finish, spec


def health(server) -> dict:
    r = httpx.get(server.base_url + "/health", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_chat_equals_plain_decoding_alone_and_under_load(server, client, model_name, reference):
    """Non-streamed and streamed, first with the server idle, then while 8 other clients keep it busy
    (9 requests for 8 rows: one also waits for a free row); the background replies are checked too."""
    content = "Hello there, how are you today?"
    want = reference(content)
    for stream in (False, True):
        text, tokens, finish, spec = ask(client, model_name, content, stream)
        assert (text, tokens, finish) == want, f"stream={stream}"
        assert spec["drafted"] > 0 and 0 <= spec["accepted"] <= spec["drafted"]

    for p in PROMPTS[:8]:
        reference(p)  # computed before the load starts
    stop, windows, wrong, errors = threading.Event(), [], [], []

    def background(i):
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                got = ask(client, model_name, PROMPTS[i], stream=bool(i % 2))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                return
            windows.append((t0, time.perf_counter()))
            if got[:3] != reference(PROMPTS[i]):
                wrong.append((i, got[:3], reference(PROMPTS[i])))

    threads = [threading.Thread(target=background, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while health(server)["live_requests"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        for stream in (False, True):
            t0 = time.perf_counter()
            got = ask(client, model_name, content, stream)
            t1 = time.perf_counter()
            assert got[:3] == want, f"under load, stream={stream}"
            overlapping = [w for w in list(windows) if w[0] < t1 and w[1] > t0]
            assert len(overlapping) >= 2, "the background requests did not run alongside"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert not wrong, wrong[:2]
    assert len(windows) >= 8


def test_32_requests_from_8_clients_each_get_their_own_reply(server, client, model_name, reference):
    """Distinct prompts, half streamed: every request completes with its own greedy reply (nothing lost,
    nothing swapped between rows), and the server really decoded several at once."""
    wants = [reference(p) for p in PROMPTS]
    assert len(set(w[0] for w in wants)) > 16  # distinct replies: a mix-up could not go unseen
    seen, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            seen[0] = max(seen[0], health(server)["live_requests"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: ask(client, model_name, PROMPTS[i], stream=bool(i % 2)), range(32)))
    finally:
        done.set()
        watcher.join()
    assert len(replies) == 32
    for i, (got, want) in enumerate(zip(replies, wants)):
        assert got[:3] == want, f"request {i}"
    assert seen[0] >= 2, "never more than one request in the batch"
    assert health(server)["live_requests"] == 0


def test_a_client_dropped_mid_stream_frees_its_row_and_the_server_goes_on(server, client, model_name, reference):
    """openai's stream closed after its first chunk, and a raw httpx stream closed after its first line:
    each row leaves the batch within seconds (the full 2000 tokens would take ~20 s), then the next request
    is served right."""
    for how in ("openai", "httpx"):
        messages = [{"role": "user", "content": f"Please write a very long story ({how})."}]
        if how == "openai":
            stream = client.chat.completions.create(model=model_name, messages=messages, max_tokens=2000, temperature=0, stream=True)
            first = next(iter(stream))
            assert first.choices[0].delta.role == "assistant"
            assert health(server)["live_requests"] == 1
            stream.close()
        else:
            body = {"messages": messages, "max_tokens": 2000, "temperature": 0, "stream": True}
            with httpx.Client(timeout=30) as raw, raw.stream("POST", server.base_url + "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()  # held: a dropped line iterator would close the connection already
                line = next(line for line in lines if line.startswith("data: "))
                assert json.loads(line[6:])["choices"][0]["delta"]["role"] == "assistant"
                assert health(server)["live_requests"] == 1
        deadline = time.monotonic() + 8
        while health(server)["live_requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health(server)["live_requests"] == 0, f"the dropped {how} stream still holds its row"
        assert server.alive()
        content = "Short question after a drop."
        assert ask(client, model_name, content, stream=True)[:3] == reference(content)


@pytest.mark.parametrize("field, value", [("temperature", -1), ("max_tokens", -5), ("top_p", 1.5)])
def test_bad_input_is_a_400_and_the_next_request_succeeds(server, client, model_name, reference, field, value):
    kwargs = {"model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, field: value}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**kwargs)
    assert raised.value.status_code == 400
    assert raised.value.param == field and raised.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # streamed: refused before the stream starts
        client.chat.completions.create(**kwargs, stream=True)
    content = "hi again"
    assert ask(client, model_name, content, stream=False, max_tokens=6)[:3] == reference(content, 6)
    assert server.alive() and health(server)["status"] == "ok"


def test_bench_serve_end_to_end(tiny, tmp_path):
    """bench-serve on the tiny model: both servers start, every request of every round completes, and the
    JSON, markdown and plot hold positive numbers for on and off at each client count."""
    from typer.testing import CliRunner

    from mlx_spec.cli import app

    out = tmp_path / "serve"
    result = CliRunner().invoke(app, [
        "bench-serve", "-m", str(tiny / "dense" / "target"), "-d", str(tiny / "dense" / "drafter-trained"),
        "--clients", "1,2", "--requests-per-client", "1", "--max-tokens", "8", "--max-batch", "2", "--draft-tokens", "2",
        "--no-progress", "--startup-timeout", "60", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    [data] = json.loads((out / "serve_results.json").read_text())
    rows = {(r["mode"], r["clients"]): r for r in data["rows"]}
    assert set(rows) == {("on", 1), ("off", 1), ("on", 2), ("off", 2)}
    for (mode, clients), r in rows.items():
        assert r["requests"] == clients and r["errors"] == 0
        assert r["requests_per_s"] > 0 and r["tokens_per_s"] > 0 and r["completion_tokens"] > 0
        assert 0 < r["ttft_mean_s"] <= r["latency_mean_s"] and 0 < r["latency_p50_s"] <= r["latency_p95_s"]
        if mode == "on":
            assert r["drafted"] > 0 and 0 <= r["acceptance"] <= 1 and r["speedup"] > 0
            assert r["same_text_as_off"] is True  # greedy: speculation changes no reply
        else:
            assert r["drafted"] == 0 and r["acceptance"] is None
    assert "bench-serve" in data["command"] and "--draft-tokens 0" in data["servers"]["off"]["command"]
    assert data["regime"]["device"] and data["regime"]["blas"]
    assert len(data["requests"]) == 2 * (1 + 2)
    md = (out / "serve_results.md").read_text()
    assert md.count("| on |") == 2 and md.count("| off |") == 2
    from mlx_spec.tools.bench import pyplot

    if pyplot() is not None:  # the plot needs the `bench` extra (matplotlib), which CI does not install
        assert (out / "serve_bench.png").stat().st_size > 1000
