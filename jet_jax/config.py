"""Model configuration: one frozen dataclass for full-attention teachers and Jet-Nemotron students.

A teacher config is the special case where every layer is `attn`; `family` says which
full-attention architecture its attention layers follow:

    family   qkv bias   q/k RMSNorm (per head, before RoPE)   HF model_type
    qwen2    yes        no                                    qwen2
    llama    no         no                                    llama
    qwen3    no         yes                                   qwen3

A student keeps its teacher's family for the attention layers it keeps. Reads and writes HF
`config.json` for these model types and `jet_nemotron`. Fields that would change the math but
are not implemented (an unknown `rope_scaling` type, `attention_bias` on llama/qwen3,
`mlp_bias`, a non-silu activation, sliding-window teachers) raise a one-line ValueError;
fields that do not (dropout, use_cache, pretraining_tp, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

# Mixer types of the official checkpoint format. Extra linear-attention blocks (the PostNAS
# zoo) register themselves in `jet_jax.layers.zoo` and are accepted too, but cannot be
# exported to the official HF layout.
OFFICIAL_LAYER_TYPES = ("attn", "swa", "jet")

# family -> (HF model_type, architectures entry, qkv bias, per-head q/k RMSNorm)
FAMILIES = {
    "qwen2": ("qwen2", "Qwen2ForCausalLM", True, False),
    "llama": ("llama", "LlamaForCausalLM", False, False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False, True),
}
ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_REQUIRED = {"default": (), "linear": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings")}


def known_layer_types() -> tuple[str, ...]:
    try:
        from jet_jax.layers.zoo import MIXERS
        return OFFICIAL_LAYER_TYPES + tuple(MIXERS)
    except ImportError:
        return OFFICIAL_LAYER_TYPES


@dataclasses.dataclass(frozen=True)
class JetBlockConfig:
    """Hyper-parameters of the JetBlock (the `efficient_attention_config["jet"]` entry)."""

    num_heads: int = 12
    head_dim: int = 96  # dk
    expand_v: float = 8 / 3  # dv = head_dim * expand_v
    conv_size: int = 4
    dconv_generator_reduction: int = 8
    norm_eps: float = 1e-5
    # Carried through config.json for the official PyTorch code; jet-jax ignores them (it picks
    # kernels with the JetBlock's `implementation=` arguments).
    mode: str = "chunk"
    dconv_implementation: str = "triton"

    @property
    def head_v_dim(self) -> int:
        """dv, computed robustly: the released 2B stores expand_v = 2.6666666667."""
        dv = self.head_dim * self.expand_v
        rounded = round(dv)
        if abs(dv - rounded) > 1e-4:  # stored values are rounded to ~10 digits
            raise ValueError(
                f"jet head_dim * expand_v = {self.head_dim} * {self.expand_v} = {dv} is not an "
                "integer value-head width")
        return int(rounded)

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.num_heads * self.head_v_dim

    @property
    def generator_dim(self) -> int:
        return self.value_dim // self.dconv_generator_reduction

    def validate(self) -> None:
        for name in ("num_heads", "head_dim", "conv_size", "dconv_generator_reduction"):
            if getattr(self, name) <= 0:
                raise ValueError(f"jet {name} must be positive, got {getattr(self, name)}")
        if self.value_dim % self.dconv_generator_reduction:
            raise ValueError(
                f"jet value dim {self.value_dim} is not divisible by "
                f"dconv_generator_reduction {self.dconv_generator_reduction}")

    def to_hf(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "expand_v": self.expand_v, "num_heads": self.num_heads,
            "head_dim": self.head_dim, "norm_eps": self.norm_eps, "conv_size": self.conv_size,
            "dconv_generator_reduction": self.dconv_generator_reduction,
            "dconv_implementation": self.dconv_implementation,
        }

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "JetBlockConfig":
        # The release stores norm_eps as a string ("1e-5").
        return cls(
            num_heads=int(d["num_heads"]), head_dim=int(d["head_dim"]),
            expand_v=float(d["expand_v"]), conv_size=int(d.get("conv_size", 4)),
            dconv_generator_reduction=int(d.get("dconv_generator_reduction", 8)),
            norm_eps=float(d.get("norm_eps", 1e-5)), mode=str(d.get("mode", "chunk")),
            dconv_implementation=str(d.get("dconv_implementation", "triton")))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only hybrid LM; `layer_types[i]` picks the mixer of layer i."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    layer_types: tuple[str, ...] | None = None  # None -> all "attn" (Qwen2)
    window_size: int = 1152  # sliding window of `swa` layers
    jet: JetBlockConfig = dataclasses.field(default_factory=JetBlockConfig)
    # Per zoo block type: constructor kwargs (num_heads, head_dim, expand_v).
    zoo: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int = 151643
    eos_token_id: int = 151643
    pad_token_id: int | None = None
    head_dim_override: int | None = None  # HF `head_dim` when it differs from hidden / heads
    family: str = "qwen2"  # attention architecture of `attn`/`swa` layers, see FAMILIES
    # RoPE scaling beyond the default, as sorted (key, value) pairs without rope_theta/rope_type
    # key "rope_type" first: e.g. (("rope_type", "linear"), ("factor", 4.0)); () = default RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        # Hashable (the config is static in jitted graphs) and JSON-reloadable forms.
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", _rope_pairs(self.rope_scaling))
        else:
            object.__setattr__(self, "rope_scaling", _rope_pairs(dict(self.rope_scaling)))
        for name in ("eos_token_id", "bos_token_id"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", ("attn",) * self.num_hidden_layers)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.jet, Mapping):
            object.__setattr__(self, "jet", JetBlockConfig(**self.jet))
        self.validate()

    # ---- derived ----
    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    @property
    def is_teacher(self) -> bool:
        """Every layer is full attention: exported as the family's own HF model type."""
        return all(t == "attn" for t in self.layer_types)

    @property
    def is_qwen2(self) -> bool:
        """Historical name of `is_teacher` (all layers full attention, of any family)."""
        return self.is_teacher

    @property
    def qkv_bias(self) -> bool:
        return FAMILIES[self.family][2]

    @property
    def qk_norm(self) -> bool:
        return FAMILIES[self.family][3]

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

    @property
    def model_type(self) -> str:
        return FAMILIES[self.family][0] if self.is_teacher else "jet_nemotron"

    def zoo_kwargs(self, layer_type: str) -> dict[str, Any]:
        return dict(dict(self.zoo).get(layer_type, ()))

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown attention family {self.family!r}; known: {tuple(FAMILIES)}")
        _check_rope(dict(self.rope_scaling))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}")
        valid = known_layer_types()
        for i, t in enumerate(self.layer_types):
            if t not in valid:
                raise ValueError(f"unknown layer type {t!r} at layer {i}; valid types: {valid}")
        if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"attention head_dim {self.head_dim} must be even for RoPE")
        if "swa" in self.layer_types and self.window_size <= 0:
            raise ValueError(f"window_size must be positive, got {self.window_size}")
        if "jet" in self.layer_types:
            self.jet.validate()
            self.jet.head_v_dim  # noqa: B018 - raises for a non-integral expand_v

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- HF config.json ----
    def to_hf_dict(self, dtype: str = "bfloat16") -> dict[str, Any]:
        """The HF config.json; `dtype` is the dtype name of the tensors saved beside it."""
        d: dict[str, Any] = {
            "architectures": [FAMILIES[self.family][1] if self.is_teacher else "JetNemotronForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", **dict(self.rope_scaling),
                                "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "torch_dtype": dtype,
            "dtype": dtype,  # the transformers >= 5 name of torch_dtype
        }
        if self.rope_scaling:  # transformers < 5 reads only this (and rope_theta)
            d["rope_scaling"] = dict(self.rope_scaling)
        if self.family != "qwen2" or self.head_dim_override is not None:
            d["head_dim"] = self.head_dim
        if self.family != "qwen2":
            d["attention_bias"] = False
            d["mlp_bias"] = False
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        if not self.is_teacher:
            if self.family != "qwen2":  # our extension: the kept attention layers' family
                d["attention_family"] = self.family
            unofficial = sorted(set(self.layer_types) - set(OFFICIAL_LAYER_TYPES))
            if unofficial:
                raise ValueError(
                    f"layer types {unofficial} have no official Jet-Nemotron checkpoint format")
            d["layer_types"] = list(self.layer_types)
            eff: dict[str, Any] = {}
            if "jet" in self.layer_types:
                eff["jet"] = self.jet.to_hf()
            if "swa" in self.layer_types:
                eff["swa"] = {"window_size": self.window_size}
            d["efficient_attention_config"] = eff
        return d

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type")
        teacher_types = {v[0]: k for k, v in FAMILIES.items()}
        if model_type not in (*teacher_types, "jet_nemotron"):
            raise ValueError(f"unsupported model_type {model_type!r}: expected one of "
                             f"{(*teacher_types, 'jet_nemotron')}")
        if model_type == "jet_nemotron":
            family = str(d.get("attention_family", "qwen2"))
            if family not in FAMILIES:
                raise ValueError(f"unsupported attention_family {family!r}; known: {tuple(FAMILIES)}")
        else:
            family = teacher_types[model_type]
        _check_math_fields(d, family)
        n = int(d["num_hidden_layers"])
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        theta, scaling = _rope_from_hf(d)
        # HF class defaults when a field is absent: Qwen2 ties by our historical default,
        # LlamaConfig/Qwen3Config default to an untied head.
        tie_default = family == "qwen2"
        kw: dict[str, Any] = dict(
            vocab_size=int(d["vocab_size"]), hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]), num_hidden_layers=n,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            rope_theta=theta, rope_scaling=scaling, family=family,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", tie_default)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            bos_token_id=d.get("bos_token_id", 151643), eos_token_id=d.get("eos_token_id", 151643),
            pad_token_id=d.get("pad_token_id"),
        )
        hd = d.get("head_dim")
        if hd is not None and int(hd) != hidden // heads:
            kw["head_dim_override"] = int(hd)
        if model_type == "jet_nemotron":
            if "layer_types" not in d:
                raise ValueError("jet_nemotron config.json is missing 'layer_types'")
            kw["layer_types"] = tuple(d["layer_types"])
            eff = d.get("efficient_attention_config") or {}
            if "jet" in kw["layer_types"]:
                if "jet" not in eff:
                    raise ValueError("config has 'jet' layers but no efficient_attention_config.jet")
                kw["jet"] = JetBlockConfig.from_hf(eff["jet"])
            if "swa" in kw["layer_types"]:
                if "swa" not in eff:
                    raise ValueError("config has 'swa' layers but no efficient_attention_config.swa")
                kw["window_size"] = int(eff["swa"]["window_size"])
        else:
            kw["layer_types"] = ("attn",) * n
            other = sorted(set(d.get("layer_types") or ()) - {"full_attention"})
            if other:
                raise ValueError(f"{model_type} config.json declares layer_types {other}: only "
                                 "full_attention teachers are supported")
            if d.get("use_sliding_window"):
                raise ValueError(f"{model_type} configs with use_sliding_window=true are not supported")
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ModelConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:  # name the file: "line 14 column 1" alone says little
                raise ValueError(f"{path}: not valid JSON: {e}") from None
        return cls.from_hf_dict(d)

    def save_json(self, path: str | os.PathLike, dtype: str = "bfloat16") -> None:
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(dtype), f, indent=2)

    def describe(self) -> str:
        counts = {t: self.layer_types.count(t) for t in dict.fromkeys(self.layer_types)}
        return (f"{self.model_type}: {self.num_hidden_layers} layers {counts}, hidden "
                f"{self.hidden_size}, vocab {self.vocab_size}")


