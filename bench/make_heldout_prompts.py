#!/usr/bin/env python3
"""Write bench/prompts/heldout.jsonl: prompts from text no demo drafter was trained on.

The demo drafters are distilled on Debian's python3.11-doc and fortunes; these prompts come from
Debian's linux-doc-6.1 (GPL-2.0), fetched and unpacked without installing:

    apt-get download linux-doc-6.1 && dpkg-deb -x linux-doc-6.1_*.deb /tmp/linux-doc
    python bench/make_heldout_prompts.py /tmp/linux-doc/usr/share/doc/linux-doc-6.1

Half the prompts ask about a passage (chat), half give the start of one to continue (plain text).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from pathlib import Path

N = 12
OUT = Path(__file__).resolve().parent / "prompts" / "heldout.jsonl"


def paragraphs(root: Path):
    for file in sorted(root.rglob("*.rst.gz")):
        text = gzip.decompress(file.read_bytes()).decode("utf-8", errors="ignore")
        for para in re.split(r"\n\s*\n", text):
            flat = " ".join(para.split())
            # prose only: long enough, no markup-heavy lines
            if 250 <= len(flat) <= 700 and not re.search(r"[=\-~^*]{4}|::|\.\. |\|", flat):
                yield file.relative_to(root).as_posix(), flat


def main(root: Path) -> None:
    rng = random.Random(0)
    pool = list(paragraphs(root))
    picks = rng.sample(pool, N)
    lines = []
    for i, (source, para) in enumerate(picks):
        if i % 2 == 0:
            item = {"name": f"linux-doc-explain-{i // 2}", "category": "chat",
                    "prompt": f"Explain this passage from the Linux kernel documentation in simple terms:\n\n{para}", "source": source}
        else:
            item = {"name": f"linux-doc-continue-{i // 2}", "category": "continue", "prompt": para[: len(para) // 2].rsplit(" ", 1)[0],
                    "source": source}
        lines.append(json.dumps(item, ensure_ascii=False))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(lines)} prompts from {len(pool)} paragraphs)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
