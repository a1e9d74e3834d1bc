"""Segmentation metrics: stateful Keras metrics for training, NumPy functions for evaluation.

Counts. Over a set of pixels, with "positive" meaning "belongs to the class":
tp = target and prediction positive, fp = only prediction positive, fn = only target positive.

    Dice = 2 tp / (2 tp + fp + fn)    IoU = tp / (tp + fp + fn)
    precision = tp / (tp + fp)        recall = tp / (tp + fn)
    pixel accuracy = fraction of pixels whose predicted class equals the target class

Empty rule, everywhere in this module: a ratio 0/0 counts as 1.0. For Dice and IoU it means
no foreground present and none predicted, a perfect answer. Precision is 1 when nothing is
predicted (no false claims; recall then shows what was missed) and recall is 1 when there is
nothing to find (precision then shows the false alarms).

Foreground only: background is never averaged into Dice, IoU, precision or recall. Binary
models: foreground = sigmoid probability > threshold (0.5 unless given); the target is
foreground where it is > 0.5. Multi-class models (one-hot targets, softmax outputs with K
channels): each pixel gets the class of the largest probability (argmax, no threshold).

Training metrics (Keras) are "micro" over the epoch: tp, fp and fn are summed over all pixels
of all batches seen since the last reset and the score is computed once from the sums. This is
not the mean of per-image scores: large lungs weigh more and an image without lungs adds only
its few false positives instead of a whole 0 or 1. It is chosen because it does not depend on
how the epoch is cut into batches, never meets 0/0 in practice, and is what `model.evaluate`
reports for the whole set. For multi-class models each foreground class 1..K-1 gets its own
summed counts, and `dice`, `iou`, `precision` and `recall` are the mean of the per-class scores
(`ClassDice(k)` gives one class). Pixel accuracy counts all classes, background included.

Evaluation functions (NumPy) score one image at a time (`iou`, `dice`, ...) and
`per_image_scores` tabulates them for a set of images; the mean of that table's column is the
"mean per-image IoU" of the CT assignment; ``bootstrap_interval`` gives its seeded 95 %
interval over images.
"""

import keras
import numpy as np
import pandas as pd
from keras import ops

# The seeded bootstrap interval of a mean per-image score lives with the judgements that use it
# (it needs no TensorFlow); it is named here too, beside the scores it is applied to.
from lunghelpers.judgement import bootstrap_interval  # noqa: F401

# ----------------------------------------------------------------------------------------------
# Keras metrics


def _label_maps(y_true, y_pred, threshold):
    """Class id of every pixel, (B, H, W) int32, for target and prediction.

    Single channel: class 1 where the value is above the threshold (0.5 for the target).
    Several channels: argmax over the channels.
    """
    if y_pred.shape[-1] == 1:
        target = ops.cast(y_true[..., 0] > 0.5, "int32")
        predicted = ops.cast(y_pred[..., 0] > threshold, "int32")
    else:
        target = ops.cast(ops.argmax(y_true, axis=-1), "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    return target, predicted


def _check_threshold(threshold):
    """Raise ValueError unless 0 < threshold < 1."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, with 0/0 = 1.0 (the module's empty rule)."""
    return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), 1.0)


class _ClassCountsMetric(keras.metrics.Metric):
    """Accumulates tp, fp and fn per class over all batches; subclasses define `score`.

    `class_ids` are the classes scored; the result is the mean of their scores.
    """

    def __init__(self, class_ids, threshold, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        _check_threshold(threshold)
        self.threshold = threshold
        self.class_ids = tuple(class_ids)
        shape = (len(self.class_ids),)
        self.true_positives = self.add_variable(shape, "zeros", "float32", name="true_positives")
        self.false_positives = self.add_variable(shape, "zeros", "float32", name="false_positives")
        self.false_negatives = self.add_variable(shape, "zeros", "float32", name="false_negatives")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add the batch's tp, fp and fn of every scored class to the running sums."""
        if sample_weight is not None:
            raise ValueError(f"Metric {self.name!r} does not support sample_weight.")
        target, predicted = _label_maps(y_true, y_pred, self.threshold)
        class_ids = ops.convert_to_tensor(self.class_ids, dtype="int32")
        target = ops.expand_dims(target, -1) == class_ids
        predicted = ops.expand_dims(predicted, -1) == class_ids

        def count(mask):
            return ops.sum(ops.cast(mask, "float32"), axis=(0, 1, 2))

        self.true_positives.assign_add(count(target & predicted))
        self.false_positives.assign_add(count(~target & predicted))
        self.false_negatives.assign_add(count(target & ~predicted))

    def result(self):
        return ops.mean(self.score(self.true_positives, self.false_positives, self.false_negatives))


def _foreground_classes(n_classes):
    """Class ids 1..K-1 for K > 1 channels; class 1 (above threshold) for a binary model."""
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}.")
    return range(1, max(n_classes, 2))


class _ForegroundMetric(_ClassCountsMetric):
    """Foreground score: class 1 of a sigmoid model, mean over classes 1..K-1 of a softmax one."""

    default_name = None

    def __init__(self, threshold=0.5, n_classes=1, name=None, dtype=None):
        super().__init__(
            _foreground_classes(n_classes), threshold, name or self.default_name, dtype
        )
        self.n_classes = n_classes

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "n_classes": self.n_classes}


