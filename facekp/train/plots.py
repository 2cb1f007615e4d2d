"""Pictures of training and accuracy: curves, prediction galleries, error distributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import fileio


def require_matplotlib() -> None:
    """Raise ``ImportError`` saying what to install when matplotlib is missing: called before any
    work that ends in a plot, so that a missing extra never costs a training run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError('facekp-train draws its plots with matplotlib: pip install "facekp[train]"') from None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int, overwrite: bool) -> None:
    """Save under facekp's write rule (:mod:`facekp.fileio`): never over a file unless ``overwrite``."""
    with fileio.atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi)


def plot_history(history: list[dict], path: Path, stage_starts: list[int] = (), overwrite: bool = False) -> None:
    """Training loss and validation RMSE per epoch, as a PNG; dashed lines where a new stage starts."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_title("heatmap MSE (sum over stacks)")
    if "val_rmse" in history[0]:
        ax2.plot(epochs, [h["val_rmse"] for h in history], label="canonical crops")
        ax2.plot(epochs, [h["val_rmse_perturbed"] for h in history], label="perturbed crops")
        ax2.set_ylim(top=min(6.0, max(h["val_rmse_perturbed"] for h in history)))
        ax2.legend()
    for ax in (ax1, ax2):
        for start in stage_starts:
            ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation RMSE (px, 96x96)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, 100, overwrite)
    plt.close(fig)


def plot_gallery(crops: np.ndarray, pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, path: Path, columns: int = 8,
                 overwrite: bool = False) -> None:
    """A grid of crops with ground truth (green) and predictions (red), worst-first labelled by RMSE."""
    plt = _pyplot()
    n = len(crops)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for i, ax in enumerate(np.atleast_1d(axes).ravel()[:n]):
        ax.imshow(crops[i], cmap="gray", vmin=0, vmax=1)
        m = mask[i]
        ax.scatter(truth[i, m, 0], truth[i, m, 1], s=7, c="lime", linewidths=0)
        ax.scatter(pred[i, :, 0], pred[i, :, 1], s=7, c="red", marker="x", linewidths=0.8)
        rmse = np.sqrt(((pred[i, m] - truth[i, m]) ** 2).sum(-1).mean() / 2)
        ax.set_title(f"{rmse:.2f} px", fontsize=7)
    fig.suptitle("validation faces: ground truth (green) and prediction (red x), RMSE in the 96x96 frame", fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110, overwrite)
    plt.close(fig)


def plot_error_distribution(errors_by_subset: dict[str, np.ndarray], path: Path, overwrite: bool = False) -> None:
    """Cumulative distribution of per-point Euclidean errors (px, 96x96 frame), one curve per subset."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, err in errors_by_subset.items():
        e = np.sort(err)
        ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=f"{name} (median {np.median(e):.2f} px)")
    ax.set_xlim(0, 6)
    ax.set_ylim(0, 1)
    ax.set_xlabel("point error (px, 96x96 frame)")
    ax.set_ylabel("fraction of points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110, overwrite)
    plt.close(fig)
