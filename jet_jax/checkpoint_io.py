"""A model as an Orbax checkpoint directory, with its config beside it.

Layout of `path`:
    config.json     the HF-style config (`ModelConfig.to_hf_dict`; absent for zoo layer types)
    jet_jax.json    format marker, the full config (any layer types) and the parameter dtype
    params/         Orbax StandardCheckpointer tree of the model's nnx.Param values
    (tokenizer files copied through by the convert command, if any)

Orbax directories hold no *.safetensors, so they are never mistaken for HF directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jet_jax.config import JetBlockConfig, ModelConfig
from jet_jax.staged_dir import copy_tokenizer_files, staged_directory

FORMAT = "jet-jax-orbax"
FORMAT_VERSION = 1
META_FILE = "jet_jax.json"
PARAMS_DIR = "params"


def is_orbax_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    if not (path / META_FILE).is_file():
        return False
    try:
        return json.loads((path / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def config_to_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    d["jet"] = JetBlockConfig(**d.get("jet", {}))
    d["layer_types"] = tuple(d["layer_types"])
    d["zoo"] = tuple((name, tuple((k, v) for k, v in kw)) for name, kw in d.get("zoo", ()))
    return ModelConfig(**d)


def _param_dtype(model) -> str:
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    dtypes = {jnp.dtype(x.dtype).name for x in leaves}
    if len(dtypes) != 1:
        raise ValueError(f"model parameters have mixed dtypes {sorted(dtypes)}")
    return dtypes.pop()


def _per_layer(model):
    """`model` with per-layer parameters: a `stack_layers` inference view is unstacked (and
    its fused projections split), so what is written loads into the model as built."""
    if getattr(model, "layers_stacked", False):
        from jet_jax.model import unstack_layers
        return unstack_layers(model)
    return model


def save_orbax(model, path: str | os.PathLike, *, overwrite: bool = False,
               tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write the model's parameters (in their own dtype) and config to `path`.

    Written to a temporary sibling and moved into place; an existing non-empty `path` is
    refused unless `overwrite=True`.
    """
    path = Path(path).absolute()
    model = _per_layer(model)
    cfg: ModelConfig = model.config
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "param_dtype": _param_dtype(model),
            "config": config_to_dict(cfg)}
    files = {META_FILE: json.dumps(meta, indent=2)}
    try:
        files["config.json"] = json.dumps(cfg.to_hf_dict(), indent=2)
    except ValueError:  # zoo layer types have no HF config.json form
        pass
    return save_params(model, path, files=files, overwrite=overwrite, tokenizer_from=tokenizer_from)


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """An Orbax checkpointer this process runs alone. These files hold whole host arrays and
    are written by one process (a multi-process application gathers and calls from process
    0); Orbax's default would wait at a barrier for every process of the job."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def save_params(model, path: str | os.PathLike, *, files: dict[str, str] | None = None,
                overwrite: bool = False, tokenizer_from: str | os.PathLike | None = None) -> Path:
    """The one writer of a model's parameters to Orbax: `path/params/` (StandardCheckpointer
    tree of the nnx.Param values) plus the text `files` {name: content} beside it, written to a
    temporary sibling and moved into place (never half-written; an existing non-empty `path`
    is refused unless `overwrite`). `load_params` reads the tree back."""
    path = Path(path).absolute()
    state = nnx.to_pure_dict(nnx.state(_per_layer(model), nnx.Param))
    with staged_directory(path, overwrite=overwrite) as tmp:
        with _this_process_checkpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, state)
            ckptr.wait_until_finished()
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        copy_tokenizer_files(tokenizer_from, tmp)
    return path


def load_params(model, path: str | os.PathLike) -> None:
    """Restore `path/params/` (written by `save_params`) into `model`'s nnx.Param values."""
    if getattr(model, "layers_stacked", False):
        raise ValueError(f"load_params: {path}: the model is a stack_layers inference view; load "
                         "into the per-layer model, then call stack_layers")
    state = nnx.state(model, nnx.Param)
    with _this_process_checkpointer() as ckptr:
        restored = ckptr.restore(Path(path).absolute() / PARAMS_DIR, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)


