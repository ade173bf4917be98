"""A multi-turn conversation that keeps the target's cache between turns (no re-prefill of history).

Each turn prefills only what is new: the previous reply's last token (yielded but not yet read by
the target) and the chat-template tokens of the new user message. An interrupted reply (Ctrl-C)
leaves the cache consistent (the loop trims drafts past the last yielded token), so the
conversation goes on; if a prefill itself was interrupted, the next turn rebuilds the cache from the
token history. The cache keeps rollback slack for the longest block the draft settings allow.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Generator, Optional, Union

from .core.loading import SpeculativeModel
from .core.loop import SpecStats
from .core.settings import NO_PROCESSORS, DraftSettings, ProcessorSettings, SamplingSettings
from .generate import GenerationResponse, decode, responses, user_turn_tokens


class ChatSession:
    def __init__(
        self,
        model: SpeculativeModel,
        tokenizer,
        max_tokens: int = 512,
        draft_tokens: Union[int, str] = "auto",
        temp: float = 0.0,
        top_p: float = 0.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: Optional[int] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingSettings] = None,
        draft: Optional[DraftSettings] = None,
        processors: ProcessorSettings = NO_PROCESSORS,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.ignore_eos = max_tokens, ignore_eos
        self.sampling = sampling or SamplingSettings(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
        self.draft = draft or DraftSettings(draft_tokens)
        self.processors = processors  # penalties read the turn's own tokens (as mlx-lm's generate does per call)
        self.last_stats: Optional[SpecStats] = None
        self.turns = 0
        self.reset()

    def _new_cache(self) -> list:
        return self.model.adapter.make_cache(max_rollback=max(1, self.draft.block_max))

    def reset(self) -> None:
        """Forget the conversation."""
        self.cache = self._new_cache()
        self.history: list[int] = []  # tokens the cache holds, in order
        self.pending: Optional[int] = None  # last reply token, not yet read by the target
        self.turns = 0

    def _turn_tokens(self, message: str) -> list[int]:
        ids = user_turn_tokens(self.tokenizer, message)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.turns and ids and bos is not None and ids[0] == bos:
            ids = ids[1:]  # the conversation already starts with it
        return ids

    def ask(self, message: str) -> Generator[GenerationResponse, None, None]:
        """Stream the reply to `message`; closing the generator early keeps the session usable."""
        new = ([self.pending] if self.pending is not None else []) + self._turn_tokens(message)
        if any(c.offset != len(self.history) for c in self.cache):  # an interrupted prefill
            self.cache = self._new_cache()
            new, self.history = self.history + new, []
        stats = SpecStats()
        self.last_stats = stats
        stop = set() if self.ignore_eos else set(self.tokenizer.eos_token_ids)
        sampling = self.sampling  # a seeded session draws afresh each turn, reproducibly: seed + turn
        if sampling.seed is not None:
            sampling = replace(sampling, seed=sampling.seed + self.turns)
        steps = decode(self.model, new, sampling, self.draft, max_tokens=self.max_tokens, stop=stop,
                       stats=stats, cache=self.cache, processors=self.processors)
        self.turns += 1
        replied: list[int] = []
        try:
            yield from responses(self.tokenizer, steps, stats, len(new), self.max_tokens, stop, on_token=replied.append)
        finally:
            steps.close()
            if stats.generated:
                self.history += new + replied[:-1]
                self.pending = replied[-1]
            elif all(c.offset == len(self.history) + len(new) for c in self.cache):
                self.history += new
                self.pending = None
