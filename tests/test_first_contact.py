"""First contact: a new data set goes from a folder to a report with no preset (issue 15).

Each test builds a small data set of its own kind (an image folder of mixed non-square sizes,
a paired segmentation layout with an ignore label, 44.1 kHz audio, a CSV of multi-labels),
then runs `hip shard` -> `hip pretrain --data` -> `hip finetune --data --task --pretrained`
-> `hip evaluate` through the CLI's `main(argv)`, in this process, with nothing but paths
and --task (`hip shard` tells the source type from the input; what only the user can know
is given: the audio clip length, the segmentation ignore label and class names). Only the
run length is cut (`optim.total_steps`, `data.batch_size`: the recipes'
1,000 steps of 32 are minutes, these data sets a few dozen samples), the progress bar and
MLflow are off except where MLflow is what is checked (their start-up is seconds per stage).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import hip.cli
from hip import checkpoint as ckpt
from hip.evaluate import report

SHORT = ["optim.total_steps=2", "data.batch_size=4", "run.progress=false"]
QUIET = [*SHORT, "tracking.enabled=false"]


def _hip(*argv: str) -> None:
    """`hip ARGV` in this process; it must succeed."""
    assert hip.cli.main([str(a) for a in argv]) == 0, argv


def _shard(inputs: dict[str, Path], out: Path, *options: str) -> Path:
    """`hip shard` of each split's input into `out` (the source type told from the input)."""
    for split, path in inputs.items():
        _hip("shard", "--input", path, "--split", split, "--output", out, *options, "-q")
    return out


class Drawn:
    """What the report's reconstruction figures drew: each panel's image shape or line length."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.panels: list[tuple[str, tuple[int, ...]]] = []
        real = report.reconstruction_figure

        def spy(result: object) -> object:
            fig = real(result)
            for ax in fig.axes if fig is not None else ():
                if ax.images:
                    self.panels.append(("image", ax.images[0].get_array().shape))
                elif ax.lines:
                    self.panels.append(("line", ax.lines[0].get_xdata().shape))
            return fig

        monkeypatch.setattr(report, "reconstruction_figure", spy)


def _first_contact(
    tmp: Path, shards: Path, task: str, finetune: list[str] = QUIET
) -> tuple[dict, Path, Path]:
    """pretrain -> finetune (from the MAE checkpoint) -> evaluate both; the checkpoints'
    model_meta and the two report folders."""
    _hip("pretrain", "--data", shards, f"run.out={tmp / 'pre'}", *QUIET)
    pre = ckpt.latest_of_run(tmp / "pre")
    _hip("evaluate", "--checkpoint", pre, "tracking.enabled=false")
    args = ["--data", shards, "--task", task, "--pretrained", pre]
    _hip("finetune", *args, f"run.out={tmp / 'ft'}", *finetune)
    fine = ckpt.latest_of_run(tmp / "ft")
    _hip("evaluate", "--checkpoint", fine, "tracking.enabled=false")
    meta = ckpt.load(fine)["model_meta"]
    assert ckpt.load(pre)["model_meta"]["layout"] == meta["layout"]
    return meta, tmp / "pre" / "eval", tmp / "ft" / "eval"


def _per_class(report_dir: Path, metric: str, names: list[str]) -> pd.DataFrame:
    """The per-class table of report.md (checked to name every class) and metrics.csv's row."""
    md = (report_dir / "report.md").read_text()
    assert "## Per class" in md and f"| class | {metric} |" in md
    for name in names:
        assert f"| {name} | " in md
    return pd.read_csv(report_dir / "metrics.csv")


def _rgb(h: int, w: int, colour: int, rng: np.random.Generator) -> Image.Image:
    """A noisy image of size h x w whose `colour` channel (0 red, 2 blue) is bright."""
    a = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    a[..., colour] += 180
    return Image.fromarray(a)


def test_an_image_folder_of_mixed_sizes_goes_from_folder_to_report(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for colour, name in ((0, "red"), (2, "blue")):
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(n):  # mostly 12x20 (non-square RGB), some 15x24
                size = (15, 24) if i % 3 == 1 else (12, 20)
                _rgb(*size, colour, rng).save(folder / f"{i}.png")
    root = tmp_path / "photos"
    shards = _shard({"train": root, "test": root}, tmp_path / "shards")
    drawn = Drawn(monkeypatch)
    tracked = [*SHORT, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    meta, pre_report, ft_report = _first_contact(tmp_path, shards, "classification", tracked)
    out = capsys.readouterr().out
    pre = ckpt.latest_of_run(tmp_path / "pre")
    assert f"loaded pretrained weights from {pre} (step 2): " in out
    matched = int(out.split(" (step 2): ")[1].split(" tensors matched")[0])
    assert matched > 0 and "new (initialised fresh)" in out
    # training evaluated the whole (small) test split under the default cap, and says so
    assert "evaluated 4 of 4 samples of 'test'" in out
    image = meta["layout"]["image"]
    assert (image["height"], image["width"], image["channels"]) == (12, 20, 3)
    assert meta["num_classes"] == 2 and meta["label_names"] == ["blue", "red"]
    assert drawn.panels and {p for p in drawn.panels} == {("image", (12, 20, 3))}
    assert (pre_report / "reconstructions.png").is_file()
    table = _per_class(ft_report, "acc", ["blue", "red"])
    assert {"top1", "acc/blue", "acc/red"} <= set(table.columns)
    assert table.loc[0, "num_samples"] == 4  # `hip evaluate`: the whole test split
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("hip-finetune").experiment_id])[0]
    assert {"acc/blue", "acc/red", "eval_top1"} <= set(run.data.metrics)
    params = run.data.params
    assert params["pretrained.checkpoint"] == pre and params["pretrained.step"] == "2"
    assert params["pretrained.matched"] == str(matched)


