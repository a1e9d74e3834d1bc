"""Paired augmentation of images and masks, and the ``tf.data`` pipelines that feed training.

Segmentation needs the *same* random transform applied to an image and to its mask. This module
draws the random parameters once per example, composes rotation, shift, zoom and flips into one
projective transform (so each image is resampled once, not once per operation), and applies it to
the image with bilinear interpolation and to the mask with nearest-neighbour interpolation, so the
mask keeps its class ids {0..K}. Everything runs vectorised on whole batches with stateless random
ops, inside a ``tf.data`` pipeline (parallel map, prefetch): the same seed gives the same batches.

For the teaching comparison, :func:`image_data_generator_pair` rebuilds the CT assignment's recipe:
two Keras ``ImageDataGenerator`` streams that share a seed. They stay aligned only while both are
consumed in lockstep, and they interpolate the mask linearly, so its values leave {0, 1}.

The robustness study (poster) adds Gaussian noise with sigma = 5000 on a 16-bit scale
(:data:`POSTER_NOISE_SIGMA`), either on the fly (``AugmentConfig.noise_std``) or once, to a fixed,
seeded part of a data set (:func:`add_gaussian_noise`).
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

POSTER_NOISE_SIGMA = 5000 / 65535
"""The poster's Gaussian noise: sigma 5000 on a 16-bit scale, about 0.076 of the [0, 1] range."""

LEFT_RIGHT_LUNG_LABELS = (1, 2)
"""Mask ids of the patient's right lung (1) and left lung (2), swapped by a horizontal flip."""

FILL_MODES = ("constant", "nearest", "reflect")