@keras.saving.register_keras_serializable(package="lunghelpers")
class DiceCoefficient(_ForegroundMetric):
    """Dice = 2 tp / (2 tp + fp + fn) from counts summed over the epoch; name "dice" by default.

    `DiceCoefficient(threshold=0.5, n_classes=1, name="dice")`; for n_classes = K > 1 the mean
    of the Dice scores of classes 1..K-1.
    """

    default_name = "dice"

    def score(self, tp, fp, fn):
        return _ratio(2.0 * tp, 2.0 * tp + fp + fn)


@keras.saving.register_keras_serializable(package="lunghelpers")
class IoUScore(_ForegroundMetric):
    """IoU = tp / (tp + fp + fn) from counts summed over the epoch; name "iou" by default.

    For n_classes = K > 1 the mean of the IoU scores of classes 1..K-1.
    """

    default_name = "iou"

    def score(self, tp, fp, fn):
        return _ratio(tp, tp + fp + fn)


@keras.saving.register_keras_serializable(package="lunghelpers")
class Precision(_ForegroundMetric):
    """Precision = tp / (tp + fp) from counts summed over the epoch; name "precision" by default.

    For n_classes = K > 1 the mean over classes 1..K-1. Unlike `keras.metrics.Precision` it
    uses the argmax class of softmax outputs and this module's empty rule.
    """

    default_name = "precision"

    def score(self, tp, fp, fn):
        return _ratio(tp, tp + fp)


@keras.saving.register_keras_serializable(package="lunghelpers")
class Recall(_ForegroundMetric):
    """Recall = tp / (tp + fn) from counts summed over the epoch; name "recall" by default.

    For n_classes = K > 1 the mean over classes 1..K-1.
    """

    default_name = "recall"

    def score(self, tp, fp, fn):
        return _ratio(tp, tp + fn)


@keras.saving.register_keras_serializable(package="lunghelpers")
class ClassDice(_ClassCountsMetric):
    """Dice of one class (`class_id`) from counts summed over the epoch.

    For a softmax model the class of a pixel is the argmax; for a sigmoid model class 1 is the
    foreground (probability > threshold) and class 0 the background.
    """

    def __init__(self, class_id, threshold=0.5, name=None, dtype=None):
        if not isinstance(class_id, int) or class_id < 0:
            raise ValueError(f"class_id must be an integer >= 0, got {class_id!r}.")
        super().__init__([class_id], threshold, name or f"dice_class{class_id}", dtype)
        self.class_id = class_id

    def score(self, tp, fp, fn):
        return _ratio(2.0 * tp, 2.0 * tp + fp + fn)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="lunghelpers")
