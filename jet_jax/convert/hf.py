"""HF directory (config.json + safetensors, sharded or not) <-> JetNemotronForCausalLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jet_jax.config import ModelConfig
from jet_jax.convert.key_table import IGNORED_HF_SUFFIXES, key_table
from jet_jax.model import JetNemotronForCausalLM, unstack_layers
from jet_jax.sharding import place, state_shardings
from jet_jax.staged_dir import copy_tokenizer_files, staged_directory

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model config (missing/unexpected/shape)."""


def _np_dtype(dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if jnp.dtype(dtype) == jnp.bfloat16 else np.dtype(jnp.dtype(dtype))


def _dtype_name(dtype) -> str:
    """The HF spelling of a numpy dtype: 'bfloat16', 'float32', 'float16'."""
    name = np.dtype(dtype).name
    if name not in ("bfloat16", "float16", "float32", "float64"):
        raise ValueError(f"cannot export tensors of dtype {name}")
    return name


def _safetensor_files(path: Path) -> list[Path]:
    if (path / SAFE_INDEX).exists():
        index = json.loads((path / SAFE_INDEX).read_text())
        files = sorted(set(index["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"{path / SAFE_INDEX} lists shard(s) that do not exist: {missing}")
        return [path / f for f in files]
    if (path / SAFE_SINGLE).exists():
        return [path / SAFE_SINGLE]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    return found


def read_hf_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of an HF directory as numpy arrays (bf16 as ml_dtypes.bfloat16)."""
    out: dict[str, np.ndarray] = {}
    for f in _safetensor_files(Path(path)):
        with safe_open(str(f), framework="np") as sf:
            for k in sf.keys():
                out[k] = sf.get_tensor(k)
    return out


def abstract_model(cfg: ModelConfig, **model_kwargs) -> JetNemotronForCausalLM:
    """The model with ShapeDtypeStruct leaves (no memory), for shape checks and loading."""
    return nnx.eval_shape(lambda: JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), **model_kwargs))


def check_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected or mis-shaped tensor."""
    specs = {s.hf_key: s for s in key_table(cfg)}
    problems = []
    for key, spec in specs.items():
        if key not in tensors:
            problems.append(f"missing tensor {key!r} (expected shape {spec.hf_shape})")
        elif tuple(tensors[key].shape) != spec.hf_shape:
            problems.append(f"shape mismatch for {key!r}: checkpoint has {tuple(tensors[key].shape)}, "
                            f"config expects {spec.hf_shape}")
    for key in tensors:
        if key in specs or key.endswith(IGNORED_HF_SUFFIXES):
            continue
        if key == "lm_head.weight" and cfg.tie_word_embeddings and np.array_equal(
                tensors[key], tensors.get("model.embed_tokens.weight")):
            continue  # a tied head saved explicitly
        problems.append(f"unexpected tensor {key!r} with shape {tuple(tensors[key].shape)}")
    if problems:
        raise CheckpointMismatchError("checkpoint does not match the config:\n  " + "\n  ".join(problems))


def from_hf(path: str | os.PathLike, *, param_dtype=jnp.float32, dtype=None,
            config: ModelConfig | None = None, mesh=None, **model_kwargs) -> JetNemotronForCausalLM:
    """Load an HF `qwen2` or `jet_nemotron` directory into a JAX model (it knows its config).

    mesh: place every parameter sharded over this `(data, fsdp, tensor)` mesh by its logical
    axes (each device receives only its shard; the tensors pass through host memory), instead
    of whole on the default device."""
    path = Path(path)
    if config is None:
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json")
        config = ModelConfig.from_json_file(path / "config.json")
    tensors = read_hf_tensors(path)
    check_tensors(config, tensors)
    dtype = param_dtype if dtype is None else dtype
    abstract = abstract_model(config, dtype=dtype, param_dtype=param_dtype, **model_kwargs)
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    np_dtype = _np_dtype(param_dtype)
    shardings = None if mesh is None else dict(nnx.to_flat_state(state_shardings(state, mesh)))
    for spec in key_table(config):
        value = spec.from_hf(tensors[spec.hf_key]).astype(np_dtype)
        flat[spec.path].set_value(jnp.asarray(value) if shardings is None
                                  else place(value, shardings[spec.path]))
    return nnx.merge(graphdef, state)


def param_dtype_of(model: JetNemotronForCausalLM) -> np.dtype:
    """The single dtype of the model's parameters (raises for mixed dtypes)."""
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    if len(dtypes) != 1:
        raise ValueError(f"model parameters have mixed dtypes {sorted(d.name for d in dtypes)}: "
                         "pass dtype= to export")
    return dtypes.pop()


def model_to_hf_tensors(model: JetNemotronForCausalLM, dtype=None) -> dict[str, np.ndarray]:
    """HF name -> numpy tensor, in `dtype` (None: the model's parameter dtype). A
    `stack_layers` inference view is unstacked first (HF keys are per layer)."""
    model = unstack_layers(model)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    np_dtype = _np_dtype(param_dtype_of(model) if dtype is None else dtype)
    out = {}
    for spec in key_table(model.config):
        if spec.path not in flat:
            raise CheckpointMismatchError(f"model has no parameter at {spec.path} for {spec.hf_key!r}")
        value = np.asarray(jax.device_get(flat[spec.path].get_value())).astype(np_dtype)
        out[spec.hf_key] = spec.to_hf(value)
        if out[spec.hf_key].shape != spec.hf_shape:
            raise CheckpointMismatchError(
                f"parameter for {spec.hf_key!r} has shape {out[spec.hf_key].shape}, expected {spec.hf_shape}")
    return out


def to_hf(model: JetNemotronForCausalLM, path: str | os.PathLike, *, dtype=None,
          max_shard_bytes: int = 2 * 1024 ** 3, tokenizer_from: str | os.PathLike | None = None,
          overwrite: bool = False) -> Path:
    """Write config.json + safetensors (sharded with an index above `max_shard_bytes`).

    Tensors are written in the model's parameter dtype unless `dtype` is given (then cast);
    config.json's `torch_dtype`/`dtype` always names the dtype of the tensors written.

    The directory is written to a temporary sibling and moved into place, so an existing
    checkpoint is never left half-written; an existing non-empty `path` is refused unless
    `overwrite=True`.
    """
    path = Path(path)
    with staged_directory(path, overwrite=overwrite) as tmp:
        tensors = model_to_hf_tensors(model, dtype)
        written = {np.dtype(t.dtype) for t in tensors.values()}
        assert len(written) == 1, written  # one cast for all tensors
        model.config.save_json(tmp / "config.json", dtype=_dtype_name(written.pop()))
        _write_shards(tensors, tmp, max_shard_bytes)
        copy_tokenizer_files(tokenizer_from, tmp)
    return path


def _write_shards(tensors: dict[str, np.ndarray], out: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / SAFE_SINGLE), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    (out / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2))
