"""What the numbers say, in words: small pure functions from numbers to Markdown sentences.

The lessons and the report do not build sentences with ``if``/``else`` in their cells: they pass
the numbers of a run to one of these functions and display the Markdown it returns. Each
function chooses among a few fixed readings (its *branches*), and every branch has a unit test
on made-up numbers (``tests/test_judgement.py``), so a sentence a student reads has been checked
for the case it describes, not only for the case quick data happens to take.

Conventions:

- a *history* is a DataFrame as Keras's ``CSVLogger`` writes ``history.csv``: one row per epoch,
  column ``epoch`` counting from 0, ``loss`` and ``val_loss``, optionally metrics (``dice``,
  ``val_dice``, ...) and ``learning_rate``. Every epoch a person reads here counts from 1, as
  Keras prints "Epoch 5/6";
- scores are floats in [0, 1], printed with three decimals;
- a diagnosis the data cannot support says so ("too few epochs to judge over-fitting") instead of
  guessing.

Nothing here imports TensorFlow, so the report can use it cheaply.
"""

import numpy as np
import pandas as pd

#: What the source of the CT assignment reported on its own (real) test split.
SOURCE_ACCURACY = 0.978
SOURCE_IOU = 0.82
SOURCE_THRESHOLD = 0.1
SOURCE_EPOCHS = 40

#: Over-fitting needs at least this many epochs to be judged.
MIN_EPOCHS = 5
#: ... the best epoch at least this many epochs before the end, and the validation loss of each
#: of these last epochs above its minimum by more than ``RISE_MARGIN`` (a fraction of the minimum).
PATIENCE = 3
RISE_MARGIN = 0.05
#: A validation loss above the training loss by more than this fraction of it is a gap to watch.
GAP_MARGIN = 0.25
#: Validation and training losses closer than this fraction of the training loss are "close".
CLOSE_MARGIN = 0.05


# ----------------------------------------------------------------------------------------------
# Helpers


def _epochs(history):
    """Epoch numbers counting from 1 (history's ``epoch`` column counts from 0)."""
    if "epoch" in history:
        return (history["epoch"].astype(int) + 1).to_numpy()
    return np.arange(1, len(history) + 1)


def _check_history(history, columns=("loss", "val_loss")):
    """Raise ValueError unless ``history`` is a non-empty DataFrame with ``columns``."""
    if not isinstance(history, pd.DataFrame) or history.empty:
        raise ValueError("history must be a non-empty DataFrame, one row per epoch (history.csv).")
    missing = [column for column in columns if column not in history]
    if missing:
        raise ValueError(
            f"history lacks the column(s) {missing}; it has {list(history.columns)}."
        )


def _plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _split_name(split):
    """'val' (the key prefix) read as 'validation'."""
    return {"val": "validation"}.get(split, split)


# ----------------------------------------------------------------------------------------------
# Learning curves (notebook 05, the report)


def progress(history, window=3, tolerance=0.01):
    """How the losses moved, where the validation loss bottomed out, and whether it still falls.

    Branches:

    - a single epoch: one point is no curve;
    - **still improving**: the lowest validation loss is at the last epoch and fell by more than
      ``tolerance`` (a fraction of it) over the last ``window`` epochs: more epochs may help;
    - **levelled off**: the lowest validation loss is within the last ``window`` epochs but it
      changed by less than that;
    - **stopped improving**: the lowest validation loss came ``window`` or more epochs before the
      end; ``model.keras`` keeps that epoch.
    """
    _check_history(history)
    epochs = _epochs(history)
    loss, val_loss = history["loss"].to_numpy(float), history["val_loss"].to_numpy(float)
    n = len(history)
    if n == 1:
        return (
            f"After its single epoch the training loss is {loss[0]:.3f} and the validation loss "
            f"{val_loss[0]:.3f}: one point is no curve, so train longer to see a trend."
        )
    best = int(np.nanargmin(val_loss))
    course = (
        f"Over {n} epochs the training loss went from {loss[0]:.3f} to {loss[-1]:.3f} and the "
        f"validation loss from {val_loss[0]:.3f} to {val_loss[-1]:.3f}."
    )
    start = max(0, n - 1 - window)
    change = val_loss[-1] - val_loss[start]
    span = f"epochs {epochs[start]}-{epochs[-1]}"
    if best == n - 1 and -change > tolerance * val_loss[best]:
        return (
            f"{course} The validation loss was **still improving at the end**: it fell by "
            f"{-change:.3f} over {span} and is lowest at the last epoch (epoch {epochs[-1]} of {n}). "
            "More epochs may help."
        )
    if best >= n - window:
        return (
            f"{course} The validation loss had **levelled off**: it is lowest ({val_loss[best]:.3f}) "
            f"at epoch {epochs[best]} of {n} and changed by only {change:+.3f} over {span}."
        )
    return (
        f"{course} The validation loss **stopped improving** after epoch {epochs[best]} of {n} "
        f"(its lowest, {val_loss[best]:.3f}), {_plural(n - 1 - best, 'epoch')} before the end; "
        f"`model.keras` keeps epoch {epochs[best]}'s weights."
    )


