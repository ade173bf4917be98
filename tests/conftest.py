"""Shared fixtures: the tiny checkpoints (written once per session) and the golden data."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VARIANTS = ("dense", "moe", "e2b", "unified")
QUANTIZED = ("dense-4bit", "moe-4bit", "unified-4bit")

sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads((FIXTURES / "golden" / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_arrays():
    cache = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = dict(np.load(FIXTURES / "golden" / f"{variant}.npz"))
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, golden) -> Path:
    """OUT_DIR of scripts/make_tiny_checkpoints.py, checked against the files the golden data came from."""
    import make_tiny_checkpoints

    given = os.environ.get("MLX_SPEC_TINY")  # made once beforehand (scripts/device_check.sh), checked all the same
    out = Path(given) if given else tmp_path_factory.mktemp("tiny")
    if not (out / "dense" / "drafter-trained").exists():
        make_tiny_checkpoints.main([str(out), "--trained-drafters", str(FIXTURES / "drafters")])
    for variant, meta in golden["variants"].items():
        for rel, digest in meta["files"].items():
            got = hashlib.sha256((out / variant / rel).read_bytes()).hexdigest()
            assert got == digest, f"{variant}/{rel} differs from the checkpoint the golden data was made from: rerun scripts/make_golden.py"
    return out
