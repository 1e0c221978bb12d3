"""Build a Jet-Nemotron student from a teacher of any family (qwen2, llama, qwen3).

Everything outside the token mixers - embeddings, every RMSNorm, every MLP, the LM head - is
copied from the teacher, and so are the `attn`/`swa` layers that are kept (an `swa` layer is
the teacher's attention with a window; same weights). The student config keeps the teacher's
`family`, so kept layers have exactly the teacher's attention tensors: Qwen2 q/k/v biases, or
none (Llama, Qwen3), and Qwen3's per-head q/k RMSNorm weights.

JetBlock initialisation (the release ships no training code, so this is our choice):
the JetBlock's q/k/v/o projections play the roles of the teacher attention's, so where the
shapes line up per head they start from the teacher's weights of the same layer:

* q_proj <- teacher q_proj kernel          if jet num_heads == heads and jet head_dim (dk) == head_dim
* k_proj <- teacher k_proj kernel, each KV head repeated for its query group (GQA -> MHA)
                                            under the same condition
* v_proj <- teacher v_proj kernel, KV heads repeated, and o_proj <- teacher o_proj kernel
                                            if additionally dv == head_dim (expand_v * dk == head_dim)

(Teacher biases and Qwen3 q/k norms are dropped: the JetBlock has none. Its q/k then go through
silu and an L2 norm instead of RoPE, so this is a warm start for the subspaces, not an
equivalence.) Any projection whose shape does not line up keeps the model's random init
(normal(initializer_range)), and the JetBlock-only tensors keep the layer's own init
(`jet_jax/layers/jet_block.py`: A_log, dt_bias, and a kernel generator that starts as a
static depthwise conv with weights b2 yet trains from the first step).
"""

from __future__ import annotations

import numpy as np
from flax import nnx
import jax.numpy as jnp

from jet_jax.config import JetBlockConfig, ModelConfig
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.sharding import host_array, place, sharded_init

TEACHER_ATTENTION = ("attn", "swa")


def student_config(teacher_cfg: ModelConfig, layer_types, *, jet: JetBlockConfig | None = None,
                   window_size: int | None = None) -> ModelConfig:
    """The teacher's config with new `layer_types` (and JetBlock / window settings)."""
    layer_types = tuple(layer_types)
    if len(layer_types) != teacher_cfg.num_hidden_layers:
        raise ValueError(f"student layer_types has {len(layer_types)} entries, the teacher has "
                         f"{teacher_cfg.num_hidden_layers} layers")
    changes = dict(layer_types=layer_types)
    if jet is not None:
        changes["jet"] = jet
    if window_size is not None:
        changes["window_size"] = window_size
    return teacher_cfg.replace(**changes)


def _jet_from_attention(name: str, shape: tuple, teacher: dict, prefix: str, tcfg: ModelConfig,
                        jet: JetBlockConfig):
    """Teacher-derived value for a JetBlock projection, or None (keep random init)."""
    h, kv, hd = tcfg.num_attention_heads, tcfg.num_key_value_heads, tcfg.head_dim
    same_qk = jet.num_heads == h and jet.head_dim == hd
    same_v = same_qk and jet.head_v_dim == hd
    groups = h // kv

    def repeat_kv(kernel):  # [D, KV*hd] -> [D, H*hd], query head j reads KV head j // groups
        d = kernel.shape[0]
        return np.repeat(kernel.reshape(d, kv, hd), groups, axis=1).reshape(d, h * hd)

    if name == "q_proj/kernel" and same_qk:
        return teacher[f"{prefix}q_proj/kernel"], "teacher q_proj"
    if name == "k_proj/kernel" and same_qk:
        return repeat_kv(teacher[f"{prefix}k_proj/kernel"]), "teacher k_proj (KV heads repeated)"
    if name == "v_proj/kernel" and same_v:
        return repeat_kv(teacher[f"{prefix}v_proj/kernel"]), "teacher v_proj (KV heads repeated)"
    if name == "o_proj/kernel" and same_v:
        return teacher[f"{prefix}o_proj/kernel"], "teacher o_proj"
    return None


def student_from_teacher(teacher_model: JetNemotronForCausalLM, layer_types, *,
                         jet: JetBlockConfig | None = None, window_size: int | None = None,
                         seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32,
                         remat: bool = False, return_sources: bool = False, mesh=None,
                         **model_options):
    """Student model (see module docstring); with `return_sources`, also a dict
    {flat param name: where its initial value came from}. `model_options`: further
    `JetNemotronForCausalLM` arguments (`scan_layers`, the `*_implementation`s).

    mesh: build the student sharded over this mesh by its logical axes (random init under
    `jit`, teacher-derived values placed shard by shard), so no device holds it whole; the
    teacher's values pass through host memory."""
    # Imported here: flat_model is a training helper, student only needs its naming.
    from jet_jax_train.flat_model import FlatModel

    tcfg = teacher_model.config
    scfg = student_config(tcfg, layer_types, jet=jet, window_size=window_size)

    def make():
        return JetNemotronForCausalLM(scfg, rngs=nnx.Rngs(seed), dtype=dtype,
                                      param_dtype=param_dtype, remat=remat, **model_options)
    student = make() if mesh is None else sharded_init(make, mesh)
    teacher_flat = FlatModel(teacher_model)
    teacher = {k: host_array(v) for k, v in teacher_flat.params(teacher_model).items()}
    smodel = FlatModel(student)
    params = smodel.params(student)
    sources: dict[str, str] = {}
    for key, value in params.items():
        parts = key.split("/")
        if parts[:2] == ["model", "layers"] and parts[3] == "self_attn":
            i = int(parts[2])
            prefix = "/".join(parts[:4]) + "/"
            name = "/".join(parts[4:])
            s_type, t_type = scfg.layer_types[i], tcfg.layer_types[i]
            if s_type in TEACHER_ATTENTION and t_type in TEACHER_ATTENTION:
                new = (teacher[key], f"teacher {name}")
            elif s_type == t_type:  # e.g. re-distilling a hybrid teacher: same block, copy it
                new = (teacher[key], f"teacher {name}") if teacher[key].shape == value.shape else None
            elif s_type == "jet" and t_type in TEACHER_ATTENTION:
                new = _jet_from_attention(name, value.shape, teacher, prefix, tcfg, scfg.jet)
            else:
                new = None
        else:
            if key not in teacher or teacher[key].shape != value.shape:
                raise ValueError(f"student parameter {key} {value.shape} has no teacher counterpart "
                                 f"of the same shape (teacher: "
                                 f"{teacher[key].shape if key in teacher else 'missing'})")
            new = (teacher[key], "teacher")
        if new is None:
            sources[key] = "init"
            continue
        array, src = new
        if array.shape != value.shape:  # a bug in the mapping above, never user input
            raise AssertionError(f"{key}: derived shape {array.shape} != {value.shape}")
        params[key] = (jnp.asarray(array, dtype=value.dtype) if mesh is None
                       else place(np.asarray(array, dtype=value.dtype), value.sharding))
        sources[key] = src
    student = smodel.merge(params)
    return (student, sources) if return_sources else student
