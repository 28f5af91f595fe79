"""Every source type -> shards -> loader batches, on real data where it is available."""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hip.data import loader, read_manifest, shard, verify
from hip.data.dataset import manifest_dataset
from hip.errors import UserError
from tests import needs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def need(path: Path) -> Path:
    needs.need(path.exists(), f"real data at {path} (CI lays ../shared beside the repo)")
    return path


def one_batch(out, split, bs, **kw):
    return next(iter(loader(out, split, bs, train=False, **kw)))


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def test_imagefolder_mnist_real(tmp_path):
    root = need(SHARED / "mnist_png_subset")
    m = shard("imagefolder", root / "train", tmp_path, "train", limit=3, max_count=8)
    info = m.splits["train"]
    assert info.num_samples == 30 and [s.count for s in info.shards] == [8, 8, 8, 6]
    assert m.label_names == [str(d) for d in range(10)] and m.task == "classification"
    assert m.modalities["image"]["shape"] == [784, 1]
    b = one_batch(tmp_path, "train", 30)
    x = b["inputs"]["image"]
    assert x.shape == (30, 784, 1) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert b["label"].dtype == torch.long and sorted(b["label"].tolist()) == sorted(
        list(range(10)) * 3
    )
    # the pixels are MNIST's: the first PNG of class 0 round-trips exactly
    first = sorted((root / "train" / "0").glob("*.png"))[0]
    i = b["key"].index(f"0_{first.stem}")
    ref = np.asarray(Image.open(first), dtype=np.float32).reshape(-1) / 255.0
    assert np.allclose(x[i, :, 0].numpy(), ref)


def test_fsdd_preset_split_and_fixed_length(tmp_path):
    root = need(SHARED / "fsdd")
    m = shard("audiofolder", root, tmp_path, "test", preset="fsdd", limit=2)
    info = m.splits["test"]
    assert info.num_samples == 20
    # 16 consecutive samples per token by default (docs/DATA.md), as the official test's audio
    assert m.modalities["audio"]["shape"] == [500, 16]
    assert m.modalities["audio"]["samples_per_token"] == 16
    assert m.modalities["audio"]["sample_rate"] == 8000
    b = one_batch(tmp_path, "test", 20)
    assert b["inputs"]["audio"].shape == (20, 500, 16)
    assert b["inputs"]["audio"].abs().max() <= 1.0 and b["inputs"]["audio"].abs().max() > 0.01
    # the shards keep the raw waveform: the token width can change at load time
    wide = manifest_dataset(str(tmp_path), audio_samples_per_token=1)
    assert wide.modalities["audio"] == (8000, 1)
    batch = next(wide.batches("test", 20, train=False))
    assert torch.equal(batch["inputs"]["audio"].reshape(20, 500, 16), b["inputs"]["audio"])
    # only index 0-4 belong to the official test split
    assert all(int(k.rsplit("_", 1)[1]) <= 4 for k in b["key"])
    # the same tool writes the train split into the same directory; the manifest keeps both
    with pytest.raises(UserError, match="shape"):  # splits of one manifest share shapes
        shard("audiofolder", root, tmp_path, "train", preset="fsdd", limit=1, sample_rate=4000)
    shard("audiofolder", root, tmp_path, "train", preset="fsdd", limit=1)
    m2 = read_manifest(tmp_path)
    assert set(m2.splits) == {"test", "train"}


