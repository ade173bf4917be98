"""Released Gemma 4 configs (public facts), bundled for pair checks and cost projections.

Files: gemma-4-{E2B,E4B,12B,26B-A4B,31B}-it.json and their -assistant drafters. Where each value came
from: SOURCES.md beside them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

TARGETS = ("gemma-4-E2B-it", "gemma-4-E4B-it", "gemma-4-12B-it", "gemma-4-26B-A4B-it", "gemma-4-31B-it")
ASSISTANT_SUFFIX = "-assistant"


@lru_cache(maxsize=None)
def released_config(name: str) -> dict:
    """The bundled config.json of a released checkpoint, e.g. 'gemma-4-31B-it' or 'gemma-4-31B-it-assistant'."""
    file = resources.files(__package__) / f"{name}.json"
    if not file.is_file():
        known = [*TARGETS, *(t + ASSISTANT_SUFFIX for t in TARGETS)]
        raise KeyError(f"no bundled config {name!r}; known: {', '.join(known)}")
    return json.loads(file.read_text())


def _shape_key(text: dict) -> tuple:
    return (text.get("hidden_size"), text.get("num_hidden_layers"), bool(text.get("enable_moe_block")))


def released_target_like(text_config: dict) -> str | None:
    """Name of the released target whose shape `text_config` has, if any."""
    for name in TARGETS:
        if _shape_key(released_config(name)["text_config"]) == _shape_key(text_config):
            return name
    return None


def suggest_drafter(text_config: dict, target_name: str) -> str:
    """One sentence naming the drafter that fits a target."""
    released = released_target_like(text_config)
    if released is not None:
        return f"Use google/{released}{ASSISTANT_SUFFIX} (or a quantized copy of it) as the drafter."
    return (
        f"Use the gemma4_assistant drafter trained for {target_name}: backbone_hidden_size "
        f"{text_config.get('hidden_size')}, vocab_size {text_config.get('vocab_size')}, head_dim "
        f"{text_config.get('head_dim')}, global_head_dim {text_config.get('global_head_dim')}, "
        f"sliding_window {text_config.get('sliding_window')}."
    )
