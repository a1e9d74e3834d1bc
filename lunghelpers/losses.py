"""Segmentation losses written with `keras.ops`, so they run on every Keras 3 backend.

Shapes: `y_true` and `y_pred` are (B, H, W, C). Binary models have C = 1 (target in {0, 1},
sigmoid output); multi-class models have C = K (one-hot target, softmax output).

Reduction, the same for every loss here: each function returns one value per image, shape (B,),
and Keras averages those over the batch (its default "sum_over_batch_size" reduction). So every
image counts equally whatever its lung size, and `sample_weight` weighs whole images. For
cross-entropy this equals the mean over all pixels of the batch (all images have the same size);
for Dice it is the mean of per-image Dice losses, not the Dice of the batch as one volume, which
matches the per-image evaluation in `lunghelpers.metrics`.

Each function is registered with Keras (package "lunghelpers"), so a model compiled with one of
them can be saved and loaded with `keras.models.load_model` without `custom_objects`.
"""

import keras
from keras import ops

def _per_image_sum(values):
    """Sum over the two spatial axes: (B, H, W, C) -> (B, C)."""
    return ops.sum(values, axis=(1, 2))


def _soft_dice_per_class(y_true, y_pred, smooth):
    """Soft Dice per image and channel, (2 sum(y p) + s) / (sum(y) + sum(p) + s): shape (B, C)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = _per_image_sum(y_true * y_pred)
    total = _per_image_sum(y_true) + _per_image_sum(y_pred)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="lunghelpers")
def binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy averaged over the pixels of each image, shape (B,).

    BCE = -mean_i [ y_i log(p_i) + (1 - y_i) log(1 - p_i) ], with `p` clipped to
    [eps, 1 - eps] by `keras.losses.binary_crossentropy` (eps = 1e-7) so the log stays finite.
    The batch mean equals `keras.losses.BinaryCrossentropy()(y_true, y_pred)`. Every pixel counts
    the same, so when lungs cover little of the image the background dominates the loss.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))


@keras.saving.register_keras_serializable(package="lunghelpers")
def dice_loss(y_true, y_pred, smooth=1.0):
    """Soft Dice loss of each image, shape (B,).

    With X the target and Y the predicted probabilities of one image, summed over all pixels
    (and channels):

        dice_loss = 1 - (2 |X ∩ Y| + s) / (|X| + |Y| + s),   |X ∩ Y| = sum(y p),  |X| = sum(y).

    The smoothing term s (default 1) keeps the ratio defined for an empty target and empty
    prediction (loss 0: nothing to find, nothing found) and softens the gradient on images with
    few foreground pixels. Dice only looks at the foreground overlap, so it is insensitive to the
    background/foreground imbalance that makes BCE favour "all background".
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = tuple(range(1, len(y_pred.shape)))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="lunghelpers")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice loss (s = 1) of each image, shape (B,).

    bce_dice = BCE + (1 - Dice). BCE gives smooth per-pixel gradients from the first step; Dice
    keeps the small foreground from being drowned by the background.
    """
    return binary_crossentropy(y_true, y_pred) + dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="lunghelpers")
def categorical_crossentropy(y_true, y_pred):
    """Categorical cross-entropy averaged over the pixels of each image, shape (B,).

    CE = -mean_i sum_k y_ik log(p_ik) for one-hot targets y and softmax outputs p (clipped to
    [eps, 1 - eps] by `keras.losses.categorical_crossentropy`).
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred), axis=(1, 2))


@keras.saving.register_keras_serializable(package="lunghelpers")
def multiclass_dice_loss(y_true, y_pred, include_background=False, smooth=1.0):
    """One minus the mean soft Dice over classes of each image, shape (B,).

    For each image and class k (channel k of one-hot target y and softmax output p):

        Dice_k = (2 sum_i y_ik p_ik + s) / (sum_i y_ik + sum_i p_ik + s),  s = smooth (default 1),
        loss   = 1 - mean_k Dice_k.

    By default the mean runs over the foreground classes 1..K-1 (the lungs) only: the background
    is large and easy, and counting it would pull the loss towards 0 while a lung is still
    missed. `include_background=True` averages over all K classes, as the poster's Dice did.
    """
    n_channels = y_pred.shape[-1]
    if not include_background and n_channels < 2:
        raise ValueError(
            f"multiclass_dice_loss needs one-hot targets with at least 2 channels to leave the "
            f"background out, got {n_channels}; use dice_loss for a single-channel binary mask."
        )
    dice = _soft_dice_per_class(y_true, y_pred, smooth)
    if not include_background:
        dice = dice[:, 1:]
    return 1.0 - ops.mean(dice, axis=-1)


