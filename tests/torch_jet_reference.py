"""An independent PyTorch Jet-Nemotron built for testing, from the paper and released configs.

transformers' Qwen2 supplies embeddings, norms, MLPs and the full / sliding-window attention;
the `jet` layers' `self_attn` is replaced by a torch JetBlock written from the reference text
around flash-linear-attention's naive gated-delta-rule recurrence. Parameter names are the
official checkpoint keys, so `load_state_dict(strict=True)` also checks our key table.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM


def l2norm(x, eps=1e-6):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class TorchJetBlock(nn.Module):
    def __init__(self, d, heads, dk, dv, conv_size, reduction, eps):
        super().__init__()
        self.h, self.dk, self.dv, self.w, self.eps = heads, dk, dv, conv_size, eps
        k_dim, v_dim = heads * dk, heads * dv
        self.q_proj = nn.Linear(d, k_dim, bias=False)
        self.k_proj = nn.Linear(d, k_dim, bias=False)
        self.v_proj = nn.Linear(d, v_dim, bias=False)
        self.b_proj = nn.Linear(d, heads, bias=False)
        self.a_proj = nn.Linear(d, heads, bias=False)
        self.A_log = nn.Parameter(torch.zeros(heads))
        self.dt_bias = nn.Parameter(torch.zeros(heads))
        self.dynamic_conv1d = nn.Module()
        self.dynamic_conv1d.kernel_generator = nn.Sequential(OrderedDict([
            ("w1", nn.Linear(d, v_dim // reduction, bias=False)),
            ("act", nn.SiLU()),
            ("w2", nn.Linear(v_dim // reduction, v_dim * conv_size, bias=True))]))
        self.g_proj = nn.Linear(d, v_dim, bias=False)
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(dv))
        self.o_proj = nn.Linear(v_dim, d, bias=False)

    def forward(self, hidden_states, *args, **kwargs):
        x = hidden_states
        b, t, _ = x.shape
        q = F.silu(self.q_proj(x)).view(b, t, self.h, self.dk)
        k = F.silu(self.k_proj(x)).view(b, t, self.h, self.dk)
        v0 = self.v_proj(x)  # [B, T, V]
        kern = self.dynamic_conv1d.kernel_generator(x).view(b, t, -1, self.w)  # [B, T, V, W]
        window = F.pad(v0.transpose(1, 2), (self.w - 1, 0)).unfold(-1, self.w, 1)  # [B, V, T, W]
        v = F.silu((window.permute(0, 2, 1, 3) * kern).sum(-1)).view(b, t, self.h, self.dv)
        beta = torch.sigmoid(self.b_proj(x))
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        o, _ = naive_recurrent_gated_delta_rule(l2norm(q), l2norm(k), v, beta, g, scale=self.dk ** -0.5)
        gate = self.g_proj(x).view(b, t, self.h, self.dv)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps) * self.o_norm.weight * F.silu(gate)
        return self.o_proj(o.reshape(b, t, -1)), None


def torch_jet_nemotron(cfg) -> Qwen2ForCausalLM:
    """A torch model for `cfg` (a jet_jax ModelConfig) with random weights; load ours into it."""
    hf_types = ["sliding_attention" if t == "swa" else "full_attention" for t in cfg.layer_types]
    qcfg = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                       rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                       tie_word_embeddings=cfg.tie_word_embeddings, use_sliding_window=True,
                       sliding_window=cfg.window_size, max_window_layers=0, layer_types=hf_types,
                       max_position_embeddings=cfg.max_position_embeddings, attn_implementation="eager")
    model = Qwen2ForCausalLM(qcfg)
    j = cfg.jet
    for i, t in enumerate(cfg.layer_types):
        if t == "jet":
            model.model.layers[i].self_attn = TorchJetBlock(cfg.hidden_size, j.num_heads, j.head_dim, j.head_v_dim,
                                                            j.conv_size, j.dconv_generator_reduction, j.norm_eps)
    return model.eval()