def test_audiofolder_regex_and_folders(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for lab in ("yes", "no"):
        for i in range(3):
            write_wav(
                src / f"{lab}-{i}.wav", np.full(100 + i, 1000 if lab == "yes" else -1000), 16000
            )
    (src / "readme.wav").write_bytes(b"not audio at all")
    m = shard(
        "audiofolder",
        src,
        tmp_path / "o",
        pattern=r"^(?P<label>[a-z]+)-\d+\.wav$",
        audio_length=128,
    )
    assert m.label_names == ["no", "yes"]
    assert m.splits["train"].num_samples == 6
    assert any("readme.wav" in s["input"] for s in m.splits["train"].skipped)
    b = one_batch(tmp_path / "o", "train", 6)
    yes = b["label"] == 1
    assert torch.allclose(b["inputs"]["audio"][yes, 0, 0], torch.tensor(1000 / 32768))
    assert b["inputs"]["audio"].shape == (6, 8, 16)  # 128 samples, 16 per token
    assert b["inputs"]["audio"][0, 7, 8] == 0  # sample 120: padded with silence
    # No length given: the clips (100, 101, 102 samples, two of each) are fitted to the most
    # common length, the longest on a tie, read from the wav headers.
    m2 = shard("audiofolder", src, tmp_path / "o2", pattern=r"^(?P<label>[a-z]+)-\d+\.wav$")
    assert m2.modalities["audio"]["length"] == 102 and m2.splits["train"].num_samples == 6
    assert "102 samples" in " ".join(m2.splits["train"].options["defaults"])
    # ... unless a clip is not a wav file: its length is unknown before decoding.
    (src / "yes-9.flac").write_bytes(b"fLaC")
    with pytest.raises(UserError, match="not a wav file.*clip-seconds"):
        shard("audiofolder", src, tmp_path / "o3", pattern=r"^(?P<label>[a-z]+)-")


def test_an_audio_folder_of_equal_clips_needs_no_length_and_mixed_rates_are_resampled(tmp_path):
    for lab, rate in (("a", 8000), ("a", 16000), ("b", 16000), ("b", 16000)):
        folder = tmp_path / "src" / lab
        folder.mkdir(parents=True, exist_ok=True)
        write_wav(
            folder / f"{rate}-{len(list(folder.iterdir()))}.wav", np.full(rate // 10, 500), rate
        )
    m = shard("audiofolder", tmp_path / "src", tmp_path / "o")
    audio = m.modalities["audio"]
    assert (audio["sample_rate"], audio["length"]) == (16000, 1600)  # 0.1 s at the common rate
    assert m.splits["train"].num_samples == 4
    same = tmp_path / "same"
    for lab in ("a", "b"):
        (same / lab).mkdir(parents=True)
        write_wav(same / lab / "0.wav", np.full(800, 500), 8000)
    m = shard("audiofolder", same, tmp_path / "o2")
    assert m.modalities["audio"]["length"] == 800
    assert "defaults" not in m.splits["train"].options  # nothing had to be chosen


def test_segfolder_isbi_binary_masks(tmp_path):
    root = need(SHARED / "isbi2012_em_membrane")
    m = shard("segfolder", root, tmp_path, "train", limit=3, resize="32")
    assert m.task == "segmentation" and m.label_names == ["0", "1"]
    assert m.targets["mask"]["shape"] == [1024]
    b = one_batch(tmp_path, "train", 3)
    assert b["inputs"]["image"].shape == (3, 1024, 1)
    assert b["mask"].shape == (3, 1024) and b["mask"].dtype == torch.long
    assert set(b["mask"].unique().tolist()) == {0, 1}


def make_voc(root: Path, n: int = 4) -> Path:
    voc = root / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]
    ids = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"2007_{i:06d}"
        ids.append(name)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((40, 50), np.uint8)
        mask[10:30, 10:30] = 1 + i % 2
        mask[9, :] = 255  # void border
        im = Image.fromarray(mask, mode="P")
        im.putpalette(palette)
        im.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:3]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text(ids[3] + "\n")
    return voc


def test_voc_palette_masks_keep_ignore(tmp_path):
    voc = make_voc(tmp_path / "voc")
    m = shard("voc", voc.parent, tmp_path / "o", "train", resize="32x40", image_format="jpeg")
    assert m.label_names[0] == "background" and len(m.label_names) == 21
    assert m.modalities["image"]["shape"] == [1280, 3]
    b = one_batch(tmp_path / "o", "train", 3)
    assert b["mask"].shape == (3, 1280)
    assert {0, 1, 2, 255} >= set(b["mask"].unique().tolist()) >= {0, 255}
    m = shard("voc", voc, tmp_path / "o", "val", resize="32x40")
    assert m.splits["val"].num_samples == 1
    with pytest.raises(UserError, match="split file"):
        shard("voc", voc, tmp_path / "o", "trainval")


