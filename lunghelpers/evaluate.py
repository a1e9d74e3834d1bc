"""Evaluation of a trained run: predictions, per-image scores, threshold sweep, IoU bands, other sites.

The per-image scores come from ``metrics.per_image_scores`` (one definition of IoU and Dice for
the whole kit): a sigmoid output is binarised as ``probability > threshold``, a softmax output
takes the argmax class; IoU, Dice, precision and recall score the foreground (any lung), empty
against empty counts as 1.0. ``evaluate_run`` stores the table as ``per_image.csv`` in the run
folder and adds the summary to ``metrics.json``, so notebooks and the report read numbers from
files instead of recomputing them.

``evaluate_folder`` scores a finished run on another data folder (another hospital's images),
writes ``cross_site/<name>/`` (per-image table, summary, gallery) into the run folder and adds the
summary to ``metrics.json`` as ``cross_site.<name>.<figure>`` (e.g. ``cross_site.montgomery.dice``
and its interval ``cross_site.montgomery.dice_ci_low`` / ``_ci_high``); the command line does the
same::

    python -m lunghelpers.evaluate RUN_DIR DATA_DIR [--name N] [--threshold T] [--limit N]
"""

import argparse
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lunghelpers import data, metrics, train

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
    - ``<key>_ci_low`` / ``<key>_ci_high`` for ``<split>_dice`` and each ``<split>_mean_iou``:
      the seeded 95 % bootstrap interval of that mean over images;
    - ``n_<split>``: number of images; ``threshold``: the headline threshold.

    Existing keys of ``metrics.json`` are kept; for ``split="val"`` the keys above replace the
    last epoch's training figures of the same name (those remain in ``history.csv``), so they
    then describe the saved best model.

    Args:
        run_dir: a run folder (``params.json``; ``model.keras`` unless ``model`` is given).
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
        model = keras.models.load_model(run.model_path, compile=False, safe_mode=True)
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
    from lunghelpers import judgement

    for key, column in ((f"{split}_dice", "dice"), (f"{split}_mean_iou", "iou"),
                        *((f"{split}_mean_iou{_suffix(t)}", "iou" + _suffix(t)) for t in others)):
        if column in table:
            summary[f"{key}_ci_low"], summary[f"{key}_ci_high"] = judgement.bootstrap_interval(table[column], seed=0)
    for column in table.columns:
        if column.startswith("dice_class"):
            summary[f"{split}_{column}"] = float(table[column].mean())
    run.update_metrics({**summary, "definitions": {
        f"{split}_*": f"the kept model (model.keras) on the {split} split: mean over images of per-image scores "
                      f"at threshold {headline:g} (accuracy: over all pixels)",
        f"{split}_*_ci_low / _ci_high": "seeded 95 % bootstrap interval of that mean over images",
    }})
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
            f"{run.path} is not a run folder: it has no params.json (written when a run starts)."
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


# ----------------------------------------------------------------------------------------------
# Cross-site evaluation: a finished run on another data folder

CROSS_SITE_FOLDER = "cross_site"
#: Dice bands of the cross-site gallery: the first catches failures a new site may bring.
CROSS_SITE_BANDS = ((0.0, 0.85), (0.85, 0.95), (0.95, 1.0))
CROSS_SITE_SCORES = ("dice", "iou", "precision", "recall")
#: Further per-image columns of a multi-class (left/right) model that get a mean and an interval.
CROSS_SITE_CLASS_SCORES = ("dice_class1", "dice_class2", "lung_dice")
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
_SITE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def cross_site_key(name, score):
    """The ``metrics.json`` key of one cross-site figure: ``cross_site.<name>.<score>``."""
    return f"{CROSS_SITE_FOLDER}.{name}.{score}"


def _site_name(name, data_dir):
    name = Path(data_dir).resolve().name if name is None else name
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ValueError(
            f"site name {name!r} must hold only letters, digits, '-' and '_' (it names the folder "
            "cross_site/<name> and the metrics.json keys cross_site.<name>.*): pass name= (--name)"
        )
    return name


