"""Tests of lunghelpers.evaluate with hand-made masks and probabilities of known scores."""

import subprocess
import sys

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from lunghelpers import data, evaluate, judgement, models, paths, train

from known_models import MONTGOMERY, SIZE, left_right_model, threshold_model


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
    run = train.open_run(tmp_path / "run", {})
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
    run = train.open_run(tmp_path / "run", {"epochs": 1})
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
    run = train.open_run(tmp_path / "run", {"epochs": 1})
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
    run = train.open_run(tmp_path / "run", {})
    with pytest.raises(FileNotFoundError, match="model.keras"):
        evaluate.evaluate_run(run.path, probabilities, targets, names)


def test_load_run_reads_every_file(tmp_path):
    targets, probabilities, names = known_pair()
    run = train.open_run(tmp_path / "run", {"epochs": 3})
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
    fresh = evaluate.load_run(train.open_run(tmp_path / "fresh", {}).path)
    assert fresh["history"] is None and fresh["per_image"] is None and fresh["metrics"] == {}


# ----------------------------------------------------------------------------------------------
# Cross-site evaluation: a finished run scored on another data folder

def finished_run(folder, model, **params):
    """A run folder with params.json, model.keras and the in-site metrics.json."""
    n_classes = int(model.output_shape[-1])
    run = train.open_run(folder, {
        "normalization": "minmax", "image_size": [SIZE, SIZE], "dataset": "xray", "epochs": 1,
        "mask_mode": "binary" if n_classes == 1 else "left_right", "n_classes": n_classes,
        "threshold": 0.5, **params,
    })
    model.save(run.model_path)
    train.write_json(run.metrics_path, {"val_dice": 0.9, "best_epoch": 1})
    return run


def columns_image(bright_columns, dark_columns=(), grey=100):
    """A 32x32 uint8 image: ``grey`` everywhere, 255 on ``bright_columns``, 0 on ``dark_columns``.

    After min-max scaling grey 100 is 0.39 (background for the threshold model) and grey 128 is
    0.502 (background for the left/right model, lung for the threshold model).
    """
    image = np.full((SIZE, SIZE), grey, np.uint8)
    image[:, bright_columns] = 255
    image[:, dark_columns] = 0
    return image


def columns_mask(*column_ranges):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for columns in column_ranges:
        mask[:, columns] = 255
    return mask


