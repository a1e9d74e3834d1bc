"""Load lung image/mask pairs into arrays, split them, and cache large sets on disk.

Conventions shared by the whole kit:

* images are float32 arrays of shape (N, H, W, 1) with values in [0, 1];
* masks are int16 arrays of shape (N, H, W, 1) holding class ids: {0, 1} for a binary lung mask, or
  0 = background, 1 = the patient's RIGHT lung (seen on the image's LEFT side), 2 = the left lung;
* ``image_size`` is (height, width), as in Keras.

With its defaults, :func:`load_pairs` follows the CT assignment's recipe: read every file
with ``cv2.IMREAD_UNCHANGED``, scale each image to [0, 1] by its own minimum and maximum, scale each
mask by its maximum to {0, 1}, resize images with Lanczos and masks with nearest neighbour, and
stack to (N, H, W, 1).

Which loader to use when:

* :func:`load_pairs` keeps everything in memory as float32. Fine up to a few thousand slices:
  267 slices at 128 px take 17 MB, but 8000 slices at 256 px would take 2.1 GB of images plus
  1 GB of int16 masks.
* :func:`build_cache` + :func:`cache_dataset` for large sets (the lab's >8000 CT slices): the
  pairs are processed one file at a time into uint8 (or float16) ``.npy`` files on disk, and
  training reads batches from memory-mapped files, converting to float32 on the fly. 8000 slices
  at 256 px take 524 MB of images and 524 MB of masks on disk and keep peak memory well under 2 GB.
"""

from __future__ import annotations

import collections
import difflib
import json
import math
import numbers
import os
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np

from lunghelpers._quiet import progress_bar as tqdm

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
MASK_SUFFIX = "_mask"
MASK_MODES = ("binary", "labels", "left_right")
NORMALIZATIONS = ("minmax", "window", "clahe", "zscore")
DEFAULT_WINDOW = (-1000, 400)
# Label masks hold at most this many distinct values; a set with more is soft (bicubic borders,
# JPEG noise), and in binary_foreground a label value is at least max / MAX_LABEL_LEVELS.
MAX_LABEL_LEVELS = 16
# binary_foreground: a label value covers at least this share of the mask's non-zero pixels.
LEVEL_MIN_SHARE = 0.05
# In "left_right" mode a connected component counts as a lung only if it has at least this share
# of the largest component's area; smaller ones are islands (real CT masks: islands <= 21 pixels,
# second lungs >= 6600 pixels at 512 px).
LUNG_MIN_AREA_FRACTION = 0.05
ZSCORE_CLIP = 3.0
CACHE_IMAGE_DTYPES = ("uint8", "float16")
CACHE_INFO_FILE = "cache.json"
# Folder layouts known to dataset_dirs, by dataset kind: (image folder, mask folder).
LAYOUTS = {
    "ct": ("2d_images", "2d_masks"),
    "xray": ("cxr", "masks"),
    "generic": ("images", "masks"),
}
# Sub-folders of a data root that may hold a kind's dataset (synthetic sets, the shared copies).
KIND_FOLDERS = {"ct": ("ct", "kaggle_ct2d"), "xray": ("xray",)}
NAMES_SHOWN = 10
# image_size sides above this would not fit a teaching machine's memory (8000 slices at 4096 px
# are 537 GB of float32).
MAX_IMAGE_SIDE = 4096
# An image with a side under this share of the requested side is enlarged so much that it is
# almost surely the wrong file (a thumbnail, an icon); load_pairs warns about it by name.
SMALL_IMAGE_FRACTION = 0.25


class DataError(ValueError):
    """Raised when data files are missing, unpaired, unreadable or unfit for the requested mode."""