def overfitting(history, min_epochs=MIN_EPOCHS, patience=PATIENCE, rise_margin=RISE_MARGIN,
                gap_margin=GAP_MARGIN, close_margin=CLOSE_MARGIN):
    """Is the run over-fitting? A diagnosis from the training and validation loss.

    One epoch whose validation loss rises is noise, not over-fitting. The branches:

    - **too few epochs** (fewer than ``min_epochs``): too few to judge;
    - **over-fitting**: the lowest validation loss came at least ``patience`` epochs before the
      end, each of the last ``patience`` validation losses lies more than ``rise_margin`` (a
      fraction) above that minimum, and the training loss is lower at the end than at the best
      epoch;
    - **a gap to watch**: the validation loss ends more than ``gap_margin`` (a fraction of the
      training loss) above the training loss, without a sustained rise (yet);
    - **validation below training** by more than ``close_margin`` (a fraction of the training
      loss): common when the training batches are augmented and dropout is active only in training;
    - **close curves**: no sign of over-fitting.
    """
    _check_history(history)
    epochs = _epochs(history)
    loss, val_loss = history["loss"].to_numpy(float), history["val_loss"].to_numpy(float)
    n = len(history)
    if n < min_epochs:
        return (
            f"**Too few epochs to judge over-fitting**: {_plural(n, 'epoch')} cannot show a "
            f"sustained rise of the validation loss (it takes at least {min_epochs})."
        )
    best = int(np.nanargmin(val_loss))
    minimum = val_loss[best]
    tail = val_loss[-patience:]
    gap = val_loss[-1] - loss[-1]
    if n - 1 - best >= patience and np.all(tail > minimum * (1 + rise_margin)) and loss[-1] < loss[best]:
        return (
            f"**Over-fitting**: the validation loss reached its minimum, {minimum:.3f}, at epoch "
            f"{epochs[best]} of {n} and stayed more than {rise_margin:.0%} above it over the last "
            f"{patience} epochs (ending at {val_loss[-1]:.3f}), while the training loss kept falling, "
            f"from {loss[best]:.3f} to {loss[-1]:.3f}. The model has begun to learn its training "
            f"images rather than lungs; `model.keras` keeps epoch {epochs[best]}'s weights."
        )
    if gap > gap_margin * loss[-1]:
        earlier = max(0, n - 1 - patience)
        return (
            f"**A gap to watch**: the validation loss ends {gap:.3f} above the training loss "
            f"(it was {val_loss[earlier] - loss[earlier]:+.3f} at epoch {epochs[earlier]}), but it "
            "has not risen for several epochs: no over-fitting yet, though more epochs could tip "
            "the run into it."
        )
    if gap < -close_margin * loss[-1]:
        return (
            f"**Validation below training**: the validation loss ends {-gap:.3f} below the training "
            "loss. That is common when the training batches are augmented (harder than the plain "
            "validation images) and dropout is active only during training: no sign of over-fitting."
        )
    return (
        f"**Close curves**: the validation loss ends {gap:+.3f} from the training loss and has not "
        f"risen for several epochs: no sign of over-fitting over {n} epochs."
    )


def schedule_effect(history, schedule=None, hold_epochs=20):
    """What the learning-rate schedule did in this run, from the ``learning_rate`` column.

    Branches by ``schedule``:

    - ``"source"``, run longer than ``hold_epochs``: the rate held, then fell tenfold per epoch,
      and how much the training loss still moved before and after the drop (two readings: the
      decayed epochs barely trained, or they still settled the weights);
    - ``"source"``, run of at most ``hold_epochs``: the rate never changed;
    - ``"plateau"``: how many times (and at which epochs) ReduceLROnPlateau lowered the rate;
    - ``"cosine"``: the smooth decay; ``"constant"``: one rate throughout;
    - anything else (``None``): first and last rate only.
    """
    _check_history(history, ("loss", "learning_rate"))
    epochs = _epochs(history)
    rates = history["learning_rate"].to_numpy(float)
    loss = history["loss"].to_numpy(float)
    n = len(history)
    if schedule == "source" and n > hold_epochs:
        drop = epochs[hold_epochs]
        before = loss[max(0, hold_epochs - 4)] - loss[hold_epochs - 1]
        after = loss[hold_epochs - 1] - loss[-1]
        text = (
            f"The source schedule held {rates[0]:g} for epochs 1-{hold_epochs}, then multiplied the "
            f"rate by 0.1 each epoch: {rates[hold_epochs]:.0e} at epoch {drop} and {rates[-1]:.0e} at "
            f"epoch {epochs[-1]}. The training loss fell by {before:+.4f} over the last epochs before "
            f"the drop and by {after:+.4f} over all {n - hold_epochs} epochs after it"
        )
        if abs(after) < abs(before):
            return text + (
                f": a step of {rates[-1]:.0e} times the gradient moves a weight by practically "
                f"nothing, so from about epoch {drop + 2} on the model is frozen and what still "
                "moves is the augmentation's randomness."
            )
        return text + (
            ": the first decayed epochs (a tenth and a hundredth of the rate) still settled the "
            "weights noticeably."
        )
    if schedule == "source":
        return (
            f"This run has {_plural(n, 'epoch')}, no more than the {hold_epochs} for which the source "
            f"schedule holds its initial rate, so the rate stayed at {rates[0]:g}. At full length "
            f"(40 epochs) it drops tenfold each epoch from epoch {hold_epochs + 1} on, and training "
            f"effectively stops around epoch {hold_epochs + 3}."
        )
    if schedule == "plateau":
        lowered = [int(epochs[i]) for i in range(1, n) if rates[i] < rates[i - 1] * (1 - 1e-6)]
        if not lowered:
            return (
                f"ReduceLROnPlateau never lowered the rate ({rates[0]:g} for all {n} epochs): the "
                "validation loss kept improving often enough."
            )
        return (
            f"ReduceLROnPlateau lowered the rate {_plural(len(lowered), 'time')} (from epoch "
            f"{', '.join(map(str, lowered))} on), each time after validation losses that had stopped "
            f"improving: from {rates[0]:g} to {rates[-1]:.0e}."
        )
    if schedule == "cosine":
        middle = n // 2
        return (
            f"The cosine schedule lowered the rate smoothly from {rates[0]:g} at epoch 1 to "
            f"{rates[middle]:.1e} at epoch {epochs[middle]} and {rates[-1]:.1e} at epoch {epochs[-1]}: "
            "large steps early, small ones to settle at the end."
        )
    if schedule == "constant":
        return f"The rate stayed at {rates[0]:g} for all {n} epochs (constant schedule)."
    return f"The learning rate went from {rates[0]:.0e} at epoch 1 to {rates[-1]:.0e} at epoch {epochs[-1]}."


def accuracy_vs_overlap(accuracy, overlap, metric="Dice", split="validation", threshold=0.5):
    """Read a pixel accuracy beside an overlap score (Dice or IoU) of the same predictions.

    Branches:

    - **background dominates**: high accuracy (>= 0.9) with an overlap below 0.5: the model
      still calls most lung pixels background, and accuracy is flattered by the background;
    - **both low**: accuracy below 0.9 and overlap below 0.5: the model has not learned yet;
    - **overlap good**: overlap of 0.5 or more: it counts only the lung, the stricter score.
    """
    numbers = (
        f"{_split_name(split).capitalize()} pixel accuracy {accuracy:.3f}, {metric} {overlap:.3f} "
        f"(threshold {threshold:g})"
    )
    if overlap < 0.5 and accuracy >= 0.9:
        return (
            f"{numbers}: **high accuracy with a low {metric} means the background dominates**. Most "
            "pixels are background, so a model that still misses most of the lung scores a high "
            f"pixel accuracy; {metric} counts only the lung and shows it."
        )
    if overlap < 0.5:
        return (
            f"{numbers}: both are low, so the model has not learned to find the lung yet; train "
            "longer or check the data."
        )
    return (
        f"{numbers}: {metric} counts only the lung, so it is the stricter of the two; a good {metric} "
        "means the lung itself is found, which accuracy alone cannot tell."
    )


