"""The OpenAI-compatible server: concurrent requests decode together with speculation on, each getting
its own plain greedy output; streaming, stop strings, usage, errors, model defaults, cancellation."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

import mlx_spec  # noqa: E402
from mlx_spec.core.loop import speculative_generate_step, token_ids  # noqa: E402
from mlx_spec.core.settings import DraftSettings  # noqa: E402
from mlx_spec.core.loading import generation_defaults as model_defaults  # noqa: E402
from mlx_spec.server import Job, Submission, make_app, parse_job  # noqa: E402
from mlx_spec.core.sampling import Processors  # noqa: E402
from mlx_spec.core.settings import SamplingSettings  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny):
    model, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained")
    app = make_app(model, tokenizer, DraftSettings(3), max_batch=4)
    assert app.state.worker.ready.wait(60)
    sizes = []
    engine = app.state.worker.engine
    step = engine.step

    def recording_step():
        sizes.append(len(engine.rows))
        return step()

    engine.step = recording_step
    yield model, tokenizer, app, sizes
    app.state.worker.close()


def reference(model, tokenizer, prompt, max_tokens, processors=None):
    out = token_ids(speculative_generate_step(prompt, model.adapter, None, max_tokens=max_tokens, stop_tokens=tokenizer.eos_token_ids,
                                              processors=processors))
    finish = "stop" if out and out[-1] in tokenizer.eos_token_ids else "length"
    detokenizer = tokenizer.detokenizer  # as the server detokenizes (streaming), not tokenizer.decode
    for t in out:
        if t not in tokenizer.eos_token_ids:
            detokenizer.add_token(t)
    detokenizer.finalize()
    return detokenizer.text, finish, len(out)


def post_all(app, path, bodies):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            return await asyncio.gather(*(client.post(path, json=b) for b in bodies))
    return asyncio.run(go())


def test_health_and_models(served):
    model, _, app, _ = served
    [health] = asyncio.run(_get(app, ["/health"]))
    assert health.json()["status"] == "ok"
    [models] = asyncio.run(_get(app, ["/v1/models"]))
    assert models.json()["data"][0]["id"] == model.target.name


async def _get(app, paths):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return [await client.get(p) for p in paths]


def test_concurrent_requests_decode_together_each_its_own_greedy_output(served):
    model, tokenizer, app, sizes = served
    prompts = [[2, 40 + i, 17, 90 + 3 * i, 5 + i] for i in range(4)]
    limits = [40, 25, 60, 33]
    sizes.clear()
    replies = post_all(app, "/v1/completions", [{"prompt": p, "max_tokens": m, "temperature": 0} for p, m in zip(prompts, limits)])
    assert max(sizes) >= 2  # decoded together
    for p, m, r in zip(prompts, limits, replies):
        assert r.status_code == 200, r.text
        body = r.json()
        text, finish, n = reference(model, tokenizer, p, m)
        assert body["choices"][0]["text"] == text and body["choices"][0]["finish_reason"] == finish
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (len(p), n, len(p) + n)
        assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < len(p)
        spec = body["speculative"]
        assert spec["drafted"] > 0 and 0 <= spec["accepted"] <= spec["drafted"]


def test_streaming_chat_with_usage(served):
    model, tokenizer, app, _ = served
    messages = [{"role": "user", "content": "hello there"}]
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    text, finish, n = reference(model, tokenizer, prompt, 30)
    [r] = post_all(app, "/v1/chat/completions", [{"messages": messages, "max_tokens": 30, "temperature": 0, "stream": True,
                                                  "stream_options": {"include_usage": True}}])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == text
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [finish]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n and "speculative" in chunks[-1]


def test_penalties_and_logit_bias_on_the_speculative_path(served):
    """Rows with and without logits processors in one batch: each equals plain greedy decoding with its
    own processors (the penalties read each drafted position's own history)."""
    model, tokenizer, app, sizes = served
    prompt = [2, 61, 17, 140, 8, 61]
    first = token_ids(speculative_generate_step(prompt, model.adapter, None, max_tokens=1))[0]
    settings = [{}, {"frequency_penalty": 1.5, "presence_penalty": 0.5}, {"repetition_penalty": 1.6, "logit_bias": {"7": 4.0}},
                {"logit_bias": {str(first): -100}}]
    sizes.clear()
    replies = post_all(app, "/v1/completions", [{"prompt": prompt, "max_tokens": 50, "temperature": 0, **extra} for extra in settings])
    assert max(sizes) >= 2  # decoded together
    texts = set()
    for extra, r in zip(settings, replies):
        assert r.status_code == 200, r.text
        job = parse_job({"prompt": prompt, **extra}, "completion", tokenizer, model.target.name, {}, 1000, model.adapter.vocab_size)
        processors = Processors(job.processors, model.adapter.vocab_size) if job.processors.active else None
        text, finish, n = reference(model, tokenizer, prompt, 50, processors)
        body = r.json()
        assert body["choices"][0]["text"] == text and body["usage"]["completion_tokens"] == n
        texts.add(text)
        if extra:
            assert body["speculative"]["drafted"] > 0
    assert len(texts) == len(settings)  # every processor changed the output


def test_prompt_cache_prefills_only_the_new_turn(served):
    """A client resending the conversation: the second turn reads the first turn's prompt (and as much of
    the reply as its tokens match) from the prompt cache, and its reply is still the plain greedy one."""
    model, tokenizer, app, _ = served
    turn1 = [{"role": "user", "content": "tell me about the weather on the coast " * 3}]
    prompt1 = list(tokenizer.apply_chat_template(turn1, add_generation_prompt=True, tokenize=True))
    [r1] = post_all(app, "/v1/chat/completions", [{"messages": turn1, "max_tokens": 24, "temperature": 0}])
    reply = r1.json()["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and tomorrow?"}]
    prompt2 = list(tokenizer.apply_chat_template(turn2, add_generation_prompt=True, tokenize=True))
    assert prompt2[: len(prompt1)] == prompt1
    [r2, again] = [post_all(app, "/v1/chat/completions", [{"messages": turn2, "max_tokens": 24, "temperature": 0}])[0]
                   for _ in range(2)]
    text, _, n = reference(model, tokenizer, prompt2, 24)
    for r in (r2, again):
        assert r.json()["choices"][0]["message"]["content"] == text and r.json()["usage"]["completion_tokens"] == n
    cached = r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert len(prompt1) <= cached < len(prompt2)  # the new turn (at least) was prefilled
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == len(prompt2) - 1  # all but the last token