def cross_site_summary(table, threshold=HEADLINE_THRESHOLD, seed=0, n=BOOTSTRAP_RESAMPLES,
                       level=CONFIDENCE_LEVEL):
    """Mean per-image scores of a per-image table with a seeded bootstrap interval for each.

    For every score column present (``dice``, ``iou``, ``precision``, ``recall``; for a left/right
    model also ``dice_class1`` = the patient's right lung, ``dice_class2`` = the left lung and
    ``lung_dice`` = any lung against any lung): ``<score>`` (the mean over images, each image
    weighing the same), ``<score>_ci_low`` and ``<score>_ci_high`` (percentile bootstrap interval
    of that mean over images, ``judgement.bootstrap_interval`` with ``seed``). Also
    ``dice_p10`` (the 10th percentile of the per-image Dice: how bad the worst tenth gets),
    ``n_images``, ``threshold`` (``None`` for a softmax model, which takes the argmax) and
    ``ci_level``.
    """
    from lunghelpers import judgement

    summary = {}
    for score in CROSS_SITE_SCORES + CROSS_SITE_CLASS_SCORES:
        if score in table:
            values = table[score].to_numpy(dtype=float)
            low, high = judgement.bootstrap_interval(values, seed=seed, n=n, level=level)
            summary[score] = float(np.mean(values))
            summary[f"{score}_ci_low"], summary[f"{score}_ci_high"] = low, high
    summary["dice_p10"] = float(np.percentile(table["dice"], 10))
    summary["n_images"] = int(len(table))
    summary["threshold"] = threshold
    summary["ci_level"] = level
    return summary


def evaluate_folder(run_dir, data_dir, name=None, threshold=None, limit=None, batch_size=16,
                    seed=0, progress=True):
    """Score a finished run on another data folder; write ``cross_site/<name>/`` in the run folder.

    The images get the run's own preprocessing from its ``params.json`` (``normalization``,
    ``image_size``, ``mask_mode``: a left/right run derives left/right labels from the folder's
    binary masks), exactly as ``data.load_pairs`` gave them to training, and are scored at the
    model's input size like the in-site split. Train and choose settings on the run's own data
    only: this folder is for measuring how the model holds up elsewhere.

    Writes, in ``<run_dir>/cross_site/<name>/``:

    - ``per_image.csv``: one row per image (``per_image_table`` at the threshold);
    - ``metrics.json``: ``cross_site_summary`` plus ``data_dir`` and ``run``;
    - ``gallery.png``: images from Dice bands ``CROSS_SITE_BANDS`` (failures included), truth
      and prediction, titled with the run, the site and the threshold;

    and merges the summary into the run's ``metrics.json`` as ``cross_site.<name>.<key>``, e.g.
    ``cross_site.montgomery.dice``, ``cross_site.montgomery.dice_ci_low``,
    ``cross_site.montgomery.dice_class1`` (replacing that site's keys of an earlier evaluation,
    keeping every other key).

    Args:
        run_dir: a finished run folder (``model.keras`` + ``params.json``).
        data_dir: a data folder in a layout of ``data.dataset_dirs`` (``cxr/`` + ``masks/``,
            ``2d_images/`` + ``2d_masks/``, ``images/`` + ``masks/``).
        name: the site's name (letters, digits, ``-``, ``_``); default the folder's name.
        threshold: binarisation of a sigmoid model; default the run's ``threshold`` (else 0.5).
        limit: score only the first ``limit`` pairs (quick looks, tests).
        seed: seed of the bootstrap intervals and of the gallery's choice of images.

    Returns:
        The summary dict as merged into ``metrics.json`` (prefixed keys).
    """
    from lunghelpers import plots, predict as prediction

    run = _existing_run(run_dir)
    name = _site_name(name, data_dir)
    predictor = prediction.load_predictor(run.path, threshold=threshold)
    params = train.read_json(run.params_path).get("params") or {}
    mask_mode = params.get("mask_mode") or ("binary" if predictor.n_classes == 1 else "left_right")
    image_dir, mask_dir = data.dataset_dirs(data_dir)
    images, masks, names = data.load_pairs(
        image_dir, mask_dir, image_size=predictor.image_size, mask_mode=mask_mode,
        normalization=predictor.normalization, window=predictor.window, limit=limit,
        progress=progress,
    )
    probabilities = predict(predictor.model, images, batch_size=batch_size)
    table = per_image_table(masks, probabilities, names, thresholds=(predictor.threshold,))
    site_threshold = predictor.threshold if predictor.n_classes == 1 else None
    summary = cross_site_summary(table, threshold=site_threshold, seed=seed)

    folder = run.path / CROSS_SITE_FOLDER / name
    train.write_csv(folder / "per_image.csv", table)
    train.write_json(folder / "metrics.json",
                     {"run": run.name, "data_dir": str(Path(data_dir).resolve()), **summary})
    selection = select_by_band(table, bands=CROSS_SITE_BANDS, column="dice", per_band=2, seed=seed)
    figure = plots.gallery_by_band(images, masks, probabilities, table, selection,
                                   threshold=predictor.threshold, column="dice", split=name)
    rule = f"threshold {predictor.threshold:g}" if site_threshold is not None else "argmax"
    figure.suptitle(f"model {run.name} on {name} ({len(table)} images, {rule}): "
                    f"mean Dice {summary['dice']:.3f}")
    plots.save_figure(figure, folder / "gallery.png")

    prefixed = {cross_site_key(name, key): value for key, value in summary.items()}
    stored = train.read_json(run.metrics_path) if run.metrics_path.exists() else {}
    stale = f"{CROSS_SITE_FOLDER}.{name}."
    stored = {key: value for key, value in stored.items() if not key.startswith(stale)}
    train.write_json(run.metrics_path, {**stored, **prefixed})
    return prefixed