def learning_curves(history, schedule=None, hold_epochs=20):
    """The full reading of a training history: progress, over-fitting, Dice, schedule.

    Paragraphs (Markdown, blank-line separated): ``progress`` and ``overfitting``; then
    ``accuracy_vs_overlap`` of the last epoch when the history has ``val_accuracy`` and
    ``val_dice``; then ``schedule_effect`` when it has ``learning_rate``.
    """
    paragraphs = [progress(history), overfitting(history)]
    if {"val_accuracy", "val_dice"} <= set(history.columns):
        last = history.iloc[-1]
        paragraphs.append(
            f"At the last epoch ({_epochs(history)[-1]}): "
            + accuracy_vs_overlap(last["val_accuracy"], last["val_dice"], "Dice", "validation")
        )
    if "learning_rate" in history:
        paragraphs.append(schedule_effect(history, schedule, hold_epochs))
    return "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------------------------
# Evaluation (notebook 06)


def evaluation_split(split, n_images):
    """Which split a run is evaluated on: the test split, or validation for runs without one.

    Branches: ``"test"``; anything else (``"val"``), the lab's 80/20 split without a test part,
    whose validation images also chose the best epoch.
    """
    if split == "test":
        return f"Evaluating on the **test** split: {n_images} images that took no part in training."
    return (
        f"This run's split has **no test part** (the lab's 80/20 split), so we evaluate on the "
        f"**validation** split ({n_images} images). It also chose the best epoch, so the figures "
        "are a little optimistic."
    )


def empty_prediction(lung_share, accuracy, iou, background_accuracy, background_iou, split="test",
                     n_without_lung=0, threshold=0.5):
    """Our model against a prediction of background everywhere: why IoU beats pixel accuracy.

    ``accuracy`` and ``iou`` are the model's on the split, ``background_*`` those of the
    all-background prediction, ``lung_share`` the share of lung pixels in the split. Branches:

    - the model's IoU is more than 0.3 above the empty prediction's: the accuracy scale is
      squeezed into the few per cent of lung pixels, IoU uses its whole range;
    - it is not: the model has not learned to find the lung, which accuracy hides;

    and, in the first sentence, whether the empty prediction even beats the model's accuracy,
    and whether lung-free images score 1 under the empty-mask rule.
    """
    split = _split_name(split)
    comparison = "higher than" if background_accuracy > accuracy else "against"
    lung_free = (
        f"every {split} image contains lung, so each scores 0" if n_without_lung == 0 else
        f"{_plural(n_without_lung, 'lung-free image')} score 1 under the empty-mask rule, all others 0"
    )
    text = (
        f"Lung makes up {lung_share:.1%} of the {split} pixels, so predicting *background everywhere* "
        f"scores a pixel accuracy of **{background_accuracy:.3f}**, {comparison} our model's "
        f"{accuracy:.3f}, for a prediction that finds no lung at all. Its mean IoU is "
        f"**{background_iou:.3f}** ({lung_free}), against our model's {iou:.3f} at threshold {threshold:g}. "
    )
    if iou > background_iou + 0.3:
        return text + (
            f"Our model beats the empty prediction by {iou - background_iou:.3f} in IoU but by only "
            f"{accuracy - background_accuracy:.3f} in pixel accuracy: the accuracy scale is squeezed "
            "into the few per cent of lung pixels, while IoU uses its whole range for them. That is "
            "why we report IoU."
        )
    return text + (
        "Our model's IoU is barely above the empty prediction's: it has not learned to find the lung "
        "yet, which its pixel accuracy hides but IoU shows at once."
    )


def held_out_gap(train_accuracy, held_out_accuracy, split="test", in_file_order=False,
                 tolerance=0.02):
    """Training-batch pixel accuracy at the best epoch against the held-out accuracy of that model.

    Branches: a gap of more than ``tolerance`` (with a note when the split follows file order, so
    the test images are the last slices), or none worth mentioning.
    """
    split = _split_name(split)
    gap = train_accuracy - held_out_accuracy
    numbers = (
        f"Training-batch pixel accuracy at the best epoch was {train_accuracy:.3f}, the {split} "
        f"pixel accuracy of that model is {held_out_accuracy:.3f}"
    )
    if gap <= tolerance:
        return f"{numbers}: no gap worth mentioning between training and unseen images."
    order = (
        " The split follows file order, so the test part holds the last slices, which may differ "
        "from the first ones." if in_file_order and split == "test" else ""
    )
    return (
        f"{numbers}: the {split} images trail by {gap:.3f}, a gap the loss curves alone do not show; "
        f"the per-image table tells which images are responsible.{order}"
    )


