"""Mixture-of-experts accounting: which experts a target forward loads, and what they cost.

Verifying n tokens on an MoE target reads the union of the experts they route to: with top-k of E
experts and independent routing, E * (1 - (1 - k/E)^n) per layer (26B-A4B: 8, 15.5, 29.1, 51.6
for n = 1, 2, 4, 8), while dense layers cost the same for any n. `ExpertTracker` wraps mlx-lm's
Gemma 4 MoE blocks at load time (no fork) to count the unique experts of every forward and the bytes
of expert weights that touches, for the actual dtype or quantization. `MoEProfile` holds the static
facts (dense bytes, experts, bytes per expert) for cost models and projections.

`ExpertTracker(..., group_tokens=True)` also makes multi-token forwards sort their (token, expert)
pairs by expert before mlx-lm's gather matmuls (`sorted_indices=True`), so each unique expert's
weights are read once per verify rather than once per token that picked it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def expected_unique_experts(n_tokens: int, num_experts: int, top_k: int) -> float:
    """Expected distinct experts for n tokens routed independently and uniformly."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** n_tokens)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of all parameters of a module (packed weights, scales and biases when quantized)."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


@dataclass
class MoEProfile:
    """Static cost facts of a target: bytes read by any forward, and per expert per MoE layer."""

    dense_bytes: float  # every weight read by a 1-token forward, except the expert banks
    expert_bytes: list[float]  # per MoE layer: bytes of one expert (gate, up, down)
    num_experts: int
    top_k: int

    @property
    def num_moe_layers(self) -> int:
        return len(self.expert_bytes)

    def verify_bytes(self, n_tokens: int, unique_per_layer: Optional[float] = None) -> float:
        """Bytes read verifying n tokens: dense weights once + the union of experts in each MoE layer."""
        unique = unique_per_layer if unique_per_layer is not None else expected_unique_experts(n_tokens, self.num_experts, self.top_k)
        return self.dense_bytes + unique * sum(self.expert_bytes)

    @classmethod
    def from_target(cls, target) -> Optional["MoEProfile"]:
        layers = [l for l in target.lm.layers if getattr(l, "enable_moe", False)]
        if not layers:
            return None
        args = target.lm.args
        experts = [_experts_of(l) for l in layers]
        bank = sum(parameter_bytes(e) for e in experts)
        total = parameter_bytes(target.module)
        # A tied embedding is read as the LM head (all of it) but only one row as the input table.
        return cls(
            dense_bytes=float(total - bank),
            expert_bytes=[parameter_bytes(e) / args.num_experts for e in experts],
            num_experts=int(args.num_experts),
            top_k=int(args.top_k_experts),
        )


def _experts_of(layer) -> nn.Module:
    experts = layer.experts
    return experts.inner if isinstance(experts, ExpertProbe) else experts