def test_stop_string_ends_the_text_exactly_there(served):
    model, tokenizer, app, _ = served
    prompt = [2, 77, 13, 250, 9]
    text, _, _ = reference(model, tokenizer, prompt, 60)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    [r] = post_all(app, "/v1/completions", [{"prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": stop}])
    body = r.json()
    assert body["choices"][0]["text"] == text[: text.index(stop)] and body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param", [
    ({"prompt": [2, 5], "model": "someone-else"}, "model"),
    ({"prompt": [2, 5], "max_tokens": -3}, "max_tokens"),
    ({"prompt": [2, 5], "temperature": -1}, "temperature"),
    ({"prompt": [2, 5], "top_p": 0}, "top_p"),
    ({"prompt": [2, 5], "top_p": 1.5}, "top_p"),
    ({"prompt": [2, 10**7]}, "prompt"),
    ({"prompt": [2] * 200_000}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [2, 5], "logit_bias": {"5": 300}}, "logit_bias"),
    ({"prompt": [2, 5], "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": [2, 5], "frequency_penalty": 2.5}, "frequency_penalty"),
    ({"prompt": [2, 5], "repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_requests_are_400_and_the_server_goes_on(served, body, param):
    _, _, app, _ = served
    bad, good = post_all(app, "/v1/completions", [body, {"prompt": [2, 5, 9], "max_tokens": 3, "temperature": 0}])
    assert bad.status_code == 400, bad.text
    error = bad.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1


def test_content_parts_and_model_card(served):
    model, tokenizer, app, _ = served
    plain = [{"role": "user", "content": "hello there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    a, b, c = post_all(app, "/v1/chat/completions", [{"messages": m, "max_tokens": 8, "temperature": 0} for m in (plain, parts, image)])
    assert a.json()["choices"] == b.json()["choices"] and a.json()["usage"]["prompt_tokens"] == b.json()["usage"]["prompt_tokens"]
    assert c.status_code == 400 and c.json()["error"]["param"] == "messages" and "image_url" in c.json()["error"]["message"]
    card, missing = asyncio.run(_get(app, [f"/v1/models/{model.target.name}", "/v1/models/other"]))
    assert card.json()["id"] == model.target.name and missing.status_code == 404


def test_malformed_json_is_400(served):
    _, _, app, _ = served

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    r = asyncio.run(go())
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_model_defaults_fill_what_a_request_leaves_out(tmp_path, served):
    model, tokenizer, _, _ = served
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 1.0, "top_p": 0.95, "top_k": 64, "do_sample": True}))
    defaults = model_defaults(tmp_path)
    assert defaults == {"temperature": 1.0, "top_p": 0.95, "top_k": 64}
    job = parse_job({"prompt": [2, 5]}, "completion", tokenizer, model.target.name, defaults, 1000, 512)
    assert job.sampling == SamplingSettings(temp=1.0, top_p=0.95, top_k=64)
    job = parse_job({"prompt": [2, 5], "temperature": 0}, "completion", tokenizer, model.target.name, defaults, 1000, 512)
    assert job.sampling.temp == 0 and job.sampling.top_k == 64
    assert model_defaults(tmp_path / "nowhere") == {}


def test_a_cancelled_request_frees_its_row(served):
    model, _, app, _ = served
    worker = app.state.worker

    async def go():
        job = Job("completion", [2, 33, 44, 55], SamplingSettings(), 500, [], False, False, model.target.name)
        sub = Submission(job, asyncio.get_running_loop(), asyncio.Queue())
        worker.submit(sub)
        first = await sub.events.get()
        worker.cancel(sub)
        for _ in range(200):
            if worker.engine.batch_size == 0:
                break
            await asyncio.sleep(0.01)
        return first, worker.engine.batch_size

    first, size = asyncio.run(go())
    assert first.tokens and size == 0
    time.sleep(0.05)


def test_a_failed_cost_measurement_still_serves(served, monkeypatch):
    """If measuring step costs fails at start, the server does not stay 'loading': it serves plain
    decoding (same greedy text) and /health says why."""
    import mlx_spec.server as server_module

    model, tokenizer, _, _ = served
    real = server_module.batch_policy_for

    def failing(*args, **kwargs):
        policy = real(*args, **kwargs)

        def prepare(rows):
            raise RuntimeError("out of memory")

        policy.prepare = prepare
        return policy

    monkeypatch.setattr(server_module, "batch_policy_for", failing)
    app = make_app(model, tokenizer, DraftSettings("auto"), max_batch=2)
    try:
        assert app.state.worker.ready.wait(60)
        [health] = asyncio.run(_get(app, ["/health"]))
        assert health.json()["status"] == "ok" and "out of memory" in health.json()["warning"]
        [r] = post_all(app, "/v1/completions", [{"prompt": [2, 40, 17], "max_tokens": 12, "temperature": 0}])
        text, _, n = reference(model, tokenizer, [2, 40, 17], 12)
        assert r.json()["choices"][0]["text"] == text and r.json()["speculative"]["drafted"] == 0
    finally:
        app.state.worker.close()