def source_comparison(accuracy, iou_at_source_threshold, split="test", synthetic=True, epochs=None,
                      n_images=None, history=None, schedule=None, threshold=0.5, dataset="ct",
                      tolerance=0.005):
    """This run's figures against those the source reported on its real test split.

    The source reported a pixel accuracy of 0.978 and a mean IoU of 0.82 (threshold 0.1) on its
    test split. Branches:

    - **another dataset** (``dataset`` other than ``"ct"``, e.g. the lab's X-rays): the source's
      figures are for CT slices;
    - **synthetic data**: the figures are not comparable (other images);
    - **a shorter run** (``epochs`` below the source's 40, e.g. quick mode): not comparable;
    - **another split** (validation): not the same kind of figure;
    - **as good** (within ``tolerance`` or better): the recipe reproduces;
    - **below**: the reasons that could explain the gap: the schedule (when ``schedule`` is
      ``"source"`` and the ``history`` shows epochs at a hundredth of the start rate or less),
      the split and its size, and how the files are read.

    ``threshold`` is the one ``accuracy`` was measured at.
    """
    numbers = (
        f"This run: pixel accuracy **{accuracy:.3f}** at threshold {threshold:g}, mean IoU "
        f"**{iou_at_source_threshold:.3f}** at "
        f"threshold {SOURCE_THRESHOLD:g} on the {_split_name(split)} split; the source reported "
        f"{SOURCE_ACCURACY} and {SOURCE_IOU} on its real test split."
    )
    if dataset != "ct":
        return (
            f"{numbers} This run segments {dataset} images, the source CT slices: **the figures are "
            "not comparable**."
        )
    if synthetic:
        return (
            f"{numbers} This run used the embedded synthetic phantoms, not the real CT slices, so "
            "**the figures are not comparable**: they only share an order of magnitude. Set "
            "`DATA_DIR` to the real data for a like-for-like comparison."
        )
    if epochs is not None and epochs < SOURCE_EPOCHS:
        return (
            f"{numbers} This run trained {_plural(epochs, 'epoch')}, the source {SOURCE_EPOCHS}, so "
            "**the figures are not comparable**; run at full length to compare."
        )
    if split != "test":
        return (
            f"{numbers} This run has no test split and is scored on validation images, which also "
            "chose its best epoch: **not the same kind of figure** as the source's."
        )
    if accuracy >= SOURCE_ACCURACY - tolerance and iou_at_source_threshold >= SOURCE_IOU - tolerance:
        return f"{numbers} **As good as the source's figures**: the recipe reproduces on the real slices."
    reasons = []
    if schedule == "source" and history is not None and "learning_rate" in history:
        rates = history["learning_rate"].to_numpy(float)
        # float32 holds 1e-5 as 9.99999975e-06: compare with a little room.
        frozen = np.flatnonzero(rates <= 0.0101 * rates[0])
        if len(frozen):
            reasons.append(
                f"**the schedule**: from epoch {_epochs(history)[frozen[0]]} on the learning rate is at "
                f"most a hundredth of its start and keeps falling tenfold per epoch, so the last "
                f"{len(frozen)} of {len(history)} epochs hardly change the weights; a schedule that "
                "decays slowly keeps learning"
            )
    images = f"with {n_images} test images " if n_images else ""
    reasons.append(
        f"**the split**: the source's own split and seed are unknown, and {images}a few hard images "
        "move the mean"
    )
    reasons.append(
        "**reading the files**: old OpenCV builds read these signed 16-bit TIFFs as unsigned, which "
        "changes what min-max scaling makes of them; which build the source used is unknown"
    )
    return (
        f"{numbers} **Below the source's figures** (accuracy {SOURCE_ACCURACY - accuracy:+.3f} short). "
        "We cannot rerun the source, but these differences could explain it:\n\n"
        + "\n".join(f"- {reason}" for reason in reasons)
    )


def threshold_choice(iou_low, iou_high, low=SOURCE_THRESHOLD, high=0.5, split="test", tolerance=0.005):
    """Mean IoU at the source's low threshold against the headline threshold.

    Branches: neither finds much lung (both below 0.1); the low threshold gains more than
    ``tolerance`` (the model is under-confident at the lung's edges); it costs more than that
    (it adds uncertain background); the threshold barely matters.
    """
    numbers = (
        f"Binarised at {low:g}, the mean {_split_name(split)} IoU is **{iou_low:.3f}**; at {high:g} it "
        f"is **{iou_high:.3f}**."
    )
    if max(iou_low, iou_high) < 0.1:
        return f"{numbers} Neither threshold finds much lung: the model has not learned the task yet."
    if iou_low > iou_high + tolerance:
        return (
            f"{numbers} The low threshold gains {iou_low - iou_high:.3f}: many lung pixels get "
            f"probabilities between {low:g} and {high:g}, so this model is under-confident at the "
            "lung's edges."
        )
    if iou_high > iou_low + tolerance:
        return (
            f"{numbers} The low threshold costs {iou_high - iou_low:.3f}: it adds background pixels the "
            f"model was unsure about, so {high:g} is the better choice here."
        )
    return f"{numbers} The threshold barely matters here: the two differ by less than {tolerance:g}."


def threshold_reading(sweep, uncertain_share=None, split="test", flat=0.02):
    """Read a threshold sweep (``evaluate.threshold_sweep``: threshold, mean_iou, ...).

    ``uncertain_share`` is the share of pixels with a probability between 0.1 and 0.9. Branches:

    - the model finds almost no lung at any threshold (best mean IoU below 0.1);
    - a **flat** curve (the mean IoU varies by less than ``flat``): the threshold hardly matters;
    - a curve that is not flat: the threshold changes the masks; tune it on validation, not test.
    """
    if not isinstance(sweep, pd.DataFrame) or not {"threshold", "mean_iou"} <= set(sweep.columns):
        raise ValueError("sweep must be a DataFrame with columns threshold and mean_iou (threshold_sweep).")
    split = _split_name(split)
    best = sweep.loc[sweep["mean_iou"].idxmax()]
    spread = sweep["mean_iou"].max() - sweep["mean_iou"].min()
    text = (
        f"The mean {split} IoU peaks at threshold **{best['threshold']:.2f}** ({best['mean_iou']:.3f}) "
        f"and varies by {spread:.3f} across thresholds {sweep['threshold'].min():.2f}-"
        f"{sweep['threshold'].max():.2f}"
    )
    if uncertain_share is not None:
        text += f"; {uncertain_share:.1%} of the {split} pixels have a probability between 0.1 and 0.9"
    if best["mean_iou"] < 0.1:
        return text + (
            ". The model finds almost no lung at any threshold, so there is nothing to choose "
            "between: it needs more training first."
        )
    if spread < flat:
        return text + ". **A flat curve**: the model is confident almost everywhere, so the threshold hardly matters."
    return text + (
        ". **The curve is not flat**: enough pixels sit at intermediate probabilities for the "
        f"threshold to change the masks. Picking the best threshold on the {split} split would be "
        "tuning on it; choose it on the validation split if you want to tune it."
    )


def segmentation_errors(precision, recall, who="these images", tolerance=0.02):
    """Whether a model mostly misses lung (recall below precision) or adds it (the reverse).

    Branches: misses (blue in the overlays), adds (red), balanced (within ``tolerance``).
    """
    numbers = f"precision {precision:.3f}, recall {recall:.3f}"
    if recall < precision - tolerance:
        return f"On {who} the model mostly **misses** lung ({numbers}; blue in the overlays)."
    if precision < recall - tolerance:
        return f"On {who} the model mostly **adds** lung that is not there ({numbers}; red in the overlays)."
    return f"On {who} the model misses about as much lung as it adds ({numbers})."


