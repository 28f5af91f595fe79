"""The `log_spectrum` front end (ours): audio tokens enter the embedding as log power spectra.

Spoken digits stayed at 0.3-0.5 top-1 from raw samples and reach 0.94 through this front end
(docs/BENCHMARKS.md, issue 14); these tests check what it computes, that MAE reconstructs the
spectra, that the input norm measures them, and that images are left alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from hip.errors import UserError
from hip.model import MAE, create_model, create_task_model
from hip.model.frontend import LogSpectrum
from hip.model.normalize import fit_input_norm
from hip.model.positions import coordinate_table, layout_grid

SPECTRUM = {"front_ends": {"audio": "log_spectrum"}}


def _tone(batch: int, tokens: int, samples: int, cycles_per_token: float) -> torch.Tensor:
    """`[batch, tokens, samples]` tokens cut from one sine of `cycles_per_token` per token."""
    t = torch.arange(tokens * samples, dtype=torch.float32)
    wave = 0.1 * torch.sin(2 * math.pi * cycles_per_token * t / samples)
    return wave.reshape(1, tokens, samples).expand(batch, -1, -1).clone()


def test_log_spectrum_puts_a_tones_power_in_its_frequency_bin_and_silence_at_the_floor():
    front = LogSpectrum(64)
    spec = front(_tone(2, 5, 64, cycles_per_token=8.0))
    assert spec.shape == (2, 5, 33)
    assert (spec.argmax(-1) == 8).all()  # 8 cycles in 64 samples: bin 8
    silence = front(torch.zeros(1, 3, 64))
    assert torch.allclose(silence, torch.full_like(silence, math.log(1e-6)))


def test_a_front_ended_model_embeds_spectra_and_its_mae_reconstructs_spectra():
    hip = create_model("tiny", {"audio": (32, 64)}, **SPECTRUM)
    assert hip.embed["audio"].in_features == 33
    assert hip.unembed["audio"].out_features == 33
    assert hip.features == {"audio": (32, 33)} and hip.modalities == {"audio": (32, 64)}
    mae = MAE(hip)
    x = _tone(4, 32, 64, cycles_per_token=5.0) + 0.01 * torch.randn(4, 32, 64)
    out = mae({"audio": x}, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert out.targets["audio"].shape[-1] == 33  # the hidden tokens' spectra, not samples
    rec = mae.reconstruct({"audio": x}, generator=torch.Generator().manual_seed(0))["audio"]
    feats = mae.features({"audio": x})["audio"]
    hidden = rec["masked"]
    # The composite is the input spectrum where visible and the prediction where hidden.
    assert torch.equal(rec["composite"][~hidden], feats[~hidden])
    assert torch.equal(rec["composite"][hidden], rec["prediction"][hidden])
    with pytest.raises(ValueError, match=r"\[B, 32, 64\]"):  # users still pass waveform tokens
        hip.group_inputs({"audio": feats})


def test_dataset_input_norm_is_measured_on_the_spectra_the_embedding_sees():
    model = create_task_model("classification", "tiny", {"audio": (16, 64)}, 3, **SPECTRUM)
    batches = [{"audio": _tone(8, 16, 64, cycles_per_token=c)} for c in (3.0, 9.0)]
    fit_input_norm(model, "dataset", batches)
    norm = model.backbone.input_norm
    assert norm.audio_mean.shape == (33,)
    spectra = torch.cat([LogSpectrum(64)(b["audio"]) for b in batches])
    torch.testing.assert_close(norm.audio_mean, spectra.mean(dim=(0, 1)), rtol=1e-5, atol=1e-5)
    logits = model({"audio": batches[0]["audio"]})
    assert logits.shape == (8, 3) and torch.isfinite(logits).all()


def test_front_ends_for_modalities_a_model_lacks_leave_it_unchanged():
    plain = create_model("tiny", {"image": (64, 1)})
    recipe = create_model("tiny", {"image": (64, 1)}, **SPECTRUM)  # a recipe's audio setting
    assert len(recipe.front_end) == 0
    assert [p.shape for p in plain.parameters()] == [p.shape for p in recipe.parameters()]


def test_an_unknown_front_end_is_a_user_error_that_suggests_the_name():
    with pytest.raises(UserError, match="did you mean 'log_spectrum'"):
        create_model("tiny", {"audio": (16, 64)}, front_ends={"audio": "log_spectra"})
    with pytest.raises(UserError, match="at least 2 samples per token"):
        create_model("tiny", {"audio": (16, 1)}, **SPECTRUM)


def test_coordinate_init_lays_audio_out_on_a_time_line_even_for_a_square_token_count():
    # 2,500 = 50 x 50 tokens: a guess from the count alone would make audio a picture.
    assert layout_grid({"kind": "audio", "length": 40000}, 2500) == (2500,)
    assert layout_grid({"kind": "image", "height": 20, "width": 125}, 2500) == (20, 125)
    assert layout_grid({"kind": "video", "frames": 4, "height": 5, "width": 5}, 100) == (4, 5, 5)
    assert layout_grid(None, 2500) == (50, 50)
    line = coordinate_table(2500, 16, shape=layout_grid({"kind": "audio"}, 2500))
    grid = coordinate_table(2500, 16)
    # On a time line token 50 follows 49 as 49 follows 48; on a 50x50 grid it starts a row.
    step = torch.dist(line[48], line[49])
    assert float(torch.dist(line[49], line[50])) == pytest.approx(float(step), rel=1e-3)
    assert torch.dist(grid[49], grid[50]) > 2 * torch.dist(grid[48], grid[49])


def test_audio_token_ms_picks_the_nearest_power_of_two_samples_at_any_rate():
    from hip.data.dataset import audio_token_samples

    assert [audio_token_samples(8, r) for r in (8000, 16000, 22050, 44100)] == [64, 128, 128, 256]
    assert audio_token_samples(0.01, 8000) == 2  # never below the front end's minimum
    with pytest.raises(UserError, match="audio_token_ms must be > 0"):
        audio_token_samples(0, 8000)
