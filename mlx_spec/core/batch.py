"""Batched speculative decoding: B sequences decoded together, each accepting its own drafts.

    add       a request is prefilled alone (batch-1 caches, so its prompt is read exactly as a single
              generation reads it) and joins the batch at the next step, its first token emitted then.
    draft     one batched drafter pass per draft step proposes k tokens for every row, each row at its
              own position, reading the target's KV in place (ragged caches, batch_cache.py).
    verify    one target forward over B x (k + 1) tokens.
    accept    per row: n_b accepted drafts + the target's own next token (greedy match, or rejection
              sampling with the row's own settings and random stream).
    rollback  per row: exactly k - n_b positions, in every cache kind (sliding layers past the window
              and KV-shared layers included); nothing is padded to another row's acceptance.
    emit      per row, its n_b + 1 tokens (cut at its stop token or token limit); a finished row
              leaves the batch and frees its slot, and rows can be added and removed between steps.

With a `PromptCache` (prompt_cache.py) a request prefills only what no earlier request's snapshot
holds, and snapshots are kept when a prompt has been read and when a request finishes.

As in the single-sequence loop (loop.py), a step is one lazy graph with one host synchronisation;
plain steps (k = 0) are queued before the previous one is read, and the next block is queued before
the step returns its outputs. The draft length is one k for the whole batch, chosen by `BatchPolicy`
from every row's acceptance and the measured cost of a B x (k + 1) verify.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream

from .cache import trim_all
from .draft import Drafter, propose_rows
from .errors import MlxSpecError
from .loop import SpecStats, check_token_ids, costs_from, emitted, prefill, synchronize, time_steps
from .policy import Acceptance, BatchPolicy
from .prompt_cache import PromptCache
from .lookup import PROBE_DRAFTS, Lookup
from .sampling import GREEDY, History, Processors, Strategy, accept_rows, draft_rows


@dataclass
class BatchStats:
    """Counters and timings of a batched run; `rows` holds each request's own SpecStats."""

    steps: int = 0  # batched verify passes
    target_forwards: int = 0  # prefill chunks (per request) + batched verify passes
    drafter_forwards: int = 0  # batched draft steps
    drafted: int = 0  # over rows
    accepted: int = 0
    generated: int = 0
    expert_loads: int = 0
    expert_bytes: float = 0.0
    prefill_expert_loads: int = 0
    prefill_time: float = 0.0
    decode_time: float = 0.0  # from the first batched step's queueing to the last step's read
    batch_sizes: list[int] = field(default_factory=list)  # rows per step
    draft_lengths: list[int] = field(default_factory=list)  # k per step
    rows: list[SpecStats] = field(default_factory=list)

    @property
    def accepted_per_row(self) -> list[int]:
        return [r.accepted for r in self.rows]

    @property
    def drafted_per_row(self) -> list[int]:
        return [r.drafted for r in self.rows]

    def to_dict(self) -> dict:
        decode_tokens = self.generated - len(self.rows)  # tokens after each row's first
        return {
            "steps": self.steps, "target_forwards": self.target_forwards, "drafter_forwards": self.drafter_forwards,
            "drafted": self.drafted, "accepted": self.accepted, "generated": self.generated,
            "expert_loads": self.expert_loads, "expert_bytes": self.expert_bytes,
            "prefill_expert_loads": self.prefill_expert_loads, "prefill_time": self.prefill_time,
            "decode_time": self.decode_time, "batch_sizes": self.batch_sizes, "draft_lengths": self.draft_lengths,
            "accepted_per_row": self.accepted_per_row, "drafted_per_row": self.drafted_per_row,
            "generated_per_row": [r.generated for r in self.rows],
            "decode_expert_loads_per_token": (self.expert_loads - self.prefill_expert_loads) / max(1, decode_tokens),
            "mean_accepted_per_step": self.accepted / max(1, sum(self.batch_sizes)),
        }


@dataclass
class Row:
    """One request in the batch."""

    id: int
    prompt: list[int]
    strategy: Strategy
    max_tokens: int
    stop: frozenset
    stats: SpecStats
    seen: Acceptance  # this row's acceptance by draft position
    history: Optional[History] = None  # with logits processors: the tokens before the row's next input
    lookup: Optional[Lookup] = None  # prompt-lookup drafting for this row (engine `lookup=True`)
    tokens: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None  # "stop", "length", "cancelled"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RowOutput:
    """What one step produced for one request."""

    id: int
    tokens: list[int]
    from_draft: list[bool]
    finish_reason: Optional[str] = None


