"""Load official Haiku parameters (`"<module path>::<param name>"` -> array) into a HiP."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from hip.model.blocks import CrossAttention, HiPBlock
from hip.model.class_bottleneck import HiPClassBottleneck
from hip.model.hip import HiP
from hip.model.layers import MLP, Attention

_ROOT = "perceiver"


def _linear(prefix: str, layer: nn.Linear) -> dict[str, tuple[torch.Tensor, bool]]:
    # Haiku stores w as [in, out]; nn.Linear as [out, in].
    names = {f"{prefix}::w": (layer.weight, True)}
    if layer.bias is not None:
        names[f"{prefix}::b"] = (layer.bias, False)
    return names


def _norm(prefix: str, norm: nn.LayerNorm) -> dict[str, tuple[torch.Tensor, bool]]:
    return {f"{prefix}::scale": (norm.weight, False), f"{prefix}::offset": (norm.bias, False)}


def _attention(prefix: str, attn: Attention) -> dict[str, tuple[torch.Tensor, bool]]:
    out = {}
    for hk_name, layer in (
        ("query_linear", attn.query),
        ("key_linear", attn.key),
        ("value_linear", attn.value),
        ("attention_output_linear", attn.output),
    ):
        out.update(_linear(f"{prefix}/attention/{hk_name}", layer))
    return out


def _mlp(prefix: str, mlp: MLP) -> dict[str, tuple[torch.Tensor, bool]]:
    return {
        **_linear(f"{prefix}/dense/mlp_hidden_linear", mlp.hidden),
        **_linear(f"{prefix}/dense/mlp_output_linear", mlp.out),
    }


def _cross(prefix: str, cross: CrossAttention) -> dict[str, tuple[torch.Tensor, bool]]:
    # In HiPCrossAttention: layer_norm = queries, layer_norm_1 = inputs, layer_norm_2 = MLP.
    return {
        **_attention(prefix, cross.attention),
        **_mlp(prefix, cross.mlp),
        **_norm(f"{prefix}/layer_norm", cross.norm_q),
        **_norm(f"{prefix}/layer_norm_1", cross.norm_kv),
        **_norm(f"{prefix}/layer_norm_2", cross.norm_mlp),
    }


def _block(prefix: str, block: HiPBlock) -> dict[str, tuple[torch.Tensor, bool]]:
    cross = f"{prefix}/~/hi_p_cross_attention"
    out = {**_cross(cross, block.cross), f"{cross}/query_inputs::pos_embs": (block.latents, False)}
    if block.skip_proj is not None:
        out.update(_linear(f"{cross}/pre_attention_residual_linear", block.skip_proj))
    for j, layer in enumerate(block.layers):
        sa = f"{prefix}/~/self_attend_id_{j}"
        out.update(_attention(sa, layer.attention))
        out.update(_mlp(sa, layer.mlp))
        # In SelfAttention: layer_norm = before attention, layer_norm_1 = before the MLP.
        out.update(_norm(f"{sa}/layer_norm", layer.norm_attn))
        out.update(_norm(f"{sa}/layer_norm_1", layer.norm_mlp))
    return out


def _numbered(name: str, i: int) -> str:
    """Haiku's unique module names: `name`, `name_1`, `name_2`, ..."""
    return name if i == 0 else f"{name}_{i}"


def _labels(model: HiPClassBottleneck) -> dict[str, tuple[torch.Tensor, bool]]:
    # The official template builds one Embedder and one PositionEncoder per label of a call
    # (embedder_1, position_encoder_1, ... after the main ones) and its label
    # ReconstructionHead first, so the label head is `reconstruction_head`.
    names: dict[str, tuple[torch.Tensor, bool]] = {}
    for j, k in enumerate(model.labels, start=1):
        names.update(
            _linear(f"{_ROOT}/{_numbered('embedder', j)}/~embed/embed_{k}", model.label_embed[k])
        )
        names.update(
            _linear(
                f"{_ROOT}/{_numbered('embedder', j)}/~unembed/unembed_{k}", model.label_unembed[k]
            )
        )
        names[f"{_ROOT}/{_numbered('position_encoder', j)}/pos_emb_mae_{k}::pos_embs"] = (
            model.label_pos[k],
            False,
        )
    names.update(_cross(f"{_ROOT}/reconstruction_head/hi_p_cross_attention", model.label_head))
    return names


def haiku_names(model: HiP) -> dict[str, tuple[torch.Tensor, bool]]:
    """Map every official Haiku parameter name to (our tensor, transpose?).

    Modality-slot names (position_encoding_linear_<i>, the bottleneck's embedder_<j>) follow
    the model's modality order: the official names when all modalities were called together.
    """
    bottleneck = isinstance(model, HiPClassBottleneck)
    names: dict[str, tuple[torch.Tensor, bool]] = {}
    for k in model.modalities:
        names.update(_linear(f"{_ROOT}/embedder/~embed/embed_{k}", model.embed[k]))
        names[f"{_ROOT}/position_encoder/pos_emb_mae_{k}::pos_embs"] = (model.pos[k], False)
        if model.with_decoder:
            names.update(_linear(f"{_ROOT}/embedder/~unembed/unembed_{k}", model.unembed[k]))
    for i, proj in enumerate(model.pos_proj or ()):
        linear_name = _numbered("position_encoding_linear", i)
        names.update(_linear(f"{_ROOT}/position_encoder/{linear_name}", proj))
    block_name = "perceiver_block" if bottleneck else "block"
    for i, block in enumerate(model.blocks):
        names.update(_block(f"{_ROOT}/{block_name}_{i}", block))
    head = "reconstruction_head"
    if bottleneck:
        names.update(_labels(model))
        head = "reconstruction_head_1"
    if model.with_decoder:
        names.update(_cross(f"{_ROOT}/{head}/hi_p_cross_attention", model.reconstruction_head))
    return names


def load_haiku_params(model: HiP, params: Mapping[str, np.ndarray]) -> None:
    """Copy official Haiku parameters into `model` in place.

    Keys are `"<module path>::<param name>"`; a leading `"param::"` (as in the golden
    fixture) is accepted. Raises ValueError listing every missing, unexpected or
    mis-shaped parameter before anything is copied.
    """
    given = {k.removeprefix("param::"): v for k, v in params.items()}
    targets = haiku_names(model)
    missing = sorted(set(targets) - set(given))
    unexpected = sorted(set(given) - set(targets))
    bad_shape = []
    for name, (tensor, transpose) in targets.items():
        if name in given:
            shape = tuple(np.shape(given[name]))
            want = tuple(tensor.shape[::-1]) if transpose else tuple(tensor.shape)
            if shape != want:
                bad_shape.append(f"{name}: got {shape}, expected {want}")
    if missing or unexpected or bad_shape:
        lines = ["load_haiku_params: parameters do not match the model"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", bad_shape),
        ):
            if items:
                lines.append(
                    f"  {title} ({len(items)}): "
                    + "; ".join(items[:20])
                    + (" ..." if len(items) > 20 else "")
                )
        raise ValueError("\n".join(lines))
    with torch.no_grad():
        for name, (tensor, transpose) in targets.items():
            value = torch.as_tensor(np.asarray(given[name]), dtype=tensor.dtype)
            tensor.copy_(value.T if transpose else value)
