"""Reports: a metrics CSV (pandas), PNG plots (matplotlib, Agg) and markdown + HTML pages."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hip.task import EvalResult, get_task  # noqa: E402


def image_shape(m: int, c: int) -> tuple[int, int] | None:
    """(H, W) when `[M, C]` looks like a square image with 1 or 3 channels, else None."""
    side = math.isqrt(m)
    return (side, side) if side * side == m and c in (1, 3) else None


def metrics_table(result: EvalResult, extra: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row: identifying columns from `extra` followed by every metric."""
    row = {**(extra or {}), "task": result.task, **result.metrics}
    return pd.DataFrame([row])


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


def plot_reconstructions(
    result: EvalResult, out: Path, name: str = "reconstructions.png"
) -> Path | None:
    """Original / masked input / reconstruction side by side (grey images for 1 channel)."""
    rec = result.reconstructions
    if not rec or not result.modalities:
        return None
    m, c = next(iter(result.modalities.values()))
    orig, hidden, comp = rec["original"], rec["masked"], rec["composite"]
    n = len(orig)
    shape = image_shape(m, c)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        masked_in = orig[i].copy()
        if shape:
            masked_in[hidden[i]] = 0.5  # hidden pixels shown grey
        panels = (orig[i], masked_in, comp[i])
        for j, (panel, title) in enumerate(zip(panels, ("original", "masked", "reconstructed"))):
            ax = axes[i, j]
            if shape:
                img = panel.reshape(*shape, c)
                img = np.clip(img, 0, 1)
                ax.imshow(
                    img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1
                )
            else:
                ax.plot(panel[:, 0], lw=0.5)
                if j == 1:
                    ax.fill_between(
                        np.arange(m),
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
    return _save(fig, out / name)


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
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in table.iloc[0].items()
    )
    md = [f"# {title}", "", "| field | value |", "|---|---|", rows, ""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in table.iloc[0].items()
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