def load_config(path: str | os.PathLike) -> tuple[ModelConfig, str]:
    """(config, param dtype name) of an Orbax checkpoint directory written by `save_orbax`."""
    path = Path(path)
    if not is_orbax_dir(path):
        raise FileNotFoundError(f"{path} is not a jet-jax Orbax checkpoint (no {META_FILE})")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except ValueError as e:
        raise ValueError(f"{path / META_FILE}: not valid JSON: {e}") from None
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {meta['version']}; this jet-jax "
                         f"reads up to {FORMAT_VERSION}")
    return config_from_dict(meta["config"]), meta["param_dtype"]


def load_orbax(path: str | os.PathLike, *, param_dtype=None, dtype=None, **model_kwargs):
    """Rebuild the model saved at `path`. Parameters are restored in their saved dtype unless
    `param_dtype` is given; `dtype` (compute dtype) defaults to the parameter dtype."""
    from jet_jax.convert.hf import abstract_model

    path = Path(path).absolute()
    cfg, saved_dtype = load_config(path)
    saved_dtype = jnp.dtype(saved_dtype)
    param_dtype = saved_dtype if param_dtype is None else jnp.dtype(param_dtype)
    dtype = param_dtype if dtype is None else dtype
    abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, **model_kwargs)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, saved_dtype, sharding=sharding),
                          nnx.to_pure_dict(params))
    with _this_process_checkpointer() as ckptr:
        restored = ckptr.restore(path / PARAMS_DIR, target)
    if param_dtype != saved_dtype:
        restored = jax.tree.map(lambda x: x.astype(param_dtype), restored)
    nnx.replace_by_pure_dict(params, restored)
    model = nnx.merge(graphdef, params, rest)
    return model


def params_equal(a, b) -> bool:
    """Bitwise equality of two models' parameters (same tree, dtype and values)."""
    fa = dict(nnx.to_flat_state(nnx.state(a, nnx.Param)))
    fb = dict(nnx.to_flat_state(nnx.state(b, nnx.Param)))
    if fa.keys() != fb.keys():
        return False
    for k in fa:
        x, y = np.asarray(fa[k].get_value()), np.asarray(fb[k].get_value())
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


# ---------------------------------------------------------------------------------------
# Either format
# ---------------------------------------------------------------------------------------

def is_hf_dir(path: str | os.PathLike) -> bool:
    """An HF model directory: config.json plus safetensors weights."""
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def detect_format(path: str | os.PathLike) -> str:
    """'hf' or 'orbax'; raises FileNotFoundError for anything else."""
    if is_orbax_dir(path):
        return "orbax"
    if is_hf_dir(path):
        return "hf"
    p = Path(path)
    # a distillation run folder or one of its training checkpoints: say where the model is
    run = ((p / "_CHECKPOINT_METADATA").is_file() or (p / "checkpoints").is_dir()
           or p.name == "checkpoints")
    raise FileNotFoundError(
        f"{path} is neither an HF model directory (config.json + *.safetensors) nor a jet-jax "
        f"Orbax checkpoint ({META_FILE} + {PARAMS_DIR}/)"
        + ("; it looks like a training run: a finished `jet-jax distill` writes its student to "
           "<output_dir>/hf (or <output_dir>/model, see train.export)" if run else ""))


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def hf_dtype(path: str | os.PathLike) -> str:
    """The dtype name of an HF directory's (first) weight tensor, e.g. 'bfloat16'."""
    import safetensors
    from safetensors import safe_open
    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="np") as sf:
                for k in sf.keys():
                    code = sf.get_slice(k).get_dtype()
                    if code not in _SAFETENSORS_DTYPES:
                        raise ValueError(f"unsupported safetensors dtype {code} in {f}")
                    return _SAFETENSORS_DTYPES[code]
        except (OSError, safetensors.SafetensorError) as e:
            raise ValueError(f"{f}: not a readable safetensors file: {e}") from None
    raise FileNotFoundError(f"no safetensors tensors in {path}")


def load_model(path: str | os.PathLike, *, param_dtype=None, dtype=None, **model_kwargs):
    """Load an HF directory or an Orbax checkpoint. Parameters keep the stored dtype unless
    `param_dtype` is given."""
    fmt = detect_format(path)
    if fmt == "orbax":
        return load_orbax(path, param_dtype=param_dtype, dtype=dtype, **model_kwargs)
    from jet_jax.convert.hf import from_hf
    ModelConfig.from_json_file(Path(path) / "config.json")  # a bad config.json fails first, named
    param_dtype = jnp.dtype(hf_dtype(path) if param_dtype is None else param_dtype)
    return from_hf(path, param_dtype=param_dtype, dtype=dtype, **model_kwargs)