@dataclass
class RowsBlock:
    rows: list[Row]
    k: int
    drafts: mx.array  # [B, k]
    accepted: mx.array  # [B]
    next_token: mx.array  # [B]
    hidden: mx.array  # [B, 1, H]: the target's hidden state at each row's last kept position
    expert_mark: int
    contexts: list  # per row, with logits processors: its history up to the input token (else None)
    matches: list  # per row: the lookup match length its drafts continue (0: the MTP drafter's, or filler)


def _processed(contexts: list, logits: mx.array, each) -> mx.array:
    """Rows with logits processors (a context) get `each(b, logits[b])`; the others pass unchanged."""
    if all(c is None for c in contexts):
        return logits
    return mx.stack([logits[b] if c is None else each(b, logits[b]) for b, c in enumerate(contexts)])


def build_rows_block(target, drafter: Optional[Drafter], rows: list[Row], caches: list, tokens: mx.array,
                     hidden: mx.array, k: int, exact: bool = False, given: Optional[list] = None) -> RowsBlock:
    """Queue draft k -> verify B x [token, d1..dk] -> per-row accept (mx.async_eval); read nothing.
    Rows with logits processors have every position processed with their own history (loop.build_block).
    `given`: per row, (k drafts proposed on the host, n-gram match length) (prompt lookup: a one-hot q)
    or None (the MTP drafter's); the drafter runs only if some row needs it."""
    strategies = [r.strategy for r in rows]
    given = given if given is not None and k else [None] * len(rows)
    with mx.stream(generation_stream):
        contexts = [None if r.history is None else r.history.context(tokens[b : b + 1]) for b, r in enumerate(rows)]
        process = None
        if any(c is not None for c in contexts):
            def process(logits, drafted):  # drafter logits [B, V] -> processed, given the drafts before them
                return _processed(contexts, logits, lambda b, lg: rows[b].history.draft(
                    contexts[b], [d[b : b + 1] for d in drafted], lg[None])[0])
        if k and any(g is None for g in given):
            drafts, draft_logits = propose_rows(drafter, target, caches, tokens, hidden, k,
                                                lambda lg: draft_rows(strategies, lg), process)
        else:
            drafts, draft_logits = mx.zeros((len(rows), k), mx.int32), None
        if k and any(g is not None for g in given):  # lookup rows: their drafts, q one-hot at them
            use = mx.array([g is not None for g in given])
            host = mx.array([g[0] if g is not None else [0] * k for g in given], dtype=mx.int32)
            drafts = mx.where(use[:, None], host, drafts)
        inputs = mx.concatenate([tokens.astype(mx.int32)[:, None], drafts], axis=1)  # [B, k + 1]
        if exact and k:
            outs = [target.forward(inputs[:, i : i + 1], caches) for i in range(k + 1)]
            logits, hidden_all = (mx.concatenate([o[j] for o in outs], axis=1) for j in (0, 1))
        else:
            logits, hidden_all = target.forward(inputs, caches)
        logits = _processed(contexts, logits, lambda b, lg: rows[b].history.verify(contexts[b], drafts[b], lg))
        n, next_token = accept_rows(strategies, drafts, draft_logits, logits, [g is not None for g in given])
        kept = hidden_all if k == 0 else mx.take_along_axis(hidden_all, n[:, None, None], axis=1)
    if k == 0:
        for row, c in zip(rows, contexts):
            if c is not None:
                row.history.advance(c, [])
    mark = target.moe.pending if target.moe is not None else 0
    block = RowsBlock(list(rows), k, drafts, n, next_token, kept, mark, contexts, [g[1] if g is not None else 0 for g in given])
    mx.async_eval(block.drafts, block.accepted, block.next_token, block.hidden)
    return block


def read_rows_block(block: RowsBlock, target) -> tuple[list[int], list[list[int]], list[int]]:
    """The step's one host synchronisation: per row (n accepted, drafts, next token)."""
    synchronize(block, target)
    return block.accepted.tolist(), block.drafts.tolist(), block.next_token.tolist()


