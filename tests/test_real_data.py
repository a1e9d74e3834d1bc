"""Checks of lunghelpers.data on the real data sets in ../shared/data (read in place)."""

import csv
import warnings

import cv2
import numpy as np
import pytest

from lunghelpers import data, paths

SHARED_DATA = paths.PROJECT_ROOT.parent / "shared" / "data"
CT_ROOT = SHARED_DATA / "kaggle_ct2d"
XRAY_ROOT = SHARED_DATA / "xray"

needs_ct = pytest.mark.skipif(not CT_ROOT.is_dir(), reason=f"real CT set not found at {CT_ROOT}")
needs_xray = pytest.mark.skipif(
    not XRAY_ROOT.is_dir(), reason=f"real X-ray set not found at {XRAY_ROOT}"
)


@pytest.fixture(scope="module")
def ct_arrays():
    """The whole CT set loaded once with the CT assignment's defaults."""
    return data.load_pairs(*data.dataset_dirs(CT_ROOT), progress=False)


@needs_ct
def test_ct_shapes_types_and_ranges(ct_arrays):
    images, masks, _ = ct_arrays
    assert images.shape == masks.shape == (267, 128, 128, 1)
    assert images.dtype == np.float32 and masks.dtype == np.int16
    assert images.min() == 0.0 and images.max() == 1.0
    # Each image was scaled by its own min and max before resizing, which keeps both ends close.
    assert np.all(images.min(axis=(1, 2, 3)) < 0.05) and np.all(images.max(axis=(1, 2, 3)) > 0.5)
    assert set(np.unique(masks)) == {0, 1}


@needs_ct
def test_ct_names_are_the_sorted_files(ct_arrays):
    _, _, names = ct_arrays
    assert names == sorted(path.name for path in (CT_ROOT / "2d_images").iterdir())
    assert names[0] == "ID_0000_Z_0142.tif" and names[-1] == "ID_0266_Z_0202.tif"


@needs_ct
def test_ct_follows_the_spec_recipe(ct_arrays):
    images, masks, names = ct_arrays
    for index in (0, 45, 266):
        image = cv2.imread(str(CT_ROOT / "2d_images" / names[index]), cv2.IMREAD_UNCHANGED).astype(
            np.float32
        )
        mask = cv2.imread(str(CT_ROOT / "2d_masks" / names[index]), cv2.IMREAD_UNCHANGED)
        scaled = (image - image.min()) / (image.max() - image.min())
        expected_image = np.clip(
            cv2.resize(scaled, (128, 128), interpolation=cv2.INTER_LANCZOS4), 0, 1
        )
        expected_mask = cv2.resize(
            (mask / mask.max()).astype(np.int16), (128, 128), interpolation=cv2.INTER_NEAREST_EXACT
        )
        np.testing.assert_allclose(images[index, :, :, 0], expected_image, atol=1e-6)
        np.testing.assert_array_equal(masks[index, :, :, 0], expected_mask)


@needs_ct
def test_ct_lung_fractions_match_the_manifest(ct_arrays):
    _, masks, names = ct_arrays
    with open(CT_ROOT / "manifest.csv", newline="") as manifest:
        fractions = {row["file"]: float(row["lung_fraction"]) for row in csv.DictReader(manifest)}
    measured = masks.mean(axis=(1, 2, 3))
    expected = np.array([fractions[name] for name in names])
    assert np.abs(measured - expected).max() < 0.01


@needs_ct
def test_ct_default_split_gives_160_training_pairs_in_file_order(ct_arrays):
    images, masks, _ = ct_arrays
    (train_images, train_masks), (val_images, _), (test_images, _) = data.split(images, masks)
    assert (len(train_images), len(val_images), len(test_images)) == (160, 53, 54)
    np.testing.assert_array_equal(train_images, images[:160])
    np.testing.assert_array_equal(train_masks, masks[:160])
    first = data.split_indices(267, (0.8, 0.2), shuffle=True, seed=220)
    again = data.split_indices(267, (0.8, 0.2), shuffle=True, seed=220)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


@needs_ct
def test_ct_window_normalisation_darkens_lungs(ct_arrays):
    _, masks, _ = ct_arrays
    windowed, _, _ = data.load_pairs(
        *data.dataset_dirs(CT_ROOT), normalization="window", limit=20, progress=False
    )
    lung_values = windowed[masks[:20] == 1]
    assert 0.1 < np.median(lung_values) < 0.35  # -692 HU in (-1000, 400) is 0.22


@needs_ct
def test_ct_left_right_labels_cover_every_lung_pixel(ct_arrays):
    _, binary_masks, _ = ct_arrays
    with pytest.warns(
        UserWarning, match=r"single lung-sized region .* split at the image's centre column"
    ):
        _, labels, _ = data.load_pairs(
            *data.dataset_dirs(CT_ROOT), mask_mode="left_right", progress=False
        )
    np.testing.assert_array_equal(labels > 0, binary_masks == 1)
    columns = np.arange(128)[np.newaxis, np.newaxis, :, np.newaxis]
    on_left = [
        (columns * (mask == 1)).sum() / max((mask == 1).sum(), 1)
        < 64
        < (columns * (mask == 2)).sum() / max((mask == 2).sum(), 1)
        for mask in labels
    ]
    assert np.mean(on_left) > 0.95


@needs_ct
def test_ct_labels_mode_refuses_the_binary_set():
    with pytest.raises(data.DataError, match=r"holds? only \[0, 255\] \(a binary set\)"):
        data.load_pairs(*data.dataset_dirs(CT_ROOT), mask_mode="labels", progress=False)


@needs_xray
def test_xray_soft_masks_binarised_at_half_maximum():
    image_dir, mask_dir = data.dataset_dirs(XRAY_ROOT)
    images, masks, names = data.load_pairs(
        image_dir, mask_dir, image_size=(512, 512), limit=10, progress=False
    )
    assert images.dtype == np.float32 and set(np.unique(masks)) == {0, 1}
    for mask, name in zip(masks, names):
        raw = cv2.imread(str(mask_dir / name), cv2.IMREAD_UNCHANGED)
        assert np.unique(raw).size > 2  # soft borders
        np.testing.assert_array_equal(mask[:, :, 0], (raw > 127).astype(np.int16))


@needs_xray
def test_xray_left_right_labels_put_the_right_lung_on_the_image_left():
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        _, labels, names = data.load_pairs(
            *data.dataset_dirs(XRAY_ROOT),
            image_size=(128, 128),
            mask_mode="left_right",
            limit=120,
            progress=False,
        )
    # Every Shenzhen mask has two separate lungs, so none had to be split at the centre column.
    assert not [record for record in records if "single lung-sized" in str(record.message)]
    assert len(names) == 120 and set(np.unique(labels)) == {0, 1, 2}
    columns = np.arange(128)[np.newaxis, :, np.newaxis]
    right_lung_on_left = [(columns * (mask == 1)).sum() / (mask == 1).sum() < 64 for mask in labels]
    left_lung_on_right = [(columns * (mask == 2)).sum() / (mask == 2).sum() > 64 for mask in labels]
    assert np.mean(right_lung_on_left) > 0.95 and np.mean(left_lung_on_right) > 0.95


@needs_xray
def test_xray_clahe_normalisation_in_unit_range():
    images, _, _ = data.load_pairs(
        *data.dataset_dirs(XRAY_ROOT),
        image_size=(128, 128),
        normalization="clahe",
        limit=5,
        progress=False,
    )
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.1
