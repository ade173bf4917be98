"""mlx-spec: lossless multi-token-prediction speculative decoding for Gemma 4 on MLX."""

from __future__ import annotations

import os
from typing import Optional

from .core.errors import ConfigError, MlxSpecError, ModelFilesError, PairMismatchError
from .chat import ChatSession
from .generate import BatchResponse, GenerationResponse, batch_generate, generate, stream_generate
from .core.batch import BatchStats
from .core.loading import SpeculativeModel, load_pair, load_tokenizer
from .core.loop import SpecStats
from .core.settings import DraftSettings, SamplingSettings

__version__ = "0.1.0"


def load(model: str | os.PathLike, drafter: Optional[str | os.PathLike] = None, lazy: bool = False):
    """Load a target and its MTP drafter, checked to fit each other.

    `model` and `drafter` are local folders (Hugging Face or MLX layout) or hub ids; with no drafter
    the released assistant of a released target is used. Returns (model, tokenizer) as mlx-lm does,
    where model is a SpeculativeModel holding `.target` and `.drafter`.
    """
    pair = load_pair(model, drafter, lazy=lazy)
    return pair, load_tokenizer(pair.target.path, pair.target.config)


__all__ = [
    "load",
    "generate",
    "stream_generate",
    "batch_generate",
    "BatchResponse",
    "BatchStats",
    "GenerationResponse",
    "ChatSession",
    "SpecStats",
    "SamplingSettings",
    "DraftSettings",
    "SpeculativeModel",
    "MlxSpecError",
    "ModelFilesError",
    "ConfigError",
    "PairMismatchError",
]