def _rope_pairs(rope: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Canonical rope_scaling: () for default RoPE, else rope_type first then sorted keys."""
    rope = {k: v for k, v in rope.items() if k not in ("rope_theta", "type")}
    kind = rope.pop("rope_type", "default")
    if kind == "default" and not rope:
        return ()
    return (("rope_type", kind),) + tuple(sorted(rope.items()))


def _check_rope(rope: Mapping[str, Any]) -> None:
    kind = rope.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_scaling type {kind!r}; implemented: {ROPE_TYPES}")
    missing = [k for k in _ROPE_REQUIRED[kind] if k not in rope]
    if missing:
        raise ValueError(f"rope_scaling of type {kind!r} is missing {missing}")
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("rope partial_rotary_factor != 1 is not supported")
    unknown = sorted(set(rope) - {"rope_type", "partial_rotary_factor", *_ROPE_REQUIRED[kind]})
    if unknown:
        raise ValueError(f"rope_scaling of type {kind!r} has fields this model does not implement: "
                         f"{unknown}")


def _rope_from_hf(d: Mapping[str, Any]) -> tuple[float, tuple]:
    """(theta, rope_scaling pairs) from either layout (transformers >= 5 nests everything in
    `rope_parameters`; older versions use `rope_theta` + `rope_scaling`)."""
    rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    if "type" in rope and "rope_type" not in rope:  # transformers < 4.45 spelling
        rope["rope_type"] = rope["type"]
    theta = float(rope.get("rope_theta", d.get("rope_theta", 1e6)))
    if (d.get("rope_parameters") or {}).get("rope_theta") is not None:
        theta = float(d["rope_parameters"]["rope_theta"])
    pairs = _rope_pairs(rope)
    _check_rope(dict(pairs))
    return theta, pairs


def _check_math_fields(d: Mapping[str, Any], family: str) -> None:
    """Refuse HF fields that would change the computation in ways this model does not do."""
    if d.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported (the MLP has no biases)")
    if family != "qwen2" and d.get("attention_bias"):
        raise ValueError(f"attention_bias=true is not supported for {family} (its attention has no "
                         "biases here)")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported: the MLP is SwiGLU with silu")


def hybrid_layer_types(num_layers: int, attn: tuple[int, ...] = (), swa: tuple[int, ...] = (),
                       default: str = "jet") -> tuple[str, ...]:
    """Layer-type list with `attn` and `swa` at the given 0-based indices, `default` elsewhere."""
    overlap = set(attn) & set(swa)
    if overlap:
        raise ValueError(f"layers {sorted(overlap)} are listed as both attn and swa")
    for i in (*attn, *swa):
        if not 0 <= i < num_layers:
            raise ValueError(f"layer index {i} out of range for {num_layers} layers")
    return tuple("attn" if i in attn else "swa" if i in swa else default
                 for i in range(num_layers))


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from the config alone (tied head counted once)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    total = cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2) + d
    hd, kvh, h = cfg.head_dim, cfg.num_key_value_heads, cfg.num_attention_heads
    j = cfg.jet
    for t in cfg.layer_types:
        total += 2 * d + 3 * d * f
        if t in ("attn", "swa"):
            total += d * h * hd + 2 * d * kvh * hd + h * hd * d
            total += (h * hd + 2 * kvh * hd) * cfg.qkv_bias + 2 * hd * cfg.qk_norm
        elif t == "jet":
            K, V, W, G = j.key_dim, j.value_dim, j.conv_size, j.generator_dim
            total += 2 * d * K + 2 * d * V + 2 * d * j.num_heads + 2 * j.num_heads
            total += d * G + G * V * W + V * W + j.head_v_dim + V * d
    return total
