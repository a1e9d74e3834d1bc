"""Tests for lunghelpers.synthetic: layout, values, anatomy, determinism and the command line."""

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from lunghelpers import data, synthetic


def file_hashes(folder):
    """SHA-256 of every file under a folder, keyed by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory):
    """Ten CT phantoms of 128 px."""
    return synthetic.generate(
        "ct", 10, tmp_path_factory.mktemp("ct") / "ct", size=128, seed=0, progress=False
    )


def test_ct_layout_and_types(ct_set):
    image_dir, mask_dir = data.dataset_dirs(ct_set)
    assert (image_dir.name, mask_dir.name) == ("2d_images", "2d_masks")
    names = sorted(path.name for path in image_dir.iterdir())
    assert names == sorted(path.name for path in mask_dir.iterdir())
    assert names[0] == "ID_0000_Z_0000.tif" and len(names) == 10
    image = cv2.imread(str(image_dir / names[0]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(mask_dir / names[0]), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.int16 and image.shape == (128, 128)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 128, 255}
    assert json.loads((ct_set / "dataset.json").read_text())["count"] == 10


def test_ct_anatomy(ct_set):
    image_dir, mask_dir = data.dataset_dirs(ct_set)
    field_of_view_values = set()
    for image_path in sorted(image_dir.iterdir()):
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED).astype(np.float32)
        mask = cv2.imread(str(mask_dir / image_path.name), cv2.IMREAD_UNCHANGED)
        columns = np.nonzero(mask == 128)[1], np.nonzero(mask == 255)[1]
        assert (
            columns[0].max() < columns[1].min()
        )  # right lung wholly on the image's left, lungs apart
        assert -950 < np.median(image[mask > 0]) < -700  # aerated lung in HU
        assert 0.1 < np.mean(image > -200) < 0.8  # a body of soft tissue and bone
        corner = image[0, 0]
        if corner < -1500:
            field_of_view_values.add(int(corner))
        else:
            assert -1100 < corner < -900  # air
    assert field_of_view_values and field_of_view_values <= {-2048, -3024}


def test_ct_loads_in_all_mask_modes(ct_set):
    image_dir, mask_dir = data.dataset_dirs(ct_set)
    _, binary, _ = data.load_pairs(image_dir, mask_dir, image_size=(64, 64), progress=False)
    _, labels, _ = data.load_pairs(
        image_dir, mask_dir, image_size=(64, 64), mask_mode="labels", progress=False
    )
    _, derived, _ = data.load_pairs(
        image_dir, mask_dir, image_size=(64, 64), mask_mode="left_right", progress=False
    )
    assert set(np.unique(binary)) == {0, 1} and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(binary, labels > 0)
    np.testing.assert_array_equal(
        derived, labels
    )  # separate lungs: derived labels are the true ones


def test_xray_layout_values_and_two_lungs(tmp_path):
    folder = synthetic.generate("xray", 4, tmp_path / "xray", size=96, progress=False)
    image_dir, mask_dir = data.dataset_dirs(folder)
    assert (image_dir.name, mask_dir.name) == ("cxr", "masks")
    for image_path in sorted(image_dir.glob("*.png")):
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(mask_dir / image_path.name), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (96, 96)
        assert set(np.unique(mask)) == {0, 255}
        count, _, stats, _ = cv2.connectedComponentsWithStats(
            (mask > 0).astype(np.uint8), connectivity=8
        )
        assert count == 3  # background and two lung fields
        assert image[mask > 0].mean() < image[mask == 0].mean()  # lungs are dark on an X-ray


def test_xray_jpeg_masks_binarise_to_the_png_masks(tmp_path):
    png = synthetic.generate("xray", 3, tmp_path / "png", size=128, seed=4, progress=False)
    jpeg = synthetic.generate(
        "xray", 3, tmp_path / "jpeg", size=128, seed=4, jpeg=True, progress=False
    )
    assert sorted(path.name for path in (jpeg / "masks").iterdir())[0] == "SYNCXR_0000.jpg"
    noisy = cv2.imread(str(jpeg / "masks" / "SYNCXR_0000.jpg"), cv2.IMREAD_UNCHANGED)
    assert np.unique(noisy).size > 2
    _, clean_masks, _ = data.load_pairs(
        *data.dataset_dirs(png), image_size=(128, 128), progress=False
    )
    _, jpeg_masks, _ = data.load_pairs(
        *data.dataset_dirs(jpeg), image_size=(128, 128), progress=False
    )
    assert np.mean(clean_masks != jpeg_masks) < 0.005


def test_same_seed_gives_identical_files_and_count_keeps_earlier_images(tmp_path):
    first = synthetic.generate("ct", 3, tmp_path / "first", size=64, seed=7, progress=False)
    again = synthetic.generate("ct", 3, tmp_path / "again", size=64, seed=7, progress=False)
    longer = synthetic.generate("ct", 5, tmp_path / "longer", size=64, seed=7, progress=False)
    other = synthetic.generate("ct", 3, tmp_path / "other", size=64, seed=8, progress=False)
    first_hashes = file_hashes(first)
    assert first_hashes == file_hashes(again)
    longer_hashes = file_hashes(longer)
    assert all(
        longer_hashes[name] == digest
        for name, digest in first_hashes.items()
        if name.endswith(".tif")
    )
    other_hashes = file_hashes(other)
    assert all(
        other_hashes[name] != digest
        for name, digest in first_hashes.items()
        if name.endswith(".tif")
    )


def test_make_pair_is_deterministic_and_varied():
    image, mask = synthetic.make_pair("xray", 0, 1, size=64)
    same_image, same_mask = synthetic.make_pair("xray", 0, 1, size=64)
    next_image, _ = synthetic.make_pair("xray", 0, 2, size=64)
    np.testing.assert_array_equal(image, same_image)
    np.testing.assert_array_equal(mask, same_mask)
    assert not np.array_equal(image, next_image)


def test_ensure_dataset_generates_once_and_never_mixes(tmp_path):
    folder = synthetic.ensure_dataset("ct", root=tmp_path, count=2, size=64, seed=1, progress=False)
    assert folder == tmp_path / "ct-n2-s64-seed1"
    written = (folder / "dataset.json").stat().st_mtime_ns
    assert (
        synthetic.ensure_dataset("ct", root=tmp_path, count=2, size=64, seed=1, progress=False)
        == folder
    )
    assert (folder / "dataset.json").stat().st_mtime_ns == written
    assert (
        synthetic.ensure_dataset("ct", root=tmp_path, count=3, size=64, seed=1, progress=False)
        != folder
    )
    assert not list(tmp_path.glob(".*tmp*"))  # temporary folders were renamed or removed
    with pytest.raises(data.DataError, match=r"holds a synthetic set with other settings"):
        synthetic.generate("ct", 4, folder, size=64, seed=1, progress=False)
    synthetic.generate("ct", 4, folder, size=64, seed=1, overwrite=True, progress=False)
    assert len(list((folder / "2d_images").iterdir())) == 4


def test_generate_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(data.DataError, match=r"mine exists and is not a generated data set"):
        synthetic.generate("ct", 2, tmp_path / "mine", size=64, overwrite=True, progress=False)
    assert (tmp_path / "mine" / "thesis.txt").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"kind": "mri"}, "kind must be one of"),
        ({"count": 0}, "count must be a positive integer"),
        ({"size": 32}, "size must be an integer of at least 64"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"jpeg": True}, "jpeg=True is only for kind='xray'"),
    ],
)
def test_bad_settings(tmp_path, arguments, message):
    settings = {"kind": "ct", "count": 2, "size": 64, "seed": 0, "jpeg": False} | arguments
    with pytest.raises(ValueError, match=message):
        synthetic.generate(out_dir=tmp_path / "out", progress=False, **settings)


def test_command_line(tmp_path, capsys):
    folder = synthetic.main(
        [
            "--kind",
            "xray",
            "--count",
            "2",
            "--out",
            str(tmp_path / "cli"),
            "--size",
            "64",
            "--seed",
            "3",
        ]
    )
    assert folder == tmp_path / "cli"
    assert sorted(path.name for path in (folder / "cxr").iterdir()) == [
        "SYNCXR_0000.png",
        "SYNCXR_0001.png",
    ]
    assert "2 xray pairs in" in capsys.readouterr().out
    expected, _ = synthetic.make_pair("xray", 3, 1, size=64)
    np.testing.assert_array_equal(
        cv2.imread(str(folder / "cxr" / "SYNCXR_0001.png"), cv2.IMREAD_UNCHANGED), expected
    )


def test_ensure_dataset_replaces_a_set_from_an_older_generator(tmp_path):
    folder = synthetic.ensure_dataset("ct", root=tmp_path, count=2, size=64, seed=1, progress=False)
    marker = folder / "dataset.json"
    settings = json.loads(marker.read_text())
    stale_image = next((folder / "2d_images").iterdir())
    stale_image.write_bytes(b"written by an older generator")
    marker.write_text(json.dumps({**settings, "version": settings["version"] - 1}))
    again = synthetic.ensure_dataset("ct", root=tmp_path, count=2, size=64, seed=1, progress=False)
    assert again == folder
    assert json.loads(marker.read_text())["version"] == synthetic.GENERATOR_VERSION
    assert stale_image.read_bytes() != b"written by an older generator"


def test_overwrite_lists_its_files_and_replaces_only_them(tmp_path):
    folder = synthetic.generate("ct", 3, tmp_path / "set", size=64, progress=False)
    marker = json.loads((folder / "dataset.json").read_text())
    assert marker["files"] == sorted(
        f"{sub}/ID_{index:04d}_Z_0000.tif"
        for sub in ("2d_images", "2d_masks")
        for index in range(3)
    )
    synthetic.generate("ct", 2, folder, size=64, seed=5, overwrite=True, progress=False)
    assert sorted(file_hashes(folder)) == ["2d_images/ID_0000_Z_0000.tif",
                                          "2d_images/ID_0001_Z_0000.tif",
                                          "2d_masks/ID_0000_Z_0000.tif",
                                          "2d_masks/ID_0001_Z_0000.tif", "dataset.json"]
    assert json.loads((folder / "dataset.json").read_text())["seed"] == 5
    assert [path.name for path in tmp_path.iterdir()] == ["set"]  # no temporary or old folder left


def test_overwrite_of_a_set_without_manifest_uses_the_names_its_settings_imply(tmp_path):
    folder = synthetic.generate("xray", 2, tmp_path / "set", size=64, progress=False)
    marker = json.loads((folder / "dataset.json").read_text())
    del marker["files"]  # as written before the manifest existed
    (folder / "dataset.json").write_text(json.dumps(marker))
    (folder / "cxr" / "SYNCXR_0007.png").write_bytes(b"added by hand")
    with pytest.raises(data.DataError, match=r"1 file\(s\) the generator did not write: "
                                             r"cxr/SYNCXR_0007\.png"):
        synthetic.generate("xray", 3, folder, size=64, overwrite=True, progress=False)
    (folder / "cxr" / "SYNCXR_0007.png").unlink()
    synthetic.generate("xray", 3, folder, size=64, overwrite=True, progress=False)
    assert len(list((folder / "masks").iterdir())) == 3


def test_a_failed_overwrite_leaves_the_old_set_intact(tmp_path, monkeypatch):
    folder = synthetic.generate("ct", 2, tmp_path / "set", size=64, progress=False)
    before = file_hashes(folder)

    def broken_pair(*arguments):
        raise MemoryError("drawing failed")

    monkeypatch.setattr(synthetic, "make_pair", broken_pair)
    with pytest.raises(MemoryError):
        synthetic.generate("ct", 3, folder, size=64, overwrite=True, progress=False)
    assert file_hashes(folder) == before
    assert [path.name for path in tmp_path.iterdir()] == ["set"]


def finished_pid():
    """The id of a process that has ended (for stale temporary folders)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)
    return int(process.stdout)


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path):
    folder = synthetic.generate("ct", 2, tmp_path / "set", size=64, progress=False)
    before = file_hashes(folder)
    pid = finished_pid()
    stale = tmp_path / f".set.tmp-{pid}"
    (stale / "2d_images").mkdir(parents=True)
    running = tmp_path / f".set.tmp-{os.getpid()}"
    running.mkdir()  # a folder of a process that still runs (this one) is kept
    folder.rename(tmp_path / f".set.old-{pid}")  # killed between the two renames of a swap
    again = synthetic.generate("ct", 2, folder, size=64, progress=False)
    assert again == folder and file_hashes(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["set", running.name])


