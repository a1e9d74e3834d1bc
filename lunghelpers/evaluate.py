"""Evaluation of a trained run: predictions, per-image scores, threshold sweep, IoU bands.

The per-image scores come from ``metrics.per_image_scores`` (one definition of IoU and Dice for
the whole kit): a sigmoid output is binarised as ``probability > threshold``, a softmax output
takes the argmax class; IoU, Dice, precision and recall score the foreground (any lung), empty
against empty counts as 1.0. ``evaluate_run`` stores the table as ``per_image.csv`` in the run
folder and adds the summary to ``metrics.json``, so notebooks and the report read numbers from
files instead of recomputing them.
"""

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lunghelpers import metrics, train

HEADLINE_THRESHOLD = 0.5
#: Score columns of ``metrics.per_image_scores`` that depend on the threshold.
THRESHOLD_COLUMNS = ("iou", "dice", "precision", "recall", "accuracy", "predicted_fraction")
IOU_BANDS = ((0.85, 0.9), (0.9, 0.95), (0.95, 1.0))


def to_labels(array, threshold=HEADLINE_THRESHOLD):
    """Class ids (..., H, W) from a mask, a one-hot target or a model output (..., H, W, C).

    - several channels (one-hot target or softmax output): the argmax channel;
    - one floating-point channel (sigmoid output or float mask): 1 where the value is above
      ``threshold``, else 0 (the rule of ``metrics.per_image_scores``);
    - one integer channel: the class ids as they are.
    """
    array = np.asarray(array)
    if array.shape[-1] > 1:
        return array.argmax(axis=-1).astype(np.int16)
    if np.issubdtype(array.dtype, np.floating):
        return (array[..., 0] > threshold).astype(np.int16)
    return array[..., 0].astype(np.int16)


def predict(model, images, batch_size=16):
    """Model probabilities for ``images`` (N, H, W, 1) as a float32 NumPy array (N, H, W, C)."""
    probabilities = model.predict(np.asarray(images), batch_size=batch_size, verbose=0)
    return np.asarray(probabilities, dtype=np.float32)


def _suffix(threshold):
    return f"@{threshold:g}"


def per_image_table(targets, probabilities, names, thresholds=(HEADLINE_THRESHOLD, 0.1)):
    """One row per image: its name and its scores at each threshold.

    The first threshold is the headline and its columns are unsuffixed (``iou``, ``dice``,
    ``precision``, ``recall``, ``accuracy``, ``predicted_fraction``); each further threshold adds
    the same columns suffixed, e.g. ``iou@0.1`` (the CT assignment's source binarised at 0.1).
    ``target_fraction`` (share of lung pixels in the truth) appears once. For a multi-class
    (softmax) model the prediction is the argmax, so thresholds do not apply: the table has
    the headline columns plus ``dice_class1`` .. ``dice_class{K-1}``.

    Args:
        targets: masks (N, H, W, 1) class ids or one-hot (N, H, W, K).
        probabilities: model output (N, H, W, C), e.g. from ``predict``.
        names: one name per image (file stem), kept as the ``name`` column.
        thresholds: probability thresholds for a sigmoid model, headline first.
    """
    if len(thresholds) == 0:
        raise ValueError("thresholds must hold at least one threshold (the headline).")
    names = [str(name) for name in names]
    headline, *others = thresholds
    table = metrics.per_image_scores(targets, probabilities, threshold=headline, names=names)
    if np.shape(probabilities)[-1] == 1:
        for threshold in others:
            scores = metrics.per_image_scores(targets, probabilities, threshold=threshold, names=names)
            columns = {column: column + _suffix(threshold) for column in THRESHOLD_COLUMNS}
            table = table.join(scores[list(columns)].rename(columns=columns))
    return table.reset_index(names="name")


def threshold_sweep(targets, probabilities, thresholds=np.round(np.arange(0.05, 1.0, 0.05), 2)):
    """Mean per-image IoU, Dice, precision and recall of a sigmoid model at each threshold.

    A low threshold calls more pixels lung (recall up, precision down), a high one fewer; the
    sweep shows how much the headline numbers depend on the choice of 0.5 (or the source's 0.1).

    Returns:
        DataFrame with columns threshold, mean_iou, mean_dice, mean_precision, mean_recall.
    """
    if np.shape(probabilities)[-1] != 1:
        raise ValueError(
            "threshold_sweep needs a sigmoid (one-channel) output; a softmax output is "
            "evaluated by argmax and has no threshold."
        )
    rows = []
    for threshold in thresholds:
        scores = metrics.per_image_scores(targets, probabilities, threshold=float(threshold))
        rows.append(
            {
                "threshold": float(threshold),
                "mean_iou": scores["iou"].mean(),
                "mean_dice": scores["dice"].mean(),
                "mean_precision": scores["precision"].mean(),
                "mean_recall": scores["recall"].mean(),
            }
        )
    return pd.DataFrame(rows)


