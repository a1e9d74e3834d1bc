"""Figures for the notebooks and the report: learning curves, batch previews, galleries, overlays.

Every function builds a matplotlib ``Figure`` and returns it; nothing calls ``plt.show`` (a
notebook displays a returned figure by itself), so the same code runs in notebooks, in the report
and under the ``Agg`` backend in tests. Each figure is closed in ``pyplot`` as soon as it is made:
a notebook then shows it once (as the cell's value or with ``display``) rather than twice, and a
report drawing hundreds of figures does not pile them up in memory. ``save_figure`` writes a
figure atomically.

Colours used throughout:

- class masks: background transparent, class 1 (the lung of a binary mask, or the patient's
  RIGHT lung, on the image's left) orange, class 2 (the patient's LEFT lung) cyan;
- prediction against truth: true positives green, false positives red, false negatives blue.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from lunghelpers import evaluate, train

#: RGB colour per class id (0 = background is never drawn).
CLASS_COLOURS = {1: (1.0, 0.55, 0.0), 2: (0.0, 0.8, 0.9)}
#: Legend names of the classes of a multi-class mask; a binary mask's class 1 is "lung".
CLASS_NAMES = {1: "right lung", 2: "left lung"}
#: Colours of the prediction-vs-truth overlay.
ERROR_COLOURS = {
    "true positive": (0.0, 0.8, 0.0),
    "false positive": (0.9, 0.0, 0.0),
    "false negative": (0.1, 0.3, 1.0),
}
OVERLAY_ALPHA = 0.45
#: Columns of a history that are not curves of a metric.
NON_METRIC_COLUMNS = ("epoch", "learning_rate", "seconds")
#: Height of a gallery row that only says "no test image in band ...", relative to an image row.
EMPTY_ROW_HEIGHT = 0.15
#: How score columns are written in figures.
SCORE_NAMES = {"iou": "IoU", "dice": "Dice"}
#: Histories of at most this many epochs get their points marked in ``learning_curves``.
SHORT_HISTORY_EPOCHS = 20


def save_figure(figure, path, dpi=120):
    """Save ``figure`` to ``path`` (format from the suffix, e.g. ``.png``) atomically; return the path.

    The image goes to a temporary file in the same folder first and is then renamed, so a
    report never reads a half-written PNG.
    """
    with train.atomic_path(path) as temporary_path:
        figure.savefig(temporary_path, dpi=dpi, bbox_inches="tight")
    return path


def _new_figure(rows, columns, cell_size=(3.0, 3.0)):
    """A figure with a rows x columns grid of axes (always a 2D array), closed in pyplot.

    Creating it through pyplot sets up the notebook's display of figures (the inline backend);
    closing it at once hands it over to the caller alone.
    """
    figure, axes = plt.subplots(
        rows, columns, squeeze=False, layout="constrained",
        figsize=(cell_size[0] * columns, cell_size[1] * rows),
    )
    plt.close(figure)
    return figure, axes


def colour_mask(labels, alpha=OVERLAY_ALPHA):
    """RGBA image of a class-id map: each class in its ``CLASS_COLOURS`` colour, background clear.

    Args:
        labels: integer class ids, shape (H, W).
        alpha: opacity of the coloured classes.
    """
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for class_id, colour in CLASS_COLOURS.items():
        rgba[labels == class_id] = (*colour, alpha)
    return rgba


def _error_mask(labels, predicted, alpha=OVERLAY_ALPHA):
    """RGBA image marking true positives, false positives and false negatives.

    A pixel is a true positive when truth is foreground and the prediction names the same
    class; a false positive when the prediction is foreground but differs from the truth
    (including the wrong lung); a false negative when truth is foreground and the prediction
    is background.
    """
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    masks = {
        "true positive": (labels > 0) & (predicted == labels),
        "false positive": (predicted > 0) & (predicted != labels),
        "false negative": (labels > 0) & (predicted == 0),
    }
    for kind, mask in masks.items():
        rgba[mask] = (*ERROR_COLOURS[kind], alpha)
    return rgba


def _show_image(ax, image):
    ax.imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_axis_off()


def overlay(image, mask, prediction=None, ax=None):
    """Draw ``image`` with its mask, or with a prediction compared to the mask.

    Without ``prediction``: the mask's classes in their colours over the image. With it: true
    positives green, false positives red, false negatives blue (see ``ERROR_COLOURS``), so the
    errors of a segmentation are visible at a glance.

    Args:
        image: (H, W, 1) image in [0, 1].
        mask: (H, W, 1) class ids or (H, W, K) one-hot target.
        prediction: optional (H, W, 1) class ids / probabilities or (H, W, K) probabilities
            (converted with ``evaluate.to_labels`` at threshold 0.5).
        ax: matplotlib axes to draw on; a new one-panel figure when omitted.

    Returns:
        The figure holding ``ax``.
    """
    if ax is None:
        figure, axes = _new_figure(1, 1, cell_size=(4.0, 4.0))
        ax = axes[0, 0]
    labels = evaluate.to_labels(mask)
    _show_image(ax, image)
    if prediction is None:
        ax.imshow(colour_mask(labels))
    else:
        ax.imshow(_error_mask(labels, evaluate.to_labels(prediction)))
    return ax.figure


def error_legend(figure):
    """Add the true/false positive/negative colour legend below a figure."""
    handles = [Patch(color=colour, label=kind) for kind, colour in ERROR_COLOURS.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def class_legend(figure, labels):
    """Add a legend of the classes present in ``labels`` (class ids) below a figure."""
    present = [int(class_id) for class_id in np.unique(labels) if class_id in CLASS_COLOURS]
    names = CLASS_NAMES if max(present, default=0) > 1 else {1: "lung"}
    handles = [Patch(color=CLASS_COLOURS[class_id], label=names[class_id]) for class_id in present]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                      frameon=False)


def _epochs_from_one(history):
    """Epoch numbers as Keras prints them ("Epoch 5/6"): the history's 0-based ``epoch`` + 1."""
    if "epoch" in history:
        return history["epoch"].to_numpy() + 1
    return np.arange(1, len(history) + 1)


