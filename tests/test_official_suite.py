"""The official perceiver_test.py, ported: its mock data, its DEFAULT_MODEL_KWARGS, its numbers.

The official test builds one model and calls it once per mock data set (ImageNet-like and
AudioSet-like), so one model serves two disjoint subsets of its modalities, each call with its
own grouping. Its position projections are per modality slot: two calls of two modalities
share two projections (`position_encoding_slots=2`; the bottleneck routes labels around the
position encoder, leaving one slot).
"""

from __future__ import annotations

import pytest
import torch

from hip.model import create_model
from hip.model.blocks import HiPBlock

DATASETS = {
    "imagenet": {"imagenet_image": (1024, 3), "imagenet_label": (32, 1)},
    "audioset": {"audioset_audio": (128, 16), "audioset_label": (16, 16)},  # 16 samples/token
}
MODALITIES = {k: v for mods in DATASETS.values() for k, v in mods.items()}
SAMPLE_LABEL_MODALITIES = [
    "audioset_label",
    "coco_labels",
    "imagenet_label",
    "jft_label",
    "multi_nli_labels",
    "objects365_labels",
]
SHARED = {
    "num_position_encoding_channels": 512,
    "regroup_type": "reshape",
    "activation_name": "sq_relu",
    "dropout_prob": 0.0,
    "drop_path_rate": 0.0,
}
DEFAULT_MODEL_KWARGS = {
    "HiP": {**SHARED, "position_encoding_slots": 2},
    "HiPClassBottleneck": {
        **SHARED,
        "label_modalities": SAMPLE_LABEL_MODALITIES,
        "position_encoding_slots": 1,
    },
}
PRESETS = {"16": "hip16", "256": "hip256", "Mini": "mini"}


def build(template: str, variant: str, **overrides) -> torch.nn.Module:
    """The official build_perceiver(template, variant, DEFAULT_MODEL_KWARGS[template])."""
    kwargs = {**DEFAULT_MODEL_KWARGS[template], **overrides}
    return create_model(PRESETS[variant], MODALITIES, template=template, **kwargs)


def mock_data() -> dict[str, dict[str, torch.Tensor]]:
    """The official mock_data(): uniform signals, all-zero labels (randint(0, 1))."""
    g = torch.Generator().manual_seed(0)
    return {
        ds: {
            k: torch.zeros(2, m, c) if k.endswith("label") else torch.rand(2, m, c, generator=g)
            for k, (m, c) in mods.items()
        }
        for ds, mods in DATASETS.items()
    }


def assert_reconstructions_shaped_like_inputs(model: torch.nn.Module) -> None:
    for inputs in mock_data().values():
        with torch.no_grad():
            out = model(inputs)["input_reconstruction"]
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            k: tuple(v.shape) for k, v in inputs.items()
        }
        assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize(
    ("template", "variant", "count"),
    [
        ("HiP", "16", 99_224_996),
        ("HiP", "256", 95_585_188),
        ("HiP", "Mini", 18_709_668),
        ("HiPClassBottleneck", "Mini", 21_114_788),
    ],
)
def test_parameter_counts_match_the_official_test(template, variant, count):
    with torch.device("meta"):  # counting needs no memory
        model = build(template, variant)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize(
    ("template", "variant"),
    [
        ("HiP", "Mini"),
        ("HiPClassBottleneck", "Mini"),
        pytest.param("HiP", "16", marks=pytest.mark.slow),
        pytest.param("HiP", "256", marks=pytest.mark.slow),
    ],
)
def test_reconstructions_have_the_inputs_shapes_for_both_mock_data_sets(template, variant):
    torch.manual_seed(4)
    assert_reconstructions_shaped_like_inputs(build(template, variant).train())


def test_hip256_pads_the_short_audio_into_whole_groups_of_padding():
    # The official test's own audio: 128 + 16 tokens into 256 groups. Most groups of the
    # audio hold one token or none; grouping must pad, not refuse (the model is not needed).
    with torch.device("meta"):
        model = build("HiP", "256")
    plan = model.plan_for(DATASETS["audioset"])
    real = plan.real_tokens().sum(dim=1)
    assert plan.num_groups == 256 and int(real.sum()) == 128 + 16
    assert int((real == 0).sum()) > 0  # whole groups of padding


@pytest.mark.parametrize("template", ["HiP", "HiPClassBottleneck"])
@pytest.mark.parametrize(("train_k", "eval_k"), [(None, 128), (32, None)])
def test_processor_index_overrides_at_train_and_eval(template, train_k, eval_k):
    torch.manual_seed(4)
    model = build(
        template, "Mini", processor_index_dim_train=train_k, processor_index_dim_eval=eval_k
    )
    processor = model.blocks[model.config.processor_index]
    seen: list[int] = []
    processor.register_forward_hook(lambda mod, args, out: seen.append(out.shape[2]))
    assert processor.latents.shape[0] == (eval_k or 64)  # the table is sized for eval
    assert_reconstructions_shaped_like_inputs(model.train())
    assert_reconstructions_shaped_like_inputs(model.eval())
    assert seen == [train_k or 64] * 2 + [eval_k or 64] * 2


def test_training_takes_a_random_latent_subset_per_sample_and_group():
    block = HiPBlock(8, num_groups=2, num_latents=16, channels=8, num_layers=0, num_heads=1)
    block.num_latents_train = 5
    table = block.latents.view(1, 2, 16, 8).expand(3, -1, -1, -1)
    sub = block.subsample_latents(table)
    assert sub.shape == (3, 2, 5, 8)
    flat = block.latents.detach()
    picked = [
        [{int((flat == r).all(dim=1).nonzero()[0, 0]) for r in sub[b, g]} for g in range(2)]
        for b in range(3)
    ]
    assert all(len(s) == 5 for row in picked for s in row)  # without replacement
    assert all(s <= set(range(g * 16, g * 16 + 16)) for row in picked for g, s in enumerate(row))
    assert picked[0] != picked[1]  # each sample draws its own subset
    block.eval()
    assert block(torch.randn(3, 2, 4, 8)).shape == (3, 2, 16, 8)  # eval: every latent
    block.train()
    assert block(torch.randn(3, 2, 4, 8)).shape == (3, 2, 5, 8)
