"""Known-answer tests for lunghelpers.metrics: NumPy per-image scores and Keras epoch metrics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from lunghelpers import losses, metrics, models

TARGET = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
HALF = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
EMPTY = np.zeros_like(TARGET)


def test_numpy_scores_known_answers():
    # 4 target pixels, 4 predicted, 2 shared: union 6, 4 of 16 pixels differ.
    assert metrics.iou(TARGET, HALF) == pytest.approx(2 / 6)
    assert metrics.dice(TARGET, HALF) == pytest.approx(2 * 2 / 8)
    assert metrics.precision(TARGET, HALF) == pytest.approx(2 / 4)
    assert metrics.recall(TARGET, HALF) == pytest.approx(2 / 4)
    assert metrics.pixel_accuracy(TARGET, HALF) == pytest.approx(12 / 16)
    assert metrics.iou(TARGET, TARGET) == 1.0
    assert metrics.iou(TARGET, ~TARGET) == 0.0
    # {0, 1} integers are read like booleans.
    assert metrics.iou(TARGET.astype(np.int16), HALF.astype(np.uint8)) == pytest.approx(1 / 3)


def test_numpy_empty_mask_rules():
    for score in (metrics.iou, metrics.dice, metrics.precision, metrics.recall):
        assert score(EMPTY, EMPTY) == 1.0
    # Lung present, nothing predicted: no false claims (precision 1) but nothing found.
    assert metrics.precision(TARGET, EMPTY) == 1.0
    assert metrics.recall(TARGET, EMPTY) == 0.0
    assert metrics.dice(TARGET, EMPTY) == 0.0
    # No lung, something predicted: nothing to miss (recall 1) but every claim is wrong.
    assert metrics.recall(EMPTY, HALF) == 1.0
    assert metrics.precision(EMPTY, HALF) == 0.0
    assert metrics.iou(EMPTY, HALF) == 0.0


def test_numpy_scores_reject_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        metrics.iou(TARGET, HALF[:3])
    with pytest.raises(ValueError, match="binarise"):
        metrics.dice(TARGET, HALF * 0.7)


def tensors(*arrays):
    return [keras.ops.convert_to_tensor(np.asarray(array, dtype=np.float32)) for array in arrays]


def result(metric):
    return float(keras.ops.convert_to_numpy(metric.result()))


def two_batches():
    """Two batches of random probabilities and targets, 2 images of 8x8 each."""
    rng = np.random.default_rng(0)
    targets = (rng.random((4, 8, 8, 1)) > 0.6).astype(np.float32)
    probabilities = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.5, 0, 1)
    return targets, probabilities.astype(np.float32)


@pytest.mark.parametrize(
    "metric, score",
    [
        (metrics.DiceCoefficient(), metrics.dice),
        (metrics.IoUScore(), metrics.iou),
        (metrics.Precision(), metrics.precision),
        (metrics.Recall(), metrics.recall),
        (metrics.PixelAccuracy(), metrics.pixel_accuracy),
    ],
)
def test_keras_metric_accumulates_global_counts_over_batches(metric, score):
    targets, probabilities = two_batches()
    metric.update_state(*tensors(targets[:2], probabilities[:2]))
    metric.update_state(*tensors(targets[2:], probabilities[2:]))
    # Micro score: the NumPy score of all pixels of both batches taken as one mask.
    assert result(metric) == pytest.approx(score(targets > 0.5, probabilities > 0.5), rel=1e-6)

    metric.reset_state()
    assert result(metric) == 1.0  # no pixel seen: 0/0
    metric.update_state(*tensors(targets[:1], probabilities[:1]))
    assert result(metric) == pytest.approx(score(targets[:1] > 0.5, probabilities[:1] > 0.5))


def test_micro_dice_differs_from_mean_per_image_dice():
    # Image 1: large lung found exactly. Image 2: 1-pixel lung missed, 1 false pixel.
    targets = np.zeros((2, 4, 4, 1), np.float32)
    targets[0, :, :2] = 1
    targets[1, 0, 0] = 1
    predictions = targets.copy()
    predictions[1, 0, 0], predictions[1, 3, 3] = 0, 1
    metric = metrics.DiceCoefficient()
    metric.update_state(*tensors(targets, predictions))
    # Micro: tp 8, fp 1, fn 1 -> 16 / 18. Mean per image: (1 + 0) / 2.
    assert result(metric) == pytest.approx(16 / 18)
    table = metrics.per_image_scores(targets, predictions)
    assert table["dice"].mean() == pytest.approx(0.5)


def test_threshold_decides_the_foreground():
    target = np.ones((1, 2, 2, 1), np.float32)
    probabilities = np.full((1, 2, 2, 1), 0.3, np.float32)
    strict, lenient = metrics.Recall(threshold=0.5), metrics.Recall(threshold=0.2)
    strict.update_state(*tensors(target, probabilities))
    lenient.update_state(*tensors(target, probabilities))
    assert result(strict) == 0.0
    assert result(lenient) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        metrics.DiceCoefficient(threshold=1.5)


def one_hot(labels, n_classes=3):
    return np.eye(n_classes, dtype=np.float32)[np.array(labels)][None]


LABELS = [[0, 0, 1, 1], [0, 0, 2, 2]]
PREDICTED = [[0, 0, 1, 2], [0, 0, 2, 2]]  # one class-1 pixel labelled class 2


def test_multiclass_metrics_use_argmax_and_average_foreground_classes():
    target = one_hot(LABELS)
    # Soft predictions whose argmax is PREDICTED.
    probabilities = 0.6 * one_hot(PREDICTED) + 0.2
    values = {}
    for metric in metrics.training_metrics(n_classes=3):
        metric.update_state(*tensors(target, probabilities))
        values[metric.name] = result(metric)
    # Class 1: tp 1, fn 1 -> Dice 2/3, IoU 1/2, precision 1, recall 1/2.
    # Class 2: tp 2, fp 1 -> Dice 4/5, IoU 2/3, precision 2/3, recall 1.
    assert values["dice_class1"] == pytest.approx(2 / 3)
    assert values["dice_class2"] == pytest.approx(4 / 5)
    assert values["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert values["iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert values["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert values["recall"] == pytest.approx((1 / 2 + 1) / 2)
    assert values["accuracy"] == pytest.approx(7 / 8)


def test_class_dice_of_a_binary_model():
    background = metrics.ClassDice(0)
    background.update_state(*tensors(TARGET[None, ..., None], HALF[None, ..., None] * 0.9))
    # Background: 12 target pixels, 12 predicted, 10 shared.
    assert background.name == "dice_class0"
    assert result(background) == pytest.approx(20 / 24)


def test_training_metrics_names():
    assert [m.name for m in metrics.training_metrics()] == [
        "accuracy", "dice", "iou", "precision", "recall"
    ]
    assert [m.name for m in metrics.training_metrics(n_classes=3)][-2:] == [
        "dice_class1", "dice_class2"
    ]


def test_metric_config_roundtrip():
    for metric in metrics.training_metrics(n_classes=3, threshold=0.3):
        clone = type(metric).from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()


def test_per_image_scores_binary_table():
    targets = np.stack([TARGET, EMPTY])[..., None].astype(np.int16)
    probabilities = np.stack([HALF * 0.8, EMPTY + 0.1])[..., None]
    table = metrics.per_image_scores(targets, probabilities, names=["a.tif", "b.tif"])
    assert list(table.columns) == [
        "iou", "dice", "precision", "recall", "accuracy", "target_fraction", "predicted_fraction"
    ]
    assert list(table.index) == ["a.tif", "b.tif"]
    assert table.loc["a.tif", "iou"] == pytest.approx(1 / 3)
    assert table.loc["a.tif", "accuracy"] == pytest.approx(12 / 16)
    assert table.loc["a.tif", "target_fraction"] == pytest.approx(4 / 16)
    assert table.loc["b.tif"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # A lower threshold turns the 0.1 background into foreground.
    assert metrics.per_image_scores(targets, probabilities, threshold=0.05).loc[1, "iou"] == 0.0


def test_per_image_scores_multiclass_with_class_ids_or_one_hot():
    probabilities = 0.6 * one_hot(PREDICTED) + 0.2
    from_ids = metrics.per_image_scores(np.array(LABELS)[None, ..., None], probabilities)
    from_one_hot = metrics.per_image_scores(one_hot(LABELS), probabilities)
    assert from_ids.equals(from_one_hot)
    row = from_ids.loc[0]
    # Foreground (any lung) is predicted exactly; the classes differ at one pixel.
    assert row["lung_iou"] == 1.0 and row["lung_dice"] == 1.0
    assert row["dice_class1"] == pytest.approx(2 / 3)
    assert row["dice_class2"] == pytest.approx(4 / 5)
    # The headline dice is the mean over the lung classes, like the training metric.
    assert row["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert row["accuracy"] == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="do not match"):
        metrics.per_image_scores(np.zeros((1, 2, 4, 2)), probabilities)


@pytest.mark.parametrize(
    "n_classes, loss_name", [(1, "bce_dice"), (3, "ce_dice")]
)
def test_compiled_model_survives_save_and_load(tmp_path, n_classes, loss_name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 16, 1)).astype(np.float32)
    # Bright pixels are lung: class 1 in the left half of the image, class 2 in the right half.
    labels = (images[..., 0] > 0.5) * (1 + (np.arange(16) >= 8))
    if n_classes == 1:
        targets = (labels > 0)[..., None].astype(np.float32)
    else:
        targets = np.eye(n_classes, dtype=np.float32)[labels]
    model = models.unet((16, 16, 1), base_filters=2, depth=1, n_classes=n_classes)
    model.compile(
        optimizer="adam",
        loss=losses.get_loss(loss_name, n_classes=n_classes),
        metrics=metrics.training_metrics(n_classes=n_classes),
    )
    model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    before = model.evaluate(images, targets, verbose=0, return_dict=True)
    model.save(tmp_path / "model.keras")

    loaded = keras.models.load_model(tmp_path / "model.keras")
    after = loaded.evaluate(images, targets, verbose=0, return_dict=True)
    assert after.keys() == before.keys()
    assert "dice" in after and (n_classes == 1 or "dice_class2" in after)
    for name in before:
        assert after[name] == pytest.approx(before[name], rel=1e-5)
