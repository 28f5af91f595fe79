"""Primitive layers with the official HiP initialisation: Linear, MLP, multi-head attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Standard deviation of a unit normal truncated to [-2, 2]. Haiku's truncated-normal
# VarianceScaling divides by it so the *truncated* distribution has std sqrt(scale/fan_in).
_TRUNC_STD = 0.87962566103423978


def trunc_normal_fan_in_(tensor: torch.Tensor, fan_in: int, scale: float = 1.0) -> torch.Tensor:
    """Initialise like haiku's VarianceScaling(scale, 'fan_in', 'truncated_normal')."""
    with torch.no_grad():
        if scale == 0.0:
            return tensor.zero_()
        std = math.sqrt(scale / fan_in) / _TRUNC_STD
        return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def linear(in_features: int, out_features: int, bias: bool = True, scale: float = 1.0) -> nn.Linear:
    """An nn.Linear with the official init: truncated normal over fan_in, zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    trunc_normal_fan_in_(layer.weight, in_features, scale)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def layer_norm(dim: int) -> nn.LayerNorm:
    """Pre-LayerNorm as in Haiku's default: eps 1e-5, learned scale and offset."""
    return nn.LayerNorm(dim, eps=1e-5)


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)**2, HiP's MLP activation ('sq_relu')."""
    return torch.square(F.relu(x))


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation by the official name: 'sq_relu' or any torch.nn.functional function."""
    if name == "sq_relu":
        return squared_relu
    fn = getattr(F, name, None)
    if fn is None or not callable(fn):
        raise ValueError(
            f"unknown activation_name {name!r}: use 'sq_relu' or a torch.nn.functional name"
        )
    return fn


class MLP(nn.Module):
    """Transformer dense block: Linear(d, w*d) -> activation -> Linear(w*d, d) -> dropout."""

    def __init__(self, dim: int, widening: int, activation: str = "sq_relu", dropout: float = 0.0):
        super().__init__()
        self.hidden = linear(dim, widening * dim)
        self.out = linear(widening * dim, dim)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension."""
        return self.dropout(self.out(self.act(self.hidden(x))))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v widths, run through SDPA.

    Inputs are `[..., N, C]`; all leading dims are folded into the batch so that groups
    become independent attention problems. `scaled_dot_product_attention` picks the
    flash / memory-efficient kernels on GPU; under bf16 autocast those keep the softmax
    accumulation in fp32, matching the official f32_softmax.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        qk_channels: int,
        v_channels: int,
        out_channels: int,
        num_heads: int,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        if qk_channels % num_heads or v_channels % num_heads:
            raise ValueError(
                f"attention widths qk={qk_channels}, v={v_channels} must be divisible by "
                f"num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.query = linear(q_dim, qk_channels)
        self.key = linear(kv_dim, qk_channels)
        self.value = linear(kv_dim, v_channels)
        self.output = linear(v_channels, out_channels)
        self.attn_dropout = attn_dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [b, n, h*c] -> [b, h, n, c]
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, inputs_q: torch.Tensor, inputs_kv: torch.Tensor) -> torch.Tensor:
        """Attend from `inputs_q` [..., N, Cq] to `inputs_kv` [..., M, Ckv]."""
        lead = inputs_q.shape[:-2]
        q = self.query(inputs_q).flatten(0, -3)
        k = self.key(inputs_kv).flatten(0, -3)
        v = self.value(inputs_kv).flatten(0, -3)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), dropout_p=dropout
        )
        out = out.transpose(1, 2).flatten(2)  # [b, n, h*c]
        return self.output(out).view(*lead, out.shape[1], -1)