def describe_cross_site(summary, name):
    """A few lines stating a cross-site summary (prefixed keys of ``evaluate_folder``)."""
    def value(key):
        return summary[cross_site_key(name, key)]

    def with_interval(key):
        return f"{value(key):.3f} ({value('ci_level'):.0%} interval {value(key + '_ci_low'):.3f}-" \
               f"{value(key + '_ci_high'):.3f})"

    threshold = value("threshold")
    rule = f"threshold {threshold:g}" if threshold is not None else "argmax of the classes"
    lines = [f"{name}: {value('n_images')} images, {rule}, mean per-image scores",
             *(f"  {key}: {with_interval(key)}" for key in CROSS_SITE_SCORES)]
    lines.append(f"  10th percentile of Dice: {value('dice_p10'):.3f}")
    labels = {"dice_class1": "right lung Dice (class 1)", "dice_class2": "left lung Dice (class 2)",
              "lung_dice": "any-lung Dice"}
    lines += [f"  {labels[key]}: {with_interval(key)}" for key in CROSS_SITE_CLASS_SCORES
              if cross_site_key(name, key) in summary]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None):
    """Command line: score a finished run on another data folder; returns the exit status."""
    parser = _Parser(
        prog="python -m lunghelpers.evaluate",
        description="Score a finished run on another data folder (e.g. another hospital's "
                    "X-rays) with the run's own preprocessing; writes RUN_DIR/cross_site/<name>/ "
                    "and the keys cross_site.<name>.* of RUN_DIR/metrics.json.",
    )
    parser.add_argument("run_dir", help="a finished run folder (model.keras + params.json)")
    parser.add_argument("data_dir", help="data folder: cxr/ + masks/, 2d_images/ + 2d_masks/ or images/ + masks/")
    parser.add_argument("--name", default=None, help="the site's name (default: DATA_DIR's folder name)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binarise a sigmoid output at probability > T (default: the run's, else 0.5)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N pairs")
    arguments = parser.parse_args(argv)
    try:
        name = _site_name(arguments.name, arguments.data_dir)
        summary = evaluate_folder(arguments.run_dir, arguments.data_dir, name=name,
                                  threshold=arguments.threshold, limit=arguments.limit)
    except (ValueError, OSError) as error:  # DataError and the predictor's errors are ValueErrors.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or a failing library: still one line, no traceback
        print(f"{parser.prog}: error: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"model {Path(arguments.run_dir).resolve().name} on {arguments.data_dir}")
    print(describe_cross_site(summary, name))
    print(f"written to {Path(arguments.run_dir) / CROSS_SITE_FOLDER / name}/ and "
          f"{Path(arguments.run_dir) / 'metrics.json'} (keys {CROSS_SITE_FOLDER}.{name}.*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
