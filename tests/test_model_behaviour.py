"""Behaviour of the HiP pieces: grouping, masking, locality, attention, MAE learning, heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hip.model import (
    MAE,
    MAEConfig,
    create_model,
    create_task_model,
    load_pretrained,
    summarize_load,
)
from hip.model.blocks import regroup
from hip.model.grouping import assign_groups, group, plan_groups, ungroup
from hip.model.layers import Attention
from hip.model.masking import groupwise_mask, kept_per_group, num_kept
from hip.model.modalities import (
    audio_to_tokens,
    image_to_tokens,
    tokens_to_image,
    tokens_to_video,
    video_to_tokens,
)

# -- grouping -------------------------------------------------------------------------------


def test_assign_groups_follows_the_official_greedy_rule():
    # One group each first, then the modality with the longest groups gets the next one.
    assert assign_groups(16, [50176]) == ([16], 3136)
    assert assign_groups(4, [100, 100]) == ([2, 2], 50)  # ties go to the first modality
    assert assign_groups(3, [100, 100]) == ([2, 1], 100)
    assert assign_groups(16, [1001, 147]) == ([14, 2], 74)
    with pytest.raises(ValueError, match="3 modalities but only 2 groups"):
        assign_groups(2, [1, 1, 1])


def test_grouping_pads_each_modality_and_round_trips():
    plan = plan_groups(16, {"audio": 1001, "video": 147})
    audio = torch.randn(2, 1001, 4)
    video = torch.randn(2, 147, 4)
    grouped = group(plan, {"audio": audio, "video": video})
    assert grouped.shape == (2, 16, 74, 4)
    # Audio: 1001 + 7 final padding = 14 groups of 72, each padded with 2 zeros to 74.
    assert torch.equal(grouped[:, 0, :72], audio[:, :72])
    assert torch.count_nonzero(grouped[:, 0, 72:]) == 0
    assert torch.count_nonzero(grouped[:, 13, 72 - 7 :]) == 0
    # Video starts its own group: a group never mixes modalities.
    assert torch.equal(grouped[:, 14, :74], video[:, :74])
    back = ungroup(plan, grouped)
    assert torch.equal(back["audio"], audio) and torch.equal(back["video"], video)
    real = plan.real_tokens()
    assert int(real.sum()) == 1001 + 147
    assert not real[0, 72:].any() and not real[13, 65:].any() and real[14].all()


def test_regroup_merges_neighbouring_groups_by_reshape():
    x = torch.arange(16 * 3).view(1, 16, 3, 1)
    merged = regroup(x, 4)
    assert merged.shape == (1, 4, 12, 1)
    assert torch.equal(merged[0, 1, :, 0], torch.arange(12, 24))  # groups 4..7, in order
    assert torch.equal(regroup(merged, 16), x)


# -- masking --------------------------------------------------------------------------------


def test_groupwise_mask_invariants():
    plan = plan_groups(16, {"image": 784})
    gen = torch.Generator().manual_seed(3)
    mask = groupwise_mask(plan, 5, 0.85, gen)
    n_keep = num_kept(plan, 0.85)
    assert n_keep == round(0.15 * 49) == 7
    assert mask.keep.shape == (5, 16, n_keep) and mask.masked.shape == (5, 16, 49 - n_keep)
    both = torch.cat([mask.keep, mask.masked], dim=-1).sort(dim=-1).values
    assert torch.equal(both, torch.arange(49).expand(5, 16, 49))  # disjoint and covering
    dense = mask.dense()
    assert torch.equal(dense.sum(-1), torch.full((5, 16), 49 - n_keep))
    again = groupwise_mask(plan, 5, 0.85, torch.Generator().manual_seed(3))
    assert torch.equal(again.keep, mask.keep) and torch.equal(again.masked, mask.masked)
    other = groupwise_mask(plan, 5, 0.85, torch.Generator().manual_seed(4))
    assert not torch.equal(other.keep, mask.keep)


def test_padding_is_never_visible_nor_in_the_loss():
    plan = plan_groups(16, {"audio": 1001, "video": 147})
    mask = groupwise_mask(plan, 8, 0.5, torch.Generator().manual_seed(0))
    real = plan.real_tokens()
    g = torch.arange(16)[None, :, None]
    assert real[g, mask.keep][mask.keep_valid().expand(8, -1, -1)].all()
    weight = mask.masked_is_real()
    assert int(weight.sum()) == 8 * (int(real.sum()) - sum(kept_per_group(plan, 0.5)))
    hidden = mask.dense() & real  # every real token is either visible or in the loss, once
    assert int(hidden.sum()) == int(weight.sum())


def test_every_modality_is_masked_at_the_ratio_beside_a_much_bigger_one():
    # A 224x224 image beside a 7-token modality: the old rule (one count, from the smallest
    # group) kept 1 pixel per image group, i.e. masked 99.97% of the image.
    plan = plan_groups(16, {"image": 224 * 224, "tag": 7})
    mask = groupwise_mask(plan, 2, 0.75, torch.Generator().manual_seed(0))
    visible = (~mask.dense()) & plan.real_tokens()
    for m in plan.modalities:
        shown = int(visible[:, m.groups].sum()) / (2 * m.length)
        assert abs(shown - 0.25) < 0.5 / m.length + 0.01, (m.name, shown)
    # 3346 pixels per image group (the last 3332), 7 tags in one group
    assert kept_per_group(plan, 0.75) == [836] * 14 + [833, 2]


def test_mae_on_unbalanced_modalities_hides_fillers_and_learns_both():
    mods = {"image": (16 * 16, 1), "tag": (7, 2)}
    mae = MAE(create_model("tiny", mods), MAEConfig(mask_ratio=0.5))
    x = {"image": torch.rand(3, 256, 1), "tag": torch.rand(3, 7, 2)}
    mask = mae.sample_mask(3, torch.Generator().manual_seed(1))
    tokens = mae.visible_tokens(x, mask)
    fillers = ~mask.keep_valid()
    assert fillers.any() and torch.count_nonzero(tokens[:, fillers]) == 0
    out = mae(x, mask=mask)
    assert torch.isfinite(out.loss)
    y = {k: v.clone() for k, v in x.items()}
    y["tag"][:, :, :] = y["tag"] + 1.0  # the tag's error counts in the loss
    assert mae(y, mask=mask).loss != out.loss


def test_mae_refuses_a_modality_it_could_not_mask():
    with pytest.raises(ValueError, match="has 1 element\\(s\\)"):
        MAE(create_model("tiny", {"image": (1, 1)}))


# -- the model ------------------------------------------------------------------------------


def test_attention_matches_fp32_softmax_reference():
    torch.manual_seed(1)
    attn = Attention(
        q_dim=24, kv_dim=16, qk_channels=16, v_channels=16, out_channels=24, num_heads=2
    )
    q, kv = torch.randn(3, 4, 5, 24), torch.randn(3, 4, 9, 16)
    got = attn(q, kv)
    qh = attn.query(q).view(3, 4, 5, 2, 8)
    kh = attn.key(kv).view(3, 4, 9, 2, 8)
    vh = attn.value(kv).view(3, 4, 9, 2, 8)
    logits = torch.einsum("bgnhc,bgmhc->bghnm", qh, kh) / math.sqrt(8)
    ref = torch.einsum("bghnm,bgmhc->bgnhc", logits.float().softmax(-1), vh).reshape(3, 4, 5, 16)
    assert torch.allclose(got, attn.output(ref), atol=1e-5)


def test_groups_are_independent_in_block_zero():
    model = create_model("tiny", {"image": (784, 1)}).eval()
    x = torch.rand(2, 784, 1)
    y = x.clone()
    y[:, 49 * 5 : 49 * 6] = torch.rand(2, 49, 1)  # change only group 5
    with torch.no_grad():
        zx = model.encode(model.group_inputs({"image": x}))[0]
        zy = model.encode(model.group_inputs({"image": y}))[0]
    changed = (zx - zy).abs().amax(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [g == 5 for g in range(16)]


def test_multimodal_inputs_with_padding_round_trip_shapes():
    mods = {"audio": (1001, 1), "video": (3 * 7 * 7, 3)}
    model = create_model("tiny", mods)
    out = model({"audio": torch.randn(2, 1001, 1), "video": torch.randn(2, 147, 3)})
    assert out["input_reconstruction"]["audio"].shape == (2, 1001, 1)
    assert out["input_reconstruction"]["video"].shape == (2, 147, 3)
    # The unembedding starts at zero, as in the official init.
    assert torch.count_nonzero(out["input_reconstruction"]["audio"]) == 0
    mae = MAE(model, MAEConfig(mask_ratio=0.85, norm_targets=True))
    res = mae({"audio": torch.randn(2, 1001, 1), "video": torch.randn(2, 147, 3)})
    assert torch.isfinite(res.loss)
    assert res.predictions["audio"].shape == res.targets["audio"].shape
    rec = mae.reconstruct({"audio": torch.randn(2, 1001, 1), "video": torch.randn(2, 147, 3)})
    assert rec["video"]["composite"].shape == (2, 147, 3)
    assert rec["audio"]["masked"].shape == (2, 1001)


def test_init_statistics_follow_the_official_scheme():
    model = create_model("tiny", {"image": (784, 1)})
    pos = model.pos["image"]
    assert abs(pos.std().item() - 1 / math.sqrt(784)) < 0.1 / math.sqrt(784)
    assert pos.abs().max().item() <= 2 / 0.8796 / math.sqrt(784) + 1e-6  # truncated at 2 sigma
    w = model.blocks[2].layers[0].mlp.hidden.weight  # fan_in 128
    assert abs(w.std().item() - 1 / math.sqrt(128)) < 0.05 / math.sqrt(128)
    assert torch.count_nonzero(model.blocks[2].layers[0].mlp.hidden.bias) == 0
    assert torch.count_nonzero(model.unembed["image"].weight) == 0


def test_mae_encoder_sees_only_kept_tokens(mnist_tokens):
    model = create_model("tiny", {"image": (784, 1)}).eval()
    mae = MAE(model)
    x = mnist_tokens[:2]
    mask = mae.sample_mask(2, torch.Generator().manual_seed(0))
    y = x.clone()
    hidden = mask.dense().view(2, 784)
    y[hidden] = 1.0 - y[hidden]  # change every masked pixel
    with torch.no_grad():
        assert torch.equal(
            mae.encode_visible({"image": x}, mask), mae.encode_visible({"image": y}, mask)
        )
        assert not torch.equal(mae({"image": x}, mask=mask).loss, mae({"image": y}, mask=mask).loss)


def test_mae_loss_falls_on_real_digits(mnist_tokens):
    torch.manual_seed(0)
    mae = MAE(create_model("tiny", {"image": (784, 1)}))
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    batch = {"image": mnist_tokens[:16]}
    fixed = mae.sample_mask(16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = mae(batch, mask=fixed).loss.item()
    for step in range(30):
        loss = mae(batch, generator=torch.Generator().manual_seed(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = mae(batch, mask=fixed).loss.item()
    assert end < 0.6 * start, (start, end)


# -- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "multilabel", "segmentation"])
def test_heads_load_mae_weights_and_train(task, mnist_tokens):
    mods = {"image": (784, 1)}
    mae = MAE(create_model("tiny", mods))
    with torch.no_grad():
        mae.model.pos["image"].add_(1.0)  # make the pretrained table recognisable
    head = create_task_model(task, "tiny", mods, num_classes=4)
    loaded = load_pretrained(head, mae.state_dict(), freeze_positions=True)
    assert "pos.image" in loaded
    assert torch.equal(head.backbone.pos["image"], mae.model.pos["image"])
    assert not head.backbone.pos["image"].requires_grad
    x = {"image": mnist_tokens[:4]}
    logits = head(x)
    if task == "segmentation":
        assert logits.shape == (4, 784, 4)
        labels = torch.randint(0, 4, (4, 784))
        labels[:, :10] = 255  # ignored
    else:
        assert logits.shape == (4, 4)
        labels = (
            torch.randint(0, 4, (4,)) if task == "classification" else torch.randint(0, 2, (4, 4))
        )
    loss = head.loss(logits, labels)
    loss.backward()
    assert head.backbone.pos["image"].grad is None
    assert head.backbone.blocks[0].latents.grad is not None
    if task != "segmentation":
        assert len(head.backbone.blocks) == 3  # encoder + processor only


def test_loading_mae_weights_sorts_every_tensor_into_matched_skipped_or_new():
    mods = {"image": (64, 3)}
    mae = MAE(create_model("tiny", mods))
    head = create_task_model("classification", "tiny", mods, num_classes=3)
    state = {**mae.state_dict(), "extra.not_hip": torch.zeros(1)}
    summary = summarize_load(head, state, load_pretrained(head, state))
    counts = summary.counts()
    # every model tensor is either loaded or new; every checkpoint tensor loaded or skipped
    assert counts["matched"] + counts["new"] == len(head.state_dict())
    skipped = counts["not_in_model"] + counts["shape_mismatch"] + counts["left_fresh"]
    assert counts["matched"] + skipped == len(state)
    assert "extra.not_hip" in summary.not_in_model  # outside the HiP
    assert any(k.startswith("blocks.3.") for k in summary.not_in_model)  # MAE decoder: no place
    assert any(not k.startswith("backbone.") for k in summary.new)  # the classifier head
    assert "backbone.pos.image" not in summary.new and "pos.image" in summary.matched
    assert f"{counts['matched']} tensors matched" in summary.line()


def test_load_pretrained_refuses_a_mismatched_checkpoint():
    mae = MAE(create_model("tiny", {"image": (64, 3)}))
    head = create_task_model("classification", "tiny", {"image": (784, 1)}, num_classes=3)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_pretrained(head, mae.state_dict())


# -- modality helpers -----------------------------------------------------------------------


def test_modality_helpers_flatten_in_raster_order():
    img = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    tok = image_to_tokens(img)
    assert tok.shape == (2, 12, 3)
    assert (tok[1, 5] == img[1, 1, 1]).all()  # row 1, column 1 -> token 1*4+1
    assert (tokens_to_image(tok, 3, 4) == img).all()
    assert image_to_tokens(np.zeros((5, 6))).shape == (30, 1)
    chw = torch.arange(3 * 2 * 2).view(3, 2, 2)
    assert torch.equal(image_to_tokens(chw, channels_last=False)[1], chw[:, 0, 1])
    assert audio_to_tokens(torch.zeros(4, 8000)).shape == (4, 8000, 1)
    wave = np.arange(1, 21, dtype=np.float32)
    tokens = audio_to_tokens(wave, samples_per_token=8)  # the end padded with silence
    assert tokens.shape == (3, 8) and (tokens[1] == wave[8:16]).all() and tokens[2, 4:].sum() == 0
    vid = torch.randn(2, 3, 4, 5, 3)
    assert torch.equal(tokens_to_video(video_to_tokens(vid), 3, 4, 5), vid)
