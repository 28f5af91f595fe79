"""Reports: a metrics CSV (pandas), PNG plots (matplotlib, Agg) and markdown + HTML pages."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hip.task import EvalResult, get_task  # noqa: E402
from hip.task.base import class_names  # noqa: E402


def metrics_table(result: EvalResult, extra: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row: identifying columns from `extra`, every metric, then each per-class value
    (`iou/<label>`, `acc/<label>`, `ap/<label>`)."""
    row = {**(extra or {}), "task": result.task, **result.metrics, **result.per_class_metrics()}
    return pd.DataFrame([row])


def per_class_table(result: EvalResult) -> pd.DataFrame:
    """One row per class: its label name and each per-class metric (IoU, accuracy or AP)."""
    if not result.per_class:
        return pd.DataFrame()
    k = len(next(iter(result.per_class.values())))
    table = pd.DataFrame({"class": class_names(result.label_names, k)})
    for key, values in result.per_class.items():
        table[key] = np.asarray(values, dtype=np.float64)
    return table


def plot_curves(history: list[dict[str, Any]], out: Path) -> list[Path]:
    """loss.png and lr.png from per-step metrics records."""
    if not history:
        return []
    df = pd.DataFrame(history)
    paths = []
    for key, name in (("loss", "loss.png"), ("lr", "lr.png")):
        if key not in df:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(df["step"], df[key], lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if key == "loss" and (df[key] > 0).all():
            ax.set_yscale("log")
        ax.set_title(f"training {key}")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / name))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write as PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tokens_as_picture(tokens: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Image `[M, C]` -> `[H, W, C]`; video `[T*H*W, C]` -> up to 4 frames side by side."""
    h, w = int(spec["height"]), int(spec["width"])
    c = tokens.shape[-1]
    if spec["kind"] == "image":
        return tokens.reshape(h, w, c)
    frames = tokens.reshape(-1, h, w, c)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(4, len(frames))).round().astype(int))
    return np.concatenate(list(frames[picks]), axis=1)


def _waveform(tokens: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Audio tokens `[M, n]` (n consecutive samples each) -> the waveform `[length]`."""
    wave = tokens.reshape(-1)
    return wave[: int(spec.get("length") or len(wave))]


def drawing_kind(spec: dict[str, Any] | None) -> str:
    """How a modality is drawn: `picture` (image, video), `waveform` (audio), `spectrogram`
    (audio through the log_spectrum front end: the model's inputs are spectra) or `tokens`."""
    spec = spec or {}
    if spec.get("front_end") == "log_spectrum":
        return "spectrogram"
    if spec.get("kind") in ("image", "video") and spec.get("height") and spec.get("width"):
        return "picture"
    if spec.get("kind") == "audio":
        return "waveform"
    return "tokens"  # no layout: each token's first channel, never guessed from [M, C]


def reconstruction_figure(result: EvalResult) -> plt.Figure | None:
    """Original / masked input / reconstruction side by side, drawn as the checkpoint's layout
    says: images and video frames as pictures (grey for 1 channel), audio as a waveform."""
    rec = result.reconstructions
    if not rec or not result.modalities:
        return None
    name = next(iter(result.modalities))
    spec = result.layout.get(name)
    how = drawing_kind(spec)
    orig, hidden, comp = rec["original"], rec["masked"], rec["composite"]
    n = len(orig)
    fig, axes = plt.subplots(n, 3, figsize=(9 if how == "waveform" else 6, 2 * n), squeeze=False)
    for i in range(n):
        masked_in = orig[i].copy()
        # Hidden tokens: grey / silent / the quietest bin.
        masked_in[hidden[i]] = {"picture": 0.5, "spectrogram": orig[i].min()}.get(how, 0.0)
        panels = (orig[i], masked_in, comp[i])
        for j, (panel, title) in enumerate(zip(panels, ("original", "masked", "reconstructed"))):
            ax = axes[i, j]
            if how == "picture":
                img = np.clip(_tokens_as_picture(panel, spec), 0, 1)
                grey = img.shape[-1] != 3
                ax.imshow(
                    img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=1
                )
                ax.set_xticks([])
                ax.set_yticks([])
            elif how == "spectrogram":  # tokens are frames: time across, frequency up
                lo, hi = float(orig[i].min()), float(orig[i].max())
                ax.imshow(panel.T, origin="lower", aspect="auto", vmin=lo, vmax=hi)
                ax.set_yticks([])
                if i == n - 1:
                    ax.set_xlabel("token (frame)", fontsize=8)
            elif how == "waveform":
                wave = _waveform(panel, spec)
                rate = float(spec.get("sample_rate") or 1)
                t = np.arange(len(wave)) / rate
                ax.plot(t, wave, lw=0.4)
                if j == 1:
                    per_token = int(panel.shape[-1])
                    gone = np.repeat(hidden[i], per_token)[: len(wave)]
                    ax.fill_between(t, -1, 1, where=gone, color="grey", alpha=0.3, lw=0)
                ax.set_ylim(-1, 1)
                ax.set_yticks([])
                if i == n - 1:
                    ax.set_xlabel("seconds" if spec.get("sample_rate") else "sample", fontsize=8)
            else:
                ax.plot(panel[:, 0], lw=0.5)
                if j == 1:
                    ax.fill_between(
                        np.arange(len(panel)),
                        panel[:, 0].min(),
                        panel[:, 0].max(),
                        where=hidden[i],
                        color="grey",
                        alpha=0.3,
                    )
                ax.set_xticks([])
                ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    return fig


def plot_reconstructions(
    result: EvalResult, out: Path, name: str = "reconstructions.png"
) -> Path | None:
    """reconstructions.png: :func:`reconstruction_figure` written as a PNG."""
    fig = reconstruction_figure(result)
    return _save(fig, out / name) if fig is not None else None


def plot_confusion(result: EvalResult, out: Path) -> Path | None:
    """Row-normalised confusion matrix (classification)."""
    if result.confusion is None or "confusion" not in get_task(result.task).plots:
        return None
    cm = result.confusion.astype(np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.4 * k), min(12, 2 + 0.4 * k)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = result.label_names if len(result.label_names) == k else [str(i) for i in range(k)]
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    return _save(fig, out / "confusion.png")


def plot_per_class(result: EvalResult, out: Path) -> Path | None:
    """Per-class IoU (segmentation) or AP (multilabel) as bars."""
    key = "iou" if "iou" in result.per_class else "ap" if "ap" in result.per_class else None
    if key is None:
        return None
    vals = np.nan_to_num(result.per_class[key])
    k = len(vals)
    names = result.label_names if len(result.label_names) == k else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(max(4, min(14, 0.35 * k + 2)), 3.2))
    ax.bar(range(k), vals)
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(key.upper())
    ax.set_title(f"per-class {key.upper()}")
    return _save(fig, out / f"per_class_{key}.png")