def select_by_band(table, bands=IOU_BANDS, column="iou", per_band=1, seed=0):
    """Pick up to ``per_band`` image names whose score falls in each band, for the gallery.

    A band ``(low, high)`` holds scores with ``low <= score < high``; a band ending at 1.0
    includes 1.0 (``[0.95, 1]``), since no score is above it. Images are drawn at random with
    ``seed`` (same seed, same gallery) and listed in table order. A band with no image gets an
    empty list, which ``plots.gallery_by_band`` states in the figure.

    Returns:
        ``{(low, high): [names]}`` in the order of ``bands``.
    """
    if column not in table:
        raise ValueError(f"column {column!r} is not in the table (columns: {list(table.columns)}).")
    random = np.random.default_rng(seed)
    scores = table[column]
    selection = {}
    for low, high in bands:
        inside = (scores >= low) & ((scores <= high) if high >= 1.0 else (scores < high))
        positions = np.flatnonzero(inside.to_numpy())
        count = min(per_band, len(positions))
        chosen = np.sort(random.choice(positions, size=count, replace=False)) if count else []
        selection[(low, high)] = [table["name"].iloc[position] for position in chosen]
    return selection


def evaluate_run(run_dir, images, masks, names, model=None, batch_size=16,
                 thresholds=(HEADLINE_THRESHOLD, 0.1), split="test"):
    """Score a run's model on a held-out split; write ``per_image.csv`` and update ``metrics.json``.

    The summary keys, prefixed by the split (``test_`` or ``val_``):

    - ``<split>_accuracy``: pixel accuracy over all pixels of the split (what Keras's
      ``model.evaluate`` reports with an accuracy metric);
    - ``<split>_mean_iou``, ``<split>_dice``, ``<split>_precision``, ``<split>_recall``: means of
      the per-image scores at the headline threshold (each image weighs the same; the training
      logs instead pool the pixels of a whole epoch);
    - ``<split>_mean_iou@0.1`` (one per further threshold): the source's binarisation at 0.1;
    - ``<split>_dice_class1`` .. (multi-class models): mean per-image Dice of each lung;
    - ``n_<split>``: number of images; ``threshold``: the headline threshold.

    Existing keys of ``metrics.json`` are kept; for ``split="val"`` the keys above replace the
    last epoch's training figures of the same name (those remain in ``history.csv``), so they
    then describe the saved best model.

    Args:
        run_dir: a run folder written by ``train.train``.
        images, masks, names: the split's arrays and names.
        model: the model to score; by default ``run_dir/model.keras`` is loaded.
        batch_size: prediction batch size.
        thresholds: headline threshold first, then further ones (see ``per_image_table``).
        split: ``"test"`` or ``"val"``.

    Returns:
        The dict of summary keys written to ``metrics.json``.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    run = _existing_run(run_dir)
    if model is None:
        if not run.model_path.exists():
            raise FileNotFoundError(
                f"{run.model_path} does not exist: train the run first or pass model=."
            )
        model = keras.models.load_model(run.model_path, compile=False)
    probabilities = predict(model, images, batch_size=batch_size)
    table = per_image_table(masks, probabilities, names, thresholds=thresholds)
    train.write_csv(run.per_image_path, table)

    headline, *others = thresholds
    summary = {
        f"{split}_accuracy": float(table["accuracy"].mean()),
        f"{split}_mean_iou": float(table["iou"].mean()),
        f"{split}_dice": float(table["dice"].mean()),
        f"{split}_precision": float(table["precision"].mean()),
        f"{split}_recall": float(table["recall"].mean()),
        f"n_{split}": int(len(table)),
        "threshold": headline,
    }
    for threshold in others:
        column = "iou" + _suffix(threshold)
        if column in table:
            summary[f"{split}_mean_{column}"] = float(table[column].mean())
    for column in table.columns:
        if column.startswith("dice_class"):
            summary[f"{split}_{column}"] = float(table[column].mean())
    run.update_metrics(summary)
    return summary


def _existing_run(run_dir):
    """The ``RunFolder`` of ``run_dir``, which must exist."""
    run = train.RunFolder(Path(run_dir))
    if not run.path.is_dir():
        raise FileNotFoundError(f"Run folder {run.path} does not exist.")
    return run


def load_run(run_dir):
    """Read a run folder: its parameters, history, metrics and per-image table.

    Returns:
        dict with ``path``, ``params`` (dict of ``params.json``), ``history`` (DataFrame or None
        before the first epoch), ``metrics`` (dict, empty before training ended) and
        ``per_image`` (DataFrame or None before ``evaluate_run``).
    """
    run = _existing_run(run_dir)
    if not run.params_path.exists():
        raise FileNotFoundError(
            f"{run.path} is not a run folder: it has no params.json (written by train.train)."
        )
    return {
        "path": run.path,
        "params": train.read_json(run.params_path),
        "history": pd.read_csv(run.history_path) if run.history_path.exists() else None,
        "metrics": train.read_json(run.metrics_path) if run.metrics_path.exists() else {},
        "per_image": (
            pd.read_csv(run.per_image_path, dtype={"name": str})
            if run.per_image_path.exists()
            else None
        ),
    }
