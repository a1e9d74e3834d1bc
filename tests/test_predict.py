"""Tests of lunghelpers.predict: segmenting a folder of images with a run folder or a .keras file.

Most tests use hand-weighted one-layer models whose answer is known: a 1x1 convolution with a
sigmoid calls a pixel lung when its normalised intensity is above 0.5, and a 1x1 convolution
with a softmax gives dark pixels class 1, mid-grey pixels background and bright pixels class 2.
So the masks that ``predict`` writes can be checked pixel by pixel, at each image's own size.
"""

import json
import os
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from lunghelpers import data, models, paths, predict

from known_models import MONTGOMERY, SIZE, left_right_model, threshold_model


def make_run(folder, model, **params):
    """A run folder as training leaves it: model.keras and params.json (no training needed)."""
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    n_classes = int(model.output_shape[-1])
    recorded = {"normalization": "minmax", "image_size": [SIZE, SIZE], "dataset": "xray",
                "mask_mode": "binary" if n_classes == 1 else "left_right",
                "n_classes": n_classes, "threshold": 0.5, **params}
    (folder / "params.json").write_text(json.dumps({"params": recorded}))
    return folder


def halves(height, width, dark, bright, dtype):
    """An image whose left half is ``dark`` and right half ``bright`` (width even)."""
    image = np.full((height, width), dark, dtype)
    image[:, width // 2:] = bright
    return image


def write_mixed_folder(folder):
    """Good images of several sizes and formats, and the bad files the command must skip."""
    folder.mkdir()
    cv2.imwrite(str(folder / "small.png"), halves(40, 50, 0, 200, np.uint8))
    cv2.imwrite(str(folder / "tall.png"), halves(90, 24, 30, 220, np.uint8))
    cv2.imwrite(str(folder / "sixteen_bit.png"), halves(64, 64, 1000, 60000, np.uint16))
    rgb = np.zeros((48, 36, 3), np.uint8)
    rgb[:, 18:] = (40, 200, 250)  # BGR
    cv2.imwrite(str(folder / "colour.png"), rgb)
    cv2.imwrite(str(folder / "ct_slice.tif"), halves(30, 40, -1000, 400, np.int16))
    good = (folder / "small.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text_named_png.png").write_text("this is not an image\n")
    (folder / "notes.txt").write_text("a note beside the images\n")
    return {"small": (40, 50), "tall": (90, 24), "sixteen_bit": (64, 64), "colour": (48, 36),
            "ct_slice": (30, 40)}


BAD_FILES = ("corrupt.png", "empty.png", "notes.txt", "text_named_png.png")


def run_command(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "lunghelpers.predict", *map(str, arguments)],
        capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=300,
    )


def leftovers(folder):
    """Hidden or temporary files anywhere under ``folder`` (what an unfinished write leaves)."""
    return [path for path in folder.rglob("*") if path.name.startswith(".") or ".tmp" in path.name]


