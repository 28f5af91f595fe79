"""Bringing your own data (issue 15): paired segmentation folders with an ignore label, images of
mixed sizes without options, JPEGs kept as they are, and splits that would drop most inputs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hip import data as hd
from hip.cli import main
from hip.data import loader, read_manifest, shard
from hip.errors import UserError
from hip.task.base import EvalResult
from hip.task.segmentation import SegmentationTask

UNLABELLED = 11  # CamVid's "unlabelled" class


def make_camvid(
    root: Path, splits: dict[str, int], size: tuple[int, int] = (12, 16), void: int = UNLABELLED
) -> Path:
    """CamVid's layout: `train/X.png` + `trainannot/X.png` (index PNGs: classes, `void` at left)."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, n in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / split / f"0001TP_{i:04d}.png"
            )
            label = np.full((h, w), i % 4 if void else 1 + i % 3, np.uint8)
            label[:, : w // 4] = void  # a quarter of every image is unlabelled
            label[0, -1] = 3
            Image.fromarray(label).save(root / f"{split}annot" / f"0001TP_{i:04d}.png")
    return root


def all_batches(out: Path, split: str) -> dict:
    """The whole split as one batch (the test sets are small)."""
    return next(iter(loader(out, split, 64, train=False)))


def test_paired_folders_with_ignore_label_from_the_cli(tmp_path, capsys):
    root = make_camvid(tmp_path / "camvid", {"train": 6, "test": 2})
    out = tmp_path / "o"
    names = "sky,building,pole,road"
    for split in ("train", "test"):
        argv = ["shard", "--source", "segfolder", "--input", str(root), "--split", split]
        argv += ["--output", str(out), "--ignore-label", "11", "--label-names", names, "-q"]
        assert main(argv) == 0, capsys.readouterr().err
    m = read_manifest(out)
    assert m.task == "segmentation" and m.label_names == ["sky", "building", "pole", "road"]
    assert m.targets["mask"] == {
        "shape": [12 * 16], "dtype": "int64", "ignore_index": 255, "ignore_label": 11,
    }  # fmt: skip
    assert m.splits["train"].source["layout"] == "paired"
    assert m.splits["train"].source["labels"] == str(root / "trainannot")
    assert m.splits["test"].options["ignore_label"] == 11
    b = all_batches(out, "train")
    mask = b["mask"].reshape(6, 12, 16)
    assert set(mask.unique().tolist()) == {0, 1, 2, 3, 255}
    assert (mask[:, :, :4] == 255).all() and not (mask[:, :, 4:] == 255).any()
    assert m.splits["train"].num_samples == 6 and m.splits["test"].num_samples == 2


def test_ignored_pixels_count_in_no_class_iou(tmp_path):
    root = make_camvid(tmp_path / "camvid", {"train": 4})
    shard("segfolder", root, tmp_path / "o", "train", ignore_label=UNLABELLED)
    m = read_manifest(tmp_path / "o")
    assert m.label_names == ["class_0", "class_1", "class_2", "class_3"]  # the default names
    b = all_batches(tmp_path / "o", "train")
    task = SegmentationTask()
    logits = torch.zeros(*b["mask"].shape, 4)
    logits[..., 0] = 1.0  # predict class 0 everywhere, ignored pixels too
    state: dict = {}
    task.accumulate(state, logits, b["mask"])
    labelled = int((b["mask"] != 255).sum())
    assert int(state["cm"].sum()) == labelled  # ignored pixels are in no row and no column
    truth0 = int((b["mask"] == 0).sum())
    result = EvalResult({}, "segmentation", m.label_names)
    task.summarize(state, 4, result)
    assert result.per_class["iou"][0] == pytest.approx(truth0 / labelled)


def test_ignore_label_below_the_top_class_closes_the_gap(tmp_path):
    """Ignoring value 0 (a `void` first class) stores 1..3 as 0..2; its listed name is dropped."""
    root = make_camvid(tmp_path / "v", {"train": 4}, void=0)
    m = shard("segfolder", root, tmp_path / "o", "train", ignore_label=0, label_names="void,a,b,c")
    assert m.label_names == ["a", "b", "c"]
    mask = all_batches(tmp_path / "o", "train")["mask"].reshape(4, 12, 16)
    assert (mask[:, :, :4] == 255).all()  # 0 -> 255
    assert set(mask[:, :, 4:].unique().tolist()) == {0, 1, 2}  # 1..3 -> 0..2
    with pytest.raises(UserError, match="hold class 2.*1 label names"):
        shard("segfolder", root, tmp_path / "o2", "train", ignore_label=0, label_names="void,a")
    with pytest.raises(UserError, match="segmentation sources"):
        shard("digits", None, tmp_path / "o3", "test", ignore_label=3)


def test_any_two_folders_by_option_and_a_label_names_file(tmp_path, capsys):
    root = make_camvid(tmp_path / "c", {"val": 3}, void=5)
    (root / "val" / "0001TP_9999.png").write_bytes((root / "val" / "0001TP_0000.png").read_bytes())
    names = tmp_path / "names.txt"
    names.write_text("sky\nbuilding\n\npole\nroad\nsign\nunlabelled\n")
    out = tmp_path / "o"
    argv = ["shard", "--images", str(root / "val"), "--labels", str(root / "valannot")]
    argv += ["--output", str(out), "--label-names", str(names), "--ignore-label", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 samples" in printed and "1 skipped" in printed and "0001TP_9999" in printed
    m = read_manifest(out)
    assert m.label_names == ["sky", "building", "pole", "road", "sign"]
    assert m.splits["train"].source["images"] == str(root / "val")
    assert main(["shard", "--images", str(root / "val"), "--output", str(out)]) == 2
    assert "--labels" in capsys.readouterr().err


def test_the_image_and_label_layout_still_reads_as_before(tmp_path):
    root = tmp_path / "seg" / "train"
    for d in ("image", "label"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / "image" / f"{i}.png")
        label = np.full((8, 8), i, np.uint8)
        label[0, 0] = 2  # not 0/255 only: index masks
        Image.fromarray(label).save(root / "label" / f"{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "image" / "3.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "label" / "3.png")  # wrong size
    m = shard("segfolder", tmp_path / "seg", tmp_path / "o", "train")
    assert m.label_names == ["0", "1", "2"] and "layout" not in m.splits["train"].source
    assert "ignore_label" not in m.splits["train"].options
    reasons = [s["reason"] for s in m.splits["train"].skipped]
    assert reasons == ["ValueError: label 3.png is 6x8, its image 8x8"]


def make_sized(root: Path, sizes: list[tuple[int, int]], mode: str = "RGB") -> Path:
    d = root / "c0"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_mixed_sizes_without_resize_keep_every_image(tmp_path, capsys):
    sizes = [(24, 32)] * 7 + [(30, 40), (20, 20), (48, 32)]
    root = make_sized(tmp_path / "src", sizes)
    out = tmp_path / "o"
    argv = ["shard", "--source", "imagefolder", "--input", str(root), "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "7 of 10 are 24x32" in printed and "no --resize" in printed
    assert main([*argv, "-q"]) == 0  # up to date; the summary still says what was chosen
    assert "7 of 10 are 24x32" in capsys.readouterr().out
    m = read_manifest(out)
    info = m.splits["train"]
    assert info.num_samples == 10 and info.skipped == []
    assert info.options["resize"] == [24, 32] and "7 of 10 are 24x32" in info.options["defaults"][0]
    assert m.modalities["image"]["shape"] == [24 * 32, 3]
    # the same as asking for it: resize to cover, then centre crop
    asked = shard("imagefolder", root, tmp_path / "asked", resize="24x32")
    assert [s.sha256 for s in asked.splits["train"].shards] == [s.sha256 for s in info.shards]
    # partitions (other processes, Dask workers) get the choice with the plan; a re-run is a no-op
    plan = hd.plan_shards("imagefolder", root, tmp_path / "parts", max_count=4)
    records = [
        r for part in hd.partitions(plan.num_shards, 3) for r in hd.write_partition(plan, part)
    ]
    parts = hd.merge_shards(plan, records)
    assert [s.sha256 for s in parts.splits["train"].shards] == [
        s.sha256
        for s in shard("imagefolder", root, tmp_path / "one", max_count=4).splits["train"].shards
    ]
    logs: list[str] = []
    shard("imagefolder", root, out, log=logs.append)
    assert any("up to date" in line for line in logs)
    # a second split of other sizes takes the first split's size
    test = make_sized(tmp_path / "test", [(10, 10), (10, 10), (12, 12)])
    m = shard("imagefolder", test, out, "test")
    assert m.splits["test"].num_samples == 3 and m.splits["test"].options["resize"] == [24, 32]


def test_grey_and_colour_mixed_become_rgb(tmp_path):
    root = make_sized(tmp_path / "src", [(8, 8)] * 3)
    for i in range(3, 5):
        Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(root / "c0" / f"{i}.png")
    m = shard("imagefolder", root, tmp_path / "o")
    assert m.splits["train"].num_samples == 5 and m.splits["train"].options["channels"] == 3
    assert m.modalities["image"]["channels"] == 3


def test_a_split_that_would_skip_most_inputs_fails_in_one_line(tmp_path, capsys):
    root = make_sized(tmp_path / "src", [(8, 8)] * 4)
    for i in range(4, 10):
        (root / "c0" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "o"
    argv = ["shard", "--source", "imagefolder", "--input", str(root), "--output", str(out), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "6 of 10 inputs" in err and ".png: UnidentifiedImageError" in err
    assert not (out / "manifest.json").exists()


def test_mostly_unreadable_inputs_fail_before_the_full_pass(tmp_path):
    root = make_sized(tmp_path / "src", [(8, 8)] * 2)
    for i in range(2, 40):
        (root / "c0" / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"of the first \d+ inputs cannot be used"):
        shard("imagefolder", root, tmp_path / "o")
    assert not list((tmp_path / "o").glob("*.tar"))  # refused before any shard was written


def test_labels_missing_for_most_images_fail_before_reading(tmp_path):
    root = make_camvid(tmp_path / "c", {"train": 5})
    for p in sorted((root / "trainannot").iterdir())[:3]:
        p.unlink()
    with pytest.raises(UserError, match=r"3 of 5 inputs .*no mask with the same name"):
        shard("segfolder", root, tmp_path / "o", "train")


def make_jpegs(root: Path, n: int = 4, mode: str = "RGB") -> Path:
    d = root / "c0"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(n):
        shape = (16, 24, 3) if mode == "RGB" else (16, 24)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
            d / f"{i}.jpg", quality=80
        )
    return root


def members(out: Path) -> dict[str, bytes]:
    found = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar.getmembers():
                found[info.name] = tar.extractfile(info).read()
    return found


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_inputs_are_stored_byte_for_byte(tmp_path, mode):
    root = make_jpegs(tmp_path / "src", mode=mode)
    m = shard("imagefolder", root, tmp_path / "o")
    assert m.modalities["image"]["encoding"] == "jpeg"
    assert m.splits["train"].options["image_format"] == "auto"
    stored = members(tmp_path / "o")
    for i in range(4):
        assert stored[f"c0_{i}.image.jpg"] == (root / "c0" / f"{i}.jpg").read_bytes()
    b = all_batches(tmp_path / "o", "train")
    i = b["key"].index("c0_2")
    ref = np.asarray(Image.open(root / "c0" / "2.jpg"), np.float32) / 255.0
    assert np.array_equal(b["inputs"]["image"][i].numpy(), ref.reshape(16 * 24, -1))
    again = shard("imagefolder", root, tmp_path / "again")
    assert [s.sha256 for s in again.splits["train"].shards] == [
        s.sha256 for s in m.splits["train"].shards
    ]


def test_resized_jpegs_are_encoded_and_pngs_stay_png(tmp_path):
    root = make_jpegs(tmp_path / "src")
    m = shard("imagefolder", root, tmp_path / "o", resize="8x12")
    stored = members(tmp_path / "o")
    assert m.modalities["image"]["encoding"] == "jpeg"
    with Image.open(io.BytesIO(stored["c0_0.image.jpg"])) as img:
        assert (img.format, img.size) == ("JPEG", (12, 8))
    pngs = make_sized(tmp_path / "png", [(8, 8)] * 3)
    auto = shard("imagefolder", pngs, tmp_path / "auto")
    png = shard("imagefolder", pngs, tmp_path / "png_out", image_format="png")
    assert auto.modalities["image"]["encoding"] == "png"
    assert auto.splits["train"].options["image_format"] == "png"
    assert [s.sha256 for s in auto.splits["train"].shards] == [
        s.sha256 for s in png.splits["train"].shards
    ]


def test_the_source_type_is_told_from_the_folder(tmp_path, capsys):
    camvid = make_camvid(tmp_path / "camvid", {"train": 2})
    classes = make_sized(tmp_path / "cls", [(8, 8)] * 2)
    (tmp_path / "list.csv").write_text("path,label\ncls/c0/0.png,a\n")
    for path, kind in (
        (camvid, "segfolder"),
        (classes, "imagefolder"),
        (tmp_path / "list.csv", "csv"),
    ):
        out = tmp_path / f"o_{kind}"
        assert main(["shard", "--input", str(path), "--output", str(out)]) == 0
        assert capsys.readouterr().out.startswith(f"source: {kind} (")
        assert read_manifest(out).splits["train"].source["type"] == kind
    (tmp_path / "empty").mkdir()
    assert main(["shard", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "x")]) == 2
    assert "pass --source" in capsys.readouterr().err


def test_index_labels_are_not_taken_for_binary_when_the_first_holds_only_0_and_255(tmp_path):
    root = make_camvid(tmp_path / "c", {"train": 3}, void=255)
    first = sorted((root / "trainannot").iterdir())[0]
    label = np.zeros((12, 16), np.uint8)
    label[:, :4] = 255  # background and void only
    Image.fromarray(label).save(first)
    m = shard("segfolder", root, tmp_path / "o", "train")
    assert m.splits["train"].source["mask_mode"] == "index"
    assert m.label_names == ["class_0", "class_1", "class_2", "class_3"]
    assert 255 in all_batches(tmp_path / "o", "train")["mask"].unique().tolist()  # void kept