def _cell(value: float) -> str:
    """A per-class value for the markdown table (`n/a` where the class was absent)."""
    return "n/a" if not np.isfinite(value) else f"{value:.4f}"


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    history: list[dict[str, Any]] | None = None,
    title: str = "HiP evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """metrics.csv, plots, report.md and report.html in `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(result, extra)
    files: dict[str, Path] = {"metrics": out / "metrics.csv"}
    table.to_csv(files["metrics"], index=False)
    plots = plot_curves(history or [], out)
    for maker in (plot_reconstructions, plot_confusion, plot_per_class):
        p = maker(result, out)
        if p:
            plots.append(p)
    head = {k: v for k, v in table.iloc[0].items() if "/" not in str(k)}  # per class: below
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in head.items()
    )
    md = [f"# {title}", "", "| field | value |", "|---|---|", rows, ""]
    per_class = per_class_table(result)
    if not per_class.empty:
        keys = [c for c in per_class.columns if c != "class"]
        md += ["## Per class", "", "| class | " + " | ".join(keys) + " |"]
        md += ["|---|" + "---|" * len(keys)]
        md += [
            f"| {row['class']} | " + " | ".join(_cell(row[k]) for k in keys) + " |"
            for _, row in per_class.iterrows()
        ]
        md += [""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in head.items()
    )
    imgs = "".join(
        f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem}</figcaption></figure>'
        for p in plots
    )
    files["html"] = out / "report.html"
    files["html"].write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td{padding:2px 10px}"
        "figure{display:inline-block;margin:8px}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><table>{cells}</table>{imgs}</body></html>\n"
    )
    for p in plots:
        files[p.stem] = p
    return files
