"""`mlx-spec chat` in a real pseudo-terminal: streaming, multi-turn cache reuse, Ctrl-C, Ctrl-D."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import time

import mlx_spec
from mlx_spec.chat import ChatSession
from mlx_spec.core.loop import speculative_generate_step, token_ids
from mlx_spec.core.target import Target


class Terminal:
    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal, so Ctrl-C becomes SIGINT
            # A shell starts background jobs with SIGINT ignored, and exec keeps that: a CI run started
            # with `&` would then never see the Ctrl-C. A terminal app starts with the default.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvp(argv[0], argv)
        self.buffer = ""

    def read_until(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.time() + timeout
        while not re.search(pattern, self.buffer):
            remaining = deadline - time.time()
            assert remaining > 0, f"timed out waiting for {pattern!r}; got {self.buffer[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 1.0))
            if ready:
                try:
                    self.buffer += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
        match = re.search(pattern, self.buffer)
        out, self.buffer = self.buffer[: match.end()], self.buffer[match.end():]
        return out

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                select.select([self.fd], [], [], 0.2)
                os.read(self.fd, 4096)
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("chat did not exit")


def chat_argv(tiny, *extra):
    return [sys.executable, "-m", "mlx_spec.cli", "chat", "-m", str(tiny / "dense" / "target"),
            "-d", str(tiny / "dense" / "drafter-trained"), "--draft-tokens", "3", "--ignore-eos", *extra]


def prefilled(stats_text: str) -> tuple[int, int]:
    m = re.search(r"prefilled (\d+) tokens last turn; (\d+) tokens in the cache", stats_text)
    return int(m.group(1)), int(m.group(2))


def test_multi_turn_reuses_the_cache_and_ctrl_d_exits(tiny):
    term = Terminal(chat_argv(tiny, "--max-tokens", "16"))
    term.read_until(r">> ")
    term.send("Hello there\n")
    first = term.read_until(r">> ")
    assert len(first.strip()) > len("Hello there")  # the echoed line plus a streamed reply
    term.send("/stats\n")
    turn1, cached1 = prefilled(term.read_until(r">> "))
    term.send("Tell me more\n")
    term.read_until(r">> ")
    term.send("/stats\n")
    turn2, cached2 = prefilled(term.read_until(r">> "))
    # second turn prefills only the previous reply's last token + the new user turn, not the history
    _, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained", lazy=True)
    new_turn = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me more"}], add_generation_prompt=True, tokenize=True)
    assert turn2 == 1 + len(new_turn) - 1  # + pending token, - the bos the conversation already has
    assert cached2 == cached1 + turn2 + 15 and turn2 < cached1
    term.send("\x04")  # Ctrl-D
    assert term.wait() == 0


def test_ctrl_c_stops_a_reply_and_keeps_the_session(tiny):
    term = Terminal(chat_argv(tiny, "--max-tokens", "3000"))
    term.read_until(r">> ")
    term.send("Write a long story\n")
    term.read_until(r"story\r?\n")  # the echo
    streamed = term.read_until(r"\S{8}")  # reply text arrives while the reply is still running
    assert streamed
    term.send("\x03")  # Ctrl-C
    term.read_until(r"\[stopped\]")
    term.read_until(r">> ")
    term.send("/stats\n")
    _, cached = prefilled(term.read_until(r">> "))
    assert 0 < cached < 3000
    term.send("/reset\n")
    term.read_until(r"conversation reset\]")
    term.send("\x04")
    assert term.wait() == 0


def test_session_continuation_equals_a_fresh_prefill(tiny):
    """Reusing the cache across turns (and after an interrupted reply) gives the same tokens as
    prefilling the whole conversation from scratch."""
    model, tokenizer = mlx_spec.load(tiny / "moe" / "target", tiny / "moe" / "drafter-trained")
    session = ChatSession(model, tokenizer, max_tokens=24, draft_tokens=4, ignore_eos=True)
    for message in ("Hello", "And then?"):
        list(session.ask(message))
    replies = session.ask("Interrupt me")
    for i, _ in enumerate(replies):
        if i == 7:
            break
    replies.close()
    assert all(c.offset == len(session.history) for c in session.cache)
    target = Target(model.target.module, model.target.text_config)
    turn = session._turn_tokens("Last one")
    history = session.history + [session.pending] + turn
    fresh = token_ids(speculative_generate_step(history, target, None, max_tokens=24))
    assert [r.token for r in session.ask("Last one")] == fresh
    assert session.last_stats.prompt_tokens == 1 + len(turn)  # only the new tokens were prefilled


def test_generate_text_prompt_uses_the_chat_template(tiny):
    from typer.testing import CliRunner

    from mlx_spec.cli import app

    result = CliRunner().invoke(app, ["generate", "-m", str(tiny / "dense" / "target"), "-d", str(tiny / "dense" / "drafter-trained"),
                                      "--prompt", "Hi", "--max-tokens", "5", "--json"])
    assert result.exit_code == 0, result.output
    import json

    stats = json.loads(result.output.strip().splitlines()[-1])["stats"]
    _, tokenizer = mlx_spec.load(tiny / "dense" / "target", tiny / "dense" / "drafter-trained", lazy=True)
    assert stats["prompt_tokens"] == len(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True))


CLEAR_ERRORS = [
    (["generate", "--prompt", "hi"], "google/gemma-4-E2B-it is not in the local Hugging Face cache"),
    (["generate", "-m", "nobody/missing-model", "--prompt", "hi"], "not in the local Hugging Face cache"),
    (["chat", "--temp", "-1"], "temperature must be >= 0"),
    (["generate", "--prompt", "hi", "--top-p", "2"], "top-p must be in"),
    (["check", "-m", "google/gemma-4-E2B-it"], "local Hugging Face cache"),
]


def test_clear_errors(tmp_path):
    """Each bad command line is one line on stderr and exit code 2, offline, in a real process (one
    process for all of them: the console entry point per command, stderr captured per command)."""
    import subprocess

    script = (
        "import contextlib, io, json, sys\n"
        "from mlx_spec.cli import main\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    out.append([code, err.getvalue()])\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-c", script, json.dumps([argv for argv, _ in CLEAR_ERRORS])],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    for (argv, message), (code, stderr) in zip(CLEAR_ERRORS, json.loads(res.stdout.strip().splitlines()[-1])):
        assert code == 2, argv
        assert message in stderr and "Traceback" not in stderr, (argv, stderr)
        assert stderr.count("\n") == 1, (argv, stderr)


def test_hub_ids_resolve_from_the_local_cache_offline(tiny, tmp_path):
    """A hub id found in the Hugging Face cache loads with HF_HUB_OFFLINE=1 (no network needed)."""
    import shutil
    import subprocess

    revision = "0123456789abcdef0123456789abcdef01234567"
    for repo, src in (("tiny-org/dense-it", "target"), ("tiny-org/dense-it-assistant", "drafter-trained")):
        root = tmp_path / "cache" / f"models--{repo.replace('/', '--')}"
        shutil.copytree(tiny / "dense" / src, root / "snapshots" / revision)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(revision)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "mlx_spec.cli", "generate", "-m", "tiny-org/dense-it", "-d", "tiny-org/dense-it-assistant",
                          "--prompt-ids", "2,17,9", "--max-tokens", "8", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(__import__("json").loads(res.stdout)["tokens"]) == 8
