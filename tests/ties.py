"""Tie-aware losslessness checks.

On CPU float32 (and CPU quantized kernels) a (k+1)-row verify rounds exactly like 1-row decoding,
so greedy speculative output must equal plain greedy output token for token. On GPU kernels
(MLX's CUDA backend, Metal) the two paths may round differently; where plain decoding's own top-2
logits are closer than that rounding, the two may pick different tokens and the texts differ from
there on. The contract then: the first divergence sits at a position where plain's top-2 margin is
below `TIE_TOLERANCE` (logit units), and the message shows the margin.
"""

from __future__ import annotations

import os

import mlx.core as mx

TIE_TOLERANCE = float(os.environ.get("MLX_SPEC_TIE_TOLERANCE", "0.05"))
# MoE targets: a rounding difference can also flip the router's choice of experts for a token, whose
# logits then move by more than rounding. Measured on an H100 (MLX CUDA, TF32): the tiny MoE left plain
# decoding at a position with a top-2 margin of 0.055, above the dense tolerance.
MOE_TIE_TOLERANCE = float(os.environ.get("MLX_SPEC_MOE_TIE_TOLERANCE", "0.25"))


def tolerance_for(target) -> float:
    return MOE_TIE_TOLERANCE if getattr(target, "moe", None) is not None else TIE_TOLERANCE


def exact_backend() -> bool:
    return mx.default_device() == mx.cpu


def plain_reference(target, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Plain greedy decoding through the target's 1-row forwards (the loop's k = 0 computation), with
    the top-1 minus top-2 logit margin at every generated position."""
    cache = target.make_cache()
    logits, _ = target.forward(mx.array(prompt)[None], cache, last_only=True)
    tokens, margins = [], []
    for _ in range(n):
        row = logits[0, -1].astype(mx.float32)
        top2 = mx.topk(row, 2)
        token = int(mx.argmax(row).item())
        tokens.append(token)
        margins.append(float((mx.max(top2) - mx.min(top2)).item()))
        logits, _ = target.forward(mx.array([[token]]), cache)
    return tokens, margins


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def check_lossless(spec: list[int], plain: list[int], margins, label: str, exact: bool | None = None,
                   tolerance: float = TIE_TOLERANCE) -> None:
    """spec == plain (exact backends, or exact=True); else any first divergence is at a near-tie.
    `margins`: plain's top-2 margins per position, or a function computing them (only on a divergence)."""
    j = first_difference(spec, plain)
    if j is None:
        return
    margins = margins() if callable(margins) else margins
    exact = exact_backend() if exact is None else exact
    assert not exact, f"{label}: first difference at token {j} (plain's top-2 margin there {margins[j]:.4g})"
    assert j < len(margins) and margins[j] < tolerance, (
        f"{label}: first difference at token {j}, where plain's top-2 margin is {margins[j]:.4g} >= {tolerance}: not a near-tie")