@dataclass
class _Sources:
    """A row's expected tokens per step when drafting k, from the better of its sources: the MTP drafter
    (its acceptance by position; None without a drafter: nothing accepted) and prompt lookup (when this
    step's proposal holds k tokens, the acceptance of its match length). What `BatchPolicy` prices."""

    mtp: Optional[Acceptance]
    lookup: Optional[Lookup]
    proposal: list
    match: int

    def _mtp(self, k: int) -> float:
        return self.mtp.expected_tokens(k) if self.mtp is not None else 1.0

    def _lookup(self, k: int) -> float:
        if self.lookup is None or not self.match or len(self.proposal) < k:
            return 0.0
        return self.lookup.expected_tokens(self.match, k)

    def lookup_wins(self, k: int) -> bool:
        return self._lookup(k) > self._mtp(k)

    def expected_tokens(self, k: int) -> float:
        return max(self._mtp(k), self._lookup(k))


class BatchEngine:
    """Continuous batching with speculation: `add` requests, call `step` until `active` is False.

    Each `step` returns what it produced per request (`RowOutput`); a request's first output carries
    the token its prefill produced. `remove` cancels a request (a client gone): its slot is freed at
    the next step. The target's caches are the engine's own (ragged, one row per live request).
    """

    def __init__(self, target, drafter: Optional[Drafter], policy: BatchPolicy, *, exact_verify: bool = False,
                 max_context: Optional[int] = None, prefill_step_size: int = 512, stats: Optional[BatchStats] = None,
                 max_rollback: Optional[int] = None, prompt_cache: Optional[PromptCache] = None, lookup: bool = False):
        self.target, self.drafter = target, drafter
        self.policy = policy
        self.lookup = lookup and policy.k_max > 0  # prompt-lookup drafting per row, beside the drafter or alone
        self.k_max = policy.k_max if drafter is not None or self.lookup else 0
        self.exact = exact_verify
        self.max_context = max_context or target.max_context
        self.prefill_step_size = prefill_step_size
        self.stats = stats if stats is not None else BatchStats()
        self.slack = max_rollback if max_rollback is not None else max(1, self.k_max)
        self.caches = target.make_ragged_cache(max_rollback=self.slack)
        self.prompt_cache = prompt_cache
        self.rows: list[Row] = []  # in the caches' batch order
        self.tokens: Optional[mx.array] = None  # [B] each row's last token, not yet read by the target
        self.hidden: Optional[mx.array] = None  # [B, 1, H] the hidden state that predicted it
        self._joining: list[tuple[Row, list, mx.array, mx.array]] = []
        self._queued: Optional[RowsBlock] = None
        self._next_id = 0
        self._last_read: Optional[float] = None
        self._owed = 0.0
        if target.moe is not None:
            target.moe.flush()
            target.moe.reset()

    # -- requests -------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self.rows or self._joining)

    @property
    def batch_size(self) -> int:
        return len(self.rows) + len(self._joining)

    def add(self, prompt: Iterable[int], strategy: Strategy = GREEDY, max_tokens: int = 256,
            stop_tokens: Iterable[int] = (), processors: Optional[Processors] = None) -> int:
        """Prefill a request now (alone, batch-1 caches); it joins the batch at the next step. Returns its id.
        `processors` (logits processors) shape this request's distributions at every position."""
        prompt = check_token_ids(prompt, self.target.vocab_size)
        if not prompt:
            raise MlxSpecError("a prompt is empty: give at least one token.")
        if len(prompt) >= self.max_context:
            raise MlxSpecError(f"a prompt has {len(prompt)} tokens, the model's context is {self.max_context}: shorten it.")
        if max_tokens <= 0:
            raise MlxSpecError(f"max_tokens must be at least 1 (got {max_tokens}).")
        row = Row(self._next_id, prompt, strategy, int(max_tokens), frozenset(stop_tokens), SpecStats(), self.policy.new_row(),
                  None if processors is None else History(processors, prompt), Lookup(self.k_max, greedy=strategy is GREEDY) if self.lookup else None)
        if row.lookup is not None:
            row.lookup.extend(prompt)
        self._next_id += 1
        row.stats.prompt_tokens = len(prompt)
        t0 = time.perf_counter()
        moe = self.target.moe
        if moe is not None:
            moe.flush()  # count the queued steps' forwards first: only the prefill's go to prefill_expert_loads
            before = moe.loads
        caches, cached = self.prompt_cache.fetch(prompt, self.slack) if self.prompt_cache is not None else (None, 0)
        if caches is None:
            caches = self.target.make_cache(max_rollback=self.slack)
        row.stats.cached_prompt_tokens = cached
        token, hidden = prefill(self.target, strategy, prompt[cached:], caches, self.prefill_step_size, row.stats, row.history)
        mx.eval(token, hidden)
        if self.prompt_cache is not None:
            self.prompt_cache.insert_caches(prompt, caches)
        if moe is not None:
            moe.flush()
            self.stats.prefill_expert_loads += moe.loads - before
        row.stats.prefill_time = time.perf_counter() - t0
        self.stats.prefill_time += row.stats.prefill_time
        self.stats.target_forwards += row.stats.target_forwards
        self.stats.rows.append(row.stats)
        self._joining.append((row, caches, token, hidden))
        return row.id

    def remove(self, row_id: int) -> None:
        """Cancel a request: it produces nothing more and its slot is freed at the next step."""
        for row in self.rows:
            if row.id == row_id and not row.finished:
                row.finish_reason = "cancelled"
        self._joining = [j for j in self._joining if j[0].id != row_id]

    # -- one step ---------------------------------------------------------------------------------------
    def step(self) -> list[RowOutput]:
        """Read the queued block (or build one), emit each row's tokens, queue the next block."""
        outputs: list[RowOutput] = []
        if self._queued is None:
            self._drop_finished()
            self._merge(outputs)
            self._queued = self._build(outputs)
        block = self._queued
        if block is None:
            return outputs
        ahead = None
        waits = block.k == 0 and self._lookup_may_draft()  # the next step may draft by lookup: it needs this one's tokens
        if block.k == 0 and not self._joining and not any(r.finished for r in block.rows) and not waits:
            ahead = self._build(outputs, plain_only=True)  # nothing to roll back: queue the next plain step first
        n, drafts, next_tokens = read_rows_block(block, self.target)
        now = time.perf_counter()
        interval = now - (self._last_read if self._last_read is not None else now)
        self._last_read = now
        self._record(block, n, drafts, interval)
        if block.k:
            for cache in self.caches:  # rollback: row b forgets its k - n_b rejected drafts
                cache.trim_rows([block.k - nb for nb in n])
        for b, row in enumerate(block.rows):
            if row.finished:  # finished after this block was queued (cancelled, or a step queued ahead)
                continue
            if row.history is not None and block.k:
                row.history.advance(block.contexts[b], drafts[b][: n[b]])
            out = drafts[b][: n[b]] + [next_tokens[b]]
            end = emitted(out, row.stop, row.max_tokens - len(row.tokens))
            self._emit(row, out[:end], n[b], outputs)
        if ahead is not None and all(r.finished for r in block.rows):
            ahead = None  # queued for rows that have all finished: never read (the device may still run it)
        bubble = 0.0
        if ahead is None:
            t0 = time.perf_counter()
            self._drop_finished()
            self._merge(outputs)
            ahead = self._build(outputs)
            bubble = time.perf_counter() - t0
        if not waits:  # a plain step kept from queueing ahead by lookup is not batched plain decoding's cost
            self.policy.observe(len(block.rows), block.k, interval - self._owed + bubble)
        self._owed = bubble
        self._queued = ahead
        return outputs

    def _emit(self, row: Row, tokens: list[int], n: int, outputs: list[RowOutput]) -> None:
        row.tokens += tokens
        if row.lookup is not None:
            row.lookup.extend(tokens)
        row.stats.generated = len(row.tokens)
        self.stats.generated += len(tokens)
        if tokens and tokens[-1] in row.stop:
            row.finish_reason = "stop"
        elif len(row.tokens) >= row.max_tokens:
            row.finish_reason = "length"
        outputs.append(RowOutput(row.id, tokens, [i < n for i in range(len(tokens))], row.finish_reason))

    def _record(self, block: RowsBlock, n: list[int], drafts: list[list[int]], interval: float) -> None:
        s = self.stats
        s.steps += 1
        s.target_forwards += 1
        if self.drafter is not None and not all(block.matches):  # some row drafted with the MTP drafter
            s.drafter_forwards += block.k
        live = [b for b, row in enumerate(block.rows) if not row.finished]
        s.batch_sizes.append(len(live))
        s.draft_lengths.append(block.k)
        s.decode_time += interval
        for b in live:
            row, match = block.rows[b], block.matches[b]
            # lookup alone: rows without a match drafted filler, counted as lookup drafts (no drafter ran)
            row.stats.record_step(drafts[b], n[b], interval, lookup=block.k > 0 and (bool(match) or self.drafter is None))
            if match:
                row.lookup.update(match, block.k, n[b])
            elif self.drafter is not None:
                row.seen.update(block.k, n[b])
            s.drafted += block.k
            s.accepted += n[b]
        self.policy.update(block.k, [n[b] for b in live if not block.matches[b]] if self.drafter is not None else [])
        if self.target.moe is not None:
            s.expert_loads, s.expert_bytes = self.target.moe.loads, self.target.moe.bytes

    # -- rows joining and leaving (only between a read and the next build) -------------------------
    def _drop_finished(self) -> None:
        keep = [b for b, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        if self.prompt_cache is not None:  # what a finished request's cache holds: its prompt and reply (as far as read)
            for b, row in enumerate(self.rows):
                if row.finish_reason in ("stop", "length"):
                    tokens = row.prompt + row.tokens[:-1]
                    self.prompt_cache.insert(tokens, [cache.row_state(b, len(tokens)) for cache in self.caches])
        for cache in self.caches:
            cache.keep_rows(keep)
        self.rows = [self.rows[b] for b in keep]
        if keep:
            index = mx.array(keep, dtype=mx.int32)
            self.tokens, self.hidden = self.tokens[index], self.hidden[index]
        else:
            self.tokens = self.hidden = None

    def _merge(self, outputs: list[RowOutput]) -> None:
        """Joining rows emit their first token; those not finished by it take a slot."""
        joining, self._joining = self._joining, []
        merged = []
        for row, caches, token, hidden in joining:
            self._emit(row, [int(token.item())], 0, outputs)
            if not row.finished:
                merged.append((row, caches, token, hidden))
        if not merged:
            return
        for layer, cache in enumerate(self.caches):
            cache.add_rows([caches[layer] for _, caches, _, _ in merged])
        self.rows += [row for row, _, _, _ in merged]
        tokens = [t for _, _, t, _ in merged]
        hidden = [h for _, _, _, h in merged]
        if self.tokens is not None:
            tokens, hidden = [self.tokens] + tokens, [self.hidden] + hidden
        self.tokens, self.hidden = mx.concatenate(tokens), mx.concatenate(hidden, axis=0)
        if self._last_read is None:
            self._last_read = time.perf_counter()

    def _build(self, outputs: list[RowOutput], plain_only: bool = False) -> Optional[RowsBlock]:
        """The next block over the live rows, drafting what the policy, token limits and context allow."""
        room = [self.max_context - 1 - n for n in self.caches[0].lengths] if self.rows else []
        if any(r < 0 for r in room):  # a row at the end of the context: it ends there
            if plain_only:
                return None
            for row, r in zip(self.rows, room):
                if r < 0:
                    row.finish_reason = "length"
                    outputs.append(RowOutput(row.id, [], [], "length"))
            self._drop_finished()
            room = [r for r in room if r >= 0]
        rows = self.rows
        if not rows:
            return None
        room = min(room)  # the verify writes positions length .. length + k of every row
        wanted = max(r.max_tokens - len(r.tokens) - 1 for r in rows)  # drafts beyond this can never be emitted
        proposals = [r.lookup.propose() for r in rows] if self.lookup and not plain_only else [([], 0)] * len(rows)
        if self.drafter is None and not self.lookup:
            k = 0
        else:
            seen = [_Sources(r.seen if self.drafter is not None else None, r.lookup, *prop) for r, prop in zip(rows, proposals)]
            k = max(0, min(self.policy.choose(seen), wanted, room))
        if plain_only and k:
            return None
        given = None
        if self.lookup and not plain_only:
            # Probes (adaptive policy): a row whose estimate at its match length has declined PROBE_EVERY
            # matches drafts by lookup anyway (`Lookup.probe_due`), the batch drafting PROBE_DRAFTS if it would not.
            probes = [self.policy.fixed is None and r.lookup.probe_due(m) for r, (_, m) in zip(rows, proposals)]
            if not k and any(p and len(prop) >= PROBE_DRAFTS for p, (prop, _) in zip(probes, proposals)):
                k = max(0, min(PROBE_DRAFTS, wanted, room))
            if k:
                given = [(prop[:k], m) if m and (s.lookup_wins(k) or (p and len(prop) >= k)) else None
                         for s, p, (prop, m) in zip(seen, probes, proposals)]
            for r, g, (_, m) in zip(rows, given or [None] * len(rows), proposals):
                if g is None:
                    r.lookup.decline(m)
            if given is not None and self.drafter is None:  # lookup alone: a row without a long enough match proposes filler (rejected, exact)
                given = [g if g is not None else ([0] * k, 0) for g in given]
        block = build_rows_block(self.target, self.drafter, rows, self.caches, self.tokens, self.hidden, k, self.exact, given)
        self.tokens, self.hidden = block.next_token, block.hidden  # a plain block's successors; replaced after a read
        return block

    def _lookup_may_draft(self) -> bool:
        """Some row's next step may draft by lookup, which needs this step's token on the host, so the
        plain step is not queued ahead: a row's context ends in an n-gram seen before and, priced as the
        policy prices the batch, a lookup draft at that match length (or one longer, if the repeat goes
        on) would make the batch draft (under a fixed k: any match), or a row's lookup probe is due there.
        As `loop.lookup_may_draft`: short matches are common on ordinary text and seldom pay; each used
        to cost a pipelined plain step. Matches it declines count toward their rows' next probes."""
        if not self.lookup:
            return False
        matches = [r.lookup.index.match()[0] if r.lookup is not None else 0 for r in self.rows]
        if not any(matches):
            return False
        if self.policy.fixed is not None:
            return True
        reach = [r.lookup.reach(n) for r, n in zip(self.rows, matches)]
        if any(r.lookup.probe_due(m) for r, lengths in zip(self.rows, reach) for m in lengths):
            return True
        full = [0] * self.k_max  # the longest proposal: the most a lookup can promise at that match length
        if any(self.policy.best([_Sources(r.seen if self.drafter is not None else None, r.lookup, full, lengths[extra])
                                 for r, lengths in zip(self.rows, reach)]) > 0 for extra in (0, 1)):
            return True
        for r, n in zip(self.rows, matches):  # the next step is a plain one queued ahead: these matches drafted nothing
            r.lookup.decline(n)
        return False

    def close(self) -> None:
        """Finish every request (its caches are freed); the engine can take new ones."""
        for row in self.rows:
            row.finish_reason = row.finish_reason or "cancelled"
        self._queued = None
        self._joining = []
        self._drop_finished()
        if self.target.moe is not None:
            self.target.moe.flush()
            self.stats.expert_loads, self.stats.expert_bytes = self.target.moe.loads, self.target.moe.bytes


def measure_batch_step_costs(target, drafter: Drafter, rows: int, k_max: int, strategy: Strategy = GREEDY,
                             exact: bool = False, repeats: int = 7, warmup: int = 2, context: int = 64, plain_run: int = 8):
    """`loop.measure_step_costs` for a batch: seconds of one step of `rows` rows drafting k = 0..k_max,
    timed on the real batched step over a scratch engine whose rows hold `context` tokens each
    (drafter None: verify-only steps, drafts given on the host as prompt lookup gives them)."""
    if target.moe is None:
        return _measure_batch(target, drafter, rows, k_max, strategy, exact, repeats, warmup, context, plain_run)
    with target.moe.isolated():  # may run in the middle of a run (a new batch size): leave its counts alone
        return _measure_batch(target, drafter, rows, k_max, strategy, exact, repeats, warmup, context, plain_run)


def _measure_batch(target, drafter, rows, k_max, strategy, exact, repeats, warmup, context, plain_run):
    rng = np.random.RandomState(0)
    engine = BatchEngine(target, drafter, BatchPolicy(k_max, fixed=0), exact_verify=exact, max_rollback=k_max + plain_run + 1)
    for _ in range(rows):
        engine.add([2] + rng.randint(5, target.vocab_size, size=context - 1).tolist(), strategy, max_tokens=1 << 30)
    engine._merge([])
    caches, tokens, hidden = engine.caches, engine.tokens, engine.hidden
    if target.moe is not None:
        target.moe.flush()
        target.moe.reset()
    # varied tokens, so an MoE routes them to different experts as real text does
    varied = [mx.array(rng.randint(5, target.vocab_size, size=rows), dtype=mx.int32) for _ in range(16)]

    def plain():
        block = build_rows_block(target, drafter, engine.rows, caches, tokens, hidden, 0, exact)
        for _ in range(plain_run - 1):
            ahead = build_rows_block(target, drafter, engine.rows, caches, block.next_token, block.hidden, 0, exact)
            read_rows_block(block, target)
            block = ahead
        read_rows_block(block, target)
        trim_all(caches, plain_run)

    def spec(k, i):
        given = None if drafter is not None else [(rng.randint(5, target.vocab_size, size=k).tolist(), 0)] * rows  # verify only
        read_rows_block(build_rows_block(target, drafter, engine.rows, caches, varied[i % len(varied)], hidden, k, exact, given), target)
        trim_all(caches, k + 1)

    return costs_from(target, time_steps(plain, spec, k_max, warmup, repeats, plain_run), rows)