def make_mp4(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        for i in range(int(10 * seconds)):
            img = np.full((24, 32, 3), i * 20, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        t = np.arange(int(rate * seconds)) / rate
        x = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
        frame.sample_rate = rate
        for p in a.encode(frame):
            c.mux(p)
        for p in a.encode():
            c.mux(p)


def test_audioset_multilabel_audio_and_video(tmp_path):
    root = tmp_path / "as"
    clips = root / "clips"
    clips.mkdir(parents=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([[0, "/m/09x0r", "Speech"], [1, "/m/04rlf", "Music"], [2, "/m/0jbk", "Animal"]])
    seg = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        "# YTID, start_seconds, end_seconds, positive_labels",
        'vidAAAAAAA, 30.000, 40.000, "/m/09x0r,/m/04rlf"',
        'wavBBB-_Bb, 0.000, 10.000, "/m/0jbk"',
        'missingCCC, 0.000, 10.000, "/m/0jbk"',
        'vidDDDDDDD, 0.000, 10.000, "/m/0jbk"',
    ]
    (root / "segments.csv").write_text("\n".join(seg) + "\n")
    make_mp4(clips / "vidAAAAAAA_30000.mp4")
    make_mp4(clips / "vidDDDDDDD.mp4")  # 2 of 4 usable: at most half may be skipped
    write_wav(clips / "wavBBB-_Bb.wav", np.arange(16000) % 200 - 100, 16000)
    m = shard(
        "audioset",
        root,
        tmp_path / "o",
        "train",
        clip_seconds=1.0,
        sample_rate=8000,
        fps=5,
        video_size="8x8",
    )
    info = m.splits["train"]
    assert m.task == "multilabel" and m.label_names == ["Speech", "Music", "Animal"]
    assert any(s["input"] == "missingCCC" for s in info.skipped)
    # two clips have video, one has not: the mp4s define the modalities, the wav is reported
    assert info.num_samples == 2 and m.modalities["video"]["shape"] == [5 * 64, 3]
    assert m.modalities["audio"]["shape"] == [500, 16]
    assert any("wavBBB" in s["input"] and "differs" in s["reason"] for s in info.skipped)
    b = one_batch(tmp_path / "o", "train", 2)
    i = b["key"].index("vidAAAAAAA_30000")
    assert b["label"][i].tolist() == [1.0, 1.0, 0.0]
    assert b["inputs"]["video"].shape == (2, 320, 3) and b["inputs"]["audio"].shape == (2, 500, 16)
    # frames advance in time: the clip brightens frame by frame
    frames = b["inputs"]["video"][i].reshape(5, 64, 3).mean(dim=(1, 2))
    assert torch.all(frames[1:] > frames[:-1])


def test_csv_manifest_and_corrupt_file_reported(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(np.full((6, 6, 3), i * 40, np.uint8)).save(d / f"im{i}.png")
        rows.append((f"imgs/im{i}.png", "cat" if i % 2 else "dog"))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows.append(("imgs/broken.png", "cat"))
    rows.append(("imgs/absent.png", "dog"))
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    m = shard("csv", tmp_path / "list.csv", tmp_path / "o")
    info = m.splits["train"]
    assert m.label_names == ["cat", "dog"] and info.num_samples == 6
    reasons = {Path(s["input"]).name: s["reason"] for s in info.skipped}
    assert set(reasons) == {"broken.png", "absent.png"}
    assert "FileNotFoundError" in reasons["absent.png"]
    assert m.modalities["image"]["shape"] == [36, 3]
    assert verify(tmp_path / "o") == []


@pytest.mark.parametrize("name,side", [("mnist5k", 28), ("digits", 8)])
def test_package_datasets(tmp_path, name, side):
    m = shard(name, None, tmp_path, "test", limit=2)
    assert m.splits["test"].num_samples == 20
    b = one_batch(tmp_path, "test", 20)
    assert b["inputs"]["image"].shape == (20, side * side, 1)
    assert b["inputs"]["image"].max() > 0.5  # real digits have ink
    assert sorted(b["label"].tolist()) == sorted(list(range(10)) * 2)


def test_unknown_source_and_empty_input(tmp_path):
    with pytest.raises(UserError, match="unknown source"):
        shard("tfrecord", tmp_path, tmp_path / "o")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="no inputs"):
        shard("imagefolder", tmp_path / "empty", tmp_path / "o")
    with pytest.raises(UserError, match="no such directory"):
        shard("imagefolder", tmp_path / "nope", tmp_path / "o")


def test_pyav_is_optional_and_its_absence_names_the_extra(tmp_path, monkeypatch):
    """PyAV (extras `audio` / `video`) is imported only to decode a file that needs it."""
    import subprocess
    import sys

    from hip.data.sources import SourceOptions, load_audio, load_video

    code = "import sys, hip.data, hip.data.sources, hip.cli; sys.exit('av' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
    )
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    wav = tmp_path / "a.wav"
    write_wav(wav, np.arange(800) % 50, 8000)
    assert load_audio(wav, SourceOptions())[0].shape == (800,)  # wav needs no PyAV
    (tmp_path / "a.flac").write_bytes(b"fLaC")
    with pytest.raises(ValueError, match=r"hip-pipeline\[audio\]"):
        load_audio(tmp_path / "a.flac", SourceOptions())
    (tmp_path / "a.mp4").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"hip-pipeline\[video\]"):
        load_video(tmp_path / "a.mp4", SourceOptions())