def per_image_spread(table, split="test", n_worst=5, threshold=0.5):
    """The spread of per-image IoU, and what the worst images have in common.

    ``table`` is the per-image table (columns iou, precision, recall, target_fraction,
    predicted_fraction). Branches: no image reaches an IoU of 0.1 (nothing sets the worst apart);
    the worst images hold clearly less lung than the median image (below 80 % of it: the same
    border error weighs more on a small union) or not; then ``segmentation_errors`` of them.
    """
    split = _split_name(split)
    worst = table.nsmallest(n_worst, "iou")
    worst_share, median_share = worst["target_fraction"].mean(), table["target_fraction"].median()
    spread = (
        f"At threshold {threshold:g} the per-image {split} IoU ranges from {table['iou'].min():.3f} to "
        f"{table['iou'].max():.3f} (median {table['iou'].median():.3f})."
    )
    if table["iou"].max() < 0.1:
        return (
            f"{spread} No image reaches an IoU of 0.1: the model finds almost no lung anywhere, so the "
            "worst images are no different from the others; it needs more training first. "
            + segmentation_errors(table["precision"].mean(), table["recall"].mean(), f"the {split} images")
        )
    text = (
        f"{spread} The {len(worst)} worst images hold {worst_share:.1%} lung on average against a "
        f"median of {median_share:.1%}"
    )
    if worst_share < 0.8 * median_share:
        text += ", so small lungs are over-represented among them: the same border errors weigh more on a small union."
    else:
        text += ", so they are not simply the images with little lung."
    return (
        f"{text} Their predictions cover {worst['predicted_fraction'].mean():.1%} of the image. "
        + segmentation_errors(worst["precision"].mean(), worst["recall"].mean(), "them")
    )


# ----------------------------------------------------------------------------------------------
# IoU bands (notebook 07)


def _band_label(band):
    low, high = band
    return f"[{low:.2f}, {high:.2f}{']' if high >= 1.0 else ')'}"


def band_summary(counts, n_below, split="test", threshold=0.5):
    """How the images fall into the IoU bands; an empty band is said plainly.

    ``counts`` is ``{(low, high): number of images}`` in band order, ``n_below`` the images under
    the lowest band. Branches: every band holds images; some band is empty (each empty one named);
    no image reaches the lowest band.
    """
    split = _split_name(split)
    total = n_below + sum(counts.values())
    lowest = min(low for low, _ in counts)
    parts = ", ".join(f"{count} in {_band_label(band)}" for band, count in counts.items())
    text = (
        f"Of the {total} {split} images (IoU at threshold {threshold:g}), {n_below} score below "
        f"{lowest:.2f}, {parts}."
    )
    empty = [band for band, count in counts.items() if count == 0]
    if len(empty) == len(counts):
        return text + (
            f" **No {split} image reaches IoU {lowest:.2f}**: every band is empty, so the band gallery "
            "has no image to show; the run's worst, median and best images show what it does."
        )
    if empty:
        return text + " " + " ".join(
            f"**No {split} image has an IoU in {_band_label(band)}**: that band is empty." for band in empty
        )
    return text + " Every band holds at least one image."


def band_comparison(groups, split="test"):
    """Compare the lowest and the highest group of images by IoU.

    ``groups`` is a DataFrame indexed by group label (lowest first), with columns images,
    mean_iou, lung_fraction, predicted_fraction, precision and recall (only groups that hold
    images). Branches: a single group (nothing to compare); the low group shows less lung
    than the high one, or not; then ``segmentation_errors`` of the lowest group.
    """
    split = _split_name(split)
    low_label, high_label = groups.index[0], groups.index[-1]
    low, high = groups.iloc[0], groups.iloc[-1]
    errors = segmentation_errors(low["precision"], low["recall"], f"the images {low_label}")
    if len(groups) == 1:
        return (
            f"All {int(low['images'])} {split} images fall in one group, {low_label} (mean IoU "
            f"{low['mean_iou']:.3f}), so there is nothing to compare between bands. {errors}"
        )
    text = (
        f"Images {low_label} hold {low['lung_fraction']:.1%} lung on average, those in {high_label} "
        f"{high['lung_fraction']:.1%}. "
    )
    if low["lung_fraction"] < high["lung_fraction"]:
        text += (
            "The low-IoU images show less lung: the same border errors weigh more on a small union, so "
            "slices near the top or bottom of the lungs tend to score worst. "
        )
    else:
        text += (
            "The low-IoU images do not show less lung, so their size does not explain their scores; "
            "the gallery shows what does. "
        )
    return text + errors


# ----------------------------------------------------------------------------------------------
# Comparing runs (notebooks 08-10, the report)