def _name_list(names):
    """Return up to NAMES_SHOWN names joined by commas, with a count of the ones left out."""
    names = list(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f" ... and {len(names) - NAMES_SHOWN} more"
    return shown


def _is_integer(value):
    """True for Python and NumPy integers, False for bools, floats and strings."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    """True for finite real numbers (Python or NumPy), False for bools, strings and NaN/inf."""
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    )


def _one_of(name, value, choices):
    """Raise ValueError unless value is one of choices, suggesting the closest known choice."""
    if isinstance(value, str) and value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")


def check_image_size(image_size, name="image_size"):
    """Return image_size as (height, width), or raise ValueError naming ``name``.

    Accepts one positive integer (a square side, e.g. 128) or a pair of positive integers
    (height, width), each at most MAX_IMAGE_SIDE. A string such as "64" (a quoted number in a
    YAML file) is refused rather than read character by character.
    """
    expected = (
        f"{name} must be a positive integer or (height, width) with two positive integers of at "
        f"most {MAX_IMAGE_SIDE}"
    )
    if isinstance(image_size, str):
        raise ValueError(
            f"{expected}, got the string {image_size!r}: write the number without quotes "
            "(e.g. 128 or [128, 128])"
        )
    sides = (image_size, image_size) if _is_integer(image_size) else image_size
    if not (
        isinstance(sides, (tuple, list, np.ndarray))
        and len(sides) == 2
        and all(_is_integer(side) and 0 < side <= MAX_IMAGE_SIDE for side in sides)
    ):
        raise ValueError(f"{expected}, got {image_size!r}")
    return int(sides[0]), int(sides[1])


def check_fractions(fractions, name="fractions"):
    """Return fractions as a tuple of floats, or raise ValueError naming ``name``.

    Expects a list or tuple of numbers, each in (0, 1), that sum to 1, e.g. (0.6, 0.2, 0.2).
    """
    expected = (
        f"{name} must be positive numbers below 1 that sum to 1, as a list such as [0.8, 0.2]"
    )
    if isinstance(fractions, str):
        raise ValueError(
            f"{expected}, got the string {fractions!r}: write a list of numbers, e.g. [0.8, 0.2]"
        )
    if not isinstance(fractions, (tuple, list, np.ndarray)) or len(fractions) == 0:
        raise ValueError(f"{expected}, got {fractions!r}")
    for fraction in fractions:
        if not (_is_number(fraction) and 0 < fraction < 1):
            raise ValueError(
                f"{expected}, got {tuple(fractions)}: {fraction!r} is not a number in (0, 1)"
            )
    values = tuple(float(fraction) for fraction in fractions)
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must sum to 1, got {values} (sum {sum(values):g})")
    return values


def check_limit(limit, name="limit"):
    """Return limit (None or a positive int), or raise ValueError naming ``name``."""
    if limit is None:
        return None
    if not _is_integer(limit) or limit < 1:
        raise ValueError(
            f"{name} must be a positive integer (the number of pairs to load) or None for all, "
            f"got {limit!r}"
        )
    return int(limit)


def check_window(window, name="window"):
    """Return a CT window as (low, high) floats, or raise ValueError naming ``name``."""
    expected = (
        f"{name} must be (low, high): two finite numbers in HU with low < high, "
        "e.g. (-1000, 400)"
    )
    if (
        isinstance(window, str)
        or not isinstance(window, (tuple, list, np.ndarray))
        or len(window) != 2
        or not all(_is_number(value) for value in window)
    ):
        raise ValueError(f"{expected}, got {window!r}")
    low, high = float(window[0]), float(window[1])
    if not low < high:
        raise ValueError(f"{expected}, got {tuple(window)}")
    return low, high


def _image_files(folder, role):
    """List the image files of a folder, sorted by name, or raise DataError if there are none."""
    if not isinstance(folder, (str, os.PathLike)) or str(folder) == "":
        raise ValueError(f"{role}_dir must be the path of a folder of images, got {folder!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{role} folder {folder} is a file: expected a folder of image files")
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} does not exist: expected a folder of image files")
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"{role} folder {folder} holds no image files: expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )
    return files


def _index_by_name(files, folder, role, strip_mask_suffix):
    """Map each file's pairing name (stem, without a '_mask' suffix for masks) to its path."""
    index = {}
    for path in files:
        name = path.stem
        if strip_mask_suffix and name.endswith(MASK_SUFFIX):
            name = name[: -len(MASK_SUFFIX)]
        if name in index:
            raise DataError(
                f"{role} folder {folder} holds two files for the name {name!r}: "
                f"{index[name].name} and {path.name}; expected one file per name"
            )
        index[name] = path
    return index


def find_pairs(image_dir, mask_dir):
    """Pair each image with its mask; return [(image_path, mask_path, name), ...] sorted by name.

    An image ``X.ext`` pairs with the mask of the same file name, or with ``X.other`` or
    ``X_mask.other`` (the mask's extension may differ, e.g. PNG images with JPEG masks). ``name`` is
    the image's file name. Images and masks may share one folder when the masks carry the
    ``_mask`` suffix. Every image needs a mask and every mask an image: otherwise a DataError
    lists the names without a partner, so a half-copied data set is noticed at once.
    """
    image_files = _image_files(image_dir, "image")
    mask_files = _image_files(mask_dir, "mask")
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    if image_dir.resolve() == mask_dir.resolve():
        image_files = [path for path in image_files if not path.stem.endswith(MASK_SUFFIX)]
        mask_files = [path for path in mask_files if path.stem.endswith(MASK_SUFFIX)]
    images = _index_by_name(image_files, image_dir, "image", strip_mask_suffix=False)
    masks = _index_by_name(mask_files, mask_dir, "mask", strip_mask_suffix=True)
    without_mask = sorted(images[name].name for name in images.keys() - masks.keys())
    if without_mask:
        raise DataError(
            f"{len(without_mask)} image(s) in {image_dir} have no mask in {mask_dir} "
            f"(expected the same name, or <stem>_mask.<ext>): {_name_list(without_mask)}"
        )
    without_image = sorted(masks[name].name for name in masks.keys() - images.keys())
    if without_image:
        raise DataError(
            f"{len(without_image)} mask(s) in {mask_dir} have no image in {image_dir}: "
            f"{_name_list(without_image)}"
        )
    pairs = [(images[name], masks[name], images[name].name) for name in images]
    return sorted(pairs, key=lambda pair: pair[2])


def read_image(path):
    """Read one image file as a 2D array, keeping its bit depth and sign (cv2.IMREAD_UNCHANGED).

    ``IMREAD_UNCHANGED`` keeps int16 CT numbers (the default flag would convert them to 8 bits and
    lose the Hounsfield units). Colour files (BGR or BGRA) are converted to greyscale with
    OpenCV's weights 0.299 R + 0.587 G + 0.114 B.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"could not read {path}: expected a readable TIFF, PNG, JPEG or BMP image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        image = cv2.cvtColor(image, code)
    if image.ndim != 2:
        raise DataError(f"{path} has shape {image.shape}: expected a greyscale or colour 2D image")
    if image.size == 0:
        raise DataError(f"{path} holds no pixels: expected an image of at least 1x1 pixels")
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise DataError(
                f"{path} holds {int(bad.sum())} non-finite pixel value(s) (NaN or infinity; the "
                f"first at row {row}, column {column}): expected finite intensities in every "
                "pixel; repair the file or move it out of the folder together with its mask"
            )
    return image


def _check_finite(image):
    """Raise ValueError if a float image holds NaN or infinity (normalisation would spread it)."""
    if np.asarray(image).dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(
            "image holds non-finite values (NaN or infinity): expected finite intensities; "
            "read files with read_image, which names the file"
        )


def _minmax(image):
    """Scale an image to [0, 1] by its own minimum and maximum (a constant image gives zeros).

    Computed in float64, so float32 images spanning more than float32's range (e.g. -3e38 to
    3e38) give no overflow and no NaN.
    """
    image = image.astype(np.float64)
    low, high = float(image.min()), float(image.max())
    if high == low:
        return np.zeros(image.shape, dtype=np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def normalize(image, method="minmax", window=DEFAULT_WINDOW):
    """Map one image's intensities to float32 in [0, 1].

    * ``"minmax"`` (the source recipe): x' = (x - min) / (max - min), per image. On CT slices with
      a constant field-of-view circle (e.g. -2619) the minimum is that circle, so lungs end up
      mid-grey; this is what the assignment asks for.
    * ``"window"``: a fixed CT window in Hounsfield units, x' = clip((x - low) / (high - low), 0, 1)
      with ``window=(low, high)``, default (-1000, 400). Gives the same contrast on every slice;
      meant for int16 CT numbers, so it warns on 8-bit images.
    * ``"clahe"``: contrast-limited adaptive histogram equalisation (cv2.createCLAHE, clip limit 2,
      8x8 tiles), for X-rays. 8-bit images are equalised as they are; other images are first
      min-max scaled to the full uint16 range, equalised in 16 bits, and divided by 65535.
    * ``"zscore"``: z = (x - mean) / std per image, clipped to +-3 standard deviations and mapped
      linearly to [0, 1] by x' = (z + 3) / 6, so the mean lands at 0.5 and the kit's [0, 1]
      convention holds.
    """
    _one_of("normalization", method, NORMALIZATIONS)
    _check_finite(image)
    if method == "minmax":
        return _minmax(image)
    if method == "window":
        low, high = check_window(window)
        if image.dtype == np.uint8:
            warnings.warn(
                "normalization='window' expects CT numbers (int16 Hounsfield units) but got 8-bit "
                "images; 'minmax' or 'clahe' suit 8-bit images",
                stacklevel=2,
            )
        scaled = (image.astype(np.float64) - low) / (high - low)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)
    if method == "clahe":
        equaliser = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        if image.dtype == np.uint8:
            return equaliser.apply(image).astype(np.float32) / 255.0
        sixteen_bit = np.round(_minmax(image) * 65535.0).astype(np.uint16)
        return equaliser.apply(sixteen_bit).astype(np.float32) / 65535.0
    # "zscore", in float64 so that a wide float32 range neither overflows nor gives NaN
    image = image.astype(np.float64)
    deviation = float(image.std())
    if deviation == 0.0 or not math.isfinite(deviation):
        return np.full(image.shape, 0.5, dtype=np.float32)
    z_scores = np.clip((image - image.mean()) / deviation, -ZSCORE_CLIP, ZSCORE_CLIP)
    return ((z_scores + ZSCORE_CLIP) / (2 * ZSCORE_CLIP)).astype(np.float32)


def binary_foreground(mask):
    """Return the lung pixels of one mask as a boolean array: mask > threshold.

    The threshold is half the smallest *label value* of the mask: a non-zero value that covers at
    least LEVEL_MIN_SHARE (5 %) of the mask's non-zero pixels and is at least max / MAX_LABEL_LEVELS
    (a label mask has at most 16 classes). One rule then fits every kind of mask:

    * 0/255 -> lung = value > 127.5, the same as the CT assignment's mask / max;
    * label masks 0/128/255 or 0/1/2 -> every lung value counts (> 64, > 0.5);
    * soft borders (the X-ray set's bicubic resizing; each border value is rare) and JPEG noise
      (small values near 0, values just under the maximum) -> about half the maximum (> 127.5).

    A mask without such a value (a smooth probability map) is cut at half its maximum.
    """
    values, counts = np.unique(mask[mask > 0], return_counts=True)
    if values.size == 0:
        return np.zeros(mask.shape, dtype=bool)
    is_label = (counts >= LEVEL_MIN_SHARE * counts.sum()) & (
        values >= values.max() / MAX_LABEL_LEVELS
    )
    return mask > (values[is_label].min() if is_label.any() else values.max()) / 2


def left_right_labels(foreground):
    """Split a binary lung mask into derived labels 1 (image's left side) and 2 (its right side).

    These are labels *derived* from connected components, not annotations. The components
    (cv2.connectedComponentsWithStats, 8-connectivity) with at least LUNG_MIN_AREA_FRACTION of the
    largest one's area are lungs. With two or more lungs, the two largest are kept as lungs: the one
    whose centroid lies further left on the image is 1 (the patient's RIGHT lung), the other 2;
    every other component (an island) joins the lung whose centroid column is nearer to its own,
    so no lung pixel is dropped. With a single lung-sized component (lungs that touch, or only one
    lung in view) the mask is split at the image's centre column.

    Returns (labels uint8, was_split_at_centre).
    """
    count, components, stats, centroids = cv2.connectedComponentsWithStats(
        foreground.astype(np.uint8), connectivity=8
    )
    if count == 1:
        return np.zeros(foreground.shape, dtype=np.uint8), False
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest_first = np.argsort(areas)[::-1] + 1
    lungs = [
        component
        for component in largest_first[:2]
        if stats[component, cv2.CC_STAT_AREA] >= LUNG_MIN_AREA_FRACTION * areas.max()
    ]
    if len(lungs) < 2:
        columns = np.arange(foreground.shape[1])
        side = np.where(columns < foreground.shape[1] / 2, 1, 2).astype(np.uint8)
        return np.where(foreground, side[np.newaxis, :], 0).astype(np.uint8), True
    midpoint = centroids[lungs, 0].mean()
    component_label = np.where(centroids[:, 0] < midpoint, 1, 2).astype(np.uint8)
    component_label[0] = 0
    return component_label[components], False


def _mask_values(pairs, progress):
    """Return (sorted distinct values over all masks, pixel count of each): the 'labels' classes."""
    counts = collections.Counter()
    for _, mask_path, _ in tqdm(pairs, desc="scanning mask values", disable=not progress):
        values, value_counts = np.unique(read_image(mask_path), return_counts=True)
        counts.update(dict(zip(values.tolist(), value_counts.tolist())))
    values = np.array(sorted(counts))
    return values, np.array([counts[value] for value in values.tolist()], dtype=np.int64)


def _value_list(values):
    """Show at most 2 * NAMES_SHOWN values of a sorted array: the lowest and the highest."""
    values = [
        f"{value:g}" if isinstance(value, (int, float)) else repr(value)
        for value in np.atleast_1d(np.asarray(values)).ravel().tolist()
    ]
    if len(values) > 2 * NAMES_SHOWN:
        values = values[:NAMES_SHOWN] + ["..."] + values[-NAMES_SHOWN:]
    return "[" + ", ".join(values) + "]"


def _check_label_values(class_values, counts, mask_dir):
    """Raise DataError unless the mask values form a small set of labels with two or more lungs.

    Label masks (0/128/255, 0/1/2) hold few values, each covering a good share of the lung pixels.
    More than MAX_LABEL_LEVELS values, or a foreground value covering less than LEVEL_MIN_SHARE of
    the foreground pixels (the smallest value is background), mean soft borders or JPEG noise.
    """
    advice = (
        "use mask_mode='binary' (lung or not; it binarises soft and JPEG masks), or "
        "'left_right' to derive left/right labels"
    )
    if class_values.size <= 2:
        raise DataError(
            f"mask_mode='labels' needs masks with two or more foreground values, but the masks in "
            f"{mask_dir} hold only {class_values.tolist()} (a binary set); use mask_mode='binary', "
            "or 'left_right' to derive left/right labels"
        )
    foreground = counts[1:]
    rare = class_values[1:][foreground < LEVEL_MIN_SHARE * foreground.sum()]
    if class_values.size > MAX_LABEL_LEVELS or rare.size:
        found = f"{class_values.size} distinct values {_value_list(class_values)}"
        if rare.size:
            found += (
                f", {rare.size} of them covering less than {LEVEL_MIN_SHARE:.0%} of the lung "
                f"pixels each ({_value_list(rare)})"
            )
        raise DataError(
            f"mask_mode='labels' needs lossless label masks with at most {MAX_LABEL_LEVELS} "
            f"values, but the masks in {mask_dir} hold {found}: soft borders or JPEG noise, not "
            f"classes; {advice}"
        )


def _check_arguments(image_size, mask_mode, normalization, window=DEFAULT_WINDOW, limit=None):
    """Check the data-layer arguments; return image_size as (height, width).

    Raises ValueError naming the parameter and what was expected.
    """
    _one_of("mask_mode", mask_mode, MASK_MODES)
    _one_of("normalization", normalization, NORMALIZATIONS)
    check_window(window)
    check_limit(limit)
    return check_image_size(image_size)


def _selected_pairs(image_dir, mask_dir, limit):
    """Return find_pairs' list, cut to the first ``limit`` pairs when limit is given."""
    return find_pairs(image_dir, mask_dir)[: check_limit(limit)]


class _PairReader:
    """Turn one (image, mask) file pair into a resized image in [0, 1] and a mask of class ids.

    It remembers which files deserve a warning (empty masks, masks split at the centre column,
    constant images, images far smaller than image_size, image sizes that differ) so that
    load_pairs and build_cache warn once per kind of problem at the end.
    """

    def __init__(self, image_size, mask_mode, normalization, window, class_values):
        self.height, self.width = image_size
        self.mask_mode = mask_mode
        self.normalization = normalization
        self.window = window
        self.class_values = class_values
        self.empty_masks = []
        self.split_masks = []
        self.constant_images = []
        self.small_images = []
        self.source_sizes = set()

    def read(self, image_path, mask_path, name):
        """Return (image float32 (H, W), mask uint8 (H, W)) for one pair."""
        image = read_image(image_path)
        mask = read_image(mask_path)
        if image.shape != mask.shape:
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}: expected an image and its mask of the same "
                "size"
            )
        self.source_sizes.add(image.shape)
        if image.min() == image.max():
            self.constant_images.append(f"{name} (every pixel {image.flat[0]})")
        source_height, source_width = image.shape
        if min(image.shape) <= 1 or (
            source_height < SMALL_IMAGE_FRACTION * self.height
            or source_width < SMALL_IMAGE_FRACTION * self.width
        ):
            self.small_images.append(f"{name} ({source_width}x{source_height})")
        size = (self.width, self.height)
        image = normalize(image, self.normalization, self.window)
        image = np.clip(cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4), 0.0, 1.0)
        if self.mask_mode == "labels":
            labels = np.searchsorted(self.class_values, mask).astype(np.uint8)
        elif self.mask_mode == "left_right":
            labels, was_split = left_right_labels(binary_foreground(mask))
            if was_split:
                self.split_masks.append(name)
        else:
            labels = binary_foreground(mask).astype(np.uint8)
        if not labels.any():
            self.empty_masks.append(name)
        return image, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST_EXACT)

    def warn(self, image_dir, mask_dir):
        """Emit one warning per kind of problem met, naming the files concerned."""
        if self.constant_images:
            warnings.warn(
                f"{len(self.constant_images)} image(s) in {image_dir} are constant (one value in "
                "every pixel, so they show nothing and normalise to a flat image): "
                f"{_name_list(self.constant_images)}",
                stacklevel=3,
            )
        if self.small_images:
            warnings.warn(
                f"{len(self.small_images)} image(s) in {image_dir} are far smaller than "
                f"image_size {self.height}x{self.width} (height x width; under "
                f"{SMALL_IMAGE_FRACTION:.0%} of it on a side) and were enlarged to it: "
                f"{_name_list(self.small_images)}",
                stacklevel=3,
            )
        if self.empty_masks:
            warnings.warn(
                f"{len(self.empty_masks)} mask(s) in {mask_dir} have no foreground (kept as all "
                f"background): {_name_list(self.empty_masks)}",
                stacklevel=3,
            )
        if self.split_masks:
            warnings.warn(
                f"mask_mode='left_right': {len(self.split_masks)} mask(s) in {mask_dir} have a "
                "single lung-sized region (touching lungs or one lung in view) and were split at "
                f"the image's centre column: {_name_list(self.split_masks)}",
                stacklevel=3,
            )
        if len(self.source_sizes) > 1:
            sizes = sorted(f"{width}x{height}" for height, width in self.source_sizes)
            warnings.warn(
                f"the images come in {len(sizes)} different sizes ({', '.join(sizes)}); all were "
                f"resized to {self.width}x{self.height}",
                stacklevel=3,
            )