def assert_right_half_is_lung(mask, lung_value):
    height, width = mask.shape
    assert np.all(mask[:, : width // 2 - 2] == 0)
    assert np.all(mask[:, width // 2 + 2:] == lung_value)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "binary", threshold_model())


def test_command_segments_good_files_lists_bad_ones_and_leaves_no_partial_file(binary_run, tmp_path):
    sizes = write_mixed_folder(tmp_path / "in")
    output = tmp_path / "out"
    result = run_command(binary_run, tmp_path / "in", output, "--overlay")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in BAD_FILES:
        assert name in result.stderr
    for stem, (height, width) in sizes.items():
        mask = cv2.imread(str(output / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert_right_half_is_lung(mask, 255)
        overlay = cv2.imread(str(output / "overlays" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (height, width, 3)
    assert sorted(path.stem for path in (output / "masks").iterdir()) == sorted(sizes)
    areas = pd.read_csv(output / "areas.csv")
    assert sorted(areas["image"]) == sorted(
        ["small.png", "tall.png", "sixteen_bit.png", "colour.png", "ct_slice.tif"])
    for row in areas.itertuples():
        mask = cv2.imread(str(output / row.mask), cv2.IMREAD_UNCHANGED)
        assert (row.height, row.width) == mask.shape
        assert row.lung_area_px == np.count_nonzero(mask)
        assert abs(row.lung_area_px - row.height * row.width / 2) <= 2 * row.height
    assert leftovers(output) == []


def test_second_run_is_refused_without_overwrite_and_replaces_with_it(binary_run, tmp_path):
    write_mixed_folder(tmp_path / "in")
    output = tmp_path / "out"
    assert predict.main([str(binary_run), str(tmp_path / "in"), str(output)]) == 1
    before = (output / "areas.csv").read_bytes()

    refused = run_command(binary_run, tmp_path / "in", output)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "already holds results" in refused.stderr and "--overwrite" in refused.stderr
    assert (output / "areas.csv").read_bytes() == before

    (tmp_path / "in" / "tall.png").unlink()
    assert predict.main([str(binary_run), str(tmp_path / "in"), str(output), "--overwrite"]) == 1
    assert not (output / "masks" / "tall.png").exists()  # the earlier run's mask is not left over
    assert "tall.png" not in pd.read_csv(output / "areas.csv")["image"].tolist()


def test_clean_folder_exits_zero_and_threshold_moves_the_border(binary_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))  # dark left, bright right
    cv2.imwrite(str(folder / "ramp.png"), ramp)
    assert predict.main([str(binary_run), str(folder), str(tmp_path / "at05")]) == 0
    assert predict.main([str(binary_run), str(folder), str(tmp_path / "at08"),
                         "--threshold", "0.8"]) == 0
    area = {name: pd.read_csv(tmp_path / name / "areas.csv")["lung_area_px"][0]
            for name in ("at05", "at08")}
    assert area["at05"] == pytest.approx(16 * 32, abs=16 * 2)
    assert area["at08"] < area["at05"]


def test_left_right_model_writes_class_values_and_each_lung_area(tmp_path):
    run = make_run(tmp_path / "run", left_right_model())
    folder = tmp_path / "in"
    folder.mkdir()
    image = np.full((40, 60), 128, np.uint8)
    image[:, :20] = 0    # dark: class 1, the patient's right lung (image's left)
    image[:, 40:] = 255  # bright: class 2, the left lung
    cv2.imwrite(str(folder / "bands.png"), image)
    result = predict.predict_folder(run, folder, tmp_path / "out", overlay=True, progress=False)

    mask = cv2.imread(str(tmp_path / "out" / "masks" / "bands.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (40, 60)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert np.all(mask[:, :18] == 1) and np.all(mask[:, 22:38] == 0) and np.all(mask[:, 42:] == 2)
    row = result.areas.iloc[0]
    assert row["right_lung_area_px"] == np.count_nonzero(mask == 1)
    assert row["left_lung_area_px"] == np.count_nonzero(mask == 2)
    assert row["lung_area_px"] == row["right_lung_area_px"] + row["left_lung_area_px"]
    overlay = cv2.imread(str(tmp_path / "out" / "overlays" / "bands.png"))
    blue, green, red = overlay[20, 5].astype(int)  # orange over black: red above blue
    assert red > blue + 50
    assert np.all(np.abs(overlay[20, 30].astype(int) - 128) <= 1)  # background stays grey


def test_run_folder_settings_come_from_params_json(tmp_path):
    run = make_run(tmp_path / "run", threshold_model(), normalization="zscore", threshold=0.3)
    predictor = predict.load_predictor(run)
    assert (predictor.normalization, predictor.image_size, predictor.n_classes) == ("zscore", (32, 32), 1)
    assert predictor.threshold == 0.3
    assert predict.load_predictor(run, threshold=0.7).threshold == 0.7
    plain = predict.load_predictor(run / "model.keras")
    assert (plain.normalization, plain.image_size, plain.threshold) == ("minmax", (32, 32), 0.5)


def test_images_are_prepared_as_the_data_layer_prepares_them(tmp_path):
    """A U-Net run: predict's preprocessing and masks equal load_pairs + model.predict."""
    model = models.unet((SIZE, SIZE, 1), base_filters=4, depth=2)
    run = make_run(tmp_path / "run", model, normalization="clahe")
    random = np.random.default_rng(0)
    for folder in ("cxr", "masks"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    image = random.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "set" / "cxr" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "set" / "masks" / "a.png"), halves(SIZE, SIZE, 0, 255, np.uint8))
    loaded, _, _ = data.load_pairs(tmp_path / "set" / "cxr", tmp_path / "set" / "masks",
                                   image_size=(SIZE, SIZE), normalization="clahe", progress=False)
    prepared = predict.prepare_image(image, "clahe", (SIZE, SIZE))
    np.testing.assert_array_equal(prepared, loaded[0, :, :, 0])

    predictor = predict.load_predictor(run)
    expected = model.predict(loaded, verbose=0)[0, :, :, 0] > 0.5
    np.testing.assert_array_equal(predict.segment(predictor, image), expected)


@pytest.mark.parametrize("problem", [
    "missing model", "folder without params", "not a keras file", "threshold out of range",
    "threshold for softmax", "size mismatch", "unsafe model", "missing input", "empty input",
    "output is input", "output is a file",
])
def test_each_command_error_is_one_line_and_status_2(problem, binary_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), halves(8, 8, 0, 255, np.uint8))
    model, input_dir, output, options = binary_run, folder, tmp_path / "out", []
    expected = {"missing model": "does not exist", "folder without params": "params.json",
                "not a keras file": ".keras", "threshold out of range": "between 0 and 1",
                "threshold for softmax": "binary", "size mismatch": "image_size",
                "unsafe model": "safe mode", "missing input": "does not exist",
                "empty input": "holds no files", "output is input": "differ",
                "output is a file": "is a file"}[problem]
    if problem == "missing model":
        model = tmp_path / "nowhere"
    elif problem == "folder without params":
        model = tmp_path / "half"
        model.mkdir()
        threshold_model().save(model / "model.keras")
    elif problem == "not a keras file":
        model = folder / "a.png"
    elif problem == "threshold out of range":
        options = ["--threshold", "1.5"]
    elif problem == "threshold for softmax":
        model = make_run(tmp_path / "lr", left_right_model())
        options = ["--threshold", "0.5"]
    elif problem == "size mismatch":
        model = make_run(tmp_path / "big", threshold_model(), image_size=[64, 64])
    elif problem == "unsafe model":
        unsafe = keras.Sequential([keras.Input((SIZE, SIZE, 1)),
                                   keras.layers.Lambda(lambda x: x * 2.0)])
        model = tmp_path / "unsafe.keras"
        unsafe.save(model)
    elif problem == "missing input":
        input_dir = tmp_path / "no-such-folder"
    elif problem == "empty input":
        input_dir = tmp_path / "empty"
        input_dir.mkdir()
    elif problem == "output is input":
        output = folder
    elif problem == "output is a file":
        output = tmp_path / "file"
        output.write_text("x")
    capsys.readouterr()
    assert predict.main([str(model), str(input_dir), str(output), *options]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("python -m lunghelpers.predict: error:")
    assert expected in error
    if problem not in ("output is input", "output is a file"):
        assert not output.exists()


def test_failed_write_leaves_no_partial_file(binary_run, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), halves(16, 16, 0, 255, np.uint8))
    real_imwrite = cv2.imwrite
    calls = []

    def failing_imwrite(path, picture):
        calls.append(path)
        if len(calls) == 2:  # the second mask: half a file on disk, then the disk is full
            with open(path, "wb") as handle:
                handle.write(b"\x89PNG half")
            raise OSError("No space left on device")
        return real_imwrite(path, picture)

    monkeypatch.setattr(predict.cv2, "imwrite", failing_imwrite)
    assert predict.main([str(binary_run), str(folder), str(tmp_path / "out")]) == 2
    written = sorted(path.name for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert written == ["a.png"]
    assert leftovers(tmp_path / "out") == []


def test_images_with_the_same_stem_keep_both_masks(binary_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "scan.png"), halves(10, 10, 0, 255, np.uint8))
    cv2.imwrite(str(folder / "scan.tif"), halves(12, 12, 0, 255, np.uint8))
    result = predict.predict_folder(binary_run, folder, tmp_path / "out", progress=False)
    assert sorted(result.areas["mask"]) == ["masks/scan.png.png", "masks/scan.tif.png"]
    assert cv2.imread(str(tmp_path / "out" / "masks" / "scan.tif.png")).shape[:2] == (12, 12)


@pytest.mark.skipif(not MONTGOMERY.is_dir(), reason=f"Montgomery X-rays not found at {MONTGOMERY}")
def test_real_montgomery_images_get_masks_at_their_own_size(tmp_path):
    model = models.unet((SIZE, SIZE, 1), base_filters=4, depth=2)
    run = make_run(tmp_path / "run", model, normalization="clahe")
    folder = tmp_path / "in"
    folder.mkdir()
    chosen = sorted((MONTGOMERY / "cxr").glob("*.png"))[:3]
    for path in chosen:
        shutil.copy(path, folder / path.name)
    result = predict.predict_folder(run, folder, tmp_path / "out", overlay=True, progress=False)
    assert result.skipped == []
    assert result.areas["image"].tolist() == [path.name for path in chosen]
    for path in chosen:
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == data.read_image(path).shape == (512, 512)
        assert set(np.unique(mask)) <= {0, 255}
    assert (result.areas["lung_area_px"] <= 512 * 512).all()
    assert sorted(os.listdir(tmp_path / "out" / "overlays")) == [f"{path.stem}.png" for path in chosen]


def test_error_after_loading_the_model_is_still_one_line(tmp_path):
    """TensorFlow starts (the model is loaded) before the threshold is refused: stderr stays one line."""
    run = make_run(tmp_path / "run", left_right_model())
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), halves(8, 8, 0, 255, np.uint8))
    result = run_command(run, folder, tmp_path / "out", "--threshold", "0.4")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "applies only to a binary (sigmoid) model" in result.stderr
