"""`jet-jax plan`: per-device memory of a distillation run, from abstract shapes only.

    jet-jax plan --model jet-nemotron-2b --mesh 1,256,1 [--batch-per-device 1 --seq-len 4096
                 --param-dtype f32 --dtype bf16 --opt adamw --remat --frozen-mlp --teacher auto]
    jet-jax plan --config configs/distill_big_teacher.py --set model.teacher=preset:qwen2.5-7b \
                 --chips 64 --chip tpu-v5p      # the run a distill config describes

Nothing is allocated: the model is built with `nnx.eval_shape` (`jet_jax.convert.abstract_model`)
and every parameter's per-device shard comes from its logical axis names through the same
rules training uses (`jet_jax.sharding.fitted_spec`, as `state_shardings` calls it: logical
names -> mesh axes, size-1 axes dropped, a dim its axes do not divide replicated), applied
arithmetically to the mesh sizes (no devices needed).

Rows (bytes per device):

* params      sum over parameters of prod(shard shape) * param bytes.
* grads       the same over TRAINABLE parameters only (the train step differentiates w.r.t. the
              trainable ones), in the param dtype.
* optimizer   AdamW: two float32 moments per trainable element (+ a step counter); SGD: none.
              With --grad-accum > 1, plus an accumulator of every parameter (optax.MultiSteps).
* teacher     the teacher's parameters (default: the same config with every layer `attn`, i.e.
              the Qwen2.5 it was derived from) in --teacher-dtype, sharded by the same rules.
* activations saved for the backward pass, N = batch_per_device * seq_len tokens per device,
              a = activation (compute dtype) bytes, tp = size of the `tensor` axis:
                every layer:  (4*D + 4*F/tp) * a * N         residual, 2 norms, SwiGLU gate/up/act/product
                attn / swa:   (2*Hq*hd + 3*KV*hd + Hq*hd)/tp * a * N       q,k,v, roped q,k, context
                              + B*T*T*(Hq/tp*(4 + a) + 1)                  softmax probs f32 + cast + mask
                              (--attention-implementation xla, what `auto` runs on GPU and TPU
                               today: the [B,H,T,T] scores, the window masked, so an `swa` layer
                               costs the same as `attn`); with a blocked kernel (chunked, cudnn,
                               splash) instead B*T*Hq/tp*4: one f32 softmax statistic per
                               query, the scores recomputed per block in the backward pass
                jet:          ((6*K + 6*V + V*W)/tp + 2*V/r) * a * N       q,k (pre/post silu, l2-normed),
                              v0, conv out (pre/post silu), gate, o, norm out, dynamic-conv kernels,
                              generator hidden
                              + (H*dk*dv/64 + 64*H)/tp * 4 * N             chunked delta rule (chunk 64):
                              per-chunk f32 states and intra-chunk matrices
              without --remat: the sum over layers; with --remat (per-layer `nnx.remat`): the layer
              inputs D*a*N per layer plus the largest single layer (recomputed in the backward).
* logits      float32 logits of the student (+ their log-softmax for the loss): 2*4*vocab/tp*N;
              with a teacher, its logits and probabilities: another 2*4*vocab/tp*N.
              With --logits-chunk c > 0 (the step's `loss.logits_chunk`: KL/CE over c positions
              at a time from the final hidden states) N is batch_per_device * min(c, seq_len).
* teacher fwd transient: the teacher's largest layer (forward only, nothing kept).
* attention bwd transient ("chunked" only): the backward pass recomputes one query block's
              f32 scores and probabilities against all keys: 2*4*B*Hq/tp*min(512, T)*T.
* gathered weights (FSDP, only when a weight is sharded over data/fsdp): a matmul needs its
              weight whole except for the `tensor` split, so the step all-gathers it. Kept at
              once: the student's and the teacher's output head [D, V/tp] (gathered once per
              step for the loss) and token embedding table [V/tp, D] (gathered for the lookup,
              so the looked-up rows come out batch-sharded; one table when tied); without
              --remat every student layer's gathered weights (the backward reads them: they
              are residuals of the forward), with --remat the largest student layer's; the
              teacher's largest layer (forward only).

These are estimates (XLA fuses and rematerialises on its own; expect the real peak within
roughly +-30% for activations); parameter, gradient and optimizer bytes are exact.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax.numpy as jnp

from jet_jax.config import ModelConfig
from jet_jax.ops.attention import IMPLEMENTATIONS, Q_BLOCK
from jet_jax.sharding import MESH_AXES, fitted_spec

DTYPES = {"f32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16,
          "bfloat16": jnp.bfloat16, "f16": jnp.float16, "float16": jnp.float16}

# What --frozen-mlp freezes: the PostNAS stage's frozen set (token embeddings / untied head,
# the MLPs, the decoder RMSNorms and the final norm); mirrors jet_jax_train.config.OptimizerSection.
FROZEN_PATTERNS = (r"^model/embed_tokens/", r"/mlp/", r"/input_layernorm/",
                   r"/post_attention_layernorm/", r"^model/norm/", r"^lm_head/")

GDR_CHUNK = 64


# --------------------------------------------------------------------------- config / shapes
def load_config(model: str | ModelConfig) -> ModelConfig:
    """A preset name from configs/presets.py, an HF config.json path, or a directory with one."""
    if isinstance(model, ModelConfig):
        return model
    from jet_jax_configs.presets import PRESETS
    from jet_jax_configs.teachers import STUDENTS, TEACHERS
    PRESETS = {**PRESETS, **TEACHERS, **STUDENTS}
    if model in PRESETS:
        return PRESETS[model]
    path = model
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if os.path.isfile(path):
        return ModelConfig.from_json_file(path)
    raise ValueError(f"--model {model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor "
                     "an HF config.json (or a directory holding one)")


def _dtype(name) -> Any:
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


class _ShapeOnlyMesh:
    def __init__(self, shape, names):
        self.shape = dict(zip(names, shape))


@functools.lru_cache(maxsize=32)
def _param_meta(cfg: ModelConfig, param_dtype: str) -> tuple:
    """(name, shape, logical axis names, dtype) per parameter, from the abstract model
    (cached: mesh searches and repeated plans reuse it)."""
    from flax import nnx

    from jet_jax.convert.hf import abstract_model
    state = nnx.state(abstract_model(cfg, param_dtype=jnp.dtype(param_dtype)), nnx.Param)
    out = []
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding")
        out.append(("/".join(str(p) for p in path), tuple(var.value.shape),
                    None if names is None else tuple(names), str(var.value.dtype)))
    return tuple(out)


def shard_shape(shape: Sequence[int], spec: Sequence, mesh_sizes: dict[str, int]) -> tuple:
    out = []
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        ax = (axes,) if isinstance(axes, str) else tuple(axes or ())
        div = math.prod(mesh_sizes[a] for a in ax)
        out.append(-(-dim // div))
    return tuple(out)


def param_table(cfg: ModelConfig, mesh_shape: Sequence[int], param_dtype,
                axis_names: Sequence[str] = MESH_AXES) -> list[dict]:
    """One row per parameter: name, global shape, per-device shard shape, element counts."""
    mesh = _ShapeOnlyMesh(mesh_shape, axis_names)
    rows = []
    for name, shape, names, dtype in _param_meta(cfg, jnp.dtype(param_dtype).name):
        spec = tuple(fitted_spec(shape, names, mesh))  # what state_shardings places
        local = shard_shape(shape, spec, mesh.shape)
        rows.append({"name": name, "shape": shape, "spec": spec, "shard_shape": local,
                     "elements": math.prod(shape), "shard_elements": math.prod(local),
                     "dtype": dtype})
    return rows


def gathered_elements(row: dict, mesh_sizes: dict[str, int]) -> int:
    """Elements of a parameter once all-gathered over every mesh axis but `tensor` (FSDP)."""
    n = row["shard_elements"]
    for axes in row["spec"] or ():
        for a in ((axes,) if isinstance(axes, str) else tuple(axes or ())):
            if a != "tensor":
                n *= mesh_sizes.get(a, 1)
    return n


def gathered_weight_bytes(rows: Sequence[dict], mesh_sizes: dict[str, int], nbytes: int,
                          all_layers: bool) -> dict[str, int]:
    """FSDP all-gather transients (see the module docstring): {"head": the output head and
    the token embedding table (gathered for the lookup, `jet_jax.model.embed_lookup`; once
    when tied), "layers": every layer's (all_layers) or the largest layer's}."""
    import re
    per_layer: dict[str, int] = {}
    head = emb = 0
    for r in rows:
        g = gathered_elements(r, mesh_sizes)
        if g == r["shard_elements"]:
            continue  # not sharded over a gathered axis: nothing to gather
        m = re.search(r"/layers/(\d+)/", r["name"])
        if m:
            per_layer[m.group(1)] = per_layer.get(m.group(1), 0) + g
        elif r["name"].startswith("lm_head/"):
            head = g
        elif "embed_tokens" in r["name"]:
            emb = g
    layers = (sum(per_layer.values()) if all_layers else max(per_layer.values(), default=0))
    return {"head": (head + emb) * nbytes, "layers": layers * nbytes}


def is_frozen(name: str, patterns: Sequence[str] = FROZEN_PATTERNS) -> bool:
    import re
    return any(re.search(p, name) for p in patterns)


# --------------------------------------------------------------------------- activations
# What a plan can assume ("auto" depends on the backend the run will use: name the kernel).
ATTENTION_IMPLEMENTATIONS = tuple(i for i in IMPLEMENTATIONS if i != "auto")


def _check_attention(attention: str) -> None:
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {attention!r}: plan one of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")


def layer_activation_bytes(cfg: ModelConfig, layer_type: str, batch: int, seq: int,
                           act_bytes: int, tp: int = 1, attention: str = "xla") -> int:
    """Bytes one decoder layer saves for its backward pass (see the module docstring).
    attention: the attention implementation ("xla" dense scores, else a blocked kernel)."""
    _check_attention(attention)
    n = batch * seq
    d, f = cfg.hidden_size, cfg.intermediate_size
    common = (4 * d + 4 * f / tp) * act_bytes * n
    if layer_type in ("attn", "swa"):
        hq, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        proj = (2 * hq * hd + 3 * kv * hd + hq * hd) / tp * act_bytes * n
        if attention == "xla":
            scores = batch * seq * seq * (hq / tp * (4 + act_bytes) + 1)
        else:
            scores = batch * seq * hq / tp * 4
        return int(common + proj + scores)
    if layer_type == "jet":
        j = cfg.jet
        k, v, w, g = j.key_dim, j.value_dim, j.conv_size, j.generator_dim
        dense = ((6 * k + 6 * v + v * w) / tp + 2 * g) * act_bytes * n
        gdr = (j.num_heads * j.head_dim * j.head_v_dim / GDR_CHUNK
               + GDR_CHUNK * j.num_heads) / tp * 4 * n
        return int(common + dense + gdr)
    if layer_type == "super":  # PostNAS super-network layer: both paths, shared norms + MLP
        common = (4 * d + 4 * f / tp) * act_bytes * n
        return int(layer_activation_bytes(cfg, "attn", batch, seq, act_bytes, tp, attention)
                   + layer_activation_bytes(cfg, "jet", batch, seq, act_bytes, tp) - common)
    # PostNAS zoo blocks: approximate as a jet-sized linear-attention block
    return layer_activation_bytes(cfg, "jet", batch, seq, act_bytes, tp)


def activation_bytes(cfg: ModelConfig, batch: int, seq: int, act_bytes: int, tp: int,
                     remat: bool, layer_types: Sequence[str] | None = None,
                     attention: str = "xla") -> dict[str, int]:
    layer_types = tuple(cfg.layer_types if layer_types is None else layer_types)
    per_layer = [layer_activation_bytes(cfg, t, batch, seq, act_bytes, tp, attention)
                 for t in layer_types]
    io = 2 * cfg.hidden_size * act_bytes * batch * seq  # embeddings out, final norm
    if remat:
        kept = cfg.num_hidden_layers * cfg.hidden_size * act_bytes * batch * seq
        total = kept + max(per_layer) + io
    else:
        total = sum(per_layer) + io
    by_type: dict[str, int] = {}
    for t, b in zip(layer_types, per_layer):
        by_type[t] = b
    return {"total": int(total), "per_layer_by_type": by_type, "max_layer": max(per_layer)}


# --------------------------------------------------------------------------- the plan
def plan_memory(model: str | ModelConfig, mesh: Sequence[int] | str, *, batch_per_device: int = 1,
                seq_len: int = 4096, param_dtype="f32", dtype="bf16", opt: str = "adamw",
                remat: bool = False, frozen_mlp: bool = False,
                teacher: str | ModelConfig | None = "auto", teacher_dtype="bf16",
                grad_accum: int = 1, axis_names: Sequence[str] = MESH_AXES,
                supernet: bool = False, chip: str | None = None,
                logits_chunk: int = 0, attention_implementation: str = "xla",
                frozen_patterns: Sequence[str] | None = None) -> dict:
    """Per-device memory plan (bytes) from abstract shapes; see the module docstring.

    attention_implementation: the kernel the run's attention layers use (student and
    teacher): "xla" (dense scores: what `auto` runs on GPU and TPU today) or a blocked one
    ("chunked", "cudnn", "splash"), whose memory and FLOPs are linear in the keys a query sees.
    supernet: plan the PostNAS super-network built from `model`'s shapes instead (every layer
    the teacher's attention + a JetBlock of `model.jet`; only the JetBlocks train).
    chip: a key of CHIPS; adds the step-time estimate (`step_time_s`) and the HBM fit.
    frozen_patterns: regexes over the flat parameter names that do not train (a distill
    config's `optimizer.frozen`); given, they replace `frozen_mlp`'s set (FROZEN_PATTERNS).
    """
    from jet_jax_train.distributed import parse_mesh
    t0 = time.perf_counter()
    cfg = load_config(model)
    mesh_shape = parse_mesh(mesh)
    if len(mesh_shape) != len(axis_names) or any(s < 1 for s in mesh_shape):
        raise ValueError(f"mesh {mesh_shape} must have {len(axis_names)} positive sizes "
                         f"({', '.join(axis_names)})")
    if batch_per_device < 1 or seq_len < 1 or grad_accum < 1:
        raise ValueError("batch_per_device, seq_len and grad_accum must be >= 1")
    if opt not in ("adamw", "sgd"):
        raise ValueError(f"--opt {opt!r}: supported optimizers are adamw and sgd")
    _check_attention(attention_implementation)
    attention = attention_implementation
    pdt, adt, tdt = _dtype(param_dtype), _dtype(dtype), _dtype(teacher_dtype)
    pbytes, abytes, tbytes = jnp.dtype(pdt).itemsize, jnp.dtype(adt).itemsize, jnp.dtype(tdt).itemsize
    sizes = dict(zip(axis_names, mesh_shape))
    tp = sizes.get("tensor", 1)

    layer_types = tuple(cfg.layer_types)
    if supernet:
        n_layers = cfg.num_hidden_layers
        rows = param_table(cfg.replace(layer_types=("attn",) * n_layers), mesh_shape, pdt,
                           axis_names)
        rows += [dict(r, name=r["name"].replace("/self_attn/", "/linear/"))
                 for r in param_table(cfg.replace(layer_types=("jet",) * n_layers), mesh_shape,
                                      pdt, axis_names) if "/self_attn/" in r["name"]]
        trainable_rows = [r for r in rows if "/linear/" in r["name"]]
        layer_types = ("super",) * n_layers
        frozen_mlp = True
    else:
        rows = param_table(cfg, mesh_shape, pdt, axis_names)
        if frozen_patterns is not None:
            frozen_mlp = bool(frozen_patterns)
            trainable_rows = [r for r in rows if not is_frozen(r["name"], frozen_patterns)]
        else:
            trainable_rows = [r for r in rows if not (frozen_mlp and is_frozen(r["name"]))]
    total_params = sum(r["elements"] for r in rows)
    local = sum(r["shard_elements"] for r in rows)
    local_trainable = sum(r["shard_elements"] for r in trainable_rows)

    out: dict[str, Any] = {
        "model": ("PostNAS super-network (attention + JetBlock in every layer) of "
                  if supernet else "") + cfg.describe(), "supernet": supernet,
        "mesh": dict(sizes), "devices": math.prod(mesh_shape),
        "params_total": total_params,
        "params_trainable": sum(r["elements"] for r in trainable_rows),
        "batch_per_device": batch_per_device, "seq_len": seq_len,
        "global_batch": batch_per_device * sizes.get("data", 1) * sizes.get("fsdp", 1),
        "param_dtype": jnp.dtype(pdt).name, "dtype": jnp.dtype(adt).name,
        "remat": remat, "frozen_mlp": frozen_mlp, "opt": opt, "attention": attention,
    }
    mem: dict[str, int] = {}
    mem["params"] = local * pbytes
    mem["grads"] = local_trainable * pbytes
    mem["optimizer"] = (2 * 4 * local_trainable + 4) if opt == "adamw" else 0
    if grad_accum > 1:
        mem["optimizer"] += local * pbytes  # optax.MultiSteps accumulator

    tcfg = None
    if isinstance(teacher, ModelConfig):
        tcfg = teacher
    elif teacher == "auto":
        tcfg = None if cfg.is_qwen2 else cfg.replace(layer_types=("attn",) * cfg.num_hidden_layers)
    elif teacher not in (None, "none", ""):
        tcfg = load_config(teacher)
    if tcfg is not None:
        trows = param_table(tcfg, mesh_shape, tdt, axis_names)
        mem["teacher params"] = sum(r["shard_elements"] for r in trows) * tbytes
        out["teacher"] = tcfg.describe()
        out["teacher_params_total"] = sum(r["elements"] for r in trows)
    else:
        mem["teacher params"] = 0
        out["teacher"] = None

    acts = activation_bytes(cfg, batch_per_device, seq_len, abytes, tp, remat, layer_types,
                            attention)
    mem["activations"] = acts["total"]
    n = batch_per_device * (min(logits_chunk, seq_len) if logits_chunk > 0 else seq_len)
    vocab_local = -(-cfg.vocab_size // tp)
    mem["logits"] = 2 * 4 * vocab_local * n * (2 if tcfg is not None else 1)
    mem["teacher fwd (transient)"] = (
        layer_activation_bytes(tcfg, "attn", batch_per_device, seq_len, abytes, tp, attention)
        if tcfg is not None else 0)
    # "chunked" recomputes one query block's f32 scores and probabilities against every key
    # in the backward pass (the flash kernels keep their tiles on chip)
    mem["attention bwd (transient)"] = (
        2 * 4 * batch_per_device * -(-cfg.num_attention_heads // tp) * min(Q_BLOCK, seq_len)
        * seq_len if attention == "chunked" and set(layer_types) & {"attn", "swa", "super"} else 0)
    g = gathered_weight_bytes(rows, sizes, pbytes, all_layers=not remat)
    gt = (gathered_weight_bytes(trows, sizes, tbytes, all_layers=False) if tcfg is not None
          else {"head": 0, "layers": 0})
    mem["gathered weights (FSDP)"] = g["head"] + g["layers"] + gt["head"] + gt["layers"]
    mem["total"] = sum(mem.values())
    out["bytes"] = mem
    out["activations_per_layer"] = acts["per_layer_by_type"]
    out["param_rows"] = rows
    # parameters that stay whole on every device although the mesh has > 1 device
    if math.prod(mesh_shape) > 1:
        whole = [r for r in rows if r["shard_elements"] == r["elements"] and r["elements"] > 1]
        out["replicated_params_bytes"] = sum(r["elements"] for r in whole) * pbytes
        big = sorted(whole, key=lambda r: -r["elements"])
        groups: dict[str, list] = {}
        for r in big:
            key = ".".join(p for p in r["name"].split("/") if not p.isdigit())
            groups.setdefault(key, []).append(r)
        out["replicated_params"] = [
            {"name": k, "count": len(v), "shape": v[0]["shape"],
             "bytes": sum(r["elements"] for r in v) * pbytes}
            for k, v in sorted(groups.items(), key=lambda kv: -sum(r["elements"] for r in kv[1]))]
    else:
        out["replicated_params_bytes"], out["replicated_params"] = 0, []
    out["flops"] = step_flops(cfg, layer_types, rows, trainable_rows, tcfg,
                              tokens=out["global_batch"] * seq_len, seq_len=seq_len, remat=remat,
                              teacher_rows=trows if tcfg is not None else None,
                              attention=attention)
    if chip is not None:
        c = CHIPS[chip]
        out["chip"] = chip
        out["hbm_bytes"] = c["hbm_bytes"]
        out["fits"] = mem["total"] <= HBM_USABLE * c["hbm_bytes"]
        per_device = out["flops"]["total"] / out["devices"]
        out["step_time_s"] = {"at_peak": per_device / c["peak_flops"],
                              f"at_{ASSUMED_MFU:.0%}_mfu": per_device / (ASSUMED_MFU * c["peak_flops"])}
    out["seconds"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- FLOPs, chips
# Peak dense bf16 FLOP/s and HBM per chip, from the vendors' spec sheets.
CHIPS = {
    "tpu-v5p": {"peak_flops": 459e12, "hbm_bytes": 95e9, "name": "TPU v5p"},
    "tpu-v6e": {"peak_flops": 918e12, "hbm_bytes": 32e9, "name": "TPU v6e (Trillium)"},
    "h100": {"peak_flops": 989e12, "hbm_bytes": 80e9, "name": "H100 SXM"},
}
HBM_USABLE = 0.9   # the runtime, XLA's scratch and fragmentation take the rest
ASSUMED_MFU = 0.4  # an assumption for the second step-time column, not a measurement


def _matmul_elements(rows: Sequence[dict], cfg: ModelConfig) -> int:
    """Parameters among `rows` used as matmul weights once per token: every >= 2-D parameter
    except the embedding table (a gather), plus the table again when the head is tied to it."""
    n = sum(r["elements"] for r in rows if len(r["shape"]) >= 2 and "embed_tokens" not in r["name"])
    if cfg.tie_word_embeddings and any("embed_tokens" in r["name"] for r in rows):
        n += cfg.vocab_size * cfg.hidden_size
    return n


def visible_keys_per_query(seq_len: int, window: int | None = None) -> float:
    """Mean number of keys a causal query sees in a sequence of seq_len (within `window`)."""
    w = seq_len if window is None else min(window, seq_len)
    # queries 0..w-1 see 1..w keys, the other seq_len - w queries see w each
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def mixer_flops_per_token(cfg: ModelConfig, layer_type: str, seq_len: int,
                          attention: str = "xla") -> float:
    """Forward FLOPs per token of a mixer beyond its weight matmuls.

    attn / swa: q.k scores and probs.v, 4 * keys * Hq * hd; keys = all seq_len with "xla"
    (the full [T, T] scores, masked: a sliding window costs the same), the keys the query
    sees with a blocked kernel (causal: (T + 1) / 2 on average; `swa`: at most the window;
    the tiles on the diagonal, computed whole, are left out). jet: chunked gated delta rule
    per head, chunk C = 64: intra-chunk q.k / (.)v matrices 4 C (dk + dv) and the state
    read / update / correction 6 dk dv.
    """
    if layer_type in ("attn", "swa"):
        keys = (seq_len if attention == "xla" else visible_keys_per_query(
            seq_len, cfg.window_size if layer_type == "swa" else None))
        return 4.0 * keys * cfg.num_attention_heads * cfg.head_dim
    if layer_type == "super":
        return (mixer_flops_per_token(cfg, "attn", seq_len, attention)
                + mixer_flops_per_token(cfg, "jet", seq_len))
    j = cfg.jet
    return j.num_heads * (4.0 * GDR_CHUNK * (j.head_dim + j.head_v_dim)
                          + 6.0 * j.head_dim * j.head_v_dim)


def step_flops(cfg: ModelConfig, layer_types: Sequence[str], rows: Sequence[dict],
               trainable_rows: Sequence[dict], teacher: ModelConfig | None, *, tokens: int,
               seq_len: int, remat: bool, teacher_rows: Sequence[dict] | None = None,
               attention: str = "xla") -> dict[str, float]:
    """FLOPs of one training step over the global batch (`tokens` tokens).

    student forward 2 M + X (M matmul weights, X mixer FLOPs); backward: 4 M_trainable (input
    and weight gradients) + 2 M_frozen (input gradients only) + 2 X; remat recomputes the
    forward once more; the teacher runs forward only: 2 M_t + X_t.
    """
    m = _matmul_elements(rows, cfg)
    m_train = _matmul_elements(trainable_rows, cfg)
    x = sum(mixer_flops_per_token(cfg, t, seq_len, attention) for t in layer_types)
    fwd = 2.0 * m + x
    bwd = 4.0 * m_train + 2.0 * (m - m_train) + 2.0 * x
    out = {"student_fwd": fwd * tokens, "student_bwd": bwd * tokens,
           "remat": (fwd if remat else 0.0) * tokens, "teacher_fwd": 0.0}
    if teacher is not None:
        t_rows = teacher_rows if teacher_rows is not None else param_table(
            teacher, (1, 1, 1), jnp.float32)
        xt = sum(mixer_flops_per_token(teacher, t, seq_len, attention) for t in teacher.layer_types)
        out["teacher_fwd"] = (2.0 * _matmul_elements(t_rows, teacher) + xt) * tokens
    out["total"] = sum(out.values())
    return out


def recommend_mesh(model: str | ModelConfig, chip: str, num_chips: int, **kw) -> dict:
    """The plan on the mesh with the least model parallelism that fits the chip's HBM:
    fsdp x tensor as small as possible (tensor only if fsdp alone cannot fit: it costs
    collectives on every layer), the rest data-parallel. Returns the plan (with "fits")."""
    if chip not in CHIPS:
        raise ValueError(f"unknown chip {chip!r}; known: {sorted(CHIPS)}")
    best = None
    for tensor in (1, 2, 4, 8):
        fsdp = 1
        while fsdp * tensor <= num_chips:
            if num_chips % (fsdp * tensor) == 0:
                plan = plan_memory(model, (num_chips // (fsdp * tensor), fsdp, tensor), chip=chip,
                                   **kw)
                if plan["fits"]:
                    if best is None or fsdp * tensor < best[0]:
                        best = (fsdp * tensor, plan)
                    break
                last = plan
            fsdp *= 2
    return best[1] if best is not None else last


def _gib(b: int) -> str:
    return f"{b / 2**30:,.3f}"


def render(plan: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    mesh = ",".join(f"{k}={v}" for k, v in plan["mesh"].items())
    title = (f"{plan['model']}\nmesh {mesh} ({plan['devices']} devices), batch/device "
             f"{plan['batch_per_device']} x seq {plan['seq_len']} (global batch "
             f"{plan['global_batch']}), params {plan['param_dtype']}, compute {plan['dtype']}, "
             f"opt {plan['opt']}, remat {'on' if plan['remat'] else 'off'}, "
             f"attention {plan['attention']}, "
             f"frozen MLP/emb {'yes' if plan['frozen_mlp'] else 'no'}")
    table = Table(title=title, title_justify="left")
    table.add_column("per device")
    table.add_column("GiB", justify="right")
    table.add_column("notes")
    notes = {
        "params": f"{plan['params_total'] / 1e9:.3f} B params, sharded by the logical-axis rules",
        "grads": f"{plan['params_trainable'] / 1e9:.3f} B trainable",
        "optimizer": "AdamW: 2 f32 moments of the trainable params" if plan["opt"] == "adamw"
        else "SGD: no state",
        "teacher params": (f"{plan.get('teacher_params_total', 0) / 1e9:.3f} B "
                           f"({plan['teacher']})" if plan["teacher"] else "no teacher"),
        "activations": ("remat: layer inputs + 1 layer" if plan["remat"]
                        else "all layers kept for backward")
        + ("; [T, T] attention scores" if plan["attention"] == "xla" else "") + "; estimate",
        "logits": "f32 logits + log-softmax (student, teacher)",
        "teacher fwd (transient)": "largest teacher layer, forward only",
        "attention bwd (transient)": "chunked: one query block's scores and probs (f32)",
        "total": "",
    }
    for k, v in plan["bytes"].items():
        style = "bold" if k == "total" else None
        table.add_row(k, _gib(v), notes.get(k, ""), style=style)
    console.print(table)
    big = [r for r in plan.get("replicated_params", []) if r["bytes"] >= 2**20][:4]
    if big:
        console.print("not sharded on this mesh (whole on every device): " + "; ".join(
            f"{r['name']} {r['shape']} x{r['count']} = {_gib(r['bytes'])} GiB" for r in big))
    if "flops" in plan:
        f = plan["flops"]
        line = (f"step FLOPs {f['total']:.3e} (student fwd {f['student_fwd']:.2e}, bwd "
                f"{f['student_bwd']:.2e}, remat {f['remat']:.2e}, teacher fwd "
                f"{f['teacher_fwd']:.2e}) for {plan['global_batch'] * plan['seq_len']:,} tokens")
        console.print(line)
    if "chip" in plan:
        c = CHIPS[plan["chip"]]
        t = plan["step_time_s"]
        console.print(f"{c['name']}: {plan['bytes']['total'] / 1e9:.1f} GB of "
                      f"{c['hbm_bytes'] / 1e9:.0f} GB HBM per chip ("
                      f"{'fits' if plan['fits'] else 'DOES NOT FIT'} in {HBM_USABLE:.0%}); step "
                      f"time {t['at_peak']:.2f} s at peak, "
                      f"{t[f'at_{ASSUMED_MFU:.0%}_mfu']:.2f} s at {ASSUMED_MFU:.0%} MFU (assumed)")
    console.print(f"(planned from abstract shapes in {plan['seconds']:.1f} s; no weights allocated)")


# --------------------------------------------------------------------------- a distill config
# What "auto" attention runs on GPU and TPU today (jet_jax.ops.attention.VERIFIED): dense.
AUTO_ATTENTION_ON_ACCELERATORS = "xla"
_PLAN_DTYPE = {"float32": "f32", "bfloat16": "bf16"}


def _teacher_of(spec: str, key: str) -> ModelConfig:
    """The ModelConfig of a run's teacher setting `key` = `spec`: `preset:<name>` (configs/
    presets.py or configs/teachers.py) or an HF directory (only its config.json is read)."""
    if spec.startswith("preset:"):
        return load_config(spec.split(":", 1)[1])
    if os.path.isfile(os.path.join(spec, "config.json")):
        return ModelConfig.from_json_file(os.path.join(spec, "config.json"))
    raise ValueError(f"{key} {spec!r} is neither 'preset:<name>' nor a directory with a "
                     f"config.json (e.g. --set {key}=preset:qwen2.5-7b)")


def _run_mesh(shape, chips: int | None, batch_size: int, mesh_key: str,
              batch_key: str) -> tuple[tuple[int, ...], int]:
    """(mesh, batch per device) of a run's `mesh_key` = `shape` on `chips` devices (a -1
    takes what they leave), its global batch `batch_key` split over data x fsdp."""
    from jet_jax_train.distributed import resolve_mesh_shape
    shape = tuple(shape)
    if chips is not None:
        shape = resolve_mesh_shape(shape, chips)  # as the run resolves it on `chips` devices
    elif -1 in shape:
        raise ValueError(f"{mesh_key} {shape} has a -1: give --chips (the run's device count) "
                         f"or a full mesh with --set {mesh_key}=...")
    batch_shards = shape[0] * shape[1]
    if batch_size % batch_shards:
        raise ValueError(f"{batch_key} {batch_size} does not split over the {batch_shards} "
                         f"data x fsdp devices of mesh {shape}")
    return shape, batch_size // batch_shards


def _planned_attention(implementation: str, key: str) -> tuple[str, list[str]]:
    """(the attention kernel to plan, note lines): `auto` is planned as what it runs on
    accelerators today."""
    if implementation != "auto":
        return implementation, []
    return AUTO_ATTENTION_ON_ACCELERATORS, [
        f"{key}=auto planned as 'xla' (dense), what it runs on GPU and TPU today"]


def distill_run_args(cfg, chips: int | None = None) -> dict:
    """The `plan_memory` arguments of the `jet-jax distill` run a TrainConfig describes (its
    student, teacher, mesh, batch, dtypes, frozen parameters, remat, loss chunking, kernel):
    {"model", "mesh", "teacher", **keywords, "notes": [what the plan does not cover]}.

    The teacher is `model.teacher`: an HF directory (only its config.json is read) or
    `preset:<name>` of configs/presets.py or configs/teachers.py (e.g. preset:qwen2.5-7b, to
    plan a run before its checkpoint is on disk). A -1 in `mesh.shape` takes what `chips`
    (the run's device count) leaves. ValueError (one line) on what cannot be planned."""
    from jet_jax_train.distill import student_layer_types
    from jet_jax_train.student import student_config

    m = cfg.model
    tcfg = _teacher_of(m.teacher, "model.teacher")
    student = student_config(tcfg, student_layer_types(cfg, tcfg.num_hidden_layers),
                             jet=m.jet, window_size=m.window_size)
    shape, per_device = _run_mesh(cfg.mesh.shape, chips, cfg.data.batch_size, "mesh.shape",
                                  "data.batch_size")
    attention, notes = _planned_attention(m.attention_implementation,
                                          "model.attention_implementation")
    if cfg.loss.mse_weight > 0:
        notes.append("loss.mse_weight > 0: the hidden states of every layer that the MSE loss "
                     "reads are not in the plan")
    opt = cfg.optimizer
    return {"model": student, "mesh": shape, "teacher": tcfg,
            "batch_per_device": per_device, "seq_len": cfg.data.seq_len,
            "param_dtype": "f32", "dtype": _PLAN_DTYPE[m.dtype],
            "teacher_dtype": _PLAN_DTYPE[m.teacher_param_dtype], "opt": "adamw",
            "remat": m.remat, "grad_accum": opt.grad_accum_steps,
            "frozen_patterns": () if opt.unfreeze_all else tuple(opt.frozen),
            "logits_chunk": cfg.loss.logits_chunk, "attention_implementation": attention,
            "notes": notes}


def postnas_run_args(cfg, chips: int | None = None) -> dict:
    """The `plan_memory` arguments of the super-network stage a PostNASConfig describes (the
    largest of its training stages: the teacher, and the teacher's attention beside a JetBlock
    in every layer; the later stages train sub-networks of it), as `distill_run_args`.

    The teacher is `teacher` (an HF directory's config.json, or `preset:<name>`), or the
    `teacher_preset` (with `teacher_layers`) the pipeline pre-trains. The mesh (1, 1, 1) is
    one device, as the run takes it; a -1 takes what `chips` leaves."""
    from jet_jax_train.postnas.stages import pretrained_teacher_config, with_linear_block

    if cfg.block != "jet":
        raise ValueError(f"block {cfg.block!r}: only the JetBlock super-network is planned "
                         "(--set block=jet)")
    tcfg = (pretrained_teacher_config(cfg) if cfg.teacher is None
            else _teacher_of(cfg.teacher, "teacher"))
    if tuple(cfg.mesh) == (1, 1, 1):  # one device, as the run takes it
        shape, per_device = (1, 1, 1), cfg.batch_size
    else:
        shape, per_device = _run_mesh(cfg.mesh, chips, cfg.batch_size, "mesh", "batch_size")
    attention, notes = _planned_attention(cfg.attention_implementation,
                                          "attention_implementation")
    notes.insert(0, "the super-network stage: the later stages train sub-networks of it")
    if cfg.enable_swa or cfg.swa_budget > 0:
        notes.append("the SWA path (a third mixer per layer, sharing the attention weights) "
                     "is not in the plan")
    if cfg.train_attention:
        notes.append("train_attention: the attention paths' gradients and AdamW moments are "
                     "not in the plan")
    return {"model": with_linear_block(cfg, tcfg),
            "mesh": shape, "teacher": tcfg, "supernet": True,
            "batch_per_device": per_device, "seq_len": cfg.seq_len,
            "param_dtype": "f32", "dtype": _PLAN_DTYPE[cfg.dtype],
            "teacher_dtype": _PLAN_DTYPE[cfg.teacher_param_dtype], "opt": "adamw",
            "remat": cfg.remat, "logits_chunk": cfg.logits_chunk,
            "attention_implementation": attention, "notes": notes}


# --------------------------------------------------------------------------- CLI
# The flags that describe the run; with --config the file describes it instead.
RUN_FLAGS = ("model", "mesh", "supernet", "batch_per_device", "seq_len", "param_dtype", "dtype",
             "opt", "remat", "frozen_mlp", "teacher", "teacher_dtype", "grad_accum",
             "logits_chunk", "attention_implementation")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="preset name (configs/presets.py) or HF config.json path")
    parser.add_argument("--config", default=None,
                        help="plan the run a `jet-jax distill` config file (or the super-network "
                             "stage a `jet-jax postnas` one) describes instead of --model and "
                             "the run flags (its teacher: an HF directory's config.json, or "
                             "preset:<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="with --config: override one field, as "
                        "`jet-jax distill --set` (repeatable)")
    parser.add_argument("--mesh", default=None,
                        help="data,fsdp,tensor sizes, e.g. 1,256,1 (or --chip + --chips)")
    parser.add_argument("--chip", default=None, choices=sorted(CHIPS),
                        help="add the HBM fit and a step-time estimate for this chip")
    parser.add_argument("--chips", type=int, default=None,
                        help="with --chip and no --mesh: recommend the mesh for this many chips")
    parser.add_argument("--supernet", action="store_true",
                        help="plan the PostNAS super-network of --model's shapes")
    parser.add_argument("--batch-per-device", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--param-dtype", default="f32", choices=sorted(DTYPES))
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES),
                        help="compute / activation dtype")
    parser.add_argument("--opt", default="adamw", choices=("adamw", "sgd"))
    parser.add_argument("--remat", action="store_true", help="per-layer rematerialisation")
    parser.add_argument("--frozen-mlp", action="store_true",
                        help="freeze MLPs, embeddings and decoder norms (PostNAS stage)")
    parser.add_argument("--teacher", default="auto",
                        help="'auto' (all-attention version of --model), 'none', a preset or a "
                             "config.json")
    parser.add_argument("--teacher-dtype", default="bf16", choices=sorted(DTYPES),
                        help="the dtype the teacher's parameters are held in: the run's "
                             "model.teacher_param_dtype (jet-jax distill's default is float32; "
                             "configs/distill_big_teacher.py uses bfloat16)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--logits-chunk", type=int, default=0,
                        help="the run's loss.logits_chunk (0: whole [B, T, V] logits)")
    parser.add_argument("--attention-implementation", default="xla",
                        choices=ATTENTION_IMPLEMENTATIONS,
                        help="the run's model.attention_implementation: xla (dense [T, T] scores; "
                             "what 'auto' runs on GPU and TPU today) or a blocked kernel")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