def _wav(path: Path, wave_: np.ndarray, rate: int) -> None:
    """A mono 16-bit wav written with the standard library."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(wave_, -1, 1) * 32767).astype("<i2").tobytes())


def test_an_audio_folder_at_44k_goes_from_folder_to_report(tmp_path, monkeypatch):
    rate, n = 44100, 22050  # 0.5 s clips
    t = np.arange(n) / rate
    inputs = {}
    for split, count in (("train", 4), ("test", 2)):
        for name, freq in (("low", 220.0), ("high", 1760.0)):
            folder = tmp_path / "sounds" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                _wav(folder / f"{i}.wav", 0.5 * np.sin(2 * np.pi * freq * t + i), rate)
        inputs[split] = tmp_path / "sounds" / split
    _shard(inputs, tmp_path / "shards")  # length and rate from the wav headers
    drawn = Drawn(monkeypatch)
    meta, _, ft_report = _first_contact(tmp_path, tmp_path / "shards", "classification")
    audio = meta["layout"]["audio"]
    assert (audio["kind"], audio["sample_rate"], audio["length"]) == ("audio", rate, n)
    # The recipes' ~8 ms tokens (256 samples at 44.1 kHz) through the log_spectrum front end:
    # the MAE reconstructed spectra, so the figure draws a spectrogram (bins x tokens).
    assert audio["samples_per_token"] == 256 and meta["overrides"]["front_ends"]["audio"]
    tokens = -(-n // 256)
    assert drawn.panels and set(drawn.panels) == {("image", (129, tokens))}
    table = _per_class(ft_report, "acc", ["high", "low"])
    assert {"acc/high", "acc/low"} <= set(table.columns)


def test_a_csv_of_multi_labels_goes_from_file_to_report(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    tags = ["cat", "dog", "outdoor"]
    for split, n in (("train", 8), ("test", 8)):
        rows = ["path,labels"]
        (tmp_path / "pics" / split).mkdir(parents=True)
        for i in range(n):
            mine = [t for j, t in enumerate(tags) if (i >> j) & 1]  # every subset, none too
            Image.fromarray((rng.random((8, 12)) * 255).astype(np.uint8)).save(
                tmp_path / "pics" / split / f"{i}.png"
            )
            rows.append(f"{split}/{i}.png,{';'.join(mine)}")
        (tmp_path / "pics" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    inputs = {s: tmp_path / "pics" / f"{s}.csv" for s in ("train", "test")}
    shards = _shard(inputs, tmp_path / "shards")
    assert json.loads((shards / "manifest.json").read_text())["task"] == "multilabel"
    drawn = Drawn(monkeypatch)
    meta, _, ft_report = _first_contact(tmp_path, shards, "multilabel")
    assert meta["label_names"] == tags and meta["num_classes"] == 3
    assert set(drawn.panels) == {("image", (8, 12))}  # grey 8x12, drawn as such
    table = _per_class(ft_report, "ap", tags)
    assert {"mAP", "ap/cat", "ap/dog", "ap/outdoor"} <= set(table.columns)


def test_a_paired_segmentation_layout_with_an_ignore_label_goes_from_folder_to_report(
    tmp_path, monkeypatch
):
    rng = np.random.default_rng(2)
    root = tmp_path / "streets"  # CamVid's layout: train/ + trainannot/, test/ + testannot/
    for split, n in (("train", 8), ("test", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            label = np.zeros((12, 16), np.uint8)  # sky on top, road below, a car, void edges
            label[6:] = 1
            label[7:10, 3 + i % 8 : 7 + i % 8] = 2
            label[:, :1] = 3
            colours = np.array([[90, 140, 230], [80, 80, 80], [220, 30, 30], [0, 0, 0]])
            image = colours[label] + rng.integers(0, 25, (12, 16, 3))
            Image.fromarray(image.astype(np.uint8)).save(root / split / f"{i}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"{i}.png")
    names = ["--ignore-label", "3", "--label-names", "sky,road,car,void"]  # what the data is
    _shard({"train": root, "test": root}, tmp_path / "shards", *names)
    drawn = Drawn(monkeypatch)
    meta, _, ft_report = _first_contact(tmp_path, tmp_path / "shards", "segmentation")
    assert meta["label_names"] == ["sky", "road", "car"] and meta["num_classes"] == 3
    assert meta["ignore_index"] == 255 and meta["layout"]["image"]["width"] == 16
    assert set(drawn.panels) == {("image", (12, 16, 3))}
    table = _per_class(ft_report, "iou", ["sky", "road", "car"])
    assert {"mIoU", "iou/sky", "iou/road"} <= set(table.columns)
    assert "iou/void" not in table.columns  # the ignored label is no class
