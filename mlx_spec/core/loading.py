"""Model files -> MLX modules: targets through mlx-lm, drafters through our gemma4_assistant
(released Gemma 4 MTP drafters) or mtp_drafter (drafters `mlx-spec distill` trains for any target).

`load_target` and `load_drafter` take a local folder (Hugging Face layout as `save_pretrained`
writes it, or the MLX-converted layout, quantized or not) or a hub repo id. `validate_pair`
checks that a drafter fits a target before any weight is touched by the decoding loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from . import configs
from .errors import ConfigError, ModelFilesError, PairMismatchError
from .model_config import (
    ASSISTANT_TYPES,
    DRAFTER_TYPE,
    DRAFTER_TYPES,
    FULL,
    SLIDING,
    TARGET_TYPES,
    head_dim,
    kv_heads,
    mlx_lm_overrides,
    normalize_config,
    read_config,
    text_config_of,
)
from .models import gemma4_assistant, mtp_drafter
from .target import Target

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]
DEMO_NAMES = ("smollm2-135m", "gemma3-270m")  # what `mlx-spec demo-models` writes (tools/demo_models.py)


def demo_home() -> Path:
    """Where `mlx-spec demo-models` writes by default ($MLX_SPEC_HOME/demo-models or ~/.cache/mlx-spec/demo-models)."""
    base = os.environ.get("MLX_SPEC_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "mlx-spec") / "demo-models"


@dataclass
class LoadedModel:
    """A module with the config it was built from and where it came from."""

    module: nn.Module
    config: dict  # normalised
    path: Path
    name: str  # what the user passed (hub id or path)

    @property
    def text_config(self) -> dict:
        return text_config_of(self.config)


def resolve_path(path_or_repo: str | os.PathLike) -> Path:
    """A local model folder, or a hub repo fetched (or found in the local cache) with huggingface_hub."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFilesError(f"{path} is a file; pass the model folder that holds config.json and the weights.")
        return path
    name = str(path_or_repo)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelFilesError(f"{name} does not exist: pass a model folder or a Hugging Face repo id like google/gemma-4-E2B-it.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelFilesError(f"{name} is not a local folder and huggingface_hub is not installed.") from None
    try:
        return Path(snapshot_download(name, allow_patterns=WEIGHT_PATTERNS))
    except GatedRepoError:
        raise ModelFilesError(f"{name} is gated: accept its licence on the Hugging Face hub and log in (`hf auth login`).") from None
    except RepositoryNotFoundError:
        raise ModelFilesError(f"{name} is not a model on the Hugging Face hub, nor a local folder.") from None
    except LocalEntryNotFoundError:
        raise ModelFilesError(
            f"{name} is not in the local Hugging Face cache and the hub cannot be reached (offline?): "
            "download it once with network, or pass a local model folder."
        ) from None
    except OSError as e:
        raise ModelFilesError(f"could not fetch {name} from the Hugging Face hub: {e}") from None


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelFilesError(f"{path} has no *.safetensors weights: the download or conversion is incomplete.")
    return files


def _read_weights(path: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in _weight_files(path):
        try:
            weights.update(mx.load(str(file)))
        except Exception as e:  # mlx raises RuntimeError/ValueError with low-level text
            raise ModelFilesError(f"{file} is corrupt or not a safetensors file ({e}); re-download or re-convert the model.") from None
    return weights


def load_target(path_or_repo: str | os.PathLike, lazy: bool = False) -> LoadedModel:
    """Load a target through mlx-lm: Gemma 4 (gemma4 / gemma4_text, quantized or not), or any other
    mlx-lm decoder (llama, gemma3_text, ...) for drafters trained with `mlx-spec distill`."""
    from mlx_lm.utils import load_model

    path = resolve_path(path_or_repo)
    raw = read_config(path)
    model_type = raw.get("model_type")
    if model_type in DRAFTER_TYPES:
        raise ConfigError(f"{path_or_repo} is a {model_type} drafter, not a target: pass it as the drafter and its target model as the target.")
    if model_type not in TARGET_TYPES and not _mlx_lm_supports(model_type):
        raise ConfigError(f"{path_or_repo} is a {model_type!r} model, which mlx-lm cannot load; mlx-spec speeds up Gemma 4 ({', '.join(TARGET_TYPES)}) and mlx-lm decoders.")
    config = normalize_config(raw, f"{path}/config.json")
    _weight_files(path)
    try:
        model, _ = load_model(path, lazy=True, model_config=mlx_lm_overrides(config))
        if not lazy:
            mx.eval(model.parameters())
    except ModelFilesError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelFilesError(f"the weights in {path} do not match its config.json ({_short(e)}); re-download or re-convert the model.") from None
    model.eval()
    return LoadedModel(model, config, path, str(path_or_repo))


def _mlx_lm_supports(model_type: Optional[str]) -> bool:
    from mlx_lm.utils import _get_classes

    try:
        _get_classes({"model_type": model_type})
        return True
    except (ValueError, ImportError, TypeError):
        return False


def load_drafter(path_or_repo: str | os.PathLike) -> LoadedModel:
    """Load a drafter: gemma4_assistant (Hugging Face or MLX-converted/quantized weights), or an
    mlx_spec_mtp drafter trained by `mlx-spec distill`."""
    path = resolve_path(path_or_repo)
    raw = read_config(path)
    if raw.get("model_type") == mtp_drafter.MODEL_TYPE:
        config, build, fix = raw, mtp_drafter.build, "retrain or re-copy the drafter"
    elif raw.get("model_type") in ASSISTANT_TYPES:
        config, build, fix = normalize_config(raw, f"{path}/config.json"), gemma4_assistant.build, "re-download or re-convert the drafter"
        validate_drafter_config(config, str(path_or_repo))
    else:
        raise ConfigError(
            f"{path_or_repo} is a {raw.get('model_type')!r} model, not a drafter: pass a Gemma 4 MTP "
            f"drafter (model_type {DRAFTER_TYPE!r}, e.g. google/gemma-4-E2B-it-assistant) or one trained "
            f"with `mlx-spec distill` ({mtp_drafter.MODEL_TYPE!r})."
        )
    weights = _read_weights(path)
    try:
        module = build(config, weights)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFilesError(f"the weights in {path} do not match its config.json ({_short(e)}); {fix}.") from None
    return LoadedModel(module, config, path, str(path_or_repo))


def _short(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_drafter_config(config: dict, name: str) -> None:
    text = text_config_of(config)
    problems = []
    missing = [k for k in ("hidden_size", "num_hidden_layers", "layer_types", "vocab_size", "head_dim") if k not in text]
    if "backbone_hidden_size" not in config:
        missing.append("backbone_hidden_size")
    if missing:
        raise ConfigError(f"{name}/config.json lacks {', '.join(missing)}: it is not a complete gemma4_assistant config.")
    if text.get("hidden_size_per_layer_input"):
        problems.append("hidden_size_per_layer_input must be 0")
    if text.get("enable_moe_block"):
        problems.append("enable_moe_block must be false")
    shared = text.get("num_kv_shared_layers")
    if shared and shared != text["num_hidden_layers"]:
        problems.append("every layer must be KV-shared (num_kv_shared_layers == num_hidden_layers)")
    if len(text["layer_types"]) != text["num_hidden_layers"]:
        problems.append("layer_types must list num_hidden_layers entries")
    if config.get("use_ordered_embeddings"):
        centroids, top_k = config.get("num_centroids", 2048), config.get("centroid_intermediate_top_k", 32)
        if text["vocab_size"] % centroids:
            problems.append(f"vocab_size {text['vocab_size']} is not a multiple of num_centroids {centroids}")
        if not 0 < top_k <= centroids:
            problems.append(f"centroid_intermediate_top_k {top_k} must be in 1..num_centroids")
    if problems:
        raise ConfigError(f"{name}/config.json is not a valid gemma4_assistant config: " + "; ".join(problems) + ".")


def validate_pair(target: LoadedModel, drafter: LoadedModel) -> None:
    """Raise PairMismatchError unless `drafter` was made for `target` (same width, vocab, KV geometry)."""
    if drafter.config.get("model_type") == mtp_drafter.MODEL_TYPE:
        problems = mtp_drafter.check_target(drafter.config, target.module, target.name, drafter.name)
        if problems:
            trained_for = (drafter.config.get("target") or {}).get("name", "another model")
            raise PairMismatchError(
                f"drafter {drafter.name} was trained for {trained_for}, not {target.name} ({'; '.join(problems)}): "
                f"train one for this target with `mlx-spec distill --target {target.name} --data FILES --out DIR`."
            )
        return
    if target.config.get("model_type") not in TARGET_TYPES:
        raise PairMismatchError(
            f"{drafter.name} is a Gemma 4 assistant, but {target.name} is a {target.config.get('model_type')!r} model: "
            f"train a drafter for it with `mlx-spec distill --target {target.name} --data FILES --out DIR`."
        )
    check_pair(target.config, drafter.config, target.name, drafter.name)


def check_pair(target_config: dict, drafter_config: dict, target_name: str, drafter_name: str) -> None:
    """Config-level pair check (also used on the bundled released configs)."""
    t, d = text_config_of(target_config), text_config_of(drafter_config)
    mismatches = []

    def check(what: str, drafter_value: Any, target_value: Any) -> None:
        if drafter_value != target_value:
            mismatches.append(f"{what}: drafter {drafter_value}, target {target_value}")

    check("backbone_hidden_size vs hidden_size", drafter_config.get("backbone_hidden_size"), t.get("hidden_size"))
    check("vocab_size", d.get("vocab_size"), t.get("vocab_size"))
    target_types = set(t.get("layer_types") or [])
    for layer_type in sorted(set(d["layer_types"])):
        if layer_type not in target_types:
            mismatches.append(f"drafter reads {layer_type} KV but the target has no such layer")
            continue
        label = "global_head_dim" if layer_type == FULL else "head_dim"
        check(f"{label} ({layer_type})", head_dim(d, layer_type), head_dim(t, layer_type))
        heads, target_kv = int(d["num_attention_heads"]), kv_heads(t, layer_type)
        if heads % target_kv:
            mismatches.append(f"{heads} drafter query heads cannot group over the target's {target_kv} {layer_type} KV heads")
    if SLIDING in d["layer_types"]:
        check("sliding_window", d.get("sliding_window"), t.get("sliding_window"))
    if mismatches:
        raise PairMismatchError(
            f"drafter {drafter_name} does not fit target {target_name} ({'; '.join(mismatches)}). "
            + configs.suggest_drafter(t, target_name)
        )


@dataclass
class SpeculativeModel:
    """A target and the drafter validated against it (drafter None: plain decoding only), with the
    runtime adapter over the target built once, here (MoE instrumentation attached once)."""

    target: LoadedModel
    drafter: Optional[LoadedModel]
    adapter: Target = field(init=False)
    lookup: bool = False  # loaded with drafter "lookup": prompt-lookup drafting, no MTP drafter
    costs: dict = field(default_factory=dict)  # measured step costs, by (greedy, exact verify, k_max)
    policies: dict = field(default_factory=dict)  # the last adaptive policy, same keys: acceptance carried over

    def __post_init__(self):
        self.adapter = Target(self.target.module, self.target.text_config)

    @property
    def draft_model(self):
        """The drafter module the loop runs (a draft.Drafter), or None."""
        return self.drafter.module if self.drafter is not None else None


def generation_defaults(path: str | os.PathLike) -> dict:
    """Sampling defaults from a model folder's generation_config.json (temperature, top_p, top_k, min_p;
    `do_sample: false` means greedy): what users of the released models expect when they set nothing
    (Gemma 4 ships temperature 1.0, top_p 0.95, top_k 64). {} when the file has none."""
    file = Path(path) / "generation_config.json"
    try:
        config = json.loads(file.read_text()) if file.exists() else {}
    except (OSError, ValueError):
        return {}
    out = {}
    for key in ("temperature", "top_p", "top_k", "min_p"):
        if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
            out[key] = config[key]
    if config.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def default_drafter(model: str) -> Optional[str]:
    """The released assistant for a released target's hub id (google/* or mlx-community/* names)."""
    owner, _, repo = str(model).partition("/")
    if not repo or Path(model).expanduser().exists():
        return None
    for target in configs.TARGETS:
        if repo == target:
            return f"google/{target}{configs.ASSISTANT_SUFFIX}"
        if repo.lower().startswith(target.lower() + "-"):  # e.g. mlx-community/gemma-4-31B-it-4bit
            return f"google/{target}{configs.ASSISTANT_SUFFIX}"
    return None


def model_folders(model: str | os.PathLike) -> tuple[str, Optional[str]]:
    """(target, drafter or None) for what the user named: a demo model's name (after `mlx-spec
    demo-models`), a folder holding `target/` and `drafter/` (what demo-models writes), or a target."""
    path = Path(model).expanduser()
    if not path.exists() and str(model) in DEMO_NAMES:
        path = demo_home() / str(model)
        if not path.exists():
            raise ModelFilesError(f"{model} is a demo model that is not converted yet: run `mlx-spec demo-models` first.")
    if (path / "target").is_dir() and not (path / "config.json").exists():
        drafter = path / "drafter"
        return str(path / "target"), (str(drafter) if (drafter / "config.json").exists() else None)
    return str(model), None


LOOKUP = "lookup"  # the drafter name of prompt-lookup drafting (core/lookup.py)


def load_pair(model: str | os.PathLike, drafter: str | os.PathLike | None = None, lazy: bool = False) -> SpeculativeModel:
    """Load a target and its drafter and check that they fit. With drafter None, use the drafter
    beside a demo target, or the released assistant for a released target's hub id; another local
    target needs an explicit drafter. drafter "lookup": prompt-lookup drafting alone (any target)."""
    model, beside = model_folders(model)
    target = load_target(model, lazy=lazy)
    if str(drafter) == LOOKUP:  # prompt lookup only: no weights to load
        return SpeculativeModel(target, None, lookup=True)
    drafter = drafter if drafter is not None else (beside or default_drafter(str(model)))
    if drafter is None:
        raise ModelFilesError(
            f"no drafter given for {model}: pass the matching drafter folder or repo (drafter=... / --drafter). "
            + (configs.suggest_drafter(target.text_config, str(model)) if target.config.get("model_type") in TARGET_TYPES
               else f"Train one with `mlx-spec distill --target {model} --data FILES --out DIR`.")
        )
    loaded_drafter = load_drafter(drafter)
    validate_pair(target, loaded_drafter)
    if isinstance(loaded_drafter.module, mtp_drafter.Model):
        loaded_drafter.module.attach(target.module)
    return SpeculativeModel(target, loaded_drafter)


def load_tokenizer(path: Path, config: dict):
    """mlx-lm's tokenizer wrapper for a model folder, with a clear error when its files are missing."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ModelFilesError(f"{path} has no tokenizer files (tokenizer.json / tokenizer.model): the model folder is incomplete.")
    eos = config.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else eos
    try:
        return mlx_load_tokenizer(path, eos_token_ids=eos)
    except Exception as e:  # transformers raises many kinds here
        raise ModelFilesError(f"the tokenizer in {path} cannot be loaded ({_short(e)}).") from None
