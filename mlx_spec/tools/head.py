"""Which target tokens a restricted drafter head keeps (`mlx-spec convert-drafter --head-size N`).

A released assistant's dense head scores all 262144 tokens; a draft step of the 26B-A4B / 31B
assistants reads ~0.27B head parameters for it. Restricted to the N tokens the target itself writes
most often, the head reads vocab / N times less, and every other token gets drafter probability 0:
rejection sampling stays exact, only acceptance can drop, where the target's token is outside the
head (`coverage` says how often that is).

The frequencies come from the target's own generations: replies to the bundled chat prompts
(tools/prompts), or continuations of stretches of the user's text files (`--head-data`), sampled at
temperature 1 (the Gemma 4 default) so that repeated prompts add new text, until `tokens` tokens
are written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..core.errors import MlxSpecError
from .distill import make_prompts, most_frequent, read_texts


@dataclass
class HeadChoice:
    ids: list[int]  # sorted target token ids
    coverage: float  # share of the counted generated tokens the ids cover
    counted: int  # generated tokens counted
    distinct: int  # distinct tokens among them


def bundled_prompts() -> list[str]:
    """The chat prompts shipped with mlx-spec (tools/prompts/*.jsonl)."""
    prompts = []
    for name in ("default.jsonl", "categories.jsonl"):
        for line in (resources.files("mlx_spec.tools") / "prompts" / name).read_text().splitlines():
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    return prompts


def generation_counts(model, tokenizer, prompts: Sequence, tokens: int, vocab: int, *, max_tokens: int = 256,
                      batch: int = 8, temp: float = 1.0, seed: int = 0,
                      progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Counts [vocab] of the tokens the target generates for `prompts` (strings are chat-wrapped,
    id lists taken as they are), round after round with new seeds, until `tokens` are counted."""
    from ..generate import batch_generate, user_turn_tokens

    if not prompts:
        raise MlxSpecError("no prompts to generate from")
    ids = [user_turn_tokens(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    counts = np.zeros(vocab, dtype=np.int64)
    done, start, round_ = 0, 0, 0
    while done < tokens:
        group = [ids[(start + i) % len(ids)] for i in range(batch)]
        start += batch
        out = batch_generate(model, tokenizer, group, max_tokens=max_tokens, temp=temp, seed=seed * 7919 + round_,
                             draft_tokens=0)
        round_ += 1
        for row in out.tokens:
            np.add.at(counts, np.asarray(row, dtype=np.int64), 1)
            done += len(row)
        if progress is not None:
            progress(min(done, tokens))
        if not any(out.tokens):
            raise MlxSpecError("the target generated nothing (every reply ended at once); pass --head-data text files")
    return counts


def choose_head(target: str, drafter, size: int, data: Optional[Sequence[str]], tokens: int, seed: int = 0,
                progress: Optional[Callable[[int], None]] = None) -> HeadChoice:
    """The `size` tokens a restricted head of `drafter` (a LoadedModel) keeps: the most frequent in the
    target's own sampled replies to the bundled chat prompts, or continuations of stretches of `data`
    (text files or folders). The target must be the one the drafter fits."""
    from ..core.loading import SpeculativeModel, load_target, load_tokenizer, model_folders, validate_pair

    loaded = load_target(model_folders(target)[0])
    validate_pair(loaded, drafter)  # the head must be ranked by the target it drafts for
    tokenizer = load_tokenizer(loaded.path, loaded.config)
    if data:
        rng = np.random.RandomState(seed)
        prompts = [list(map(int, p)) for p in make_prompts(read_texts(data), tokenizer, 64, 48, rng, chat=False)]
    else:
        prompts = bundled_prompts()
    vocab = int(drafter.text_config["vocab_size"])
    counts = generation_counts(SpeculativeModel(loaded, None), tokenizer, prompts, tokens, vocab, seed=seed, progress=progress)
    return top_tokens(counts, size, always=sorted(tokenizer.eos_token_ids))


def top_tokens(counts: np.ndarray, size: int, always: Iterable[int] = ()) -> HeadChoice:
    """The `size` most counted tokens plus `always` (end-of-turn ids), sorted. Ties (tokens never seen
    among them, when `size` exceeds the distinct tokens counted) go to lower ids first: BPE and
    SentencePiece vocabularies give earlier, more frequent pieces the lower ids."""
    always = [int(t) for t in always if 0 <= int(t) < len(counts)]
    if size <= len(always):
        raise MlxSpecError(f"--head-size {size} must exceed the {len(always)} end-of-sequence tokens it always keeps")
    ids, covered = most_frequent(counts, size, always)
    return HeadChoice(ids, covered, int(counts.sum()), int((counts > 0).sum()))


def coverage(counts: np.ndarray, ids: Sequence[int]) -> float:
    """Share of the counted tokens that `ids` cover."""
    total = int(counts.sum())
    return float(counts[np.asarray(list(ids), dtype=np.int64)].sum()) / max(1, total)