class PixelAccuracy(keras.metrics.Metric):
    """Fraction of pixels whose predicted class equals the target class, over the epoch.

    Counts every class including the background, so with small lungs it is high even for a
    model that predicts background everywhere: read it beside Dice and IoU.
    """

    def __init__(self, threshold=0.5, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        _check_threshold(threshold)
        self.threshold = threshold
        self.correct = self.add_variable((), "zeros", "float32", name="correct")
        self.total = self.add_variable((), "zeros", "float32", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add the batch's number of correctly classified pixels and its number of pixels."""
        if sample_weight is not None:
            raise ValueError(f"Metric {self.name!r} does not support sample_weight.")
        target, predicted = _label_maps(y_true, y_pred, self.threshold)
        self.correct.assign_add(ops.sum(ops.cast(target == predicted, "float32")))
        self.total.assign_add(ops.cast(ops.size(target), "float32"))

    def result(self):
        return _ratio(self.correct, self.total)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def training_metrics(n_classes=1, threshold=0.5):
    """Metrics for `model.compile(metrics=...)`: accuracy, dice, iou, precision, recall.

    For n_classes > 1 `ClassDice` metrics dice_class1 .. dice_class{K-1} follow; `dice` is then
    the mean of those per-class Dice scores.
    """
    metrics = [
        PixelAccuracy(threshold=threshold),
        DiceCoefficient(threshold=threshold, n_classes=n_classes),
        IoUScore(threshold=threshold, n_classes=n_classes),
        Precision(threshold=threshold, n_classes=n_classes),
        Recall(threshold=threshold, n_classes=n_classes),
    ]
    if n_classes > 1:
        metrics += [ClassDice(class_id, threshold=threshold) for class_id in range(1, n_classes)]
    return metrics


# ----------------------------------------------------------------------------------------------
# NumPy evaluation, one image at a time


def _as_masks(target, prediction):
    """Check that both masks have the same shape and hold only 0/1 (or bool); return bool arrays."""
    target = np.asarray(target)
    prediction = np.asarray(prediction)
    if target.shape != prediction.shape:
        raise ValueError(
            f"target and prediction must have the same shape, got {target.shape} and "
            f"{prediction.shape}."
        )
    for label, mask in (("target", target), ("prediction", prediction)):
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{label} must be boolean or hold only 0 and 1; binarise probabilities first "
                f"(e.g. probabilities > threshold)."
            )
    return target.astype(bool), prediction.astype(bool)


def _fraction(numerator, denominator):
    """numerator / denominator as a float, with 0/0 = 1.0 (the module's empty rule)."""
    return 1.0 if denominator == 0 else float(numerator / denominator)


def iou(target, prediction):
    """Intersection over union of two binary masks, with logical and / or.

    IoU = |target AND prediction| / |target OR prediction|. Both empty -> 1.0.
    """
    target, prediction = _as_masks(target, prediction)
    intersection = np.logical_and(target, prediction).sum()
    union = np.logical_or(target, prediction).sum()
    return _fraction(intersection, union)


def dice(target, prediction):
    """Dice of two binary masks: 2 |target AND prediction| / (|target| + |prediction|).

    Equivalently 2 IoU / (1 + IoU). Both empty -> 1.0.
    """
    target, prediction = _as_masks(target, prediction)
    intersection = np.logical_and(target, prediction).sum()
    return _fraction(2 * intersection, target.sum() + prediction.sum())


def precision(target, prediction):
    """Precision tp / (tp + fp) of a binary prediction: share of predicted pixels that are correct.

    Nothing predicted -> 1.0.
    """
    target, prediction = _as_masks(target, prediction)
    return _fraction(np.logical_and(target, prediction).sum(), prediction.sum())


def recall(target, prediction):
    """Recall tp / (tp + fn) of a binary prediction: the share of target pixels that were found.

    Empty target -> 1.0.
    """
    target, prediction = _as_masks(target, prediction)
    return _fraction(np.logical_and(target, prediction).sum(), target.sum())


def pixel_accuracy(target, prediction):
    """Fraction of pixels where the binary prediction equals the target."""
    target, prediction = _as_masks(target, prediction)
    return float(np.mean(target == prediction))


def per_image_scores(targets, probabilities, threshold=0.5, names=None):
    """Score every image of a set; returns a DataFrame with one row per image.

    `probabilities` is the model output (N, H, W, C): C = 1 sigmoid, binarised as
    probability > threshold; C = K > 1 softmax, each pixel gets the argmax class. `targets` is
    (N, H, W, 1) class ids (the package's masks) or one-hot (N, H, W, K).

    Columns: iou, dice, precision, recall, accuracy (pixels with the right class, background
    included), target_fraction and predicted_fraction (share of foreground pixels). For a binary
    model the foreground is the lung. For K > 1 classes iou, dice, precision and recall are the
    mean over the foreground classes 1..K-1 of the per-class scores, the same quantity as the
    training metrics, and the extra columns dice_class1 .. dice_class{K-1} give each class while
    lung_iou and lung_dice score any lung against any lung (a left/right mix-up costs nothing there).
    The index is `names` when given (one per image), else 0..N-1, named "image".
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or targets.ndim != 4:
        raise ValueError(
            f"targets and probabilities must be (N, H, W, C) arrays, got shapes {targets.shape} "
            f"and {probabilities.shape}."
        )
    n_classes = probabilities.shape[-1]
    if targets.shape[:3] != probabilities.shape[:3] or targets.shape[-1] not in (1, n_classes):
        raise ValueError(
            f"targets {targets.shape} do not match probabilities {probabilities.shape}: expected "
            f"(N, H, W, 1) class ids or (N, H, W, {n_classes}) one-hot."
        )
    if names is not None and len(names) != len(targets):
        raise ValueError(f"names has {len(names)} entries for {len(targets)} images.")

    if targets.shape[-1] == 1:
        target_labels = targets[..., 0].astype(np.int64)
    else:
        target_labels = targets.argmax(axis=-1)
    if n_classes == 1:
        # A sigmoid model knows only background and foreground (any lung).
        predicted_labels = (probabilities[..., 0] > threshold).astype(np.int64)
        target_labels = (target_labels > 0).astype(np.int64)
    else:
        predicted_labels = probabilities.argmax(axis=-1)

    rows = []
    for target, predicted in zip(target_labels, predicted_labels):
        target_foreground, predicted_foreground = target > 0, predicted > 0
        class_pairs = (
            [(target_foreground, predicted_foreground)]
            if n_classes == 1
            else [(target == class_id, predicted == class_id) for class_id in range(1, n_classes)]
        )
        row = {
            name: float(np.mean([score(*pair) for pair in class_pairs]))
            for name, score in (("iou", iou), ("dice", dice), ("precision", precision), ("recall", recall))
        }
        row["accuracy"] = float(np.mean(target == predicted))
        row["target_fraction"] = float(target_foreground.mean())
        row["predicted_fraction"] = float(predicted_foreground.mean())
        if n_classes > 1:
            row["lung_iou"] = iou(target_foreground, predicted_foreground)
            row["lung_dice"] = dice(target_foreground, predicted_foreground)
            for class_id in range(1, n_classes):
                row[f"dice_class{class_id}"] = dice(*class_pairs[class_id - 1])
        rows.append(row)
    index = pd.Index(names if names is not None else range(len(rows)), name="image")
    return pd.DataFrame(rows, index=index)