def learning_curves(history, metrics=None, best_epoch=None, title=None):
    """Loss and every metric per epoch, training against validation, best epoch marked.

    One panel per metric (``loss`` first), with the training curve solid and the validation
    curve dashed; a gap opening between them is the sign of over-fitting. A vertical line marks
    the best epoch (lowest validation loss, the epoch saved as ``model.keras``). When the history
    has a ``learning_rate`` column, the rate gets its own panel on a log scale so schedule steps
    are visible. Epochs count from 1 on the axes, as Keras prints them, although ``history.csv``
    counts them from 0.

    Args:
        history: DataFrame read from ``history.csv`` (column ``epoch`` from 0).
        metrics: metric names to plot (without ``val_``); default every metric in the history.
        best_epoch: epoch to mark, counting from 1 (as ``metrics.json``'s ``best_epoch``);
            default the epoch of the lowest ``val_loss``.
        title: first line of the figure title, e.g. the run's name and model.
    """
    if metrics is None:
        metrics = [
            column
            for column in history.columns
            if not column.startswith("val_") and column not in NON_METRIC_COLUMNS
        ]
        metrics.sort(key=lambda metric: metric != "loss")  # loss first, then Keras's order
    missing = [metric for metric in metrics if metric not in history]
    if missing:
        raise ValueError(
            f"metrics {missing} are not columns of the history (columns: {list(history.columns)})."
        )
    epochs = _epochs_from_one(history)
    if best_epoch is None and "val_loss" in history and history["val_loss"].notna().any():
        best_epoch = int(epochs[int(np.nanargmin(history["val_loss"].to_numpy(float)))])
    panels = list(metrics) + (["learning_rate"] if "learning_rate" in history else [])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = _new_figure(rows, columns, cell_size=(4.0, 3.0))
    # Points are marked on short histories, so a run of one or two epochs still shows its values.
    marker = "o" if len(history) <= SHORT_HISTORY_EPOCHS else None
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for ax, panel in zip(axes.flat, panels):
        if panel == "learning_rate":
            ax.plot(epochs, history[panel], color="black", marker=marker)
            ax.set_yscale("log")
        else:
            ax.plot(epochs, history[panel], label="training", marker=marker)
            if f"val_{panel}" in history:
                ax.plot(epochs, history[f"val_{panel}"], linestyle="--", label="validation",
                        marker=marker)
            ax.legend(fontsize=8)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
        ax.set_title(panel.replace("_", " "))
        ax.set_xlabel("epoch (from 1)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    lines = [title] if title else []
    if best_epoch is not None:
        lines.append(f"best epoch (lowest validation loss, kept as model.keras): {best_epoch} of {len(history)}")
    if lines:
        figure.suptitle("\n".join(lines))
    return figure


def batch_preview(images, masks, n=4):
    """Show ``n`` images of a batch above the same images with their masks overlaid.

    Use it on one augmented batch to check by eye that image and mask moved together.
    ``masks`` may hold class ids (B, H, W, 1) or one-hot targets (B, H, W, K), as the datasets
    of ``lunghelpers.augment`` yield them; tensors are accepted.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if len(images) != len(masks):
        raise ValueError(f"images and masks differ in count: {len(images)} vs {len(masks)}.")
    n = min(n, len(images))
    if n < 1:
        raise ValueError("batch_preview needs at least one image.")
    figure, axes = _new_figure(2, n)
    for column in range(n):
        _show_image(axes[0, column], images[column])
        axes[0, column].set_title(f"image {column}")
        overlay(images[column], masks[column], ax=axes[1, column])
        axes[1, column].set_title(f"mask {column}")
    class_legend(figure, evaluate.to_labels(masks[:n]))
    return figure


def band_label(band):
    """Text of an IoU band, e.g. ``[0.85, 0.90)``; a band ending at 1.0 is closed: ``[0.95, 1.00]``."""
    low, high = band
    closing = "]" if high >= 1.0 else ")"
    return f"[{low:.2f}, {high:.2f}{closing}"


def _row_label(key):
    """A gallery row's label: ``band [0.85, 0.90)`` for a band, the key itself for a text key."""
    return key if isinstance(key, str) else f"band {band_label(key)}"


def gallery_by_band(images, masks, probabilities, table, selection, threshold=0.5,
                    column="iou", split="test", title=None):
    """Image, ground truth and prediction for the images chosen per score band.

    One row per selected image: the image, the ground truth over it, and the prediction at
    ``threshold`` compared with the truth (true positives green, false positives red, false
    negatives blue), titled with the image's score. A band without any image gets a row saying
    so in words ("no test image in band [0.85, 0.90)") instead of failing.

    Args:
        images, masks, probabilities: arrays in the order of ``table``'s rows.
        table: the per-image table of ``evaluate.per_image_table``.
        selection: ``{(low, high): [names]}`` from ``evaluate.select_by_band``; a key may also
            be a text such as ``"worst"``, which labels its rows instead of a band.
        threshold: probability threshold of the prediction column (binary models).
        column: the table column the bands were chosen by.
        split: the split's name for the empty-band text.
        title: the figure's title, e.g. the run, its model, the split and the threshold.
    """
    positions = {name: position for position, name in enumerate(table["name"])}
    rows = [(_row_label(band), name) for band, names in selection.items() for name in (names or [None])]
    if not rows:
        raise ValueError("selection is empty: pass the bands from evaluate.select_by_band.")
    unknown = [name for _, name in rows if name is not None and name not in positions]
    if unknown:
        raise ValueError(f"selection names {unknown} are not in the table's name column.")
    # A band without an image is one line of text, not a row of empty panels.
    heights = [EMPTY_ROW_HEIGHT if name is None else 1.0 for _, name in rows]
    figure, axes = plt.subplots(
        len(rows), 3, squeeze=False, layout="constrained", figsize=(9.0, 3.0 * sum(heights) + 0.4),
        gridspec_kw={"height_ratios": heights},
    )
    plt.close(figure)
    score_name = SCORE_NAMES.get(column, column)
    for row, (band, name) in enumerate(rows):
        if name is None:
            for ax in axes[row]:
                ax.set_axis_off()
            axes[row, 1].text(
                0.5, 0.5, f"no {split} image in {band}",
                ha="center", va="center", fontsize=12, transform=axes[row, 1].transAxes,
            )
            continue
        position = positions[name]
        score = table[column].iloc[position]
        prediction = evaluate.to_labels(probabilities[position], threshold=threshold)
        _show_image(axes[row, 0], images[position])
        axes[row, 0].set_title(f"{name}\n{score_name} {score:.3f}, {band}", fontsize=9)
        overlay(images[position], masks[position], ax=axes[row, 1])
        axes[row, 1].set_title("ground truth", fontsize=9)
        overlay(images[position], masks[position], prediction[..., np.newaxis], ax=axes[row, 2])
        axes[row, 2].set_title(f"prediction (threshold {threshold})", fontsize=9)
    error_legend(figure)
    if title:
        figure.suptitle(title)
    return figure


def compare_curves(histories, metric="val_dice"):
    """One metric of several runs on shared axes, for the report.

    Args:
        histories: ``{run name: history DataFrame}``.
        metric: the history column to compare, e.g. ``val_dice`` or ``val_loss``.

    Runs whose history lacks ``metric`` (e.g. a failed run) are listed in the title rather than
    plotted. Epochs count from 1, as Keras prints them.
    """
    if not histories:
        raise ValueError("histories is empty: pass {run name: history DataFrame}.")
    figure, axes = _new_figure(1, 1, cell_size=(7.0, 4.0))
    ax = axes[0, 0]
    skipped = []
    for name, history in histories.items():
        if metric not in history:
            skipped.append(name)
            continue
        ax.plot(_epochs_from_one(history), history[metric], label=name)
    title = metric.replace("_", " ")
    if skipped:
        title += f" (no {metric} in: {', '.join(skipped)})"
    ax.set_title(title)
    ax.set_xlabel("epoch (from 1)")
    ax.set_ylabel(metric)
    if len(skipped) < len(histories):
        ax.legend()
    return figure


def threshold_sweep(sweep, title, marks=((0.1, "source 0.1"), (0.5, "headline 0.5"))):
    """Mean IoU, Dice, precision and recall against the binarisation threshold.

    Args:
        sweep: the DataFrame of ``evaluate.threshold_sweep`` (threshold, mean_iou, mean_dice,
            mean_precision, mean_recall).
        title: the figure title; name the run, its model and the split.
        marks: ``(threshold, label)`` pairs drawn as dotted vertical lines.
    """
    figure, axes = _new_figure(1, 1, cell_size=(6.5, 4.0))
    ax = axes[0, 0]
    for column, label in (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"),
                          ("mean_precision", "mean precision"), ("mean_recall", "mean recall")):
        ax.plot(sweep["threshold"], sweep[column], marker=".", label=label)
    for threshold, label in marks:
        ax.axvline(threshold, color="grey", linestyle=":")
        ax.text(threshold, 0.02, f" {label}", color="grey", rotation=90, va="bottom")
    ax.set_xlabel("threshold")
    ax.set_ylabel("mean over images")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    figure.legend(loc="outside lower center", ncols=4, frameon=False)
    return figure


def sweep_errorbars(table, parameter, score="dice", title=None):
    """A sweep's held-out score against the swept parameter: mean and spread over seeds.

    ``table`` has one row per run with columns ``parameter`` (e.g. ``TRAIN_SIZE``) and ``score``
    (the run's mean per-image score); runs that differ only in their seed share an x value. Each
    point is their mean, the error bar their standard deviation (none for a single seed), and the
    label the number of seeds.
    """
    if table.empty or parameter not in table or score not in table:
        raise ValueError(f"sweep_errorbars needs rows with columns {parameter!r} and {score!r}")
    grouped = table.groupby(parameter)[score].agg(["mean", "std", "count"]).fillna(0.0)
    figure, axes = _new_figure(1, 1, cell_size=(7.0, 4.0))
    ax = axes[0, 0]
    ax.errorbar(grouped.index, grouped["mean"], yerr=grouped["std"], marker="o", capsize=4)
    for x, row in grouped.iterrows():
        ax.annotate(f"n={int(row['count'])}", (x, row["mean"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel(parameter)
    ax.set_ylabel(score)
    ax.set_title(title or f"{score} by {parameter} (mean, sd over seeds)")
    return figure
