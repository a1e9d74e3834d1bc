"""Tests for lunghelpers.augment: paired transforms, pipelines, ImageDataGenerator pair, noise."""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from lunghelpers import augment


def blob_masks(count, size, seed, labels=(1,)):
    """Masks (count, size, size, 1) int16, one random ellipse per label, away from the border."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    masks = np.zeros((count, size, size, 1), np.int16)
    for index in range(count):
        for label in labels:
            center_row, center_col = rng.uniform(0.3 * size, 0.7 * size, 2)
            radius_row, radius_col = rng.uniform(0.1 * size, 0.25 * size, 2)
            inside = ((rows - center_row) / radius_row) ** 2 + (
                (cols - center_col) / radius_col
            ) ** 2 <= 1
            masks[index, inside, 0] = label
    return masks


def no_transform(count):
    """Per-example parameters of the identity transform."""
    return dict(
        rotation_degrees=np.zeros(count),
        width_shift=np.zeros(count),
        height_shift=np.zeros(count),
        zoom=np.ones(count),
        horizontal_flip=np.zeros(count, bool),
        vertical_flip=np.zeros(count, bool),
    )


def transform_one(image, mask, **parameters):
    """Apply one explicit transform to a single (H, W, 1) pair; returns NumPy arrays."""
    height, width = image.shape[:2]
    settings = no_transform(1)
    settings.update({key: np.array([value]) for key, value in parameters.items()})
    transforms = augment.projective_transforms(**settings, height=height, width=width)
    images, masks = augment.transform_pair(
        image[None], mask[None], transforms, fill_mode="constant"
    )
    return images.numpy()[0], masks.numpy()[0]


# --- alignment and labels of the project's own augmentation ------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        augment.SOURCE_CT,
        augment.LAB,
        dataclasses.replace(augment.LAB, vertical_flip=True, fill_mode="constant"),
        dataclasses.replace(augment.LAB, rotation_degrees=45.0, fill_mode="reflect"),
    ],
    ids=["source", "lab", "lab-vflip-constant", "rot45-reflect"],
)
def test_image_and_mask_stay_aligned_over_many_draws(config):
    # The image *is* the mask painted as intensities: after the paired transform, rounding the
    # bilinear image must give back the nearest-neighbour mask except on a few border pixels.
    masks = blob_masks(128, 64, seed=1)
    images = masks.astype(np.float32)
    out_images, out_masks = augment.augment_batch(images, masks, config, seed=7)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    agreement = (np.round(out_images) == out_masks).mean(axis=(1, 2, 3))
    assert agreement.min() >= 0.99
    moved = (out_masks != masks).any(axis=(1, 2, 3))
    assert moved.mean() > 0.9, "the transform should move almost every example"


def test_multiclass_labels_and_dtype_are_preserved():
    masks = blob_masks(32, 48, seed=2, labels=(1, 2))
    images = (masks > 0).astype(np.float32)
    for dtype in (np.int16, np.uint8, np.int32):
        _, out_masks = augment.augment_batch(images, masks.astype(dtype), augment.LAB, seed=3)
        assert out_masks.dtype == tf.as_dtype(dtype)
        assert set(np.unique(out_masks.numpy())) == {0, 1, 2}
    # Interpolating between 0 and 2 would invent 1 on every border; nearest neighbour cannot.
    only_two = blob_masks(32, 48, seed=2, labels=(2,))
    _, out_masks = augment.augment_batch(only_two.astype(np.float32), only_two, augment.LAB, seed=3)
    assert set(np.unique(out_masks.numpy())) == {0, 2}


def test_same_seed_same_batch_and_different_seed_different_batch():
    masks = blob_masks(8, 32, seed=3)
    images = masks.astype(np.float32) * 0.8 + 0.1
    first = augment.augment_batch(images, masks, augment.ROBUST, seed=11)
    second = augment.augment_batch(images, masks, augment.ROBUST, seed=11)
    third = augment.augment_batch(images, masks, augment.ROBUST, seed=12)
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())
    assert not np.array_equal(first[0].numpy(), third[0].numpy())
    # A pair (seed, batch number) is accepted too, as make_dataset passes it.
    pair = augment.augment_batch(images, masks, augment.ROBUST, seed=(11, 5))
    assert not np.array_equal(first[0].numpy(), pair[0].numpy())


def test_identity_config_returns_input_exactly():
    masks = blob_masks(4, 32, seed=4, labels=(1, 2))
    images = np.random.default_rng(0).random(masks.shape, dtype=np.float32)
    for config in (augment.NONE, None, "none", {"fill_mode": "reflect"}):
        out_images, out_masks = augment.augment_batch(images, masks, config, seed=0)
        np.testing.assert_array_equal(out_images.numpy(), images)
        np.testing.assert_array_equal(out_masks.numpy(), masks)
        assert out_masks.dtype == tf.int16
    # The identity matrix through the resampler is exact as well.
    transforms = augment.projective_transforms(**no_transform(4), height=32, width=32)
    out_images, out_masks = augment.transform_pair(images, masks, transforms)
    np.testing.assert_array_equal(out_images.numpy(), images)
    np.testing.assert_array_equal(out_masks.numpy(), masks)


# --- known answers of the transform ------------------------------------------------------------


def test_horizontal_flip_is_np_flip():
    masks = blob_masks(1, 16, seed=5, labels=(1, 2))
    images = np.random.default_rng(1).random(masks.shape, dtype=np.float32)
    image, mask = transform_one(images[0], masks[0], horizontal_flip=True)
    np.testing.assert_array_equal(image, np.flip(images[0], axis=1))
    np.testing.assert_array_equal(mask, np.flip(masks[0], axis=1))
    image, mask = transform_one(images[0], masks[0], vertical_flip=True)
    np.testing.assert_array_equal(image, np.flip(images[0], axis=0))


def test_random_flip_with_label_swap_exchanges_left_and_right_lungs():
    masks = blob_masks(32, 16, seed=6, labels=(1, 2))
    images = np.random.default_rng(2).random(masks.shape, dtype=np.float32)
    config = augment.AugmentConfig(horizontal_flip=True, swap_labels_on_flip=(1, 2))
    out_images, out_masks = augment.augment_batch(images, masks, config, seed=9)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    swapped = np.select([masks == 1, masks == 2], [2, 1], 0)
    flipped = 0
    for index in range(len(masks)):
        if np.array_equal(out_images[index], np.flip(images[index], axis=1)):
            flipped += 1
            np.testing.assert_array_equal(out_masks[index], np.flip(swapped[index], axis=1))
        else:
            np.testing.assert_array_equal(out_images[index], images[index])
            np.testing.assert_array_equal(out_masks[index], masks[index])
    assert 8 <= flipped <= 24, "each example should be flipped with probability 0.5"


def test_shift_moves_a_pixel_by_the_expected_number_of_pixels():
    image = np.zeros((32, 32, 1), np.float32)
    mask = np.zeros((32, 32, 1), np.int16)
    image[10, 5] = 1.0
    mask[10, 5] = 1
    # Width shift 0.25 of 32 px = 8 px to the right; height shift 0.125 = 4 px down.
    out_image, out_mask = transform_one(image, mask, width_shift=0.25, height_shift=0.125)
    assert np.argwhere(out_image[..., 0] > 0.5).tolist() == [[14, 13]]
    assert np.argwhere(out_mask[..., 0]).tolist() == [[14, 13]]
    out_image, _ = transform_one(image, mask, width_shift=-0.125)
    assert np.argwhere(out_image[..., 0] > 0.5).tolist() == [[10, 1]]


def test_rotation_by_90_degrees_is_np_rot90_counter_clockwise():
    masks = blob_masks(1, 21, seed=7, labels=(1, 2))
    images = np.random.default_rng(3).random(masks.shape, dtype=np.float32)
    image, mask = transform_one(images[0], masks[0], rotation_degrees=90.0)
    np.testing.assert_allclose(image, np.rot90(images[0], 1, axes=(0, 1)), atol=1e-5)
    np.testing.assert_array_equal(mask, np.rot90(masks[0], 1, axes=(0, 1)))


def test_rotation_keeps_the_centre_pixel():
    images = np.random.default_rng(4).random((16, 33, 33, 1), dtype=np.float32)
    masks = (images > 0.5).astype(np.int16)
    config = augment.AugmentConfig(rotation_degrees=10.0)
    out_images, out_masks = augment.augment_batch(images, masks, config, seed=1)
    np.testing.assert_allclose(out_images.numpy()[:, 16, 16], images[:, 16, 16], atol=1e-5)
    np.testing.assert_array_equal(out_masks.numpy()[:, 16, 16], masks[:, 16, 16])
    assert not np.allclose(out_images.numpy(), images), "a rotation should change the rest"


def test_zoom_factor_below_one_zooms_in_about_the_centre():
    image = np.zeros((33, 33, 1), np.float32)
    mask = np.zeros((33, 33, 1), np.int16)
    image[16, 20] = 1.0
    mask[16, 20] = 1
    # Zoom factor 0.5 samples the input at half the distance: 4 px right of centre becomes 8 px.
    out_image, out_mask = transform_one(image, mask, zoom=0.5)
    assert out_image[16, 24, 0] == pytest.approx(1.0)
    assert out_mask[16, 24, 0] == 1
    assert out_image[16, 20, 0] == pytest.approx(0.0)


def test_intensity_changes_have_known_answers_and_leave_masks_alone():
    images = np.linspace(0.0, 1.0, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    masks = (images > 0.5).astype(np.int16)
    gamma, out_masks = augment.augment_batch(images, masks, {"gamma": (2.0, 2.0)}, seed=0)
    np.testing.assert_allclose(gamma.numpy(), images**2, atol=1e-6)
    np.testing.assert_array_equal(out_masks.numpy(), masks)
    brighter, _ = augment.augment_batch(images, masks, {"brightness": (0.25, 0.25)}, seed=0)
    np.testing.assert_allclose(brighter.numpy(), np.clip(images + 0.25, 0, 1), atol=1e-6)
    flatter, _ = augment.augment_batch(images, masks, {"contrast": (0.5, 0.5)}, seed=0)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(flatter.numpy(), mean + 0.5 * (images - mean), atol=1e-6)


def test_noise_fraction_picks_some_examples_and_output_is_clipped():
    images = np.full((64, 16, 16, 1), 0.5, np.float32)
    masks = np.zeros(images.shape, np.int16)
    config = augment.AugmentConfig(noise_std=0.1, noise_fraction=0.5)
    noisy, _ = augment.augment_batch(images, masks, config, seed=2)
    changed = (noisy.numpy() != images).any(axis=(1, 2, 3))
    assert 16 <= changed.sum() <= 48
    assert np.std(noisy.numpy()[changed] - 0.5) == pytest.approx(0.1, rel=0.1)
    loud, _ = augment.augment_batch(images, masks, {"noise_std": 1.0}, seed=2)
    assert loud.numpy().min() == 0.0 and loud.numpy().max() == 1.0


# --- tf.data pipeline --------------------------------------------------------------------------


def batches(dataset, count):
    return [(images.numpy(), targets.numpy()) for images, targets in dataset.take(count)]


def test_make_dataset_without_shuffle_or_augmentation_keeps_order_and_binarises():
    masks = blob_masks(5, 16, seed=8, labels=(1, 2))
    images = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None, None] / 5, masks.shape)
    dataset = augment.make_dataset(images, masks, batch_size=2, shuffle=False, repeat=False)
    result = batches(dataset, 10)
    assert [len(batch_images) for batch_images, _ in result] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in result]), images)
    targets = np.concatenate([b[1] for b in result])
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, (masks > 0).astype(np.float32))
    dropped = augment.make_dataset(
        images, masks, 2, shuffle=False, repeat=False, drop_remainder=True
    )
    assert [len(b[0]) for b in batches(dropped, 10)] == [2, 2]


def test_make_dataset_one_hot_targets_for_three_classes():
    masks = blob_masks(6, 24, seed=9, labels=(1, 2))
    images = (masks > 0).astype(np.float32)
    dataset = augment.make_dataset(images, masks, 3, augment="lab", n_classes=3, seed=4)
    for batch_images, targets in batches(dataset, 4):
        assert batch_images.shape == (3, 24, 24, 1) and batch_images.dtype == np.float32
        assert targets.shape == (3, 24, 24, 3) and targets.dtype == np.float32
        np.testing.assert_array_equal(targets.sum(axis=-1), 1.0)
        # The augmented image still marks exactly the lung pixels of the augmented target.
        agreement = (np.round(batch_images[..., 0]) == 1 - targets[..., 0]).mean()
        assert agreement >= 0.99


def test_make_dataset_is_reproducible_and_seed_dependent():
    masks = blob_masks(6, 16, seed=10)
    images = np.random.default_rng(5).random(masks.shape, dtype=np.float32)

    def stream(seed):
        dataset = augment.make_dataset(images, masks, 4, augment="source", seed=seed)
        return batches(dataset, 5)  # several epochs of 6 images

    first, second, other = stream(3), stream(3), stream(4)
    for (a_images, a_targets), (b_images, b_targets) in zip(first, second):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_targets, b_targets)
    assert not np.array_equal(first[0][0], other[0][0])


def test_every_iterator_of_a_repeated_stream_yields_the_same_batches():
    """Looking at a batch before training (a new iterator) must not change the stream training sees."""
    masks = blob_masks(6, 16, seed=13)
    images = np.random.default_rng(6).random(masks.shape, dtype=np.float32)
    dataset = augment.make_dataset(images, masks, 4, augment="lab", seed=2)
    first, second = batches(dataset, 6), batches(dataset, 6)  # four epochs of 6 images, twice
    for (a_images, a_targets), (b_images, b_targets) in zip(first, second):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_targets, b_targets)
    # Within the stream, epochs are still shuffled and augmented anew: batches 0 and 3 both start an epoch.
    assert not np.array_equal(first[0][0], first[3][0])


def test_finite_dataset_gets_new_draws_each_epoch_but_the_same_sequence_each_build():
    masks = blob_masks(4, 16, seed=11)
    images = masks.astype(np.float32)

    def two_epochs():
        dataset = augment.make_dataset(
            images, masks, 4, augment="source", shuffle=False, repeat=False, seed=1
        )
        return batches(dataset, 1)[0][0], batches(dataset, 1)[0][0]

    first_epoch, second_epoch = two_epochs()
    again_first, again_second = two_epochs()
    assert not np.array_equal(first_epoch, second_epoch)
    np.testing.assert_array_equal(first_epoch, again_first)
    np.testing.assert_array_equal(second_epoch, again_second)


def test_make_dataset_accepts_a_dataset_of_pairs():
    masks = blob_masks(5, 16, seed=12)
    images = (masks * 255).astype(np.uint8)  # an on-disk uint8 cache, scaled by 1/255 on the way
    pairs = tf.data.Dataset.from_tensor_slices((images, masks))
    dataset = augment.make_dataset(pairs, None, 5, shuffle=True, repeat=False)
    (batch_images, targets), = batches(dataset, 1)
    assert batch_images.dtype == np.float32 and set(np.unique(batch_images)) == {0.0, 1.0}
    np.testing.assert_array_equal(batch_images, targets)
    with pytest.raises(ValueError, match="masks must be None"):
        augment.make_dataset(pairs, masks, 5)


def test_make_dataset_rejects_bad_inputs():
    masks = blob_masks(4, 16, seed=13, labels=(1, 2))
    images = masks.astype(np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        augment.make_dataset(images, masks, 0)
    with pytest.raises(ValueError, match="n_classes=2"):
        augment.make_dataset(images, masks, 2, n_classes=2)
    with pytest.raises(ValueError, match="agree"):
        augment.make_dataset(images[:, :8], masks, 2)
    with pytest.raises(ValueError, match="masks"):
        augment.make_dataset(images, masks[..., 0], 2)


# --- the source's ImageDataGenerator pair ------------------------------------------------------


def iou(first, second):
    return np.logical_and(first, second).sum() / np.logical_or(first, second).sum()


def test_image_data_generator_pair_is_aligned_in_lockstep_but_masks_lose_their_labels():
    # Measurement: with the image channel equal to the mask, both streams should match exactly if
    # they draw the same shuffle and the same transforms.
    masks = blob_masks(8, 32, seed=14)
    images = masks.astype(np.float32)
    dataset = augment.image_data_generator_pair(images, masks, batch_size=4, seed=220)
    ious, fractional = [], []
    for batch_images, batch_masks in dataset.take(6):  # three epochs of two batches
        batch_images, batch_masks = batch_images.numpy(), batch_masks.numpy()
        assert batch_masks.dtype == np.float32
        ious += [iou(i > 0.5, m > 0.5) for i, m in zip(batch_images, batch_masks)]
        fractional.append(np.mean((batch_masks > 0.01) & (batch_masks < 0.99)))
    # Found: aligned (identical arrays) while both streams advance together ...
    assert min(ious) == 1.0
    # ... but the masks are linearly interpolated: values strictly between 0 and 1 on every border.
    assert min(fractional) > 0.01


def test_image_data_generator_pair_drifts_after_one_extra_draw():
    # A notebook cell that previews `next(image_flow)` on its own advances only the image stream;
    # from then on every image is paired with another example's mask and transform.
    masks = blob_masks(8, 32, seed=15)
    images = masks.astype(np.float32)
    image_flow, mask_flow = augment.image_data_generator_flows(
        images, masks, batch_size=4, seed=220
    )
    next(image_flow)
    ious = []
    for _ in range(4):
        batch_images, batch_masks = next(image_flow), next(mask_flow)
        ious += [iou(i > 0.5, m > 0.5) for i, m in zip(batch_images, batch_masks)]
    assert np.mean(ious) < 0.7


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("rotation_degrees", -1.0),
        ("rotation_degrees", 200.0),
        ("width_shift", 1.5),
        ("height_shift", "0.1"),
        ("zoom", 1.0),
        ("horizontal_flip", "yes"),
        ("fill_mode", "wrap"),
        ("fill_value", 2.0),
        ("gamma", (1.2, 0.8)),
        ("gamma", (0.0, 1.0)),
        ("contrast", 0.5),
        ("brightness", (-2.0, 0.0)),
        ("noise_std", -0.1),
        ("noise_fraction", 1.5),
        ("swap_labels_on_flip", (1, 1)),
        ("swap_labels_on_flip", (0, 2)),
    ],
)
def test_augment_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        augment.AugmentConfig(**{field: value})


def test_get_config_names_dicts_and_multiclass_swap():
    assert augment.get_config(None) == augment.NONE
    assert augment.get_config("none") == augment.NONE
    assert augment.get_config("source") == augment.SOURCE_CT
    assert augment.get_config("LAB") == augment.LAB
    assert augment.get_config("robust").noise_std == pytest.approx(5000 / 65535)
    source = augment.SOURCE_CT
    ranges = (source.rotation_degrees, source.width_shift, source.height_shift, source.zoom)
    assert ranges == (10, 0.1, 0.1, 0.1)
    assert source.fill_mode == "nearest" and not source.horizontal_flip
    assert augment.LAB.zoom == 0.2 and augment.LAB.horizontal_flip
    from_dict = augment.get_config({"rotation_degrees": 5, "gamma": [0.9, 1.1]})
    assert from_dict.gamma == (0.9, 1.1) and from_dict.rotation_degrees == 5.0
    assert augment.get_config(from_dict.to_dict()) == from_dict
    assert augment.get_config("lab").swap_labels_on_flip is None
    assert augment.get_config("lab", n_classes=3).swap_labels_on_flip == (1, 2)
    assert augment.get_config("source", n_classes=3).swap_labels_on_flip is None
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment.get_config("strong")
    with pytest.raises(ValueError, match="rotation"):
        augment.get_config({"rotation": 10})
    with pytest.raises(ValueError, match="AugmentConfig"):
        augment.get_config(10)


# --- offline noise (the poster) ----------------------------------------------------------------


def test_add_gaussian_noise_noises_a_seeded_fraction():
    images = np.full((10, 32, 32, 1), 0.5, np.float32)
    noisy, which = augment.add_gaussian_noise(images, fraction=0.5, seed=3)
    assert which.dtype == bool and which.sum() == 5
    np.testing.assert_array_equal(noisy[~which], images[~which])
    assert np.std(noisy[which] - 0.5) == pytest.approx(augment.POSTER_NOISE_SIGMA, rel=0.05)
    assert noisy.dtype == np.float32 and noisy.min() >= 0.0 and noisy.max() <= 1.0
    again, again_which = augment.add_gaussian_noise(images, fraction=0.5, seed=3)
    np.testing.assert_array_equal(noisy, again)
    np.testing.assert_array_equal(which, again_which)
    np.testing.assert_array_equal(images, 0.5)  # the input is not modified
    assert augment.add_gaussian_noise(images, fraction=0.25, seed=3)[1].sum() == 3  # 2.5 rounds up
    with pytest.raises(ValueError, match="fraction"):
        augment.add_gaussian_noise(images, fraction=1.5)