def _pair_reader(pairs, mask_dir, image_size, mask_mode, normalization, window, progress):
    """Build the reader, scanning and checking the mask values in 'labels' mode."""
    class_values = None
    if mask_mode == "labels":
        class_values, counts = _mask_values(pairs, progress)
        _check_label_values(class_values, counts, mask_dir)
    return _PairReader(image_size, mask_mode, normalization, window, class_values)


def load_pairs(
    image_dir,
    mask_dir,
    image_size=(128, 128),
    mask_mode="binary",
    normalization="minmax",
    window=DEFAULT_WINDOW,
    limit=None,
    progress=True,
):
    """Load every image/mask pair of two folders into arrays: (images, masks, names).

    Returns images float32 (N, H, W, 1) in [0, 1], masks int16 (N, H, W, 1) of class ids, and the
    image file names, sorted (see find_pairs for the pairing rule). Each image is read with
    cv2.IMREAD_UNCHANGED, normalised at full resolution (see normalize), resized to
    ``image_size`` = (height, width) with Lanczos (cv2.INTER_LANCZOS4) and clipped back to [0, 1]
    because Lanczos overshoots at sharp edges. Masks are resized with nearest neighbour so they
    keep their class ids.

    ``mask_mode``:

    * ``"binary"``: lung = 1, else 0 (see binary_foreground: 0/255 and label masks keep every
      lung value, soft or JPEG masks are binarised at about half their maximum);
    * ``"labels"``: the distinct mask values of the whole set, sorted, become class ids 0..K
      (e.g. 0/128/255 -> 0/1/2). Needs two or more foreground values and lossless masks;
    * ``"left_right"``: a binary mask split into derived labels, 1 = the patient's right lung (on
      the image's left), 2 = the left lung, computed at full resolution before resizing (see
      left_right_labels; these are derived, not annotated).

    ``image_size`` is one side (a square, e.g. 128) or (height, width). Every argument is checked
    first (a ValueError names it and what was expected). A file with a NaN or infinite pixel is a
    DataError naming it, before anything is normalised. Masks without foreground, constant
    images and images far smaller than ``image_size`` (under a quarter of it on a side) are kept
    with one warning per kind listing the files; images of different sizes are all resized, with
    one warning. ``limit`` loads only the first pairs (quick looks and tests). For sets too large
    for memory use build_cache and cache_dataset.
    """
    image_size = _check_arguments(image_size, mask_mode, normalization, window, limit)
    pairs = _selected_pairs(image_dir, mask_dir, limit)
    reader = _pair_reader(pairs, mask_dir, image_size, mask_mode, normalization, window, progress)
    height, width = image_size
    images = np.empty((len(pairs), height, width, 1), dtype=np.float32)
    masks = np.empty((len(pairs), height, width, 1), dtype=np.int16)
    for index, (image_path, mask_path, name) in enumerate(
        tqdm(pairs, desc="loading pairs", disable=not progress)
    ):
        images[index, :, :, 0], masks[index, :, :, 0] = reader.read(image_path, mask_path, name)
    reader.warn(image_dir, mask_dir)
    return images, masks, [name for _, _, name in pairs]


def split_indices(n, fractions=(0.6, 0.2, 0.2), shuffle=False, seed=220):
    """Split range(n) into consecutive parts of the given fractions; return a list of index arrays.

    Every part but the last gets floor(fraction * n) items and the last part takes the rest, so
    267 items at (0.6, 0.2, 0.2) give 160 / 53 / 54. Without shuffling the parts follow file order,
    as the source did; with ``shuffle=True`` the order is a permutation drawn from
    np.random.default_rng(seed), so the same seed always gives the same split (the lab's 80/20).
    """
    fractions = check_fractions(fractions)
    if not _is_integer(n) or n < 0:
        raise ValueError(f"n must be a non-negative integer (the number of items), got {n!r}")
    if shuffle and (not _is_integer(seed) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    sizes = [math.floor(fraction * n + 1e-9) for fraction in fractions[:-1]]
    sizes.append(n - sum(sizes))
    if min(sizes) == 0:
        raise ValueError(
            f"fractions {fractions} split {n} items into parts of {sizes} items: that leaves an "
            "empty part; use larger fractions, fewer parts or more items"
        )
    return np.split(order, np.cumsum(sizes)[:-1])


def split(images, masks, fractions=(0.6, 0.2, 0.2), shuffle=False, seed=220):
    """Split paired arrays into parts, e.g. [(train_images, train_masks), (val...), (test...)].

    The parts come from split_indices(len(images), fractions, shuffle, seed).
    """
    if len(images) != len(masks):
        raise ValueError(
            f"images and masks must have the same length, got {len(images)} and {len(masks)}"
        )
    return [
        (images[part], masks[part]) for part in split_indices(len(images), fractions, shuffle, seed)
    ]


def dataset_dirs(root, kind=None):
    """Return (image_dir, mask_dir) of a data set folder in one of the known layouts.

    Known layouts: ``2d_images/`` + ``2d_masks/`` (CT, as on Kaggle), ``cxr/`` + ``masks/``
    (X-ray) and ``images/`` + ``masks/``. ``root`` may be the data set folder itself, or, with
    ``kind`` = "ct" or "xray", a folder holding it as ``ct/`` or ``kaggle_ct2d/`` (CT) or
    ``xray/`` (X-ray): so both ``dataset_dirs(paths.SYNTHETIC_ROOT, "ct")`` and
    ``dataset_dirs("../shared/data/kaggle_ct2d")`` work.
    """
    if kind not in (None, *KIND_FOLDERS):
        raise ValueError(f"kind must be None, 'ct' or 'xray', got {kind!r}")
    if not isinstance(root, (str, os.PathLike)) or str(root) == "":
        raise ValueError(f"root must be the path of a data set folder, got {root!r}")
    root = Path(root)
    layouts = [LAYOUTS[kind], LAYOUTS["generic"]] if kind else list(LAYOUTS.values())
    folders = [root] + [root / name for name in KIND_FOLDERS.get(kind, ())]
    for folder in folders:
        for image_name, mask_name in layouts:
            if (folder / image_name).is_dir() and (folder / mask_name).is_dir():
                return folder / image_name, folder / mask_name
    expected = " or ".join(f"{image}/ + {mask}/" for image, mask in layouts)
    raise DataError(
        f"no data set found in {', '.join(str(folder) for folder in folders)}: expected {expected}"
    )


def _cache_settings(
    image_dir, mask_dir, image_size, mask_mode, normalization, window, image_dtype, limit
):
    """Return the settings that define a cache, as stored in its cache.json."""
    return {
        "image_dir": str(Path(image_dir).resolve()),
        "mask_dir": str(Path(mask_dir).resolve()),
        "image_size": [int(side) for side in image_size],
        "mask_mode": mask_mode,
        "normalization": normalization,
        "window": [float(value) for value in window],
        "image_dtype": image_dtype,
        "limit": None if limit is None else int(limit),
    }


def _read_cache_info(cache_dir):
    """Return the parsed cache.json of a cache folder, or raise DataError if it is not a cache."""
    info_path = Path(cache_dir) / CACHE_INFO_FILE
    if not info_path.is_file():
        raise DataError(
            f"{cache_dir} is not a lunghelpers cache: expected a folder made by build_cache, "
            f"holding {CACHE_INFO_FILE}"
        )
    try:
        info = json.loads(info_path.read_text())
        info["settings"], info["names"], info["class_count"]
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(
            f"{info_path} is damaged ({type(error).__name__}: {error}): expected the JSON written "
            f"by build_cache; delete the folder {cache_dir} and build the cache again"
        ) from None
    return info


def _process_is_running(pid):
    """True if a process with this id exists (a temporary folder of it may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target):
    """Delete ``.<name>.tmp-<pid>`` siblings of ``target`` left by processes that no longer run.

    build_cache and synthetic.generate write into such a folder and rename it when complete; a
    killed run leaves it behind, and the next start removes it. Folders of running processes are
    kept (a parallel run may be writing there).
    """
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    if not target.parent.is_dir():
        return
    for path in target.parent.iterdir():
        pid = path.name[len(prefix):]
        if path.name.startswith(prefix) and pid.isdigit() and not _process_is_running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def build_cache(
    image_dir,
    mask_dir,
    cache_dir,
    image_size=(256, 256),
    mask_mode="binary",
    normalization="minmax",
    window=DEFAULT_WINDOW,
    image_dtype="uint8",
    limit=None,
    progress=True,
):
    """Write the pairs of a large set to an on-disk cache, one file at a time; return cache_dir.

    Same processing as load_pairs, but each pair goes straight into two .npy files created with
    np.lib.format.open_memmap, so memory holds only one slice at a time:
    ``images.npy`` (N, H, W, 1) as uint8 (round(255 x), 1/510 quantisation error) or float16,
    ``masks.npy`` (N, H, W, 1) uint8 class ids, and ``cache.json`` (settings, names, class values).
    For 8000 slices at 256 px that is 524 MB + 524 MB on disk instead of 3.1 GB of float32/int16
    in memory. The cache is written to a temporary folder and renamed when complete, so a cache
    folder is never half-written. An existing cache with the same settings is reused; one with
    other settings raises DataError rather than being mixed or overwritten.
    """
    image_size = _check_arguments(image_size, mask_mode, normalization, window, limit)
    _one_of("image_dtype", image_dtype, CACHE_IMAGE_DTYPES)
    if not isinstance(cache_dir, (str, os.PathLike)) or str(cache_dir) == "":
        raise ValueError(f"cache_dir must be the path of a folder to create, got {cache_dir!r}")
    cache_dir = Path(cache_dir)
    settings = _cache_settings(
        image_dir, mask_dir, image_size, mask_mode, normalization, window, image_dtype, limit
    )
    if cache_dir.exists():
        existing = _read_cache_info(cache_dir)["settings"]
        if existing == settings:
            return cache_dir
        raise DataError(
            f"cache folder {cache_dir} was built with other settings ({existing}); delete it or "
            "choose another cache_dir"
        )
    pairs = _selected_pairs(image_dir, mask_dir, limit)
    reader = _pair_reader(pairs, mask_dir, image_size, mask_mode, normalization, window, progress)
    remove_stale_temporaries(cache_dir)
    temporary = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        shape = (len(pairs), *image_size, 1)
        # Plain sequential writes rather than a writable memory map: the pages of a map count as
        # this process's resident memory until it is closed, 1 GB for 8000 slices at 256 px.
        with open(temporary / "images.npy", "wb") as image_file, open(temporary / "masks.npy", "wb") as mask_file:
            for handle, dtype in ((image_file, image_dtype), (mask_file, np.uint8)):
                np.lib.format.write_array_header_1_0(handle, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
            for image_path, mask_path, name in tqdm(pairs, desc="building cache", disable=not progress):
                image, mask = reader.read(image_path, mask_path, name)
                image = np.round(image * 255.0) if image_dtype == "uint8" else image
                image_file.write(np.ascontiguousarray(image, dtype=image_dtype).tobytes())
                mask_file.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        class_counts = {"binary": 2, "left_right": 3}
        info = {
            "settings": settings,
            "names": [name for _, _, name in pairs],
            "class_count": class_counts.get(mask_mode) or len(reader.class_values),
            "class_values": None if reader.class_values is None else reader.class_values.tolist(),
        }
        (temporary / CACHE_INFO_FILE).write_text(json.dumps(info, indent=1))
        temporary.rename(cache_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    reader.warn(image_dir, mask_dir)
    return cache_dir


def load_cache(cache_dir):
    """Open a cache made by build_cache: (images, masks, names) with read-only memory-mapped arrays.

    Images are uint8 (divide by 255 for [0, 1]) or float16, masks uint8 class ids, both
    (N, H, W, 1). Nothing is read into memory until it is indexed.
    """
    info = _read_cache_info(cache_dir)
    arrays = []
    for name in ("images.npy", "masks.npy"):
        path = Path(cache_dir) / name
        try:
            arrays.append(np.load(path, mmap_mode="r"))
        except (OSError, ValueError) as error:
            raise DataError(
                f"{path} is missing or damaged ({error}): delete the folder {cache_dir} and build "
                "the cache again"
            ) from None
    images, masks = arrays
    if images.shape[0] != len(info["names"]) or masks.shape != images.shape:
        raise DataError(
            f"cache {cache_dir} is damaged: images.npy {images.shape}, masks.npy {masks.shape} and "
            f"{len(info['names'])} names in {CACHE_INFO_FILE} do not match; delete the folder and "
            "build the cache again"
        )
    return images, masks, info["names"]


def _read_rows(array, indices):
    """Rows ``indices`` of a memory-mapped .npy array, read from its file with ``os.pread``."""
    row_shape = array.shape[1:]
    row_bytes = int(np.prod(row_shape)) * array.itemsize
    rows = np.empty((len(indices), *row_shape), array.dtype)
    descriptor = os.open(array.filename, os.O_RDONLY)
    try:
        for position, index in enumerate(np.asarray(indices, dtype=np.int64)):
            buffer = os.pread(descriptor, row_bytes, array.offset + int(index) * row_bytes)
            rows[position] = np.frombuffer(buffer, array.dtype).reshape(row_shape)
    finally:
        os.close(descriptor)
    return rows


def cache_dataset(
    cache_dir,
    indices=None,
    batch_size=8,
    shuffle=True,
    seed=220,
    repeat=True,
    n_classes=1,
    augment=None,
):
    """Return a tf.data.Dataset of (images, targets) batches read from a cache's memory maps.

    ``indices`` picks the slices (e.g. one part of split_indices(n, (0.8, 0.2), shuffle=True));
    default all. The *indices* are shuffled (seeded, reshuffled each epoch) and repeated with
    lunghelpers.augment.shuffle_and_repeat, then batched, and each batch is gathered from the
    memory maps, so only the batches in flight are in memory (shuffling decoded images instead
    would hold the whole set in the shuffle buffer). Bad ``indices``, ``batch_size`` or
    ``n_classes`` raise ValueError before TensorFlow is touched. The
    batches go through lunghelpers.augment.augment_dataset, which converts images to float32
    (B, H, W, 1) in [0, 1], applies ``augment`` (anything augment.get_config accepts: None, a
    preset name such as "lab", a dict or an AugmentConfig; one seeded draw for image and mask)
    and makes float32 targets: (B, H, W, 1) in {0, 1} when n_classes is 1 (any non-zero class
    counts as lung), else one-hot (B, H, W, n_classes).
    """
    class_count = _read_cache_info(cache_dir)["class_count"]
    if not _is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not _is_integer(n_classes) or (n_classes != 1 and n_classes < class_count):
        raise ValueError(
            f"n_classes must be 1 (binary targets) or at least {class_count}, the classes in cache "
            f"{cache_dir} (background included), got {n_classes}"
        )
    images, masks, _ = load_cache(cache_dir)
    if indices is None:
        indices = np.arange(len(images))
    else:
        given = np.asarray(indices)
        if given.ndim != 1 or given.size == 0 or given.dtype.kind not in "iu" or not (
            0 <= given.min() and given.max() < len(images)
        ):
            raise ValueError(
                f"indices must be a non-empty list of slice numbers from 0 to {len(images) - 1} "
                f"(the {len(images)} slices of cache {cache_dir}), got {_value_list(given)}"
            )
        indices = given.astype(np.int64)

    import tensorflow as tf

    from lunghelpers import augment as augmentation

    image_dtype = tf.as_dtype(images.dtype)
    height, width = images.shape[1:3]

    def gather(batch_indices):
        # Read the rows with os.pread instead of indexing the memory maps: pages read through a
        # map stay in this process's resident memory, pages read from the file do not.
        return _read_rows(images, batch_indices), _read_rows(masks, batch_indices).astype(np.int16)

    def load_batch(batch_indices):
        batch_images, batch_masks = tf.numpy_function(
            gather, [batch_indices], [image_dtype, tf.int16]
        )
        batch_images.set_shape([None, height, width, 1])
        batch_masks.set_shape([None, height, width, 1])
        return batch_images, batch_masks

    dataset = augmentation.shuffle_and_repeat(
        tf.data.Dataset.from_tensor_slices(indices),
        len(indices),
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
    )
    dataset = dataset.batch(batch_size).map(load_batch)
    dataset = augmentation.augment_dataset(dataset, augment, seed=seed, n_classes=n_classes)
    return dataset.prefetch(tf.data.AUTOTUNE)
