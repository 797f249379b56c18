"""training.png next to metrics.json: loss/accuracy curves per epoch and the test confusion matrix.

matplotlib (Agg, no display) is in the training requirements; without it the job still
succeeds and says why there is no plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maas_training import log

MAX_MATRIX_CLASSES = 30  # past this the matrix is unreadable at this size


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def write_training_plot(
    path: Path,
    history: list[dict[str, float]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    title: str,
) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warn("matplotlib is not installed: no training.png")
        return None
    n = len(class_names)
    fig, (ax_loss, ax_cm) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=80)
    epochs = [h["epoch"] for h in history]
    key, what = ("val_r2", "R²") if history and "val_r2" in history[0] else ("val_accuracy", "")
    what = what or "accuracy"
    if history:
        ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
        ax_acc = ax_loss.twinx()
        ax_acc.plot(
            epochs,
            [h[key] for h in history],
            color="tab:green",
            linestyle="--",
            label=f"validation {what}",
        )
        ax_acc.set_ylabel(what)
        ax_acc.set_ylim(0, 1.0)
        lines = ax_loss.get_lines() + ax_acc.get_lines()
        ax_loss.legend(lines, [str(ln.get_label()) for ln in lines], loc="center right")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy" if n else "squared error (standardised)")
    ax_loss.set_title("training and validation")
    if not n:  # a regression: predicted against true on the test set
        ax_cm.scatter(y_true, y_pred, s=6, alpha=0.6)
        lo, hi = float(np.min(y_true)), float(np.max(y_true))
        ax_cm.plot([lo, hi], [lo, hi], color="gray", linewidth=1)
        ax_cm.set_title("test set: predicted vs true")
        ax_cm.set_xlabel("true")
        ax_cm.set_ylabel("predicted")
        return _save(fig, path, title)
    cm = confusion_matrix(y_true, y_pred, n)
    accuracy = float(np.trace(cm) / max(1, cm.sum()))
    ax_cm.imshow(cm, cmap="Blues")
    ax_cm.set_title(f"test confusion matrix (accuracy {accuracy:.3f})")
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    if n <= MAX_MATRIX_CLASSES:
        ticks = np.arange(n)
        short = [c if len(c) <= 14 else c[:13] + "…" for c in class_names]
        ax_cm.set_xticks(ticks, short, rotation=60, ha="right", fontsize=7)
        ax_cm.set_yticks(ticks, short, fontsize=7)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    color = "white" if cm[i, j] > cm.max() / 2 else "black"
                    ax_cm.text(
                        j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
    return _save(fig, path, title)


def _save(fig, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    log.info(f"wrote {path.name}")
    return path
