"""The one config engine: frozen dataclasses, Python config files and `--set` overrides.

`TrainConfig` (distillation) and `jet_jax_train.postnas.config.PostNASConfig` are both plain frozen
dataclasses whose sections are dataclasses too (`DataConfig`, `OptimizerSection`, ...); the
functions here work on any of them:

* `load_config_file(path, expected)`: a Python file exposing `get_config()` (see
  configs/distill_tiny.py) or `CONFIG`; every field is type-checked (`validate`) and errors
  name the file (and line, for a syntax error).
* `apply_overrides(cfg, ["section.field=value", ...])`: the value is parsed with
  `ast.literal_eval` when possible (else taken as a string) and checked against the field's
  annotated type, so `--set optimizer.lr=abc` or `--set optimizr.lr=1e-3` fail with one line
  naming the key and the valid choices.
* `to_dict(cfg)`: JSON-able view.

Commands call these before any work starts, so a bad setting never leaves a run half done.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import types
import typing
from typing import Any, Sequence

from jet_jax.config import JetBlockConfig
from jet_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from jet_jax.ops.dynamic_conv import IMPLEMENTATIONS as CONV_IMPLEMENTATIONS
from jet_jax.ops.gated_delta_rule import IMPLEMENTATIONS as GDR_IMPLEMENTATIONS
from jet_jax_train.data.pipeline import DataConfig


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


# The compute / parameter dtypes a config may name.
DTYPE_NAMES = ("float32", "bfloat16")


def check_mesh_shape(shape, key: str) -> None:
    """ConfigError naming `key` unless `shape` is 3 positive sizes (one may be -1)."""
    if len(shape) != 3 or list(shape).count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"{key} must be 3 positive sizes (data, fsdp, tensor; one may be -1), "
                          f"got {shape}")


def check_dtype_names(section, keys, prefix: str = "") -> None:
    """ConfigError naming the key unless each of `section`'s `keys` is a DTYPE_NAMES entry."""
    for key in keys:
        if getattr(section, key) not in DTYPE_NAMES:
            raise ConfigError(f"{prefix}{key} must be 'float32' or 'bfloat16', "
                              f"got {getattr(section, key)!r}")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Teacher source and student architecture.

    teacher: an HF directory (qwen2 / jet_nemotron) loaded with `from_hf`, or `preset:<name>`
        (configs/presets.py) for a randomly initialised teacher (tests only).
    layer_types: the student's mixer per layer; None = `hybrid_layer_types(n, attn_layers,
        swa_layers)` (every other layer a JetBlock).
    jet: JetBlock hyper-parameters of the student; None = the teacher config's default.
    window_size: sliding window of `swa` layers; None = keep the teacher config's value.
    dtype: compute dtype ("float32" or "bfloat16"); the student's parameters stay float32.
    teacher_param_dtype: the dtype the frozen teacher's parameters are held in ("float32" or
        "bfloat16"). "bfloat16" halves the teacher's memory (a 32B teacher: 64 instead of 128
        GB over the mesh) and loses nothing for an HF teacher stored in bf16; it changes the
        teacher's logits by bf16 rounding when compute is float32.
    remat: rematerialise each decoder layer in the backward pass.
    scan_layers: run each run of consecutive same-type layers as one `lax.scan` (student and
        teacher), so the step's compile time stops growing with depth; parameters and
        checkpoints are the same either way.
    attention_implementation / gdr_implementation / conv_implementation: the kernels the
        student and teacher run (jet_jax.ops.attention, .gated_delta_rule, .dynamic_conv);
        "auto" picks only what has run on the backend. E.g. "splash" on a TPU or "chunked"
        for attention memory linear in the sequence, "pallas" for the GDR kernel. Not "cudnn":
        it cannot mask the packed documents of a training row.
    These four choose how the step computes, not what: they may change between a run and
    its resume (they are not part of the checkpoint's config fingerprint).
    """

    teacher: str = "preset:tiny-qwen2"
    layer_types: tuple[str, ...] | None = None
    attn_layers: tuple[int, ...] = ()
    swa_layers: tuple[int, ...] = ()
    jet: JetBlockConfig | None = None
    window_size: int | None = None
    dtype: str = "float32"
    teacher_param_dtype: str = "float32"
    remat: bool = False
    init_seed: int = 0
    scan_layers: bool = False
    attention_implementation: str = "auto"
    gdr_implementation: str = "auto"
    conv_implementation: str = "auto"

    def __post_init__(self):
        check_dtype_names(self, ("dtype", "teacher_param_dtype"), "model.")
        for key, choices in (("attention_implementation", ATTENTION_IMPLEMENTATIONS),
                             ("gdr_implementation", GDR_IMPLEMENTATIONS),
                             ("conv_implementation", CONV_IMPLEMENTATIONS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"model.{key}: unknown implementation {getattr(self, key)!r}; "
                                  f"choose one of {', '.join(choices)}")
        if self.attention_implementation == "cudnn":
            raise ConfigError("model.attention_implementation: 'cudnn' takes no segment ids and "
                              "training rows pack documents; use 'chunked' (any backend) or "
                              "'splash' (TPU)")

    def model_options(self) -> dict:
        """The constructor arguments of `JetNemotronForCausalLM` these settings choose."""
        return {k: getattr(self, k) for k in EXECUTION_KEYS}


# ModelSection fields that choose how the step computes, not what (left out of the
# checkpoint fingerprint, so a run may resume with another kernel).
EXECUTION_KEYS = ("scan_layers", "attention_implementation", "gdr_implementation",
                  "conv_implementation")


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """AdamW, linear warmup then cosine decay to `lr * end_lr_ratio`, global-norm clipping.

    Frozen parameters (regexes over the flat parameter names, e.g.
    `model/layers/3/mlp/up_proj/kernel`) get no update, no weight decay and no optimizer
    state; `unfreeze_all=True` trains everything (the full fine-tuning stage).
    `grad_accum_steps` micro-batches are accumulated per optimizer step (optax.MultiSteps).
    """

    lr: float = 1e-3
    warmup_steps: int = 10
    end_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    grad_accum_steps: int = 1
    unfreeze_all: bool = False
    frozen: tuple[str, ...] = (r"^model/embed_tokens/", r"/mlp/", r"/input_layernorm/",
                               r"/post_attention_layernorm/", r"^model/norm/", r"^lm_head/")

    def __post_init__(self):
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_accum_steps < 1 or self.clip_norm <= 0:
            raise ConfigError(f"invalid optimizer settings: {self}")
        if not 0 <= self.end_lr_ratio <= 1:
            raise ConfigError(f"optimizer.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")


@dataclasses.dataclass(frozen=True)
class LossSection:
    """loss = kl_weight * tau^2 KL(teacher_tau || student_tau) + ce_weight * CE(targets)
    + mse_weight * mean_l MSE(h_student_l, h_teacher_l) over `mse_layers` (indices into
    h_0..h_L; None = every layer output 1..L)."""

    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    mse_weight: float = 0.0
    mse_layers: tuple[int, ...] | None = None
    # > 0: KL/CE computed this many sequence positions at a time from the final hidden
    # states, so [B, T, vocab] float32 logits never exist whole (jet_jax_train.losses); 0: whole.
    logits_chunk: int = 0

    def __post_init__(self):
        if self.logits_chunk < 0:
            raise ConfigError(f"loss.logits_chunk must be >= 0, got {self.logits_chunk}")
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be positive, got {self.temperature}")
        if min(self.kl_weight, self.ce_weight, self.mse_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.kl_weight == self.ce_weight == self.mse_weight == 0:
            raise ConfigError("all loss weights are 0: nothing to train")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """(data, fsdp, tensor) mesh shape; one -1 entry takes the remaining devices."""

    shape: tuple[int, int, int] = (-1, 1, 1)

    def __post_init__(self):
        check_mesh_shape(self.shape, "mesh.shape")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    save_interval_steps: int = 100
    max_to_keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Every `interval` steps (and at the end): held-out LM loss / KL to the teacher on
    `num_batches` batches, MQAR accuracy on `mqar_batches` batches (0 = skip)."""

    interval: int = 100
    num_batches: int = 4
    mqar_batches: int = 2


@dataclasses.dataclass(frozen=True)
class LoggingSection:
    interval: int = 10
    tensorboard: bool = True
    progress: str = "tqdm"  # "tqdm", "rich" or "none"

    def __post_init__(self):
        if self.progress not in ("tqdm", "rich", "none"):
            raise ConfigError(f"logging.progress must be tqdm, rich or none, got {self.progress!r}")


# train.export -> the folder under output_dir that holds the exported student
EXPORT_DIRS = {"hf": "hf", "orbax": "model", "none": None}


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """`export`: the format of the final student that a finished run writes for `jet-jax
    generate` / `eval` / `convert`: "hf" (`<output_dir>/hf`, config.json + safetensors, the
    official key names), "orbax" (`<output_dir>/model`, the model's own dtype) or "none"."""

    steps: int = 100
    seed: int = 0
    output_dir: str = "runs/distill"
    export: str = "hf"

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"train.steps must be >= 0, got {self.steps}")
        if self.export not in EXPORT_DIRS:
            raise ConfigError(f"train.export must be hf, orbax or none, got {self.export!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = ModelSection()
    data: DataConfig = DataConfig()
    optimizer: OptimizerSection = OptimizerSection()
    loss: LossSection = LossSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    eval: EvalSection = EvalSection()
    logging: LoggingSection = LoggingSection()
    train: TrainSection = TrainSection()


# ----------------------------------------------------------------------------- files


def load_config_file(path: str | os.PathLike, expected: type | tuple[type, ...] = TrainConfig) -> Any:
    """Run a Python config file and return its `get_config()` (or its `CONFIG`), an instance
    of `expected` (a class, or a tuple of them) with every field type-checked. Any error names
    the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_jet_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        if hasattr(module, "get_config"):
            cfg = module.get_config()
        elif hasattr(module, "CONFIG"):
            cfg = module.CONFIG
        else:
            raise ConfigError(f"config file {path!r} defines no get_config() (or CONFIG)")
    except ConfigError as e:
        raise ConfigError(e if path in str(e) else f"{path}: {e}") from None
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the file's own code failed: report it as a bad config, one line
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    if not isinstance(cfg, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple)
                                                 else (expected,)))
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected "
                          f"{names}")
    validate(cfg, where=path)
    return cfg


def validate(cfg: Any, where: str = "config", prefix: str = "") -> None:
    """Check every field of `cfg` (recursively) against its annotated type; ConfigError naming
    the first wrong key. (`--set` checks as it parses; this covers values from files and code.)"""
    for name, tp in _fields(cfg).items():
        key = f"{prefix}{name}"
        value = getattr(cfg, name)
        try:
            _check_type(value, tp, key)
        except ConfigError as e:
            raise ConfigError(f"{where}: {key}: {str(e).split(': ', 1)[-1]}") from None
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, where, f"{key}.")


# ----------------------------------------------------------------------------- overrides


def _fields(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to annotated type `tp`, or ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"--set {key}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"--set {key}: expected None, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"--set {key}: {value!r} is not one of {typing.get_args(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and args[-1:] == (...,):
            value = (value,)  # `--set model.attn_layers=3` means (3,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"--set {key}: expected a tuple like (1, 2), got {value!r}")
        if args[-1:] == (...,):
            return tuple(_check_type(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"--set {key}: expected {len(args)} entries, got {len(value)}")
        return tuple(_check_type(v, a, key) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            try:
                return tp(**value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--set {key}: {e}") from None
        if isinstance(value, tp):
            return value
        raise ConfigError(f"--set {key}: expected a dict of {tp.__name__} fields, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"--set {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"--set {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"--set {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"--set {key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"--set {key}: cannot set a field of type {tp} from the command line")


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _replace_path(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    fields = _fields(obj)
    name = parts[0]
    if name not in fields:
        where = ".".join(key.split(".")[: len(key.split(".")) - len(parts)]) or "the config"
        label = getattr(type(obj), "setting_label", "key")
        raise ConfigError(f"--set {key}: unknown {label} {name!r} in {where}; valid keys: {sorted(fields)}")
    current = getattr(obj, name)
    if len(parts) == 1:
        # A plain-string field takes the text as typed (`--set logging.progress=none`).
        parsed = value if fields[name] is str else _parse_value(value)
        new = _check_type(parsed, fields[name], key)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"--set {key}: {name!r} is not a section (it is {type(current).__name__})")
        new = _replace_path(current, parts[1:], value, key)
    try:
        return dataclasses.replace(obj, **{name: new})
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--set {key}: {e}") from None


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """Apply `section.field=value` strings in order to a config dataclass (any of them)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=20")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set {item!r}: empty key component")
        cfg = _replace_path(cfg, key.split("."), text, key)
    return cfg


def to_dict(cfg: Any) -> Any:
    """JSON-able view of a config (for logs and the checkpoint fingerprint)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg
