"""Tests of lunghelpers.evaluate with hand-made masks and probabilities of known scores."""

import keras
import numpy as np
import pandas as pd
import pytest

from lunghelpers import evaluate, train


def known_pair():
    """Two 4x4 images with known scores.

    Image "a": the target is the top-left 2x2 square (4 pixels). The probability is 0.9 on the
    square's left column, 0.3 on its right column and 0.2 on two pixels outside it.
    - threshold 0.5: 2 pixels predicted, both right: IoU 2/4, Dice 4/6, precision 1, recall 1/2,
      accuracy 14/16.
    - threshold 0.1: 6 pixels predicted, 4 right: IoU 4/6, Dice 8/10, precision 4/6, recall 1.
    Image "b": empty target, probability 0.05 everywhere: nothing predicted at either
    threshold, so every score is 1.0 (empty against empty).
    """
    targets = np.zeros((2, 4, 4, 1), np.int16)
    targets[0, :2, :2] = 1
    probabilities = np.zeros((2, 4, 4, 1), np.float32)
    probabilities[0, :2, 0] = 0.9
    probabilities[0, :2, 1] = 0.3
    probabilities[0, 3, 2:] = 0.2
    probabilities[1] = 0.05
    return targets, probabilities, ["a", "b"]


def identity_model(shape=(4, 4, 1)):
    """A model whose output is its input, so "images" can carry hand-made probabilities."""
    inputs = keras.Input(shape)
    outputs = keras.layers.Activation("linear")(inputs)
    return keras.Model(inputs, outputs)


def test_to_labels_handles_ids_probabilities_and_one_hot():
    ids = np.array([[[0], [2]]], np.int16)
    assert evaluate.to_labels(ids).tolist() == [[0, 2]]
    probabilities = np.array([[[0.5], [0.51]]], np.float32)
    assert evaluate.to_labels(probabilities).tolist() == [[0, 1]]
    assert evaluate.to_labels(probabilities, threshold=0.1).tolist() == [[1, 1]]
    one_hot = np.array([[[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]], np.float32)
    assert evaluate.to_labels(one_hot).tolist() == [[2, 0]]


def test_predict_returns_float32_probabilities():
    images = np.random.default_rng(0).random((3, 4, 4, 1))
    probabilities = evaluate.predict(identity_model(), images, batch_size=2)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, images, rtol=1e-6)


def test_per_image_table_known_scores_at_two_thresholds():
    targets, probabilities, names = known_pair()
    table = evaluate.per_image_table(targets, probabilities, names)
    assert table["name"].tolist() == ["a", "b"]
    a = table.iloc[0]
    assert a["iou"] == pytest.approx(0.5)
    assert a["dice"] == pytest.approx(2 / 3)
    assert (a["precision"], a["recall"]) == pytest.approx((1.0, 0.5))
    assert a["accuracy"] == pytest.approx(14 / 16)
    assert a["iou@0.1"] == pytest.approx(4 / 6)
    assert a["dice@0.1"] == pytest.approx(0.8)
    assert (a["precision@0.1"], a["recall@0.1"]) == pytest.approx((4 / 6, 1.0))
    assert a["target_fraction"] == pytest.approx(4 / 16)
    assert (a["predicted_fraction"], a["predicted_fraction@0.1"]) == pytest.approx((2 / 16, 6 / 16))
    b = table.iloc[1]
    assert (b["iou"], b["dice"], b["iou@0.1"], b["dice@0.1"]) == (1.0, 1.0, 1.0, 1.0)
    assert "target_fraction@0.1" not in table


def test_per_image_table_multiclass_uses_argmax_and_per_class_dice():
    targets = np.zeros((1, 2, 2, 1), np.int16)
    targets[0, 0, 0] = 1
    targets[0, 0, 1] = 2
    # Predicted classes: [[1, 1], [0, 0]]: class 1 found plus one false pixel, class 2 missed.
    probabilities = np.zeros((1, 2, 2, 3), np.float32)
    probabilities[0, 0, :, 1] = 0.6
    probabilities[0, 1, :, 0] = 0.6
    table = evaluate.per_image_table(targets, probabilities, ["x"])
    assert table["dice_class1"][0] == pytest.approx(2 / 3)
    assert table["dice_class2"][0] == 0.0
    assert table["accuracy"][0] == pytest.approx(3 / 4)
    assert not [column for column in table if "@" in column]


def test_evaluate_run_multiclass_reports_each_lung(tmp_path):
    targets = np.zeros((2, 2, 2, 1), np.int16)
    targets[:, 0, 0] = 1
    targets[:, 0, 1] = 2
    probabilities = np.zeros((2, 2, 2, 3), np.float32)
    probabilities[..., 0] = 0.5
    probabilities[:, 0, 0, 1] = 0.9  # right lung found in both images
    probabilities[0, 0, 1, 2] = 0.9  # left lung found only in the first
    run = train.create_run(tmp_path / "run", {})
    summary = evaluate.evaluate_run(run.path, probabilities, targets, ["p", "q"],
                                    model=identity_model((2, 2, 3)))
    assert summary["test_dice_class1"] == 1.0
    assert summary["test_dice_class2"] == pytest.approx(0.5)
    assert "test_mean_iou@0.1" not in summary