class ExpertProbe(nn.Module):
    """Stands in for a layer's `experts`. Outside the Target's own forwards it is a pass-through to
    mlx-lm's module (peers and other callers run mlx-lm's computation unchanged); inside them it
    records the routed indices and groups multi-token forwards by expert."""

    def __init__(self, inner: nn.Module, group_tokens: bool):
        super().__init__()
        self.inner = inner
        self.group_tokens = group_tokens
        self.recording = False
        self.recorded: list[mx.array] = []

    def __call__(self, x: mx.array, top_k_indices: mx.array, top_k_weights: mx.array) -> mx.array:
        if not self.recording:
            return self.inner(x, top_k_indices, top_k_weights)
        self.recorded.append(top_k_indices)
        tokens = top_k_indices.size // top_k_indices.shape[-1]
        if self.group_tokens and tokens > 1:
            return self._grouped(x, top_k_indices, top_k_weights)
        return self.inner(x, top_k_indices, top_k_weights)

    def _grouped(self, x, indices, weights):
        """mlx-lm's Experts with its sorted gather path forced on (it sorts only from 64 pairs up)."""
        glu = self.inner.switch_glu
        k = indices.shape[-1]
        flat = mx.stop_gradient(indices).flatten()
        order = mx.argsort(flat)
        inverse = mx.argsort(order)
        xs = mx.expand_dims(x, (-2, -3)).flatten(0, -3)[order // k]  # [pairs, 1, D], grouped by expert
        idx = flat[order]
        y = glu.down_proj(glu.activation(glu.up_proj(xs, idx, sorted_indices=True),
                                         glu.gate_proj(xs, idx, sorted_indices=True)), idx, sorted_indices=True)
        y = mx.unflatten(y[inverse], 0, indices.shape).squeeze(-2)  # back to [..., k, D]
        return (mx.expand_dims(weights, -1) * y).sum(-2)


class ExpertTracker:
    """Counts unique experts per target forward and MoE layer; attached once, when the Target is built.

    Counting stays lazy (a histogram per layer in MLX): `pending_arrays(upto)` joins the decoding
    loop's one evaluation per step and `flush(upto)` then reads the counts already computed, so the
    tracker adds no host synchronisation. Totals (`loads`, `bytes`, `per_forward`) cover flushed forwards.
    """

    def __init__(self, probes: list[ExpertProbe], profile: MoEProfile):
        self.probes = probes
        self.profile = profile
        self._loads, self._bytes = 0, 0.0
        self._per_forward: list[tuple[int, int]] = []  # (tokens, unique experts summed over layers)
        self._pending: list[tuple[int, mx.array, mx.array]] = []
        self._counted = 0  # forwards counted since the last reset (the absolute index of _pending[0])

    @classmethod
    def attach(cls, target, group_tokens: bool = True) -> Optional["ExpertTracker"]:
        """Wrap the MoE blocks of a Target (idempotent); None for a dense target."""
        profile = MoEProfile.from_target(target)
        if profile is None:
            return None
        probes = []
        for layer in target.lm.layers:
            if not getattr(layer, "enable_moe", False):
                continue
            if not isinstance(layer.experts, ExpertProbe):
                layer.experts = ExpertProbe(layer.experts, group_tokens)
            layer.experts.group_tokens = group_tokens
            layer.experts.recorded.clear()
            probes.append(layer.experts)
        return cls(probes, profile)

    def reset(self) -> None:
        self._loads, self._bytes = 0, 0.0
        self._per_forward.clear()
        self._pending.clear()
        self._counted = 0
        for probe in self.probes:
            probe.recorded.clear()

    @contextmanager
    def isolated(self):
        """Counts taken inside (a cost measurement in the middle of a run) leave the run's own counts,
        and the forwards it has queued but not counted yet, as they were."""
        saved = (self._loads, self._bytes, list(self._per_forward), list(self._pending), self._counted)
        self._pending = []
        self.reset()
        try:
            yield self
        finally:
            for probe in self.probes:
                probe.recorded.clear()
            self._loads, self._bytes, self._per_forward, self._pending, self._counted = saved

    @contextmanager
    def recording(self, tokens: int):
        """Around one target forward of `tokens` tokens: record its routing, then count it (lazily)."""
        for probe in self.probes:
            probe.recording = True
        try:
            yield
        except BaseException:  # an interrupted forward (Ctrl-C in a prefill) is not counted into the next one
            for probe in self.probes:
                probe.recorded.clear()
            raise
        finally:
            for probe in self.probes:
                probe.recording = False
        self.end_forward(tokens)

    def end_forward(self, tokens: int) -> None:
        """Close the forward that was just built: count its unique experts per layer (lazily)."""
        unique_total, bytes_total = mx.array(0), mx.array(0.0)
        for probe, expert_bytes in zip(self.probes, self.profile.expert_bytes):
            if not probe.recorded:
                continue
            flat = mx.concatenate([i.reshape(-1) for i in probe.recorded])
            probe.recorded.clear()
            hist = mx.zeros((self.profile.num_experts,), dtype=mx.int32).at[flat].add(1)
            unique = (hist > 0).sum()
            unique_total = unique_total + unique
            bytes_total = bytes_total + unique.astype(mx.float32) * expert_bytes
        self._pending.append((tokens, unique_total, bytes_total))

    @property
    def pending(self) -> int:
        """A mark after the forwards built so far, for `pending_arrays` / `flush`."""
        return self._counted + len(self._pending)

    def _until(self, mark: Optional[int]) -> list:
        return list(self._pending) if mark is None else self._pending[: max(0, mark - self._counted)]

    def pending_arrays(self, mark: Optional[int] = None) -> list[mx.array]:
        """The lazy counts of the forwards built before `mark` and not counted yet."""
        return [a for _, u, b in self._until(mark) for a in (u, b)]

    def flush(self, mark: Optional[int] = None) -> None:
        """Count the forwards built before `mark` (all by default); evaluates them if not done yet."""
        done = self._until(mark)
        if not done:
            return
        mx.eval([(u, b) for _, u, b in done])
        for tokens, unique, nbytes in done:
            self._loads += int(unique.item())
            self._bytes += float(nbytes.item())
            self._per_forward.append((tokens, int(unique.item())))
        del self._pending[: len(done)]
        self._counted += len(done)

    @property
    def loads(self) -> int:
        """Sum over counted forwards and MoE layers of unique experts selected."""
        return self._loads

    @property
    def bytes(self) -> float:
        """Bytes of expert weights those loads touch (actual dtype / quantization)."""
        return self._bytes

    @property
    def per_forward(self) -> list[tuple[int, int]]:
        return self._per_forward

    def mean_unique_per_layer(self, tokens: int) -> Optional[float]:
        """Observed mean unique experts per layer for counted forwards of this many tokens."""
        seen = [u for n, u in self._per_forward if n == tokens]
        if not seen:
            return None
        return float(np.mean(seen)) / self.profile.num_moe_layers