def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    for arguments in (["--count", "many"], ["--out", str(tmp_path / "mine"), "--overwrite"]):
        result = subprocess.run([sys.executable, "-m", "lunghelpers.synthetic", *arguments],
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("python -m lunghelpers.synthetic: error: ")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"



def read_set(folder):
    """The images and masks of a generated X-ray set, stacked in file order."""
    paths = sorted((folder / "cxr").iterdir())
    images = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in paths]
    masks = [cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_UNCHANGED) for path in paths]
    return np.stack(images), np.stack(masks)


def test_a_dark_xray_set_is_a_second_hospital_and_leaves_the_standard_set_alone(tmp_path):
    """exposure="dark": other patients, darker and flatter images, its own folder and marker."""
    settings = {"root": tmp_path, "count": 6, "size": 96, "progress": False}
    standard = synthetic.ensure_dataset("xray", **settings)
    before = file_hashes(standard)
    dark = synthetic.ensure_dataset("xray", exposure="dark", **settings)
    assert (standard.name, dark.name) == ("xray-n6-s96-seed0", "xray-n6-s96-seed0-dark")
    assert json.loads((dark / "dataset.json").read_text())["exposure"] == "dark"
    assert "exposure" not in json.loads((standard / "dataset.json").read_text())
    assert file_hashes(standard) == before
    expected, _ = synthetic.make_pair("xray", 0, 0, size=96)  # the standard drawing is unchanged
    standard_images, standard_masks = read_set(standard)
    np.testing.assert_array_equal(standard_images[0], expected)
    dark_images, dark_masks = read_set(dark)
    assert not np.array_equal(dark_masks, standard_masks)  # other patients
    assert dark_images.mean() < 0.8 * standard_images.mean()  # darker
    assert dark_images.std() < 0.85 * standard_images.std()  # less contrast
    assert all(image[mask > 0].mean() < image[mask == 0].mean() for image, mask in zip(dark_images, dark_masks))
    assert synthetic.ensure_dataset("xray", exposure="dark", **settings) == dark  # generated once
    with pytest.raises(data.DataError, match="exposure"):  # a dark folder is no standard set
        synthetic.generate("xray", 6, dark, size=96, progress=False)
    with pytest.raises(ValueError, match="exposure='dark' is only for kind='xray'"):
        synthetic.generate("ct", 2, tmp_path / "ct", size=64, exposure="dark", progress=False)
    with pytest.raises(ValueError, match="exposure must be one of"):
        synthetic.generate("xray", 2, tmp_path / "bright", size=64, exposure="bright", progress=False)
    cli = synthetic.main(["--kind", "xray", "--count", "1", "--size", "96", "--exposure", "dark",
                          "--out", str(tmp_path / "cli")])
    assert file_hashes(cli)["cxr/SYNCXR_0000.png"] == file_hashes(dark)["cxr/SYNCXR_0000.png"]