@keras.saving.register_keras_serializable(package="lunghelpers")
def generalized_dice_loss(y_true, y_pred):
    """Generalised Dice loss (Sudre et al., 2017) of each image, shape (B,).

    With r_ik the one-hot target and p_ik the prediction of class k at pixel i:

        GDL = 1 - 2 sum_k w_k sum_i r_ik p_ik / sum_k w_k sum_i (r_ik + p_ik),
        w_k = 1 / (sum_i r_ik)^2.

    The weight makes a class's contribution independent of its size, so a small lung counts as
    much as the background. A single-channel (binary) input is expanded to the two classes
    background = 1 - y and foreground = y, as in the paper.

    Absent classes: a class missing from the target would get an infinite weight; it gets the
    largest weight of the present classes instead (MONAI's rule), so predicting it is penalised
    like a mistake on the rarest present class. The weights are then scaled to sum to 1 (the
    ratio does not change) and eps = 1e-7 is added to numerator and denominator, which keeps an
    all-empty case at loss 0 and is negligible otherwise.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    if y_pred.shape[-1] == 1:
        y_true = ops.concatenate([1.0 - y_true, y_true], axis=-1)
        y_pred = ops.concatenate([1.0 - y_pred, y_pred], axis=-1)
    epsilon = keras.config.epsilon()
    counts = _per_image_sum(y_true)
    present = counts > 0
    weights = ops.where(present, 1.0 / ops.square(ops.maximum(counts, epsilon)), 0.0)
    largest = ops.max(weights, axis=-1, keepdims=True)
    weights = ops.where(present, weights, largest)
    weights = weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), epsilon)
    intersection = ops.sum(weights * _per_image_sum(y_true * y_pred), axis=-1)
    total = ops.sum(weights * _per_image_sum(y_true + y_pred), axis=-1)
    return 1.0 - (2.0 * intersection + epsilon) / (total + epsilon)


@keras.saving.register_keras_serializable(package="lunghelpers")
def ce_dice_loss(y_true, y_pred):
    """The poster's loss: categorical cross-entropy plus multi-class Dice loss, shape (B,).

    ce_dice = CE + (1 - mean_k Dice_k) with the Dice mean over all K classes including the
    background (`multiclass_dice_loss(include_background=True)`), as the poster counted the
    background overlap term.
    """
    return categorical_crossentropy(y_true, y_pred) + multiclass_dice_loss(
        y_true, y_pred, include_background=True
    )


LOSSES = {
    "bce": binary_crossentropy,
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
    "cce": categorical_crossentropy,
    "multiclass_dice": multiclass_dice_loss,
    "generalized_dice": generalized_dice_loss,
    "ce_dice": ce_dice_loss,
}


def get_loss(name, n_classes=1):
    """Return the loss function called `name` for a model with `n_classes` output channels.

    Names: "bce", "dice", "bce_dice" (binary, n_classes=1), "cce", "multiclass_dice",
    "generalized_dice", "ce_dice". "dice" with n_classes > 1 gives `multiclass_dice_loss`
    (foreground classes only). The returned function is passed as `model.compile(loss=...)`.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss name {name!r}; valid names are {tuple(LOSSES)}.")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}.")
    if n_classes > 1 and name in ("bce", "bce_dice"):
        raise ValueError(
            f"Loss {name!r} is for a single sigmoid output but n_classes={n_classes}; "
            f"use 'cce' (or 'ce_dice') for a softmax output."
        )
    if n_classes == 1 and name in ("cce", "multiclass_dice", "ce_dice"):
        raise ValueError(
            f"Loss {name!r} needs a softmax output with n_classes > 1; "
            f"use 'bce', 'dice' or 'bce_dice' for n_classes=1."
        )
    if name == "dice" and n_classes > 1:
        name = "multiclass_dice"
    return LOSSES[name]