def _config_plan(args: argparse.Namespace) -> dict:
    """The plan of the distill run (or PostNAS super-network stage) `args.config` (+
    `args.overrides`) describes."""
    from jet_jax_train.config import ConfigError, TrainConfig, apply_overrides, load_config_file
    from jet_jax_train.postnas.config import PostNASConfig
    defaults = argparse.ArgumentParser()
    register(defaults)
    changed = [f for f in RUN_FLAGS if getattr(args, f) != defaults.get_default(f)]
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        raise ValueError(f"{flag}: with --config the run's settings come from the file "
                         "(change them with --set KEY=VALUE)")
    try:
        cfg = apply_overrides(load_config_file(args.config, (TrainConfig, PostNASConfig)),
                              args.overrides)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    kw = (postnas_run_args if isinstance(cfg, PostNASConfig) else distill_run_args)(cfg, args.chips)
    notes = kw.pop("notes")
    plan = plan_memory(kw.pop("model"), kw.pop("mesh"), chip=args.chip, **kw)
    plan["notes"] = notes
    return plan


def run(args: argparse.Namespace) -> int:
    if args.config is None and args.model is None:
        print("jet-jax plan: error: give --model (and the run flags) or --config", file=sys.stderr)
        return 2
    if args.config is not None:
        try:
            plan = _config_plan(args)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"jet-jax plan: error: {e}", file=sys.stderr)
            return 2
        return _show(plan, args.json)
    if args.overrides:
        print("jet-jax plan: error: --set needs --config", file=sys.stderr)
        return 2
    kw = dict(batch_per_device=args.batch_per_device, seq_len=args.seq_len,
              param_dtype=args.param_dtype, dtype=args.dtype, opt=args.opt, remat=args.remat,
              frozen_mlp=args.frozen_mlp, teacher=args.teacher, teacher_dtype=args.teacher_dtype,
              grad_accum=args.grad_accum, supernet=args.supernet, logits_chunk=args.logits_chunk,
              attention_implementation=args.attention_implementation)
    try:
        if args.mesh is None:
            if args.chip is None or args.chips is None:
                raise ValueError("give --mesh, or --chip and --chips to get a recommended mesh")
            plan = recommend_mesh(args.model, args.chip, args.chips, **kw)
        else:
            plan = plan_memory(args.model, args.mesh, chip=args.chip, **kw)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"jet-jax plan: error: {e}", file=sys.stderr)
        return 2
    return _show(plan, args.json)


