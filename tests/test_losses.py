"""Known-answer tests for lunghelpers.losses on hand-made masks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from lunghelpers import losses


def binary(rows):
    """A (1, H, W, 1) float32 mask from a list of rows of 0/1."""
    return np.array(rows, dtype=np.float32)[None, ..., None]


def one_hot(labels, n_classes=3):
    """A (1, H, W, K) one-hot float32 target from a list of rows of class ids."""
    return np.eye(n_classes, dtype=np.float32)[np.array(labels)][None]


def value(loss, y_true, y_pred, **options):
    """The per-image losses as a NumPy array."""
    return keras.ops.convert_to_numpy(
        loss(keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(y_pred), **options)
    )


TARGET = binary([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 4 pixels
HALF = binary([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])  # 2 of them + 2 more
DISJOINT = binary([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
EMPTY = np.zeros_like(TARGET)


def test_dice_loss_known_answers():
    assert value(losses.dice_loss, TARGET, TARGET) == pytest.approx([0.0], abs=1e-7)
    # (2*2 + 1) / (4 + 4 + 1) = 5/9.
    assert value(losses.dice_loss, TARGET, HALF) == pytest.approx([1 - 5 / 9])
    # Disjoint: (0 + 1) / (8 + 1); without smoothing exactly 1.
    assert value(losses.dice_loss, TARGET, DISJOINT) == pytest.approx([1 - 1 / 9])
    assert value(losses.dice_loss, TARGET, DISJOINT, smooth=0.0) == pytest.approx([1.0])
    # Nothing to find and nothing found: the smoothing term gives 1 - 1/1 = 0.
    assert value(losses.dice_loss, EMPTY, EMPTY) == pytest.approx([0.0])


def test_dice_loss_uses_soft_probabilities_and_reduces_per_image():
    soft = TARGET * 0.5
    # (2 * 2 + 1) / (4 + 2 + 1).
    batch = np.concatenate([TARGET, TARGET], axis=0)
    result = value(losses.dice_loss, batch, np.concatenate([soft, HALF], axis=0))
    assert result == pytest.approx([1 - 5 / 7, 1 - 5 / 9])


def test_binary_crossentropy_equals_keras():
    probabilities = np.random.default_rng(1).random((3, 4, 4, 1)).astype(np.float32)
    targets = np.concatenate([TARGET, HALF, EMPTY], axis=0)
    ours = value(losses.binary_crossentropy, targets, probabilities)
    reference = keras.losses.BinaryCrossentropy()(targets, probabilities)
    assert ours.shape == (3,)
    assert ours.mean() == pytest.approx(float(reference), rel=1e-6)
    # Image 0 by hand: -mean(y log p + (1 - y) log(1 - p)).
    p, y = probabilities[0], targets[0]
    assert ours[0] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-5)


def test_bce_dice_is_the_sum_of_its_parts():
    probabilities = np.random.default_rng(2).random((1, 4, 4, 1)).astype(np.float32)
    expected = value(losses.binary_crossentropy, TARGET, probabilities) + value(
        losses.dice_loss, TARGET, probabilities
    )
    assert value(losses.bce_dice_loss, TARGET, probabilities) == pytest.approx(expected)


LABELS = [[0, 0, 1, 1], [0, 0, 2, 2]]
PREDICTED = [[0, 0, 1, 2], [0, 0, 2, 2]]  # one class-1 pixel labelled class 2


def test_multiclass_dice_with_and_without_background():
    target, prediction = one_hot(LABELS), one_hot(PREDICTED)
    # Per class (2 I + 1) / (|X| + |Y| + 1): background 9/9, class 1 3/4, class 2 5/6.
    foreground_only = value(losses.multiclass_dice_loss, target, prediction)
    with_background = value(
        losses.multiclass_dice_loss, target, prediction, include_background=True
    )
    assert foreground_only == pytest.approx([1 - (3 / 4 + 5 / 6) / 2])  # 5/24
    assert with_background == pytest.approx([1 - (1 + 3 / 4 + 5 / 6) / 3])  # 5/36
    assert value(losses.multiclass_dice_loss, target, target) == pytest.approx([0.0], abs=1e-7)


def test_multiclass_dice_needs_two_channels_without_background():
    with pytest.raises(ValueError, match="dice_loss"):
        value(losses.multiclass_dice_loss, TARGET, TARGET)


def test_categorical_crossentropy_equals_keras_and_ce_dice_adds_dice_with_background():
    target = one_hot(LABELS)
    logits = np.random.default_rng(3).normal(size=target.shape)
    probabilities = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    ce = value(losses.categorical_crossentropy, target, probabilities)
    assert ce == pytest.approx(
        [float(keras.losses.CategoricalCrossentropy()(target, probabilities))], rel=1e-6
    )
    dice = value(losses.multiclass_dice_loss, target, probabilities, include_background=True)
    assert value(losses.ce_dice_loss, target, probabilities) == pytest.approx(ce + dice)


def test_generalized_dice_on_an_imbalanced_binary_case():
    # 10 pixels: 2 lung, 8 background. One lung pixel found, one background pixel called lung.
    target = binary([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    prediction = binary([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    # Classes background (8 px, weight 1/64) and lung (2 px, weight 1/4):
    # 2 (7/64 + 1/4) / ((8 + 8)/64 + (2 + 2)/4) = (46/64) / (80/64) = 0.575.
    assert value(losses.generalized_dice_loss, target, prediction) == pytest.approx([0.425])
    # The same masks as two one-hot channels give the same loss.
    two_channels = value(
        losses.generalized_dice_loss,
        np.concatenate([1 - target, target], -1),
        np.concatenate([1 - prediction, prediction], -1),
    )
    assert two_channels == pytest.approx([0.425])
    # Plain Dice of the lung alone is 1 - 2/4 = 0.5; the background dilutes it only a little.
    assert value(losses.dice_loss, target, prediction, smooth=0.0) == pytest.approx([0.5])


def test_generalized_dice_gives_an_absent_class_the_largest_present_weight():
    target = one_hot([[0, 0, 0, 0], [0, 0, 1, 1]])  # class 2 absent
    prediction = one_hot([[0, 0, 0, 2], [0, 0, 1, 1]])  # one background pixel called class 2
    # Weights: background 1/36, class 1 1/4, class 2 -> 1/4 (largest present).
    # 2 (5/36 + 2/4 + 0) / (11/36 + 4/4 + 1/4) = (46/36) / (56/36) = 23/28.
    assert value(losses.generalized_dice_loss, target, prediction) == pytest.approx([5 / 28])
    assert value(losses.generalized_dice_loss, target, target) == pytest.approx([0.0], abs=1e-6)


def test_get_loss_maps_names_and_classes():
    assert losses.get_loss("bce") is losses.binary_crossentropy
    assert losses.get_loss("dice") is losses.dice_loss
    assert losses.get_loss("dice", n_classes=3) is losses.multiclass_dice_loss
    assert losses.get_loss("ce_dice", n_classes=3) is losses.ce_dice_loss
    assert losses.get_loss("generalized_dice", n_classes=1) is losses.generalized_dice_loss
    with pytest.raises(ValueError, match="cce"):
        losses.get_loss("bce", n_classes=3)
    with pytest.raises(ValueError, match="n_classes > 1"):
        losses.get_loss("cce", n_classes=1)
    with pytest.raises(ValueError, match="valid names are .*bce_dice"):
        losses.get_loss("focal")


def test_dice_loss_without_smoothing_equals_keras_dice_per_image():
    """Notebook 04 compares the two: Keras's Dice has no smoothing term, only 1e-7 in the denominator."""
    probabilities = np.random.default_rng(2).random((3, 4, 4, 1)).astype(np.float32)
    targets = np.concatenate([TARGET, HALF, DISJOINT], axis=0)
    ours = value(losses.dice_loss, targets, probabilities, smooth=0.0)
    per_image = keras.losses.Dice(reduction=None, axis=(1, 2, 3))(targets, probabilities)
    assert ours == pytest.approx(keras.ops.convert_to_numpy(per_image), abs=1e-6)
    # With the default smoothing the two differ, most on images with few foreground pixels.
    assert not np.allclose(value(losses.dice_loss, targets, probabilities), ours, atol=1e-3)