def _as_range(name, value, low, high):
    """``value`` as a (low, high) float tuple within [``low``, ``high``], or None."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be None or a pair (low, high), got {value!r}")
    lower, upper = float(value[0]), float(value[1])
    if not low <= lower <= upper <= high:
        raise ValueError(
            f"{name} must satisfy {low} <= low <= high <= {high}, got ({lower}, {upper})"
        )
    return (lower, upper)


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment_batch` may do to a batch; every default means "do nothing".

    Geometric fields, one random draw per example (like Keras ``ImageDataGenerator``):

    - ``rotation_degrees``: angle uniform in [-r, r] degrees, counter-clockwise as displayed.
    - ``width_shift``, ``height_shift``: shift uniform in [-s, s] times the width / height;
      positive values move the content right / down.
    - ``zoom``: one factor z uniform in [1 - zoom, 1 + zoom], applied to both axes. As in
      ``ImageDataGenerator``, the output samples the input at ``z`` times the distance from the
      centre, so z > 1 zooms out and z < 1 zooms in. ``ImageDataGenerator`` draws a separate factor
      per axis and so also stretches the aspect ratio; the isotropic factor here does not.
    - ``horizontal_flip``, ``vertical_flip``: each applied with probability 0.5.
    - ``fill_mode`` ("constant", "nearest" or "reflect") fills pixels that come from outside the
      input. Image and mask use the same mode so the pair stays consistent; in "constant" mode the
      image gets ``fill_value`` and the mask gets 0 (background). "nearest" is the default because
      the source's ``ImageDataGenerator`` used it.
    - ``swap_labels_on_flip``: a pair of mask ids (a, b) exchanged in horizontally flipped examples.
      A flip mirrors the anatomy, so the lung drawn on the image's left (the patient's right lung,
      id 1) appears on the right; swapping 1 and 2 keeps "id 1 = lung on the image's left" true.
      :func:`get_config` sets it to (1, 2) for three or more classes.

    Intensity fields act on the image only, after the geometric transform, and the result is
    clipped to [0, 1]:

    - ``gamma``: (low, high); x -> x ** g with log(g) uniform in [log low, log high].
    - ``contrast``: (low, high); x -> mean + c (x - mean), c uniform, mean per image.
    - ``brightness``: (low, high); x -> x + d, d uniform.
    - ``noise_std``, ``noise_fraction``: Gaussian noise N(0, noise_std^2) added per pixel to each
      example with probability ``noise_fraction``.
    """

    rotation_degrees: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    zoom: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    fill_value: float = 0.0
    swap_labels_on_flip: tuple[int, int] | None = None
    gamma: tuple[float, float] | None = None
    contrast: tuple[float, float] | None = None
    brightness: tuple[float, float] | None = None
    noise_std: float = 0.0
    noise_fraction: float = 1.0

    def __post_init__(self):
        limits = {
            "rotation_degrees": (0.0, 180.0),
            "width_shift": (0.0, 1.0),
            "height_shift": (0.0, 1.0),
            "zoom": (0.0, 0.99),
            "fill_value": (0.0, 1.0),
            "noise_std": (0.0, 1.0),
            "noise_fraction": (0.0, 1.0),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
            object.__setattr__(self, name, float(value))
        for name in ("horizontal_flip", "vertical_flip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        # Lists (from YAML, JSON or papermill) become tuples so the config stays hashable.
        object.__setattr__(self, "gamma", _as_range("gamma", self.gamma, 1e-3, 1e3))
        object.__setattr__(self, "contrast", _as_range("contrast", self.contrast, 0.0, 1e3))
        object.__setattr__(self, "brightness", _as_range("brightness", self.brightness, -1.0, 1.0))
        if self.gamma is not None and self.gamma[0] <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        swap = self.swap_labels_on_flip
        if swap is not None:
            if (
                isinstance(swap, (str, bytes))
                or len(swap) != 2
                or not all(isinstance(label, (int, np.integer)) and label > 0 for label in swap)
                or swap[0] == swap[1]
            ):
                raise ValueError(
                    "swap_labels_on_flip must be None or two different positive mask ids, "
                    f"got {swap!r}"
                )
            object.__setattr__(self, "swap_labels_on_flip", (int(swap[0]), int(swap[1])))

    @classmethod
    def from_dict(cls, values):
        """A config from a plain mapping (YAML, JSON, papermill parameters); unknown keys raise."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown augmentation setting(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self):
        """The config as a plain dict (tuples as lists), ready for ``params.json``."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @property
    def is_geometric(self):
        """True when the config moves pixels (rotation, shift, zoom or flip)."""
        return bool(
            self.rotation_degrees
            or self.width_shift
            or self.height_shift
            or self.zoom
            or self.horizontal_flip
            or self.vertical_flip
        )

    @property
    def is_intensity(self):
        """True when the config changes image intensities (gamma, contrast, brightness, noise)."""
        return bool(
            self.gamma is not None
            or self.contrast is not None
            or self.brightness is not None
            or (self.noise_std and self.noise_fraction)
        )


NONE = AugmentConfig()
SOURCE_CT = AugmentConfig(rotation_degrees=10.0, width_shift=0.1, height_shift=0.1, zoom=0.1)
"""The CT assignment: rotation 10 degrees, shifts 0.1, zoom 0.1 in or out."""
LAB = AugmentConfig(
    rotation_degrees=10.0, width_shift=0.1, height_shift=0.1, zoom=0.2, horizontal_flip=True
)
"""The lab (task 1e): rotation 10 degrees, shifts 0.1, zoom 0.2, horizontal flip."""
ROBUST = AugmentConfig(
    rotation_degrees=10.0, width_shift=0.1, height_shift=0.1, zoom=0.2,
    gamma=(0.67, 1.5), contrast=(0.7, 1.3), brightness=(-0.1, 0.1),
    noise_std=POSTER_NOISE_SIGMA, noise_fraction=0.5,
)
"""For a model meant for other hospitals' images: the lab's geometry without its flip (a chest X-ray
is not mirror-symmetric: the heart sits on the patient's left), gamma 0.67-1.5, contrast 0.7-1.3,
brightness +-0.1, and the poster's noise on half of the examples (other exposures and processing)."""

PRESETS = {"none": NONE, "source": SOURCE_CT, "lab": LAB, "robust": ROBUST}


def get_config(config=None, n_classes=1):
    """An :class:`AugmentConfig` from a preset name, a dict, a config or None (no augmentation).

    Names: "none", "source" (:data:`SOURCE_CT`), "lab" (:data:`LAB`), "robust" (:data:`ROBUST`).
    With ``n_classes >= 3`` (background, right lung, left lung) and a horizontal flip that names no
    labels to swap, the lung labels :data:`LEFT_RIGHT_LUNG_LABELS` are swapped on flip, so that a
    mirrored image keeps its labels consistent with unmirrored ones (see :class:`AugmentConfig`).
    """
    if config is None:
        result = NONE
    elif isinstance(config, AugmentConfig):
        result = config
    elif isinstance(config, str):
        if config.lower() not in PRESETS:
            raise ValueError(
                f"unknown augmentation preset {config!r}; expected one of {sorted(PRESETS)}"
            )
        result = PRESETS[config.lower()]
    elif isinstance(config, Mapping):
        result = AugmentConfig.from_dict(config)
    else:
        raise ValueError(
            "augmentation must be None, a preset name, a dict or an AugmentConfig, "
            f"got {type(config).__name__}"
        )
    if n_classes >= 3 and result.horizontal_flip and result.swap_labels_on_flip is None:
        result = dataclasses.replace(result, swap_labels_on_flip=LEFT_RIGHT_LUNG_LABELS)
    return result


def projective_transforms(
    rotation_degrees, width_shift, height_shift, zoom, horizontal_flip, vertical_flip, height, width
):
    """One projective transform per example: rotation, shift, zoom and flips in a single matrix.

    Every argument except ``height`` and ``width`` is a vector with one entry per example. With
    c the image centre ((width - 1) / 2, (height - 1) / 2), t = (width_shift * width,
    height_shift * height) the shift in pixels, F = diag(+-1, +-1) the flips and R(theta) the
    rotation, the output pixel p takes its value from the input position

        q = c + zoom * F R(theta) (p - c - t),

    i.e. the content is flipped, rotated counter-clockwise by theta, scaled by 1 / zoom about the
    centre and moved by t. The result, shape (batch, 8), holds [a0, a1, a2, b0, b1, b2, 0, 0] with
    q = (a0 x + a1 y + a2, b0 x + b1 y + b2), the layout ``ImageProjectiveTransformV3`` expects.
    """
    theta = tf.cast(rotation_degrees, tf.float32) * (math.pi / 180.0)
    zoom = tf.cast(zoom, tf.float32)
    flip_x = tf.where(tf.cast(horizontal_flip, tf.bool), -1.0, 1.0)
    flip_y = tf.where(tf.cast(vertical_flip, tf.bool), -1.0, 1.0)
    center_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    center_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    shift_x = tf.cast(width_shift, tf.float32) * tf.cast(width, tf.float32)
    shift_y = tf.cast(height_shift, tf.float32) * tf.cast(height, tf.float32)
    # M = zoom * F * R(theta), with R(theta) = [[cos, -sin], [sin, cos]] in (x, y-down) coordinates.
    cos, sin = tf.cos(theta), tf.sin(theta)
    a0, a1 = zoom * flip_x * cos, -zoom * flip_x * sin
    b0, b1 = zoom * flip_y * sin, zoom * flip_y * cos
    # Offset c - M (c + t).
    a2 = center_x - a0 * (center_x + shift_x) - a1 * (center_y + shift_y)
    b2 = center_y - b0 * (center_x + shift_x) - b1 * (center_y + shift_y)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def transform_pair(images, masks, transforms, fill_mode="nearest", fill_value=0.0):
    """Resample images bilinearly and masks by nearest neighbour with the same transforms.

    ``transforms`` comes from :func:`projective_transforms`. Masks keep their dtype and their ids
    (nearest neighbour never invents a value between two classes); in "constant" fill mode the
    image is filled with ``fill_value`` and the mask with 0.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks)
    output_shape = tf.shape(images)[1:3]
    transformed_images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=output_shape,
        fill_value=float(fill_value),
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )
    # The op has no int16 kernel: move the ids through int32 and back.
    transformed_masks = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(masks, tf.int32),
        transforms=transforms,
        output_shape=output_shape,
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode=fill_mode.upper(),
    )
    return transformed_images, tf.cast(transformed_masks, masks.dtype)


def _seed_pair(seed):
    """A shape-(2,) int64 seed for the stateless random ops from an int or a pair."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    return tf.reshape(seed, [2])


def _uniform(unit, low, high):
    """Map uniform [0, 1) draws to [low, high)."""
    return low + (high - low) * unit


def augment_batch(images, masks, config, seed):
    """Apply one random draw of ``config`` per example to a batch of images and their masks.

    ``images`` float (B, H, W, C) in [0, 1]; ``masks`` integer (B, H, W, 1) with class ids;
    ``config`` an :class:`AugmentConfig`, a preset name or a dict; ``seed`` an int or a pair of
    ints. The geometric parameters are drawn once per example, composed into one transform
    (:func:`projective_transforms`) and applied to image and mask together
    (:func:`transform_pair`); horizontally flipped masks get ``swap_labels_on_flip``. Intensity
    changes then act on the image only, which is clipped to [0, 1]. All draws use stateless random
    ops, so the same seed gives the same batch. Returns (images float32, masks with their dtype).
    """
    config = get_config(config)
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks)
    if images.shape.rank != 4 or masks.shape.rank != 4:
        raise ValueError(
            "images and masks must have shape (batch, height, width, channels), "
            f"got {images.shape} and {masks.shape}"
        )
    if not (config.is_geometric or config.is_intensity):
        return images, masks
    shape = tf.shape(images)
    batch_size, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(_seed_pair(seed), num=2)
    spatial_seed, noise_seed = seeds[0], seeds[1]
    # One uniform row per example; each column feeds one parameter, so enabling one change never
    # alters the draws of another.
    unit = tf.random.stateless_uniform([batch_size, 10], seed=spatial_seed)
    if config.is_geometric:
        horizontal_flip = tf.logical_and(config.horizontal_flip, unit[:, 4] < 0.5)
        transforms = projective_transforms(
            rotation_degrees=_uniform(
                unit[:, 0], -config.rotation_degrees, config.rotation_degrees
            ),
            width_shift=_uniform(unit[:, 1], -config.width_shift, config.width_shift),
            height_shift=_uniform(unit[:, 2], -config.height_shift, config.height_shift),
            zoom=_uniform(unit[:, 3], 1.0 - config.zoom, 1.0 + config.zoom),
            horizontal_flip=horizontal_flip,
            vertical_flip=tf.logical_and(config.vertical_flip, unit[:, 5] < 0.5),
            height=height,
            width=width,
        )
        images, masks = transform_pair(
            images, masks, transforms, config.fill_mode, config.fill_value
        )
        if config.horizontal_flip and config.swap_labels_on_flip is not None:
            first, second = (tf.cast(label, masks.dtype) for label in config.swap_labels_on_flip)
            swapped = tf.where(masks == first, second, tf.where(masks == second, first, masks))
            masks = tf.where(horizontal_flip[:, None, None, None], swapped, masks)
    if config.is_intensity:
        images = tf.clip_by_value(images, 0.0, 1.0)
        per_example = unit[:, :, None, None, None]  # (B, 10, 1, 1, 1): broadcasts over pixels
        if config.gamma is not None:
            low, high = math.log(config.gamma[0]), math.log(config.gamma[1])
            images = tf.pow(images, tf.exp(_uniform(per_example[:, 6], low, high)))
        if config.contrast is not None:
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = mean + _uniform(per_example[:, 7], *config.contrast) * (images - mean)
        if config.brightness is not None:
            images = images + _uniform(per_example[:, 8], *config.brightness)
        if config.noise_std and config.noise_fraction:
            noisy = tf.cast(per_example[:, 9] < config.noise_fraction, tf.float32)
            noise = tf.random.stateless_normal(shape, seed=noise_seed, stddev=config.noise_std)
            images = images + noisy * noise
        images = tf.clip_by_value(images, 0.0, 1.0)
    return images, masks


def _targets(masks, n_classes):
    """Targets from mask ids: float32 {0, 1} (any non-zero id), or one-hot when n_classes > 1."""
    if n_classes == 1:
        return tf.cast(masks > 0, tf.float32)
    return tf.one_hot(tf.cast(masks[..., 0], tf.int32), n_classes, dtype=tf.float32)


def augment_dataset(dataset, config=None, seed=220, n_classes=1):
    """Augment a *batched* dataset of (images, masks) and turn masks into model targets.

    Each batch gets its own seed pair (``seed``, a number from ``tf.data.Dataset.random(seed)``),
    so the whole stream is reproducible. A finite dataset is iterated anew each epoch and draws new
    numbers on every pass, so it is augmented differently in each epoch; an infinite one (a
    repeated training stream) is a single pass, and every iterator of it gets the same draws. Images are converted to float32 with
    ``tf.image.convert_image_dtype`` (uint8 is scaled by 1/255, float16 just cast), which lets an
    on-disk uint8/float16 cache feed this function directly. Targets: float32 {0, 1} when
    ``n_classes == 1`` (every non-zero id is foreground, so left/right labels binarise to "lung"),
    else one-hot float32 (B, H, W, n_classes). The map runs in parallel but deterministically.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    config = get_config(config, n_classes=n_classes)

    def to_model_inputs(images, masks, batch_seed=None):
        images = tf.image.convert_image_dtype(images, tf.float32)
        if batch_seed is not None:
            batch_seed = tf.stack([tf.cast(seed, tf.int64), batch_seed])
            images, masks = augment_batch(images, masks, config, batch_seed)
        return images, _targets(masks, n_classes)

    def augment_with_seed(batch, batch_seed):
        return to_model_inputs(*batch, batch_seed)

    if not (config.is_geometric or config.is_intensity):
        return dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    infinite = dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=not infinite)
    return tf.data.Dataset.zip(dataset, batch_seeds).map(
        augment_with_seed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def shuffle_and_repeat(dataset, buffer_size, seed=220, shuffle=True, repeat=True):
    """Shuffle ``dataset`` (seeded, a new order each epoch) and/or repeat it forever.

    Repeated and shuffled, every iterator of the result yields the same stream, so looking at a
    batch before ``model.fit`` (``next(iter(dataset))``) does not change what training sees. A
    plain ``shuffle(seed=..., reshuffle_each_iteration=True).repeat()`` does not: its seed
    generator is made once with the dataset and shared, so each new iterator continues its
    sequence of orders. Built inside ``flat_map``, the shuffle gets a fresh generator per iterator.
    Shuffled but not repeated, each pass (epoch) is reshuffled, reproducibly from ``seed``.
    """
    if shuffle and repeat:
        def stream(_):
            return dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()

        return tf.data.Dataset.range(1).flat_map(stream).apply(
            tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)
        )
    if shuffle:
        return dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat() if repeat else dataset


def make_dataset(
    images,
    masks,
    batch_size,
    augment=None,
    shuffle=True,
    seed=220,
    repeat=True,
    n_classes=1,
    drop_remainder=False,
    shuffle_buffer=None,
):
    """A ``tf.data`` pipeline of (image batch, target batch) for ``model.fit``.

    ``images`` (N, H, W, C) and ``masks`` (N, H, W, 1) as NumPy arrays, or ``images`` a
    ``tf.data.Dataset`` of single (image, mask) pairs (for example an on-disk cache) and
    ``masks=None``. Steps: shuffle (buffer = the whole set unless ``shuffle_buffer`` says
    otherwise; seeded and reshuffled each epoch) and repeat (:func:`shuffle_and_repeat`), batch, then :func:`augment_dataset`
    (one vectorised map per batch, parallel and deterministic; targets float32 or one-hot) and
    prefetch. ``augment`` is anything :func:`get_config` accepts. The same ``seed`` gives the
    same stream of batches.
    """
    for name, value in (("batch_size", batch_size), ("n_classes", n_classes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(images, tf.data.Dataset):
        if masks is not None:
            raise ValueError(
                "masks must be None when images is a tf.data.Dataset of (image, mask) pairs"
            )
        dataset = images
        size = int(dataset.cardinality())
    else:
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 1:
            raise ValueError(
                "images must be (N, H, W, C) and masks (N, H, W, 1), "
                f"got {images.shape} and {masks.shape}"
            )
        if images.shape[:3] != masks.shape[:3]:
            raise ValueError(
                f"images and masks must agree in N, H and W, got {images.shape} and {masks.shape}"
            )
        if n_classes > 1 and masks.size and (masks.min() < 0 or masks.max() >= n_classes):
            raise ValueError(
                f"masks must hold ids 0..{n_classes - 1} for n_classes={n_classes}, "
                f"found {masks.min()}..{masks.max()}"
            )
        dataset = tf.data.Dataset.from_tensor_slices((images, masks))
        size = len(images)
    if shuffle and shuffle_buffer is None:
        if size < 1:
            raise ValueError(
                "shuffle_buffer is needed: the dataset's size is unknown, "
                "so it cannot default to the whole set"
            )
        shuffle_buffer = size
    dataset = shuffle_and_repeat(dataset, shuffle_buffer, seed=seed, shuffle=shuffle, repeat=repeat)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = augment_dataset(dataset, augment, seed=seed, n_classes=int(n_classes))
    return dataset.prefetch(tf.data.AUTOTUNE)


def image_data_generator_flows(
    images,
    masks,
    batch_size,
    seed,
    rotation_range=10,
    width_shift_range=0.1,
    height_shift_range=0.1,
    zoom_range=0.1,
    horizontal_flip=False,
    shuffle=True,
):
    """The source's two ``ImageDataGenerator`` iterators (image stream, mask stream), same seed.

    Both generators get the same arguments (fill mode "nearest", the Keras default) and both
    ``.flow`` calls the same ``seed``. Keras reseeds NumPy's *global* generator with
    ``seed + batches seen so far`` before every batch, so the two streams draw the same shuffle and
    the same transforms only while they have produced the same number of batches: one extra
    ``next`` on one of them misaligns every later pair. The masks are resampled like images
    (scipy, linear interpolation) and come back as float32 with values between 0 and 1.
    """
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    arguments = dict(
        rotation_range=rotation_range,
        width_shift_range=width_shift_range,
        height_shift_range=height_shift_range,
        zoom_range=zoom_range,
        horizontal_flip=horizontal_flip,
    )
    image_flow = ImageDataGenerator(**arguments).flow(
        np.asarray(images, np.float32), batch_size=batch_size, shuffle=shuffle, seed=seed
    )
    mask_flow = ImageDataGenerator(**arguments).flow(
        np.asarray(masks, np.float32), batch_size=batch_size, shuffle=shuffle, seed=seed
    )
    return image_flow, mask_flow


def image_data_generator_pair(
    images,
    masks,
    batch_size,
    seed,
    rotation_range=10,
    width_shift_range=0.1,
    height_shift_range=0.1,
    zoom_range=0.1,
    horizontal_flip=False,
):
    """The CT assignment's augmentation recipe as an endless ``tf.data.Dataset`` (a baseline).

    Zips the two streams of :func:`image_data_generator_flows` and wraps them with
    ``tf.data.Dataset.from_generator``; every pass over the dataset starts both streams afresh from
    ``seed``. Known weaknesses, kept on purpose for the comparison: alignment rests on both streams
    consuming random numbers identically (same shuffle, same batch sizes, no extra draws), the
    global NumPy random state is reseeded on every batch, the work runs in one Python thread, and
    the masks are linearly interpolated (values strictly between 0 and 1 on every border; the
    source used them unthresholded). Yields (images float32, masks float32), each (B, H, W, 1).
    """
    images, masks = np.asarray(images, np.float32), np.asarray(masks, np.float32)
    if images.shape[:3] != masks.shape[:3]:
        raise ValueError(
            f"images and masks must agree in N, H and W, got {images.shape} and {masks.shape}"
        )

    def generate():
        image_flow, mask_flow = image_data_generator_flows(
            images,
            masks,
            batch_size,
            seed,
            rotation_range=rotation_range,
            width_shift_range=width_shift_range,
            height_shift_range=height_shift_range,
            zoom_range=zoom_range,
            horizontal_flip=horizontal_flip,
        )
        yield from zip(image_flow, mask_flow)

    signature = (
        tf.TensorSpec(shape=(None, *images.shape[1:]), dtype=tf.float32),
        tf.TensorSpec(shape=(None, *masks.shape[1:]), dtype=tf.float32),
    )
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def add_gaussian_noise(images, sigma=POSTER_NOISE_SIGMA, fraction=1.0, seed=0):
    """A copy of ``images`` with Gaussian noise on a seeded ``fraction`` of them (the poster).

    round(fraction * N) images (halves round up), chosen at random with ``seed``, get
    x + N(0, sigma^2) per pixel, clipped to [0, 1]; the others are copied unchanged. Returns
    (noisy images float32, boolean array of length N saying which images got noise).
    """
    images = np.asarray(images, dtype=np.float32)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    count = math.floor(fraction * len(images) + 0.5)
    rng = np.random.default_rng(seed)
    noisy = np.zeros(len(images), dtype=bool)
    noisy[rng.choice(len(images), size=count, replace=False)] = True
    result = images.copy()
    noise = rng.normal(0.0, sigma, size=result[noisy].shape).astype(np.float32)
    result[noisy] = np.clip(result[noisy] + noise, 0.0, 1.0)
    return result, noisy