def test_threshold_sweep_known_means():
    targets, probabilities, _ = known_pair()
    sweep = evaluate.threshold_sweep(targets, probabilities, thresholds=[0.1, 0.5])
    assert sweep["threshold"].tolist() == [0.1, 0.5]
    assert sweep["mean_iou"].tolist() == pytest.approx([(4 / 6 + 1) / 2, (0.5 + 1) / 2])
    assert sweep["mean_dice"].tolist() == pytest.approx([(0.8 + 1) / 2, (2 / 3 + 1) / 2])
    assert sweep["mean_recall"].tolist() == pytest.approx([1.0, 0.75])
    with pytest.raises(ValueError, match="sigmoid"):
        evaluate.threshold_sweep(targets, np.zeros((2, 4, 4, 3), np.float32))


def test_default_threshold_sweep_runs_from_005_to_095():
    targets, probabilities, _ = known_pair()
    sweep = evaluate.threshold_sweep(targets, probabilities)
    assert sweep["threshold"].iloc[0] == 0.05
    assert sweep["threshold"].iloc[-1] == 0.95
    assert len(sweep) == 19


def test_select_by_band_boundaries_and_empty_band():
    table = pd.DataFrame({
        "name": ["a", "b", "c", "d", "e", "f", "g"],
        "iou": [0.86, 0.87, 0.9, 1.0, 0.95, 0.5, 0.9499],
    })
    everything = evaluate.select_by_band(table, per_band=10)
    assert everything == {(0.85, 0.9): ["a", "b"], (0.9, 0.95): ["c", "g"],
                          (0.95, 1.0): ["d", "e"]}
    one_each = evaluate.select_by_band(table, per_band=1, seed=3)
    assert one_each == evaluate.select_by_band(table, per_band=1, seed=3)
    assert [len(names) for names in one_each.values()] == [1, 1, 1]
    assert one_each[(0.85, 0.9)][0] in ("a", "b")
    without_middle = evaluate.select_by_band(table[~table["name"].isin(["c", "g"])])
    assert without_middle[(0.9, 0.95)] == []
    with pytest.raises(ValueError, match="column"):
        evaluate.select_by_band(table, column="dice")


def test_evaluate_run_writes_table_and_merges_metrics(tmp_path):
    targets, probabilities, names = known_pair()
    run = train.create_run(tmp_path / "run", {"epochs": 1})
    identity_model().save(run.model_path)
    train.write_json(run.metrics_path, {"val_dice": 0.9, "threshold": 0.5})

    summary = evaluate.evaluate_run(run.path, probabilities, targets, names)
    assert summary["test_mean_iou"] == pytest.approx(0.75)
    assert summary["test_mean_iou@0.1"] == pytest.approx((4 / 6 + 1) / 2)
    assert summary["test_dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["test_accuracy"] == pytest.approx((14 / 16 + 1) / 2)
    assert (summary["test_precision"], summary["test_recall"]) == pytest.approx((1.0, 0.75))
    assert summary["n_test"] == 2
    assert summary["threshold"] == 0.5

    stored = train.read_json(run.metrics_path)
    assert stored["val_dice"] == 0.9
    assert stored["test_mean_iou"] == pytest.approx(0.75)
    table = pd.read_csv(run.per_image_path)
    assert table["name"].tolist() == ["a", "b"]
    assert table["iou"].tolist() == pytest.approx([0.5, 1.0])
    assert not list(run.path.glob(".*"))


def test_evaluate_run_on_validation_prefixes_val(tmp_path):
    targets, probabilities, names = known_pair()
    run = train.create_run(tmp_path / "run", {"epochs": 1})
    summary = evaluate.evaluate_run(run.path, probabilities, targets, names,
                                    model=identity_model(), split="val")
    assert summary["val_mean_iou"] == pytest.approx(0.75)
    assert summary["n_val"] == 2
    assert not [key for key in summary if key.startswith("test_")]
    with pytest.raises(ValueError, match="split"):
        evaluate.evaluate_run(run.path, probabilities, targets, names,
                              model=identity_model(), split="train")


def test_evaluate_run_without_model_file_says_so(tmp_path):
    targets, probabilities, names = known_pair()
    run = train.create_run(tmp_path / "run", {})
    with pytest.raises(FileNotFoundError, match="model.keras"):
        evaluate.evaluate_run(run.path, probabilities, targets, names)


def test_load_run_reads_every_file(tmp_path):
    targets, probabilities, names = known_pair()
    run = train.create_run(tmp_path / "run", {"epochs": 3})
    train.write_csv(run.history_path, pd.DataFrame({"epoch": [0], "loss": [0.5]}))
    evaluate.evaluate_run(run.path, probabilities, targets, names, model=identity_model())
    loaded = evaluate.load_run(run.path)
    assert loaded["params"]["params"] == {"epochs": 3}
    assert loaded["history"]["loss"].tolist() == [0.5]
    assert loaded["metrics"]["n_test"] == 2
    assert loaded["per_image"]["name"].tolist() == ["a", "b"]


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="params.json"):
        evaluate.load_run(tmp_path / "empty")
    fresh = evaluate.load_run(train.create_run(tmp_path / "fresh", {}).path)
    assert fresh["history"] is None and fresh["per_image"] is None and fresh["metrics"] == {}
