"""The PyTorch HiP is the official model: golden outputs, parameter names, counts and presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hip.model import create_model, make_config
from hip.model.convert import haiku_names, load_haiku_params
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def golden() -> dict:
    data = np.load(FIXTURES / "hip_tiny_golden.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden_config() -> dict:
    return json.loads((FIXTURES / "hip_tiny_config.json").read_text())


def _params(golden: dict) -> dict:
    return {k: v for k, v in golden.items() if k.startswith("param::")}


def test_golden_outputs_match_official_code(golden, golden_config):
    x = golden["input::image"]
    model = create_model(golden_config, {"image": x.shape[1:]}).eval()
    load_haiku_params(model, _params(golden))
    with torch.no_grad():
        out = model({"image": torch.from_numpy(x)})
    rec = out["input_reconstruction"]["image"].numpy()
    lat = out["latents"]["image"].numpy()
    assert rec.shape == golden["output::input_reconstruction::image"].shape
    assert lat.shape == golden["output::latents::image"].shape
    assert np.abs(rec - golden["output::input_reconstruction::image"]).max() <= 1e-5
    assert np.abs(lat - golden["output::latents::image"]).max() <= 1e-5


def test_every_official_parameter_has_exactly_one_home(golden, golden_config):
    model = create_model(golden_config, {"image": golden["input::image"].shape[1:]})
    names = haiku_names(model)
    assert set(names) == {k.removeprefix("param::") for k in _params(golden)}
    assert sum(t.numel() for t, _ in names.values()) == sum(p.numel() for p in model.parameters())


def test_converter_fails_loudly_on_missing_unexpected_and_misshaped(golden, golden_config):
    model = create_model(golden_config, {"image": golden["input::image"].shape[1:]})
    params = _params(golden)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(params)
    missing = "param::perceiver/block_0/~/hi_p_cross_attention/query_inputs::pos_embs"
    del broken[missing]
    broken["param::perceiver/block_9/~/nothing::w"] = np.zeros(3)
    shaped = "param::perceiver/embedder/~embed/embed_image::w"
    broken[shaped] = np.zeros((8, 3), np.float32)  # transposed
    with pytest.raises(ValueError) as err:
        load_haiku_params(model, broken)
    msg = str(err.value)
    assert "missing (1)" in msg and missing.removeprefix("param::") in msg
    assert "unexpected (1)" in msg and "block_9" in msg
    assert "mis-shaped (1)" in msg and "embed_image::w" in msg
    # nothing was copied
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("preset", "count"), [("hip16", 100_787_939), ("hip256", 96_367_155)])
def test_parameter_counts_match_official(preset, count):
    with torch.device("meta"):  # counts without allocating 400 MB
        model = create_model(preset, {"image": (224 * 224, 3)})
    assert sum(p.numel() for p in model.parameters()) == count


def test_official_variants_dict_equals_preset():
    official_16 = {
        "num_groups": (16, 4, 1, 1, 1, 4, 16),
        "num_self_attends_per_block": (2, 2, 18, 2, 1, 1, 1),
        "z_index_dim": (128, 256, 256, 64, 256, 256, 128),
        "num_z_channels": (128, 256, 512, 1024, 512, 256, 128),
        "num_cross_attend_heads": (1,) * 7,
        "num_self_attend_heads": (4, 8, 16, 32, 16, 8, 4),
        "cross_attend_widening_factor": (1,) * 7,
        "self_attend_widening_factor": (4,) * 7,
        "num_embedding_channels": 32,
    }
    assert make_config(official_16) == make_config("hip16")
    assert make_config("hip16", num_embedding_channels=16).num_embedding_channels == 16


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'hip16'"):
        make_config("hip61")
    with pytest.raises(ValueError, match="did you mean 'num_groups'"):
        make_config("tiny", num_group=[1, 1, 1])
    with pytest.raises(ValueError, match="processor block"):
        make_config("mini", num_groups=[16, 4, 16])
    with pytest.raises(ValueError, match="z_index_dim has 2 entries"):
        make_config("mini", z_index_dim=[1, 2])
    with pytest.raises(ValueError, match="must be \\[B, 64, 3\\]"):
        create_model("tiny", {"image": (64, 3)})({"image": torch.zeros(1, 64, 4)})
    with pytest.raises(ValueError, match="missing modalities \\['image'\\]"):
        create_model("tiny", {"image": (64, 3)})({"audio": torch.zeros(1, 64, 3)})


# -- wave 2 golden cases (tests/fixtures/wave2_README.md) -------------------------------------

WAVE2 = ["posenc_multi_short", "class_bottleneck", "processor_eval_latents"]


def _wave2(name: str) -> tuple[dict, dict]:
    cfg = json.loads((FIXTURES / f"{name}.json").read_text())
    data = np.load(FIXTURES / f"{name}.npz")
    return cfg, {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", WAVE2)
def test_wave2_official_json_builds_the_official_parameter_count(name):
    cfg, _ = _wave2(name)
    model = create_model(cfg, {m: tuple(s[1:]) for m, s in cfg["inputs"].items()})
    assert sum(p.numel() for p in model.parameters()) == cfg["num_params"]


@pytest.mark.parametrize("name", WAVE2)
def test_wave2_outputs_match_official_code_for_every_modality(name):
    cfg, golden = _wave2(name)
    model = create_model(cfg, {m: tuple(s[1:]) for m, s in cfg["inputs"].items()}).eval()
    params = _params(golden)
    assert set(haiku_names(model)) == {k.removeprefix("param::") for k in params}
    load_haiku_params(model, params)  # raises on anything missing, left over or mis-shaped
    with torch.no_grad():
        out = model({m: torch.from_numpy(golden[f"input::{m}"]) for m in cfg["inputs"]})
    assert set(out["input_reconstruction"]) == set(cfg["inputs"])  # labels included
    for m in cfg["inputs"]:
        want = golden[f"output::input_reconstruction::{m}"]
        got = out["input_reconstruction"][m].numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5, m
        if f"output::latents::{m}" in golden:
            lat = golden[f"output::latents::{m}"]
            assert np.abs(out["latents"][m].numpy() - lat).max() <= 1e-5, m