def bootstrap_interval(values, seed=0, n=2000, level=0.95):
    """Percentile bootstrap interval of the mean of ``values``: ``(low, high)``.

    Draws ``n`` resamples of the values with replacement (seeded, so the interval repeats), takes
    each resample's mean and returns the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    those means. NaN values are dropped; at least one value is needed.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one value that is not NaN.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(int(n), values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _difference_interval(scores_a, scores_b, seed, n, level):
    """Bootstrap interval of mean(a) - mean(b), and whether it was paired image by image.

    Paired when both are Series over the same index (image names), or when neither pair is two
    Series and both have the same length; otherwise each run is resampled on its own.
    """
    both_series = isinstance(scores_a, pd.Series) and isinstance(scores_b, pd.Series)
    if both_series and set(scores_a.index) == set(scores_b.index):
        return bootstrap_interval(scores_a - scores_b.reindex(scores_a.index), seed, n, level), True
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not both_series and a.shape == b.shape:
        return bootstrap_interval(a - b, seed, n, level), True
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, a.size, size=(int(n), a.size))].mean(axis=1)
    means_b = b[rng.integers(0, b.size, size=(int(n), b.size))].mean(axis=1)
    low, high = np.quantile(means_a - means_b, [(1 - level) / 2, (1 + level) / 2])
    return (float(low), float(high)), False


def compare_runs(name_a, scores_a, name_b, scores_b, metric="dice", split="test", seed=0, n=2000,
                 level=0.95):
    """Compare two runs' per-image scores: the mean difference and its bootstrap interval.

    ``scores_a`` and ``scores_b`` are per-image scores (e.g. the ``dice`` column of each run's
    ``per_image.csv``). Scores of the same images (equal-length arrays, or Series with the same
    index, e.g. indexed by image name) are compared pairwise, image by image; otherwise each run
    is resampled on its own. Branches: the ``level`` interval of the difference contains 0
    (**within the noise**), or lies above or below 0 (one run is better).
    """
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"compare_runs needs scores for both runs ({name_a}: {a.size}, {name_b}: {b.size}).")
    (low, high), paired = _difference_interval(scores_a, scores_b, seed, n, level)
    difference = np.nanmean(a) - np.nanmean(b)
    how = f"paired over {a.size} {_split_name(split)} images" if paired else (
        f"over {a.size} and {b.size} {_split_name(split)} images")
    numbers = (
        f"Mean {_metric_words(split, metric)}: {name_a} {np.nanmean(a):.3f}, {name_b} "
        f"{np.nanmean(b):.3f}, a difference of {difference:+.3f} ({level:.0%} bootstrap interval "
        f"{low:+.3f} to {high:+.3f}, {how})."
    )
    if low <= 0 <= high:
        return (
            f"{numbers} The interval contains 0: the difference is **within the noise** of these "
            f"images, so neither {name_a} nor {name_b} is shown to be better."
        )
    better, worse = (name_a, name_b) if low > 0 else (name_b, name_a)
    return f"{numbers} The interval excludes 0: **{better} is better than {worse}** beyond the noise."


def _metric_words(split, metric):
    """'test Dice', 'validation IoU': the words for a metric on a split."""
    words = {"dice": "Dice", "iou": "IoU", "accuracy": "pixel accuracy"}
    return f"{_split_name(split)} {words.get(metric, metric)}"


# ----------------------------------------------------------------------------------------------
# Lab and robustness study (notebooks 08-10)

#: A run whose mean per-image score is below this has not learned to find the lungs yet.
LEARNED_SCORE = 0.5


def _names(names):
    """'1a', '1a and 1b', '1a, 1b and 1c'."""
    names = [str(name) for name in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def compare_settings(question, name_a, scores_a, name_b, scores_b, metric="dice", split="val",
                     min_score=LEARNED_SCORE, seed=0, n=2000, level=0.95):
    """Answer a lab question ("Cross-entropy or Dice?") from two runs' per-image scores.

    ``scores_a`` and ``scores_b`` are per-image scores of the same images (Series indexed by image
    name compare image by image). Branches:

    - **not learned yet**: a run's mean score is below ``min_score``: the pair cannot answer the
      question, whatever the difference (the means are still given);
    - otherwise the reading of :func:`compare_runs`: the difference is within the noise of these
      images (its bootstrap interval contains 0), or one run is better beyond the noise.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"compare_settings needs scores for both runs ({name_a}: {a.size}, {name_b}: {b.size}).")
    weak = [name for name, scores in ((name_a, a), (name_b, b)) if np.nanmean(scores) < min_score]
    if weak:
        return (
            f"**{question}** Mean {_metric_words(split, metric)}: {name_a} {np.nanmean(a):.3f}, {name_b} "
            f"{np.nanmean(b):.3f}. {_names(weak)} {'has' if len(weak) == 1 else 'have'} **not learned to "
            f"find the lungs yet** (below {min_score:g}), so this pair cannot answer the question: train "
            "longer (full scale) and compare again."
        )
    return f"**{question}** " + compare_runs(name_a, scores_a, name_b, scores_b, metric=metric, split=split,
                                             seed=seed, n=n, level=level)


def _reference_range(reference):
    """``(low, high)`` of a reference figure (0.99, or the text "0.95-0.97"), or None if it is prose."""
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return float(reference), float(reference)
    try:
        low, high = (float(part) for part in str(reference).split("-"))
    except ValueError:
        return None
    return low, high


def against_reference(name, value, reference, metric="validation Dice", synthetic=True, quick=False,
                      tolerance=0.01):
    """One run's figure against the figure its recipe's source reported on the source's own data.

    ``reference`` is a number (0.99), a range as text ("0.95-0.97") or a reading in words
    ("0.665 then 0.637"). Branches, in this order:

    - **quick mode**: a few epochs on small images: not comparable;
    - **synthetic data**: other images than the source's: not comparable;
    - a reference in words: both figures side by side, for the reader to judge;
    - **matches** (within ``tolerance`` of the reference or its range);
    - **above** the reference; **below** it (check the epochs and the learning curves first).
    """
    numbers = f"**{name}**: {metric} {value:.3f}; the source reported {reference} on its own images."
    if quick:
        return (
            f"{numbers} Quick mode trains a few epochs on small images, so **the figures are not "
            "comparable**: run at full scale (`QUICK = False`) to compare."
        )
    if synthetic:
        return (
            f"{numbers} This run used the embedded synthetic images, so **the figures are not "
            "comparable**: set `DATA_DIR` to the real data for a like-for-like comparison."
        )
    interval = _reference_range(reference)
    if interval is None:
        return f"{numbers} The reference is a reading, not one figure: compare the two by eye."
    low, high = interval
    if low - tolerance <= value <= high + tolerance:
        return f"{numbers} **It matches** (within {tolerance:g}): the recipe reproduces on these images."
    if value > high:
        return f"{numbers} **It is above** the source's figure by {value - high:.3f}."
    return (
        f"{numbers} **It is below** the source's figure by {low - value:.3f}: check the epochs completed and "
        "the learning curves before blaming the recipe."
    )


def side_confusion(swapped_share, dice_right, dice_left, lung_dice, split="val",
                   min_score=LEARNED_SCORE, tolerance=0.01):
    """How often a left/right model gives one lung's pixels to the other lung.

    ``swapped_share`` is the mean, over the two lungs, of the share of a lung's pixels predicted
    as the other lung; ``lung_dice`` scores any lung against any lung. Branches: the model has not
    learned the lungs yet (``lung_dice`` below ``min_score``); it practically never swaps the
    sides (below ``tolerance``); it does, which only the per-lung Dice shows.
    """
    numbers = (
        f"On the {_split_name(split)} images the left/right model gives {swapped_share:.1%} of a lung's "
        f"pixels to the other lung; per lung its Dice is {dice_right:.3f} (right) and {dice_left:.3f} "
        f"(left), with both lungs merged {lung_dice:.3f}."
    )
    if lung_dice < min_score:
        return (
            f"{numbers} It has **not learned to find the lungs yet** (merged Dice below {min_score:g}), so "
            "its side confusion says nothing yet."
        )
    if swapped_share < tolerance:
        return (
            f"{numbers} It **practically never confuses the sides**: its per-lung scores are limited by "
            "the outlines, as the one-class model's are."
        )
    return (
        f"{numbers} That is **a real share of side confusion**, which the merged lung Dice does not see "
        "and the per-lung Dice does: the model has not yet learned which side is which."
    )


