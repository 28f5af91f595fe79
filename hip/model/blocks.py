"""HiP blocks: grouped cross-attention into per-group latents, then latent self-attention."""

from __future__ import annotations

import torch
from torch import nn

from hip.model.layers import MLP, Attention, layer_norm, linear, trunc_normal_fan_in_


def regroup(x: torch.Tensor, num_groups: int, regroup_type: str = "reshape") -> torch.Tensor:
    """[B, G, N, C] -> [B, G', G*N/G', C]: neighbouring groups merge (or split) by a reshape."""
    b, g, n, c = x.shape
    if (g * n) % num_groups:
        raise ValueError(f"cannot regroup {g} groups x {n} latents into {num_groups} groups")
    if regroup_type == "transpose_reshape":
        # Mixes all groups instead of neighbours (an official option, not used by the presets).
        x = x.transpose(1, 2)
    elif regroup_type != "reshape":
        raise ValueError(
            f"unknown regroup_type {regroup_type!r}: use 'reshape' or 'transpose_reshape'"
        )
    return x.reshape(b, num_groups, g * n // num_groups, c)


class DropPath(nn.Module):
    """Per-sample stochastic depth without rescaling (the official StochasticDepth)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero whole samples with probability `rate` while training."""
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.floor(
            1.0
            - self.rate
            + torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype)
        )
        return x * keep


class CrossAttention(nn.Module):
    """The official HiPCrossAttention: one attention from queries to inputs, then an MLP.

    q, k and v project to the *input* width (so block 0 of HiP-16 attends in 32 channels),
    the output projects to the query width. `query_residual` adds the queries back after
    attention (latent blocks); the reconstruction head runs without it.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        widening: int = 1,
        query_residual: bool = True,
        activation: str = "sq_relu",
    ):
        super().__init__()
        self.norm_q = layer_norm(q_dim)
        self.norm_kv = layer_norm(kv_dim)
        self.attention = Attention(q_dim, kv_dim, kv_dim, kv_dim, q_dim, num_heads)
        self.norm_mlp = layer_norm(q_dim)
        self.mlp = MLP(q_dim, widening, activation)
        self.query_residual = query_residual

    def forward(self, queries: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """queries [B, G, N, Cq], inputs [B, G, M, Ckv] -> [B, G, N, Cq]."""
        x = self.attention(self.norm_q(queries), self.norm_kv(inputs))
        if self.query_residual:
            x = x + queries
        return x + self.mlp(self.norm_mlp(x))


class SelfAttentionLayer(nn.Module):
    """Pre-LN transformer layer: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        widening: int = 4,
        activation: str = "sq_relu",
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm_attn = layer_norm(dim)
        self.attention = Attention(dim, dim, dim, dim, dim, num_heads)
        self.norm_mlp = layer_norm(dim)
        self.mlp = MLP(dim, widening, activation, dropout)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G, N, C] -> [B, G, N, C]; groups never interact."""
        h = self.norm_attn(x)
        x = x + self.drop_path(self.dropout(self.attention(h, h)))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class HiPBlock(nn.Module):
    """One HiP level: (regroup) -> cross-attend into per-group latents -> L self-attention layers.

    Every group owns its latents (a `[G*K, D]` table viewed as `[G, K, D]`) while the
    attention and MLP weights are shared across groups. Decoder blocks add the (projected)
    output of their mirrored encoder block to the latents before the cross-attention.
    `num_latents_train < num_latents` (the official processor_index_dim_train/eval): the table
    holds the eval-time latents and, in training mode, every (sample, group) cross-attends
    from its own random subset of `num_latents_train` of them, drawn without replacement.
    """

    def __init__(
        self,
        in_channels: int,
        num_groups: int,
        num_latents: int,
        channels: int,
        num_layers: int,
        num_heads: int,
        cross_heads: int = 1,
        cross_widening: int = 1,
        self_widening: int = 4,
        skip_channels: int | None = None,
        regroup_inputs: bool = True,
        regroup_type: str = "reshape",
        activation: str = "sq_relu",
        dropout: float = 0.0,
        drop_path: float = 0.0,
        num_latents_train: int | None = None,
    ):
        super().__init__()
        if channels % num_heads or channels % cross_heads:
            raise ValueError(
                f"channels={channels} must be divisible by heads {num_heads} and {cross_heads}"
            )
        self.num_groups = num_groups
        self.num_latents = num_latents
        self.num_latents_train = num_latents_train or num_latents
        if self.num_latents_train > num_latents:
            raise ValueError(
                f"train-time latents ({self.num_latents_train}) exceed the {num_latents} latents"
            )
        self.regroup_inputs = regroup_inputs
        self.regroup_type = regroup_type
        self.latents = nn.Parameter(torch.empty(num_groups * num_latents, channels))
        trunc_normal_fan_in_(self.latents, num_groups * num_latents)
        self.skip_proj = (
            linear(skip_channels, channels)
            if skip_channels is not None and skip_channels != channels
            else None
        )
        self.cross = CrossAttention(
            channels, in_channels, cross_heads, cross_widening, True, activation
        )
        self.layers = nn.ModuleList(
            SelfAttentionLayer(channels, num_heads, self_widening, activation, dropout, drop_path)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, G_in, N, C_in] -> latents [B, G, K, D]."""
        if self.regroup_inputs:
            x = regroup(x, self.num_groups, self.regroup_type)
        elif x.shape[1] != self.num_groups:
            raise ValueError(f"block expects {self.num_groups} groups, got {x.shape[1]}")
        z = self.latents.view(1, self.num_groups, self.num_latents, -1).expand(
            x.shape[0], -1, -1, -1
        )
        if self.training and self.num_latents_train < self.num_latents:
            z = self.subsample_latents(z)
        if skip is not None:
            z = z + (self.skip_proj(skip) if self.skip_proj is not None else skip)
        z = self.cross(z, x)
        for layer in self.layers:
            z = layer(z)
        return z

    def subsample_latents(self, z: torch.Tensor) -> torch.Tensor:
        """`[B, G, K_eval, D]` -> `[B, G, K_train, D]`: a random subset per (sample, group).

        The first K_train of a uniform random permutation (argsort of uniform noise) gives a
        subset without replacement, like the official shuffle-and-slice; a gather replaces its
        one-hot matmul (same values, no K_train x K_eval matrix).
        """
        b, g, k, d = z.shape
        order = torch.rand(b, g, k, device=z.device).argsort(dim=-1)[..., : self.num_latents_train]
        return torch.gather(z, 2, order.unsqueeze(-1).expand(-1, -1, -1, d))
