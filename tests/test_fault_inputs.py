"""Bad input at every entry point: each case is `argv -> exit code + a message fragment`, no traceback.

Run in-process through `hip.cli.main` and `flows.__main__.main` (capsys). The shared
fixture builds small real inputs once: image folders with odd modes and sizes, digits
shards, a manifest whose label names do not cover its labels, a 1-step checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flows.__main__ as flows_main
from hip.cli import main
from hip.data import read_manifest, shard

QUICK = ["tracking.enabled=false", "run.progress=false", "optim.total_steps=1", "data.batch_size=4"]


def _folder(root: Path, make, ext: str = "png") -> Path:
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(3):
            make(i).save(root / f"c{c}" / f"{i}.{ext}")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    t = tmp_path_factory.mktemp("inputs")
    _folder(t / "grey", lambda i: Image.fromarray(np.full((6, 6), 40 * i, np.uint8)))
    _folder(t / "cmyk", lambda i: Image.new("CMYK", (6, 6), (60 * i, 0, 0, 0)), "jpg")
    _folder(t / "i16", lambda i: Image.fromarray(np.full((6, 6), 20000 * i, np.uint16)))
    _folder(t / "pal", lambda i: Image.fromarray(np.full((6, 6), i, np.uint8)).convert("P"))
    _folder(t / "one", lambda i: Image.new("L", (1, 1), i))
    _folder(t / "mixed", lambda i: Image.new("L", (6 + i, 6), i))
    (t / "empty" / "c0").mkdir(parents=True)
    (t / "nocols.csv").write_text("file,lab\na.png,1\n")
    (t / "broken.yaml").write_text("model: [unclosed\n")
    (t / "unknown_key.yaml").write_text("model:\n  preset: tiny\nfoo: 1\n")
    digits = t / "digits"
    for split in ("train", "test"):
        shard("digits", None, digits, split, max_count=500)
    bad_labels = t / "bad_labels"
    shutil.copytree(digits, bad_labels)
    manifest = json.loads((bad_labels / "manifest.json").read_text())
    manifest["label_names"] = manifest["label_names"][:5]  # labels 5..9 now out of range
    (bad_labels / "manifest.json").write_text(json.dumps(manifest))
    shard("imagefolder", t / "one", t / "one_shards", "train")
    shard("imagefolder", t / "grey", t / "grey_shards", "train")
    assert main(["pretrain", "--config", "tiny_digits", f"run.out={t / 'pre'}", *QUICK]) == 0
    ckpt = next((t / "pre" / "checkpoints").glob("step-*.pt"))
    return {"T": str(t), "CKPT": str(ckpt)}


def _argv(template: list[str], world: dict[str, str]) -> list[str]:
    return [a.format(**world) for a in template]


# (id, argv, expected exit code, fragment of stderr)
HIP_CASES = [
    # CLI arguments
    ("no-command", [], 2, "usage"),
    ("unknown-command", ["nope"], 2, "invalid choice: 'nope'"),
    ("unknown-option", ["pretrain", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ("shard-unknown-source", ["shard", "--source", "nope", "--output", "x"], 2, "invalid choice"),
    ("shard-no-output", ["shard", "--source", "digits"], 2, "--output is required"),
    ("shard-int-arg", ["shard", "--source", "digits", "--output", "{T}/o", "--max-count", "x"], 2,
     "invalid int value: 'x'"),
    ("shard-max-count-0", ["shard", "--source", "digits", "--output", "{T}/o", "--max-count", "0"],
     2, "must be positive"),
    ("shard-bad-resize", ["shard", "--source", "digits", "--output", "{T}/o", "--resize", "abc"], 2,
     "size must be N or HxW"),
    ("shard-bad-split", ["shard", "--source", "digits", "--output", "{T}/o", "--split", "val"], 2,
     "split must be train, test or all"),
    ("shard-verify-no-path", ["shard", "verify"], 2, "give PATH"),
    # missing paths, empty data sets
    ("shard-missing-input", ["shard", "--source", "imagefolder", "--input", "{T}/nothing",
                             "--output", "{T}/o"], 2, "no such directory"),
    ("shard-empty-dataset", ["shard", "--source", "imagefolder", "--input", "{T}/empty",
                             "--output", "{T}/o"], 2, "no inputs found"),
    ("shard-csv-no-columns", ["shard", "--source", "csv", "--input", "{T}/nocols.csv",
                              "--output", "{T}/o"], 2, "needs a header with columns path,label"),
    ("shard-unwritable-output", ["shard", "--source", "imagefolder", "--input", "{T}/grey",
                                 "--output", "/proc/hip-no"], 2, "/proc/hip-no"),
    ("shard-verify-missing", ["shard", "verify", "{T}/nothing"], 2, "no manifest"),
    # presets and config files
    ("pretrain-unknown-preset", ["pretrain", "--config", "tiny_mnistt"], 2,
     "unknown train config 'tiny_mnistt' (did you mean 'tiny_mnist'?)"),
    ("pretrain-missing-yaml", ["pretrain", "--config", "{T}/missing.yaml"], 2,
     "config file not found"),
    ("pretrain-broken-yaml", ["pretrain", "--config", "{T}/broken.yaml"], 2, "cannot parse"),
    ("pretrain-yaml-unknown-key", ["pretrain", "--config", "{T}/unknown_key.yaml"], 2,
     "unknown config key 'foo'"),
    ("finetune-unknown-benchmark", ["finetune", "--benchmark", "mnistt"], 2,
     "unknown benchmarks config 'mnistt' (did you mean 'mnist'?)"),
    ("finetune-no-benchmark", ["finetune"], 2, "give --data MANIFEST (your own shards), --benchmark NAME"),
    # config keys, types and values
    ("override-unknown-key", ["pretrain", "optim.lrr=1"], 2, "did you mean 'optim.lr'?"),
    ("override-not-key-value", ["pretrain", "novalue"], 2, "key=value"),
    ("override-bad-type", ["pretrain", "optim.lr=abc"], 2, "bad value for config key 'optim.lr'"),
    ("override-float-for-int", ["pretrain", "data.batch_size=1.5"], 2, "'data.batch_size'"),
    ("batch-size-0", ["pretrain", "data.batch_size=0"], 2, "data.batch_size must be >= 1"),
    ("negative-lr", ["pretrain", "optim.lr=-1"], 2, "optim.lr must be > 0"),
    ("eval-batch-size-0", ["pretrain", "data.eval_batch_size=0"], 2, "data.eval_batch_size"),
    ("limit-negative", ["pretrain", "data.limit=-1"], 2, "data.limit must be >= 1"),
    ("mask-ratio-1", ["pretrain", "mae.mask_ratio=1.0"], 2, "mae.mask_ratio"),
    ("bad-choice", ["pretrain", "run.precision=fp8"], 2, "run.precision='fp8' is not one of"),
    ("unknown-model-preset", ["pretrain", "model.preset=huge"], 2, "unknown model preset 'huge'"),
    ("unknown-model-field", ["pretrain", "model.overrides.dropout_prb=0.1"], 2,
     "did you mean 'dropout_prob'?"),
    ("unresolvable", ["pretrain", "run.out=${{nope.x}}"], 2, "config does not resolve"),
    ("bad-device", ["pretrain", "run.device=tpu"], 2, "run.device='tpu'"),
    ("cuda-missing", ["pretrain", "run.device=cuda", "run.out={T}/r", *QUICK], 2,
     "CUDA is not available"),
    ("unknown-data-source", ["pretrain", "data.source=nope"], 2, "unknown data.source 'nope'"),
    ("no-data", ["pretrain", "data.source=null", "run.out={T}/r", *QUICK], 2, "no data"),
    ("missing-manifest", ["pretrain", "data.manifest={T}/nothing", "run.out={T}/r", *QUICK], 2,
     "no manifest"),
    ("missing-split", ["pretrain", "data.manifest={T}/digits", "data.split=val", "run.out={T}/r",
                       *QUICK], 2, "split 'val' not in the manifest"),
    ("missing-resume", ["pretrain", "run.resume={T}/none.pt", "run.out={T}/r", *QUICK], 2,
     "no such checkpoint"),
    ("stage-task-mismatch", ["finetune", "-b", "mnist", "task.type=mae"], 2,
     "finetune needs task.type"),
    # wrong modality shapes and odd image sizes
    ("1x1-images", ["pretrain", "data.manifest={T}/one_shards", "data.eval_split=null",
                    "run.out={T}/r1", *QUICK], 2,
     "has 1 element(s)"),
    ("evaluate-wrong-shape", ["evaluate", "--checkpoint", "{CKPT}", "data.manifest={T}/grey_shards",
                              "eval.split=train", "tracking.enabled=false"], 2,
     "modality 'image' must be [B, 64, 1], got"),
    ("finetune-wrong-pretrained-shape", ["finetune", "-b", "mnist", "-p", "{CKPT}",
                                         "run.out={T}/f0", *QUICK], 2, "task.pretrained="),
    # labels out of range
    ("num-classes-smaller", ["finetune", "-b", "mnist", "data.source=digits",
                             "task.num_classes=5", "run.out={T}/f1", *QUICK], 2,
     "task.num_classes=5 but the data has 10 labels"),
    ("label-beyond-label-names", ["finetune", "-b", "mnist", "data.source=null",
                                  "data.manifest={T}/bad_labels", "task.num_classes=null",
                                  "run.out={T}/f2", *QUICK], 2, "is outside 0..4"),
    ("segmentation-without-masks", ["finetune", "-b", "mnist", "data.source=digits",
                                    "task.type=segmentation", "run.out={T}/f3", *QUICK], 2,
     "segmentation needs batches with a per-position 'mask'"),
    # evaluate, config show, compare
    ("evaluate-missing-checkpoint", ["evaluate", "--checkpoint", "{T}/none.pt"], 2,
     "checkpoint not found"),
    ("evaluate-not-a-checkpoint", ["evaluate", "--checkpoint", "{T}/broken.yaml"], 2,
     "truncated or damaged"),
    ("evaluate-missing-split", ["evaluate", "--checkpoint", "{CKPT}", "eval.split=val",
                                "tracking.enabled=false"], 2, "no split 'val'"),
    ("config-show-unknown-stage", ["config", "show", "bogus"], 2, "invalid choice: 'bogus'"),
    ("config-show-unknown-preset", ["config", "show", "pretrain", "--config", "nope"], 2,
     "unknown train config 'nope'"),
    ("config-show-unknown-benchmark", ["config", "show", "finetune", "-b", "nope"], 2,
     "unknown benchmarks config 'nope'"),
    ("config-show-bad-override", ["config", "show", "pretrain", "optim.lrr=1"], 2,
     "unknown config key 'optim.lrr'"),
    ("compare-unreachable-mlflow", ["compare", "tracking.uri=http://127.0.0.1:9"], 2,
     "is unreachable"),
]  # fmt: skip

FLOW_CASES = [
    ("unknown-stage", ["--stage", "nope"], 2, "invalid choice: 'nope'"),
    ("unknown-pipeline", ["--pipeline", "demoo"], 2, "unknown pipeline 'demoo'"),
    ("missing-pipeline-file", ["--pipeline", "{T}/missing.yaml"], 2, "file not found"),
    ("unknown-key", ["foo=1"], 2, "pipeline override 'foo=1' does not fit"),
    ("wrong-type", ["datasets=3"], 2, "pipeline override 'datasets=3' does not fit"),
    ("unknown-dataset-ref", ["pretrain_dataset=zzz"], 2, "data set 'zzz' is not among"),
]


def _check(capsys, call, argv: list[str], code: int, fragment: str) -> None:
    try:
        rc = call(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    captured = capsys.readouterr()
    err = captured.err + (captured.out if not argv else "")
    assert rc == code, f"exit {rc}, stderr: {captured.err[-2000:]}"
    assert fragment in err, err[-2000:]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "code", "fragment"), [c[1:] for c in HIP_CASES],
                         ids=[c[0] for c in HIP_CASES])  # fmt: skip
def test_hip_cli_bad_input(world, capsys, argv, code, fragment):
    _check(capsys, main, _argv(argv, world), code, fragment)


@pytest.mark.parametrize(("argv", "code", "fragment"), [c[1:] for c in FLOW_CASES],
                         ids=[c[0] for c in FLOW_CASES])  # fmt: skip
def test_flows_cli_bad_input(capsys, tmp_path, argv, code, fragment):
    _check(capsys, flows_main.main, _argv(argv, {"T": str(tmp_path)}), code, fragment)


@pytest.mark.slow
def test_odd_image_modes_are_converted_not_corrupted(world):
    t = Path(world["T"])
    for name, channels in (("cmyk", 3), ("pal", 3), ("i16", 1), ("one", 1)):
        out = t / f"modes_{name}"
        m = shard("imagefolder", t / name, out, "train")
        assert m.splits["train"].num_samples == 6 and not m.splits["train"].skipped
        assert read_manifest(out).modalities["image"]["shape"][1] == channels
    # 16-bit grey keeps its range (PIL alone would clip 20000 and 40000 to 255)
    from hip.data import loader

    values = sorted(
        {float(v) for b in loader(t / "modes_i16", "train", 6, train=False)
         for v in b["inputs"]["image"][:, 0, 0]}
    )  # fmt: skip
    assert values == pytest.approx([0.0, (20000 >> 8) / 255, (40000 >> 8) / 255])
    # mixed sizes, no --resize: none is dropped, all take the most common size (ties: the larger)
    m = shard("imagefolder", t / "mixed", t / "modes_mixed", "train")
    assert m.splits["train"].num_samples == 6 and not m.splits["train"].skipped
    assert m.splits["train"].options["resize"] == [6, 8]