def _show(plan: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps({k: v for k, v in plan.items() if k != "param_rows"}, indent=2))
    else:
        render(plan)
        for note in plan.get("notes", ()):
            print(f"note: {note}")
    return 0


# --------------------------------------------------------------------------- XLA's view
def xla_step_memory(student: str | ModelConfig, teacher: str | ModelConfig,
                    mesh_shape: Sequence[int], *, batch_per_device: int, seq_len: int,
                    dtype: str = "float32", remat: bool = False,
                    logits_chunk: int = 0, attention_implementation: str = "auto"
                    ) -> dict[str, int]:
    """Compile (never run) the real distillation train step (`jet_jax_train.train_step.DistillStep`,
    default optimizer: AdamW with the MLP/embeddings/norms frozen) on abstract shapes on the
    devices present and return XLA's per-device `memory_analysis()`: argument, output, alias
    and temp bytes, and `peak` = arguments + temp + outputs not aliased to (donated)
    arguments. Needs prod(mesh_shape) devices (fake CPU devices are fine): nothing is
    allocated, but the compile of a 7B step takes minutes. attention_implementation: of the
    student and the teacher (jet_jax.ops.attention)."""
    import jax

    from jet_jax.convert.hf import abstract_model
    from jet_jax_train.config import LossSection, OptimizerSection
    from jet_jax_train.distributed import mesh_from_config
    from jet_jax_train.flat_model import FlatModel
    from jet_jax_train.train_step import BATCH_KEYS, DistillStep, batch_sharding
    dt = _dtype(dtype)
    scfg, tcfg = load_config(student), load_config(teacher)
    mesh = mesh_from_config(tuple(mesh_shape))
    att = dict(attention_implementation=attention_implementation)
    s_flat = FlatModel(abstract_model(scfg, dtype=dt, remat=remat, **att))
    t_flat = FlatModel(abstract_model(tcfg, dtype=dt, **att))
    ds = DistillStep(s_flat, t_flat, OptimizerSection(), LossSection(logits_chunk=logits_chunk),
                     mesh, total_steps=1000)
    teacher_params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=ds.teacher_shardings[k])
                      for k, v in t_flat.abstract_params().items()}
    global_batch = batch_per_device * mesh.shape["data"] * mesh.shape["fsdp"]
    bs = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((global_batch, seq_len),
                                     jnp.float32 if k == "loss_mask" else jnp.int32, sharding=bs)
             for k in BATCH_KEYS}
    ma = ds._step.lower(ds.abstract_state(), teacher_params, batch).compile().memory_analysis()
    out = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias",
                                                               "temp")}
    out["peak"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
    return out


# --------------------------------------------------------------------------- scaling table
TARGETS = (("tpu-v5p", 64, "TPU v5p x64 (v5p-128)"), ("tpu-v6e", 64, "TPU v6e x64 (v6e-64)"),
           ("h100", 8, "8x H100 (one node)"))


def scaling_rows(seq_len: int = 4096, batch_per_device: int = 1) -> list[dict]:
    """Recommended mesh and plan of each big teacher's super-network (PostNAS, JetBlocks train)
    and final student (all parameters train) on each target; remat on, bf16 compute and
    teacher, f32 parameters and AdamW moments."""
    from jet_jax_configs.teachers import STUDENT_OF, TEACHERS
    rows = []
    for tname in TEACHERS:
        for stage, supernet in (("super-network", True), ("student", False)):
            for chip, n, label in TARGETS:
                p = recommend_mesh(STUDENT_OF[tname], chip, n, supernet=supernet, remat=True,
                                   frozen_mlp=supernet, teacher=tname, seq_len=seq_len,
                                   batch_per_device=batch_per_device)
                rows.append({"teacher": tname, "stage": stage, "target": label, "plan": p})
    return rows


def scaling_markdown(rows: Sequence[dict]) -> str:
    gb = lambda b: f"{b / 1e9:.1f}"  # noqa: E731
    head = ("| teacher | stage | target | mesh d,f,t | params (B) / trainable | params | grads "
            "| AdamW | teacher | activations | logits + teacher layer | gathered (FSDP) | total GB / HBM "
            "| tokens/step | step s @peak | step s @40% MFU |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        p, m = r["plan"], r["plan"]["bytes"]
        mesh = ",".join(str(v) for v in p["mesh"].values())
        t = p["step_time_s"]
        total = f"{gb(m['total'])} / {p['hbm_bytes'] / 1e9:.0f}" + ("" if p["fits"] else " (no fit)")
        lines.append(
            f"| {r['teacher']} | {r['stage']} | {r['target']} | {mesh} | "
            f"{p['params_total'] / 1e9:.1f} / {p['params_trainable'] / 1e9:.1f} | "
            f"{gb(m['params'])} | {gb(m['grads'])} | {gb(m['optimizer'])} | "
            f"{gb(m['teacher params'])} | {gb(m['activations'])} | "
            f"{gb(m['logits'] + m['teacher fwd (transient)'])} | "
            f"{gb(m['gathered weights (FSDP)'])} | {total} | "
            f"{p['global_batch'] * p['seq_len']:,} | {t['at_peak']:.2f} | {t[f'at_{ASSUMED_MFU:.0%}_mfu']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--scaling-table"]:
        print(scaling_markdown(scaling_rows()))
    else:
        print("usage: python -m jet_jax_train.plan --scaling-table   (or: jet-jax plan --help)")