def derived_labels(n_masks, n_exact, dice_right, dice_left, n_split_at_centre):
    """How far left/right labels derived from a one-class mask agree with annotated ones.

    Branches: every derived mask equals the annotation; some differ, with masks that had a single
    lung-sized region and were split at the image's centre column; some differ without such a
    split (islands given to the nearer lung).
    """
    numbers = (
        f"Derived from the {n_masks} masks with both lungs merged, the labels equal the annotation on "
        f"{n_exact} of them; the mean Dice against the annotation is {dice_right:.3f} for the right and "
        f"{dice_left:.3f} for the left lung."
    )
    if n_exact == n_masks:
        return (
            f"{numbers} **The rule never had to guess**: the lungs never touch in these masks. Real scans "
            "are less kind, which is why derived labels must be called derived."
        )
    if n_split_at_centre:
        return (
            f"{numbers} {_plural(n_split_at_centre, 'mask')} had a single lung-sized region (the lungs "
            "touch) and **were split at the image's centre column**, wherever the patient's midline lies: "
            "the labels there are a guess, and nothing in them says so."
        )
    return (
        f"{numbers} No mask was split at the centre: the differences come from **small islands given to "
        "the nearer lung**, a wrong side for a whole structure at little cost in Dice."
    )


def size_sweep(scores, split="val", min_score=LEARNED_SCORE, seed=0, n=2000, level=0.95, images="slices"):
    """How many training images the study's model needs, from the sweep's per-image scores.

    ``scores`` is ``{training images: per-image scores}``, every run scored on the same images
    (Series indexed by image name are compared image by image). The run with the best mean is the
    reference; a size whose difference to it has a bootstrap interval containing 0 is *within the
    noise* of the best. Branches: no run has learned the lungs (every mean below ``min_score``);
    even the smallest size is within the noise of the best; only from some size on. ``images`` is
    what the training images are called where the reading speaks of them ("slices" for CT,
    "X-rays"): "a few slices suffice".
    """
    if not scores:
        raise ValueError("size_sweep needs the scores of at least one run: {training images: scores}.")
    sizes = sorted(scores)
    means = {size: float(np.nanmean(np.asarray(scores[size], dtype=float))) for size in sizes}
    best = max(sizes, key=means.get)
    listing = ", ".join(f"{size} images {means[size]:.3f}" for size in sizes)
    numbers = f"Mean {_metric_words(split, 'dice')} by training-set size: {listing}."
    if means[best] < min_score:
        return (
            f"{numbers} **No run has learned to find the lungs yet** (all below {min_score:g}), so the "
            "sweep cannot say how many images suffice: train longer (full scale)."
        )
    within = [
        size for size in sizes
        if size == best or _difference_interval(scores[best], scores[size], seed, n, level)[0][0] <= 0
    ]
    enough = next(size for size in sizes if all(larger in within for larger in sizes if larger >= size))
    if enough == sizes[0]:
        return (
            f"{numbers} **Even {sizes[0]} images are within the noise of the best** ({best} images): the "
            f"{level:.0%} bootstrap interval of each difference to it contains 0. On look-alike images a "
            f"few {images} suffice; another hospital's images may tell otherwise."
        )
    below = [size for size in sizes if size not in within]
    return (
        f"{numbers} **From {enough} images on** every run is within the noise of the best ({best} images); "
        f"with {_names(below)} images the Dice is lower beyond the noise (the {level:.0%} bootstrap "
        "interval of the difference to the best excludes 0)."
    )


# ----------------------------------------------------------------------------------------------
# In-site against cross-site (notebook 10)


def _resampled_means(values, rng, n):
    """``n`` bootstrap means of ``values`` (NaN dropped), each a resample with replacement."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("a bootstrap needs at least one score that is not NaN.")
    return values[rng.integers(0, values.size, size=(int(n), values.size))].mean(axis=1)


def _interval_of_sum(terms, seed, n, level):
    """Seeded percentile bootstrap interval of ``sum(sign * mean(values))`` over ``terms``.

    ``terms`` is ``[(sign, values), ...]``; the terms score different images (in-site against
    cross-site), so each is resampled on its own, as :func:`bootstrap_interval` resamples one.
    """
    rng = np.random.default_rng(seed)
    total = sum(sign * _resampled_means(values, rng, n) for sign, values in terms)
    low, high = np.quantile(total, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _same_images_difference(a, b):
    """``a - b`` image by image when both score the same images, else None.

    The same images: two Series over the same index (image names), or, unless both are Series,
    two sequences of the same length, as :func:`compare_runs` pairs them.
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        return a - b.reindex(a.index) if set(a.index) == set(b.index) else None
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a - b if a.shape == b.shape else None


def _gap(name, in_site, cross_site, min_score):
    """Mean in-site and cross-site score of a run, and whether it has learned (in-site)."""
    a, b = np.asarray(in_site, dtype=float), np.asarray(cross_site, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"{name}: the gap needs in-site and cross-site scores ({a.size} and {b.size}).")
    return float(np.nanmean(a)), float(np.nanmean(b)), float(np.nanmean(a)) >= min_score


