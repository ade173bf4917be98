#!/usr/bin/env python3
"""Record the converted demo targets' logits and greedy tokens once (tests/fixtures/demo/reference.json).

    python scripts/record_demo_reference.py DEMO_DIR      # after `mlx-spec demo-models DEMO_DIR`

tests/test_demo_models.py converts the GGUFs again and checks the result against these numbers:
a regression guard on the converter (names, the Gemma norm offset, RoPE layout, tokenizer). The
numbers themselves were checked against llama.cpp on the same GGUFs when the recipe was written
(../shared/notes/real-model.md: top-1 agreement 19/20 and 20/20, KL <= 0.009), and the tests also
check facts any correct conversion must give (Gemma 3 continues "The capital of Italy is" with Rome).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm import load

PROMPTS = {
    "smollm2-135m": "The capital of Italy is Rome. The capital of France is",
    "gemma3-270m": "The capital of Italy is",
}
TOKENIZER_STRINGS = [
    "Hello, world!", "  two leading spaces\tand a tab\nnewline", "def f(x):\n    return x ** 2  # square",
    "日本語のテキスト and ไทย", "emoji 🚀🔥 and full-width ＡＢＣ", "https://example.com/a?b=c&d=e",
]


def record(folder: Path) -> dict:
    out = {}
    for name, text in PROMPTS.items():
        if (folder / name / "target").exists():
            model, tokenizer = load(str(folder / name / "target"))
            ids = tokenizer.encode(text)
            logits = model(mx.array([ids]))[0].astype(mx.float32)
            top = mx.argsort(-logits[-1])[:5]
            tokens, x = [], list(ids)
            for _ in range(12):
                nxt = int(mx.argmax(model(mx.array([x]))[0, -1]).item())
                tokens.append(nxt)
                x.append(nxt)
            out[name] = {
                "prompt": text,
                "ids": ids,
                "last_top5_ids": top.tolist(),
                "last_top5_logits": [round(float(v), 4) for v in logits[-1][top].tolist()],
                "logits_sum_abs_first3": [round(float(v), 2) for v in mx.abs(logits[:3]).sum(axis=-1).tolist()],
                "greedy": tokens,
                "greedy_text": tokenizer.decode(tokens),
                "tokenizer": {s: tokenizer.encode(s) for s in TOKENIZER_STRINGS},
            }
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    dest = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "demo" / "reference.json"
    dest.write_text(json.dumps(record(folder), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {dest}")