def write_site(folder, pairs):
    """A data folder in the X-ray layout (cxr/ + masks/, same file names)."""
    for sub in ("cxr", "masks"):
        (folder / sub).mkdir(parents=True)
    for name, (image, mask) in pairs.items():
        cv2.imwrite(str(folder / "cxr" / f"{name}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    return folder


def known_site(folder):
    """Three images whose Dice with the threshold model is known: 1, 0.8 and 0.

    The model calls the bright columns lung. "a": mask = bright columns 16-31 (Dice 1). "b": 512
    bright pixels, mask columns 8-31 (768 pixels): IoU 2/3, Dice 0.8, precision 1, recall 2/3.
    "c": bright columns 0-15, mask columns 16-31: nothing right, Dice 0.
    """
    right = slice(16, 32)
    return write_site(folder, {
        "a": (columns_image(right, slice(0, 4)), columns_mask(right)),
        "b": (columns_image(right, slice(0, 4)), columns_mask(slice(8, 32))),
        "c": (columns_image(slice(0, 16), slice(28, 32)), columns_mask(right)),
    })


def test_evaluate_folder_scores_writes_files_and_merges_metrics(tmp_path):
    run = finished_run(tmp_path / "run", threshold_model())
    site = known_site(tmp_path / "other-hospital")
    summary = evaluate.evaluate_folder(run.path, site, progress=False)

    key = "cross_site.other-hospital."
    assert summary[key + "dice"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert summary[key + "iou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary[key + "precision"] == pytest.approx((1 + 1 + 0) / 3)
    assert summary[key + "recall"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    low, high = judgement.bootstrap_interval([1.0, 0.8, 0.0], seed=0)
    assert (summary[key + "dice_ci_low"], summary[key + "dice_ci_high"]) == pytest.approx((low, high))
    assert summary[key + "dice_ci_low"] < summary[key + "dice"] < summary[key + "dice_ci_high"]
    assert summary[key + "dice_p10"] == pytest.approx(np.percentile([1.0, 0.8, 0.0], 10))
    assert (summary[key + "n_images"], summary[key + "threshold"]) == (3, 0.5)

    stored = train.read_json(run.metrics_path)
    assert stored["val_dice"] == 0.9 and stored["best_epoch"] == 1
    assert {name: stored[name] for name in summary} == summary
    folder = run.path / "cross_site" / "other-hospital"
    table = pd.read_csv(folder / "per_image.csv")
    assert table["name"].tolist() == ["a.png", "b.png", "c.png"]
    assert table["dice"].tolist() == pytest.approx([1.0, 0.8, 0.0])
    site_metrics = train.read_json(folder / "metrics.json")
    assert site_metrics["dice"] == pytest.approx(summary[key + "dice"])
    assert site_metrics["data_dir"] == str(site.resolve())
    assert cv2.imread(str(folder / "gallery.png")) is not None
    assert not [path for path in run.path.rglob(".*")]


def test_evaluate_folder_again_replaces_only_that_sites_keys(tmp_path):
    run = finished_run(tmp_path / "run", threshold_model())
    site = known_site(tmp_path / "site")
    run.update_metrics({"cross_site.site.old_key": 1.0, "cross_site.elsewhere.dice": 0.5})
    summary = evaluate.evaluate_folder(run.path, site, name="site", limit=2, threshold=0.6,
                                       progress=False)
    stored = train.read_json(run.metrics_path)
    assert "cross_site.site.old_key" not in stored
    assert stored["cross_site.elsewhere.dice"] == 0.5
    assert stored["cross_site.site.n_images"] == summary["cross_site.site.n_images"] == 2
    assert stored["cross_site.site.threshold"] == 0.6
    assert stored["cross_site.site.dice"] == pytest.approx(0.9)


def test_evaluate_folder_left_right_run_reports_each_lung(tmp_path):
    run = finished_run(tmp_path / "run", left_right_model())
    # Dark columns 0-9 -> class 1, bright columns 22-31 -> class 2. The binary mask's two
    # regions become derived labels: columns 0-9 right lung (1), columns 24-31 left lung (2).
    image = columns_image(slice(22, 32), slice(0, 10), grey=128)
    site = write_site(tmp_path / "site", {"x": (image, columns_mask(slice(0, 10), slice(24, 32)))})
    summary = evaluate.evaluate_folder(run.path, site, progress=False)
    assert summary["cross_site.site.dice_class1"] == 1.0
    assert summary["cross_site.site.dice_class2"] == pytest.approx(2 * 8 / (10 + 8))
    assert summary["cross_site.site.dice"] == pytest.approx((1 + 16 / 18) / 2)
    assert summary["cross_site.site.threshold"] is None
    text = evaluate.describe_cross_site(summary, "site")
    assert "right lung Dice (class 1): 1.000" in text and "argmax" in text


def test_evaluate_folder_refuses_bad_names_and_folders(tmp_path):
    run = finished_run(tmp_path / "run", threshold_model())
    site = known_site(tmp_path / "site")
    with pytest.raises(ValueError, match="site name 'a/b'"):
        evaluate.evaluate_folder(run.path, site, name="a/b")
    with pytest.raises(ValueError, match="site name 'v1.2'"):
        evaluate.evaluate_folder(run.path, tmp_path / "v1.2")
    with pytest.raises(data.DataError, match="no data set found"):
        evaluate.evaluate_folder(run.path, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.evaluate_folder(tmp_path / "no-run", site)
    assert not (run.path / "cross_site").exists()


def test_evaluate_command_prints_the_summary_and_errors_in_one_line(tmp_path):
    run = finished_run(tmp_path / "run", threshold_model())
    site = known_site(tmp_path / "site")
    done = subprocess.run(
        [sys.executable, "-m", "lunghelpers.evaluate", str(run.path), str(site), "--name", "clinic"],
        capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "clinic: 3 images, threshold 0.5" in done.stdout
    assert "dice: 0.600 (95% interval" in done.stdout
    assert "cross_site.clinic.dice" in train.read_json(run.metrics_path)
    failed = subprocess.run(
        [sys.executable, "-m", "lunghelpers.evaluate", str(run.path), str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=300,
    )
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "no data set found" in lines[0], failed.stderr


@pytest.mark.skipif(not MONTGOMERY.is_dir(), reason=f"Montgomery X-rays not found at {MONTGOMERY}")
def test_evaluate_folder_on_real_montgomery_images(tmp_path):
    run = finished_run(tmp_path / "run", models.unet((SIZE, SIZE, 1), base_filters=4, depth=2),
                       normalization="clahe")
    summary = evaluate.evaluate_folder(run.path, MONTGOMERY, limit=4, progress=False)
    key = "cross_site.montgomery."
    assert summary[key + "n_images"] == 4
    for score in ("dice", "iou", "precision", "recall"):
        assert 0 <= summary[key + score + "_ci_low"] <= summary[key + score] <= summary[key + score + "_ci_high"] <= 1
    table = pd.read_csv(run.path / "cross_site" / "montgomery" / "per_image.csv")
    assert table["name"].str.startswith("MCUCXR_").all() and len(table) == 4
    # The truth is Montgomery's own masks: about a quarter of each image is lung.
    assert table["target_fraction"].between(0.1, 0.45).all()