def site_gap(name, in_site, cross_site, site="the second site", split="val", metric="dice",
             min_score=LEARNED_SCORE, seed=0, n=2000, level=0.95):
    """One run's in-site scores against its cross-site scores: the gap and whether it is noise.

    ``in_site`` are per-image scores on the run's own split (images like its training images),
    ``cross_site`` on another site's images, never trained on (e.g. the ``dice`` column of
    ``cross_site/<site>/per_image.csv``). They are other images, so the bootstrap interval of the
    gap (in-site mean minus cross-site mean) resamples each on its own. Branches:

    - **not learned yet**: the in-site mean is below ``min_score``: a gap says nothing yet;
    - **lower beyond the noise**: the interval of the gap lies above 0 (the gap is also given as
      a share of the in-site score);
    - **within the noise**: the interval contains 0: no loss on the other site is shown;
    - **higher beyond the noise**: the interval lies below 0: the other site's images are easier
      for this model.
    """
    inside, outside, learned = _gap(name, in_site, cross_site, min_score)
    score = _metric_words("", metric).strip()
    numbers = (
        f"**{name}**: mean {_metric_words(split, metric)} {inside:.3f} (in-site, {np.size(in_site)} "
        f"images), mean {score} on {site} {outside:.3f} (cross-site, {np.size(cross_site)} images)"
    )
    if not learned:
        return (
            f"{numbers}. It has **not learned to find the lungs yet** (in-site below {min_score:g}), "
            "so its gap says nothing about other sites: train longer (full scale) and compare again."
        )
    low, high = _interval_of_sum([(1, in_site), (-1, cross_site)], seed, n, level)
    gap = inside - outside
    numbers += (
        f": a gap of {gap:+.3f} ({level:.0%} bootstrap interval {low:+.3f} to {high:+.3f}, each set "
        "of images resampled on its own)."
    )
    if low > 0:
        return (
            f"{numbers} The interval excludes 0: **its cross-site {score} is lower beyond the noise**, "
            f"by {gap / inside:.0%} of its in-site {score}. Its own validation split overstates how it "
            f"does on {site}."
        )
    if high < 0:
        return (
            f"{numbers} The interval lies below 0: **its cross-site {score} is higher beyond the "
            f"noise**; {site}'s images are easier for this model than its own validation images."
        )
    return (
        f"{numbers} The interval contains 0: the gap is **within the noise**, so no loss on {site} is "
        "shown."
    )


#: How the difference of two gaps was resampled, by (in-site paired, cross-site paired).
_GAP_PAIRING = {
    (True, True): "in-site and cross-site images each paired between the runs",
    (True, False): "the in-site images paired between the runs",
    (False, True): "the cross-site images paired between the runs",
    (False, False): "every set of images resampled on its own",
}


def cross_site_gap(plain_name, plain_in_site, plain_cross_site, robust_name, robust_in_site,
                   robust_cross_site, site="the second site", split="val", metric="dice",
                   min_score=LEARNED_SCORE, seed=0, n=2000, level=0.95):
    """Two recipes' in-site against cross-site scores: each run's gap, and whose gap is smaller.

    Each run gets the paragraph of :func:`site_gap`. The last paragraph compares the gaps (the
    plain recipe's minus the robust one's) with a bootstrap interval: where both runs scored the
    same images (Series over the same image names, or equal-length arrays) they are paired image
    by image, otherwise each set is resampled on its own. Branches of that paragraph:

    - **cannot compare**: a run has not learned to find the lungs yet (in-site below ``min_score``);
    - **robust gap smaller beyond the noise**: the interval of the difference lies above 0;
    - **within the noise**: it contains 0: neither recipe is shown to hold up better;
    - **robust gap larger beyond the noise**: it lies below 0.
    """
    runs = ((plain_name, plain_in_site, plain_cross_site), (robust_name, robust_in_site, robust_cross_site))
    paragraphs = [site_gap(name, inside, outside, site=site, split=split, metric=metric, min_score=min_score,
                           seed=seed, n=n, level=level) for name, inside, outside in runs]
    gaps = {name: _gap(name, inside, outside, min_score) for name, inside, outside in runs}
    weak = [name for name, (_, _, learned) in gaps.items() if not learned]
    if weak:
        paragraphs.append(
            f"**The gaps cannot be compared yet**: {_names(weak)} {'has' if len(weak) == 1 else 'have'} "
            "not learned to find the lungs, and a model that finds none has no gap to close."
        )
        return "\n\n".join(paragraphs)
    terms, paired = [], []
    for sign, plain, robust in ((1, plain_in_site, robust_in_site), (-1, plain_cross_site, robust_cross_site)):
        difference = _same_images_difference(plain, robust)
        paired.append(difference is not None)
        terms += [(sign, plain), (-sign, robust)] if difference is None else [(sign, difference)]
    low, high = _interval_of_sum(terms, seed, n, level)
    plain_gap, robust_gap = (inside - outside for inside, outside, _ in gaps.values())
    numbers = (
        f"Gap of {plain_name} {plain_gap:+.3f}, of {robust_name} {robust_gap:+.3f}: {plain_name}'s minus "
        f"{robust_name}'s is {plain_gap - robust_gap:+.3f} ({level:.0%} bootstrap interval {low:+.3f} to "
        f"{high:+.3f}, {_GAP_PAIRING[tuple(paired)]})."
    )
    if low > 0:
        reading = (
            f"The interval excludes 0: **{robust_name}'s gap is smaller beyond the noise**; its recipe "
            f"holds up better on {site}."
        )
    elif high < 0:
        reading = (
            f"The interval lies below 0: **{robust_name}'s gap is larger beyond the noise**; on {site} its "
            f"recipe holds up worse than {plain_name}'s."
        )
    else:
        reading = (
            "The interval contains 0: the difference of the gaps is **within the noise**, so neither "
            f"recipe is shown to hold up better on {site}."
        )
    return "\n\n".join([*paragraphs, f"{numbers} {reading}"])


# ----------------------------------------------------------------------------------------------
# Robustness study: its CT and X-ray routes (notebook 09)


def route_reference(name, value, reference=None, images="slices", metric="validation Dice", synthetic=True,
                    quick=False, tolerance=0.01):
    """A run's figure against the poster's, or, on a route the poster never ran, that it has none.

    Branches: ``reference`` is None (the poster reported nothing on these ``images``: its figures
    are CT ones), so the figure is read beside the route's other runs; otherwise the readings of
    :func:`against_reference` (quick mode, synthetic data, a reading in words, matches, above,
    below).
    """
    if reference is None:
        return (
            f"**{name}**: {metric} {value:.3f}. The poster reported **no figure on {images}** (its figures "
            "are CT ones), so there is nothing to compare it with: read it beside this route's other runs."
        )
    return against_reference(name, value, reference, metric=metric, synthetic=synthetic, quick=quick,
                             tolerance=tolerance)
