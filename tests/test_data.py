"""Unit tests for lunghelpers.data on small hand-made files written to tmp_path."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from lunghelpers import data, synthetic


def write(path, array, parameters=()):
    """Write an array as an image file with OpenCV, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array, list(parameters))
    return path


def two_lungs(size=32, left_value=255, right_value=255):
    """A mask with a block on the image's left (columns 4..11) and one on its right (20..27)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 4:12] = left_value
    mask[8:24, 20:28] = right_value
    return mask


def ramp(size=32, low=-1000, high=1000, dtype=np.int16):
    """An image whose values rise linearly from low to high over its pixels."""
    return np.linspace(low, high, size * size).reshape(size, size).astype(dtype)


@pytest.fixture
def ct_folder(tmp_path):
    """Three int16 TIFF slices with 0/255 two-lung masks, written out of name order."""
    for name in ("b.tif", "c.tif", "a.tif"):
        write(tmp_path / "images" / name, ramp())
        write(tmp_path / "masks" / name, two_lungs())
    return tmp_path


# ---------------------------------------------------------------- pairing


def test_find_pairs_pairs_same_names_sorted(ct_folder):
    (ct_folder / "images" / "notes.txt").write_text("not an image")
    pairs = data.find_pairs(ct_folder / "images", ct_folder / "masks")
    assert [name for _, _, name in pairs] == ["a.tif", "b.tif", "c.tif"]
    assert all(image.name == mask.name == name for image, mask, name in pairs)


def test_find_pairs_accepts_mask_suffix_and_other_extension(tmp_path):
    write(tmp_path / "images" / "x1.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "masks" / "x1_mask.jpg", np.zeros((8, 8), np.uint8))
    write(tmp_path / "images" / "x2.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "masks" / "x2.tif", np.zeros((8, 8), np.uint8))
    pairs = data.find_pairs(tmp_path / "images", tmp_path / "masks")
    assert [(image.name, mask.name, name) for image, mask, name in pairs] == [
        ("x1.png", "x1_mask.jpg", "x1.png"),
        ("x2.png", "x2.tif", "x2.png"),
    ]


def test_find_pairs_in_one_folder_with_mask_suffix(tmp_path):
    write(tmp_path / "both" / "x.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "both" / "x_mask.png", np.zeros((8, 8), np.uint8))
    pairs = data.find_pairs(tmp_path / "both", tmp_path / "both")
    assert [(image.name, mask.name) for image, mask, _ in pairs] == [("x.png", "x_mask.png")]


def test_images_without_masks_are_listed(ct_folder):
    for index in range(12):
        write(ct_folder / "images" / f"extra{index:02d}.tif", ramp())
    with pytest.raises(data.DataError, match=r"12 image\(s\) in .*images have no mask") as error:
        data.find_pairs(ct_folder / "images", ct_folder / "masks")
    assert "extra00.tif" in str(error.value) and "and 2 more" in str(error.value)


def test_masks_without_images_are_listed(ct_folder):
    write(ct_folder / "masks" / "orphan.tif", two_lungs())
    with pytest.raises(data.DataError, match=r"1 mask\(s\) in .*masks have no image .*orphan.tif"):
        data.find_pairs(ct_folder / "images", ct_folder / "masks")


def test_missing_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"image folder .*nowhere does not exist"):
        data.find_pairs(tmp_path / "nowhere", tmp_path / "empty")
    with pytest.raises(data.DataError, match=r"image folder .*empty holds no image files"):
        data.find_pairs(tmp_path / "empty", tmp_path / "empty")


def test_two_masks_for_one_name_is_an_error(ct_folder):
    write(ct_folder / "masks" / "a_mask.png", two_lungs())
    with pytest.raises(data.DataError, match=r"two files for the name 'a'"):
        data.find_pairs(ct_folder / "images", ct_folder / "masks")


# ---------------------------------------------------------------- reading and normalising


def test_minmax_known_answer_on_int16_tiff(tmp_path):
    image = np.array([[-2000, 0], [1000, 2000]], dtype=np.int16)
    write(tmp_path / "i" / "s.tif", image)
    write(tmp_path / "m" / "s.tif", np.array([[0, 255], [255, 0]], np.uint8))
    images, masks, names = data.load_pairs(
        tmp_path / "i", tmp_path / "m", image_size=(2, 2), progress=False
    )
    assert images.dtype == np.float32 and masks.dtype == np.int16
    np.testing.assert_allclose(images[0, :, :, 0], [[0.0, 0.5], [0.75, 1.0]])
    np.testing.assert_array_equal(masks[0, :, :, 0], [[0, 1], [1, 0]])
    assert names == ["s.tif"]


def test_read_image_keeps_depth_and_converts_colour(tmp_path):
    signed = np.array([[-745, 3000]], dtype=np.int16)
    unsigned = np.array([[1, 60000]], dtype=np.uint16)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 2] = 200  # pure red in OpenCV's BGR order
    with_alpha = np.dstack([np.full((2, 2, 3), 90, np.uint8), np.full((2, 2), 255, np.uint8)])
    assert data.read_image(write(tmp_path / "s.tif", signed)).tolist() == [[-745, 3000]]
    assert data.read_image(write(tmp_path / "u.tif", unsigned)).dtype == np.uint16
    assert data.read_image(write(tmp_path / "c.png", colour)).tolist() == [
        [60, 60],
        [60, 60],
    ]  # 0.299 * 200
    assert data.read_image(write(tmp_path / "a.png", with_alpha)).tolist() == [[90, 90], [90, 90]]


def test_corrupt_file_names_path(ct_folder):
    (ct_folder / "images" / "b.tif").write_bytes(b"this is not a TIFF")
    with pytest.raises(data.DataError, match=r"could not read .*b\.tif: expected a readable"):
        data.load_pairs(ct_folder / "images", ct_folder / "masks", progress=False)


def test_window_normalisation_known_answer():
    image = np.array([[-2000, -1000, -300, 400, 3000]], dtype=np.int16)
    np.testing.assert_allclose(data.normalize(image, "window"), [[0.0, 0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(
        data.normalize(image, "window", window=(-300, 400)), [[0, 0, 0, 1, 1]]
    )


def test_window_on_8bit_images_warns():
    with pytest.warns(UserWarning, match="expects CT numbers"):
        data.normalize(np.zeros((4, 4), np.uint8), "window")


def test_zscore_maps_mean_to_half_and_clips_at_three_deviations():
    image = np.array([0.0] * 50 + [10.0] * 50 + [1000.0], dtype=np.float32)[np.newaxis]
    result = data.normalize(image, "zscore")
    z_scores = (image - image.mean()) / image.std()
    np.testing.assert_allclose(result[0, :100], (z_scores[0, :100] + 3) / 6, rtol=1e-5)
    assert result[0, 100] == 1.0
    np.testing.assert_allclose(data.normalize(np.array([[1.0, 3.0]]), "zscore"), [[2 / 6, 4 / 6]])


def test_clahe_gives_unit_range_for_8_and_16_bit():
    rng = np.random.default_rng(0)
    low_contrast = rng.integers(100, 120, (64, 64)).astype(np.uint8)
    equalised = data.normalize(low_contrast, "clahe")
    assert equalised.dtype == np.float32 and 0.0 <= equalised.min() and equalised.max() <= 1.0
    assert np.ptp(equalised) > np.ptp(low_contrast / 255.0) * 3  # contrast was stretched
    hounsfield = rng.integers(-1000, 400, (64, 64)).astype(np.int16)
    equalised = data.normalize(hounsfield, "clahe")
    assert 0.0 <= equalised.min() and equalised.max() <= 1.0 and np.ptp(equalised) > 0.5


def test_minmax_of_constant_image_is_zero():
    assert data.normalize(np.full((3, 3), 7, np.int16)).tolist() == [[0.0] * 3] * 3


def test_resize_shapes_and_lanczos_overshoot_clipped(tmp_path):
    checkerboard = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)
    write(tmp_path / "i" / "a.png", checkerboard)
    write(tmp_path / "m" / "a.png", two_lungs(40))
    images, masks, _ = data.load_pairs(
        tmp_path / "i", tmp_path / "m", image_size=(24, 16), progress=False
    )
    assert images.shape == (1, 24, 16, 1) and masks.shape == (1, 24, 16, 1)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_images_of_different_sizes_are_resized_with_one_warning(tmp_path):
    write(tmp_path / "i" / "a.png", np.tile(np.arange(32, dtype=np.uint8), (32, 1)))
    write(tmp_path / "m" / "a.png", two_lungs(32))
    write(tmp_path / "i" / "b.png", np.tile(np.arange(40, dtype=np.uint8), (48, 1)))
    write(tmp_path / "m" / "b.png", np.pad(two_lungs(32), ((8, 8), (4, 4))))
    with pytest.warns(
        UserWarning, match=r"2 different sizes \(32x32, 40x48\); all were resized to 16x16"
    ):
        images, _, _ = data.load_pairs(
            tmp_path / "i", tmp_path / "m", image_size=(16, 16), progress=False
        )
    assert images.shape == (2, 16, 16, 1)


def test_image_and_mask_of_different_sizes_is_an_error(tmp_path):
    write(tmp_path / "i" / "a.png", np.zeros((32, 32), np.uint8))
    write(tmp_path / "m" / "a.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(data.DataError, match=r"mask .*a\.png is 16x16 but image .*a\.png is 32x32"):
        data.load_pairs(tmp_path / "i", tmp_path / "m", progress=False)


# ---------------------------------------------------------------- masks


def test_binary_mode_counts_both_synthetic_lung_values(tmp_path):
    write(tmp_path / "i" / "a.tif", ramp())
    write(tmp_path / "m" / "a.tif", two_lungs(left_value=128, right_value=255))
    _, masks, _ = data.load_pairs(
        tmp_path / "i", tmp_path / "m", image_size=(32, 32), progress=False
    )
    np.testing.assert_array_equal(masks[0, :, :, 0], two_lungs() // 255)


def test_soft_mask_binarised_at_half_maximum():
    mask = two_lungs()
    mask[7, 4:24] = np.arange(1, 21) * 12  # a soft border row: 12, 24, ..., 240
    foreground = data.binary_foreground(mask)
    np.testing.assert_array_equal(foreground, mask > 127.5)
    assert foreground[7, 4 + 10] and not foreground[7, 4 + 9]  # 132 is lung, 120 is not


def test_small_label_values_all_count_as_lung():
    mask = two_lungs(left_value=1, right_value=2)
    np.testing.assert_array_equal(data.binary_foreground(mask), mask > 0)
    np.testing.assert_array_equal(data.binary_foreground(mask.astype(np.uint16) * 1000), mask > 0)


def test_rare_or_tiny_values_are_noise_not_lung():
    mask = two_lungs()
    mask[0, :10] = 100  # 10 stray pixels next to 256 lung pixels: under 5 % of the non-zero pixels
    np.testing.assert_array_equal(data.binary_foreground(mask), two_lungs() > 0)
    mask = two_lungs()
    mask[0:2, :] = 1  # 64 pixels of JPEG-like noise: common, but under max / 16
    np.testing.assert_array_equal(data.binary_foreground(mask), two_lungs() > 0)


def test_jpeg_mask_is_binarised_back_to_its_shape(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (18, 32), (9, 20), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (46, 32), (9, 20), 0, 0, 360, 255, -1)
    write(tmp_path / "i" / "a.jpg", np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    write(tmp_path / "m" / "a.jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 75])
    noisy = cv2.imread(str(tmp_path / "m" / "a.jpg"), cv2.IMREAD_UNCHANGED)
    assert np.unique(noisy).size > 10  # JPEG noise
    _, masks, _ = data.load_pairs(
        tmp_path / "i", tmp_path / "m", image_size=(64, 64), progress=False
    )
    assert set(np.unique(masks)) == {0, 1}
    assert np.mean(masks[0, :, :, 0] != mask // 255) < 0.01


def test_labels_mode_maps_sorted_values_to_class_ids(tmp_path):
    write(tmp_path / "i" / "a.tif", ramp())
    write(tmp_path / "m" / "a.tif", two_lungs(left_value=128, right_value=255))
    write(tmp_path / "i" / "b.tif", ramp())
    write(tmp_path / "m" / "b.tif", two_lungs(left_value=128, right_value=0))
    _, masks, _ = data.load_pairs(
        tmp_path / "i", tmp_path / "m", image_size=(32, 32), mask_mode="labels", progress=False
    )
    expected = two_lungs(left_value=1, right_value=2)
    np.testing.assert_array_equal(masks[0, :, :, 0], expected)
    np.testing.assert_array_equal(masks[1, :, :, 0], np.where(expected == 1, 1, 0))


def test_labels_mode_on_binary_set_is_an_error(ct_folder):
    with pytest.raises(
        data.DataError,
        match=r"mask_mode='labels' needs masks with two or more foreground values.*\[0, 255\]",
    ):
        data.load_pairs(
            ct_folder / "images", ct_folder / "masks", mask_mode="labels", progress=False
        )


def test_labels_mode_on_soft_masks_is_an_error(tmp_path):
    mask = two_lungs()
    mask[7, 4:24] = np.arange(1, 21) * 12
    write(tmp_path / "i" / "a.png", np.zeros((32, 32), np.uint8))
    write(tmp_path / "m" / "a.png", mask)
    with pytest.raises(data.DataError, match=r"needs lossless label masks.*22 distinct values"):
        data.load_pairs(tmp_path / "i", tmp_path / "m", mask_mode="labels", progress=False)


def test_left_right_labels_with_island():
    mask = two_lungs() > 0
    mask[2, 13] = True  # an island nearer the image's left lung (centroid column 7.5 vs 23.5)
    labels, was_split = data.left_right_labels(mask)
    expected = two_lungs(left_value=1, right_value=2)
    expected[2, 13] = 1
    np.testing.assert_array_equal(labels, expected)
    assert not was_split


def test_left_right_splits_touching_lungs_at_centre_column():
    mask = np.zeros((16, 16), bool)
    mask[4:12, 3:13] = True
    labels, was_split = data.left_right_labels(mask)
    assert was_split
    assert set(np.unique(labels[:, :8][mask[:, :8]])) == {1}
    assert set(np.unique(labels[:, 8:][mask[:, 8:]])) == {2}


def test_left_right_mode_warns_about_split_and_empty_masks(tmp_path):
    write(tmp_path / "i" / "a.png", np.zeros((32, 32), np.uint8))
    write(tmp_path / "m" / "a.png", two_lungs())
    touching = np.zeros((32, 32), np.uint8)
    touching[8:24, 4:28] = 255
    write(tmp_path / "i" / "b.png", np.zeros((32, 32), np.uint8))
    write(tmp_path / "m" / "b.png", touching)
    write(tmp_path / "i" / "c.png", np.zeros((32, 32), np.uint8))
    write(tmp_path / "m" / "c.png", np.zeros((32, 32), np.uint8))
    with pytest.warns(UserWarning) as records:
        _, masks, _ = data.load_pairs(
            tmp_path / "i",
            tmp_path / "m",
            image_size=(32, 32),
            mask_mode="left_right",
            progress=False,
        )
    messages = " | ".join(str(record.message) for record in records)
    assert "1 mask(s)" in messages and "have no foreground" in messages and "c.png" in messages
    assert "single lung-sized region" in messages and "b.png" in messages
    np.testing.assert_array_equal(masks[0, :, :, 0], two_lungs(left_value=1, right_value=2))
    assert masks[2].max() == 0


def test_empty_mask_warns_and_is_kept(ct_folder):
    write(ct_folder / "masks" / "b.tif", np.zeros((32, 32), np.uint8))
    with pytest.warns(UserWarning, match=r"1 mask\(s\) in .*masks have no foreground .*b\.tif"):
        _, masks, names = data.load_pairs(ct_folder / "images", ct_folder / "masks", progress=False)
    assert names == ["a.tif", "b.tif", "c.tif"] and masks[1].max() == 0 and masks[0].max() == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"mask_mode": "multi"}, "mask_mode must be one of"),
        ({"normalization": "hu"}, "normalization must be one of"),
        ({"image_size": "128"}, "image_size must be .*got the string '128'"),
        ({"image_size": (128, 0)}, "image_size must be"),
        ({"image_size": (128.0, 128)}, "image_size must be"),
        ({"limit": 0}, "limit must be a positive integer"),
    ],
)
def test_bad_arguments(ct_folder, arguments, message):
    with pytest.raises(ValueError, match=message):
        data.load_pairs(ct_folder / "images", ct_folder / "masks", progress=False, **arguments)


def test_one_integer_image_size_is_a_square(ct_folder):
    images, masks, _ = data.load_pairs(
        ct_folder / "images", ct_folder / "masks", image_size=16, progress=False
    )
    assert images.shape == masks.shape == (3, 16, 16, 1)


def test_limit_loads_the_first_pairs(ct_folder):
    images, masks, names = data.load_pairs(
        ct_folder / "images", ct_folder / "masks", limit=2, progress=False
    )
    assert names == ["a.tif", "b.tif"] and images.shape[0] == masks.shape[0] == 2


# ---------------------------------------------------------------- splitting


def test_split_indices_sizes_follow_floor_rule():
    parts = data.split_indices(267)
    assert [len(part) for part in parts] == [160, 53, 54]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(267))
    assert [len(part) for part in data.split_indices(566, (0.8, 0.2), shuffle=True)] == [452, 114]


def test_shuffled_split_is_deterministic_and_a_partition():
    first = data.split_indices(100, (0.8, 0.2), shuffle=True, seed=220)
    again = data.split_indices(100, (0.8, 0.2), shuffle=True, seed=220)
    other = data.split_indices(100, (0.8, 0.2), shuffle=True, seed=221)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(100))


def test_split_returns_paired_arrays():
    images = np.arange(10)[:, None] * 1.0
    masks = np.arange(10)[:, None] * 10
    parts = data.split(images, masks, (0.6, 0.4), shuffle=True, seed=3)
    for part_images, part_masks in parts:
        np.testing.assert_array_equal(part_masks, part_images * 10)
    assert [len(part_images) for part_images, _ in parts] == [6, 4]


@pytest.mark.parametrize(
    "fractions, message",
    [
        ((0.6, 0.5), "must sum to 1"),
        ((1.2, -0.2), "must be positive"),
        ((), "must be positive"),
        ((0.01, 0.99), "empty part"),
    ],
)
def test_bad_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        data.split_indices(10, fractions)


def test_split_of_unequal_lengths_is_an_error():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        data.split(np.zeros(3), np.zeros(2))


# ---------------------------------------------------------------- layouts


def test_dataset_dirs_knows_the_layouts(tmp_path):
    for folders in (
        ("ct", "2d_images"),
        ("ct", "2d_masks"),
        ("xray", "cxr"),
        ("xray", "masks"),
        ("other", "images"),
        ("other", "masks"),
    ):
        (tmp_path.joinpath(*folders)).mkdir(parents=True)
    assert data.dataset_dirs(tmp_path / "ct") == (
        tmp_path / "ct" / "2d_images",
        tmp_path / "ct" / "2d_masks",
    )
    assert data.dataset_dirs(tmp_path, "ct") == (
        tmp_path / "ct" / "2d_images",
        tmp_path / "ct" / "2d_masks",
    )
    assert data.dataset_dirs(tmp_path, "xray") == (
        tmp_path / "xray" / "cxr",
        tmp_path / "xray" / "masks",
    )
    assert data.dataset_dirs(tmp_path / "other") == (
        tmp_path / "other" / "images",
        tmp_path / "other" / "masks",
    )
    with pytest.raises(
        data.DataError, match=r"no data set found in .*: expected 2d_images/ \+ 2d_masks/"
    ):
        data.dataset_dirs(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        data.dataset_dirs(tmp_path, "mri")


# ---------------------------------------------------------------- on-disk cache


@pytest.fixture(scope="module")
def synthetic_ct(tmp_path_factory):
    """40 synthetic CT slices of 64 px."""
    return synthetic.generate(
        "ct", 40, tmp_path_factory.mktemp("synthetic") / "ct", size=64, progress=False
    )


def test_cache_matches_load_pairs(synthetic_ct, tmp_path):
    image_dir, mask_dir = data.dataset_dirs(synthetic_ct)
    cache_dir = data.build_cache(
        image_dir,
        mask_dir,
        tmp_path / "cache",
        image_size=(32, 32),
        mask_mode="labels",
        progress=False,
    )
    images, masks, names = data.load_cache(cache_dir)
    expected_images, expected_masks, expected_names = data.load_pairs(
        image_dir, mask_dir, image_size=(32, 32), mask_mode="labels", progress=False
    )
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and masks.dtype == np.uint8
    assert images.shape == masks.shape == (40, 32, 32, 1) and names == expected_names
    assert np.abs(images / 255.0 - expected_images).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(masks, expected_masks)
    assert json.loads((cache_dir / "cache.json").read_text())["class_values"] == [0, 128, 255]
    assert [path.name for path in tmp_path.iterdir()] == ["cache"]  # no temporary folder left


def test_cache_is_reused_and_never_mixed(synthetic_ct, tmp_path):
    image_dir, mask_dir = data.dataset_dirs(synthetic_ct)
    cache_dir = data.build_cache(
        image_dir, mask_dir, tmp_path / "cache", image_size=(16, 16), limit=5, progress=False
    )
    written = (cache_dir / "images.npy").stat().st_mtime_ns
    assert (
        data.build_cache(
            image_dir, mask_dir, cache_dir, image_size=(16, 16), limit=5, progress=False
        )
        == cache_dir
    )
    assert (cache_dir / "images.npy").stat().st_mtime_ns == written
    with pytest.raises(data.DataError, match=r"cache folder .*cache was built with other settings"):
        data.build_cache(
            image_dir, mask_dir, cache_dir, image_size=(32, 32), limit=5, progress=False
        )
    (tmp_path / "stranger").mkdir()
    with pytest.raises(data.DataError, match=r"stranger is not a lunghelpers cache"):
        data.build_cache(image_dir, mask_dir, tmp_path / "stranger", progress=False)
    with pytest.raises(ValueError, match="image_dtype must be one of"):
        data.build_cache(
            image_dir, mask_dir, tmp_path / "other", image_dtype="int8", progress=False
        )


def test_float16_cache(synthetic_ct, tmp_path):
    image_dir, mask_dir = data.dataset_dirs(synthetic_ct)
    cache_dir = data.build_cache(
        image_dir,
        mask_dir,
        tmp_path / "cache",
        image_size=(16, 16),
        image_dtype="float16",
        limit=3,
        progress=False,
    )
    images, _, _ = data.load_cache(cache_dir)
    expected, _, _ = data.load_pairs(
        image_dir, mask_dir, image_size=(16, 16), limit=3, progress=False
    )
    assert images.dtype == np.float16
    np.testing.assert_allclose(images, expected, atol=1e-3)


def test_cache_dataset_batches(synthetic_ct, tmp_path):
    image_dir, mask_dir = data.dataset_dirs(synthetic_ct)
    cache_dir = data.build_cache(
        image_dir,
        mask_dir,
        tmp_path / "cache",
        image_size=(32, 32),
        mask_mode="labels",
        progress=False,
    )
    images, masks, _ = data.load_cache(cache_dir)
    dataset = data.cache_dataset(
        cache_dir, indices=[3, 5, 7, 9, 11], batch_size=2, shuffle=False, repeat=False, n_classes=3
    )
    batches = list(dataset.as_numpy_iterator())
    assert [len(batch_images) for batch_images, _ in batches] == [2, 2, 1]
    batch_images, targets = batches[0]
    assert batch_images.dtype == np.float32 and targets.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(batch_images, images[[3, 5]] / 255.0)
    np.testing.assert_array_equal(targets.argmax(axis=-1), masks[[3, 5], :, :, 0])
    np.testing.assert_array_equal(targets.sum(axis=-1), 1.0)
    _, binary_targets = next(iter(data.cache_dataset(cache_dir, batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(binary_targets.numpy(), (masks[:4] > 0).astype(np.float32))
    with pytest.raises(ValueError, match="n_classes must be 1 .* or at least 3"):
        data.cache_dataset(cache_dir, n_classes=2)


def test_cache_dataset_shuffle_and_augmentation_are_seeded(synthetic_ct, tmp_path):
    image_dir, mask_dir = data.dataset_dirs(synthetic_ct)
    cache_dir = data.build_cache(
        image_dir, mask_dir, tmp_path / "cache", image_size=(16, 16), limit=12, progress=False
    )
    images, masks, _ = data.load_cache(cache_dir)

    def first_epoch(**arguments):
        dataset = data.cache_dataset(cache_dir, batch_size=4, repeat=False, seed=5, **arguments)
        return list(dataset.as_numpy_iterator())

    shuffled, again = first_epoch(), first_epoch()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(shuffled, again))
    seen = np.concatenate([batch_images for batch_images, _ in shuffled])
    assert not np.array_equal(seen, images / 255.0)  # order changed
    np.testing.assert_allclose(np.sort(seen.ravel()), np.sort(images.ravel() / 255.0), atol=1e-6)
    flip = {"horizontal_flip": True}
    flipped = first_epoch(shuffle=False, augment=flip)
    flipped_again = first_epoch(shuffle=False, augment=flip)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(flipped, flipped_again))
    flips = 0
    for batch_number, (batch_images, targets) in enumerate(flipped):
        rows = slice(4 * batch_number, 4 * batch_number + 4)
        for image, target, plain_image, plain_mask in zip(
            batch_images, targets, images[rows] / 255.0, masks[rows] > 0
        ):
            was_flipped = not np.allclose(image, plain_image)
            flips += was_flipped
            expected_image = plain_image[:, ::-1] if was_flipped else plain_image
            expected_target = plain_mask[:, ::-1] if was_flipped else plain_mask
            np.testing.assert_allclose(image, expected_image, atol=1e-6)
            np.testing.assert_array_equal(target, expected_target)  # mask follows its image
    assert 0 < flips < 12  # both cases were checked


# ---------------------------------------------------------------- bad pixels and argument checks


@pytest.mark.filterwarnings("ignore:normalization='window' expects CT numbers")
@pytest.mark.parametrize("method", data.NORMALIZATIONS)
@pytest.mark.parametrize("image", [np.full((8, 8), -2048, np.int16), np.full((8, 8), 7, np.uint8),
                                   np.full((8, 8), 0.5, np.float32)])
def test_constant_images_normalise_to_finite_values(method, image):
    normalised = data.normalize(image, method)
    assert normalised.dtype == np.float32 and np.isfinite(normalised).all()
    assert np.ptp(normalised) == 0 and 0.0 <= normalised.min() <= 1.0


def test_wide_float_range_gives_no_overflow():
    image = np.array([[-3e38, 0.0], [1.0, 3e38]], np.float32)
    for method in ("minmax", "zscore", "clahe"):
        assert np.isfinite(data.normalize(image, method)).all()
    np.testing.assert_allclose(data.normalize(image)[0], [0.0, 0.5], atol=1e-6)


def test_normalize_refuses_non_finite_pixels():
    image = np.zeros((4, 4), np.float32)
    image[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        data.normalize(image)


def test_read_image_names_the_file_with_nan_pixels(tmp_path):
    image = np.ones((8, 8), np.float32)
    image[2, 6] = np.nan
    image[5, 1] = np.inf
    path = write(tmp_path / "slice.tif", image)
    with pytest.raises(data.DataError, match=r"slice\.tif holds 2 non-finite .*row 2, column 6"):
        data.read_image(path)


def test_constant_and_tiny_images_are_warned_about_in_one_warning_each(tmp_path):
    for index in range(12):
        write(tmp_path / "i" / f"flat{index:02d}.png", np.full((32, 32), 9, np.uint8))
        write(tmp_path / "m" / f"flat{index:02d}.png", two_lungs())
    write(tmp_path / "i" / "tiny.png", np.arange(4, dtype=np.uint8).reshape(2, 2))
    write(tmp_path / "m" / "tiny.png", np.full((2, 2), 255, np.uint8))
    with pytest.warns(UserWarning) as records:
        images, _, _ = data.load_pairs(
            tmp_path / "i", tmp_path / "m", image_size=(32, 32), progress=False
        )
    messages = [str(record.message) for record in records]
    constant = [message for message in messages if "are constant" in message]
    small = [message for message in messages if "far smaller" in message]
    assert len(constant) == 1 and "12 image(s)" in constant[0] and "and 2 more" in constant[0]
    assert "flat00.png (every pixel 9)" in constant[0]
    assert small == [small[0]] and "1 image(s)" in small[0] and "tiny.png (2x2)" in small[0]
    assert np.isfinite(images).all() and images[:12].max() == 0.0


def test_labels_mode_refuses_rare_values_even_when_few(tmp_path):
    mask = two_lungs(left_value=128, right_value=255)
    mask[8, 4:8] = 254  # 4 pixels of noise next to 256 lung pixels: 3 values, one of them rare
    write(tmp_path / "i" / "a.png", ramp().astype(np.uint8))
    write(tmp_path / "m" / "a.png", mask)
    with pytest.raises(
        data.DataError,
        match=r"in .*m hold 4 distinct values \[0, 128, 254, 255\], 1 of them covering less than "
        r"5% of the lung pixels each \(\[254\]\).*use mask_mode='binary'",
    ):
        data.load_pairs(tmp_path / "i", tmp_path / "m", mask_mode="labels", progress=False)


@pytest.mark.parametrize(
    "value, expected",
    [(64, (64, 64)), ((48, 64), (48, 64)), ([48, 64], (48, 64)), (np.int64(32), (32, 32))],
)
def test_check_image_size_accepts_a_side_or_a_pair(value, expected):
    assert data.check_image_size(value) == expected


def test_check_fractions_returns_floats_and_names_the_parameter():
    assert data.check_fractions([0.8, 0.2]) == (0.8, 0.2)
    with pytest.raises(ValueError, match=r"^split must be positive numbers.*string '0.8,0.2'"):
        data.check_fractions("0.8,0.2", name="split")


def test_stale_cache_temporaries_are_removed_and_live_ones_kept(synthetic_ct, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    stale = tmp_path / f".cache.tmp-{int(ended.stdout)}"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half written")
    live = tmp_path / f".cache.tmp-{os.getppid()}"
    live.mkdir()
    data.build_cache(*data.dataset_dirs(synthetic_ct), tmp_path / "cache", image_size=(16, 16),
                     progress=False)
    assert not stale.exists() and live.exists() and (tmp_path / "cache" / "cache.json").is_file()


def test_damaged_cache_files_are_named(synthetic_ct, tmp_path):
    cache = data.build_cache(*data.dataset_dirs(synthetic_ct), tmp_path / "cache",
                             image_size=(16, 16), progress=False)
    info = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps({**info, "names": info["names"][:1]}))
    with pytest.raises(data.DataError, match=r"cache .*cache is damaged: images.npy"):
        data.load_cache(cache)
    (cache / "cache.json").write_text("[]")
    with pytest.raises(data.DataError, match=r"cache\.json is damaged"):
        data.load_cache(cache)
