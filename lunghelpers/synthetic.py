"""Generate the embedded default data: CT-like slices and chest X-ray-like images with lung masks.

No data set can be downloaded on the build machines, yet every notebook, the report and the tests
must run offline. So the kit draws phantoms: simple, but with the parts that make real lung
segmentation non-trivial (lungs as dark as the air around the body, a field-of-view circle that
dominates min-max scaling, ribs and clavicles over the lung fields, varying position, size,
rotation, contrast and noise), laid out on disk exactly like the real sets:

* CT (``kind="ct"``): ``2d_images/ID_nnnn_Z_0000.tif`` int16 CT numbers (about HU) and
  ``2d_masks/ID_nnnn_Z_0000.tif`` 8-bit masks with 0 = background, 128 = the patient's right lung
  (on the image's left), 255 = the left lung. ``mask_mode="binary"`` sees both lungs (any non-zero
  value), ``"labels"`` maps 0/128/255 to classes 0/1/2.
* X-ray (``kind="xray"``): ``cxr/SYNCXR_nnnn.png`` uint8 images and ``masks/SYNCXR_nnnn.png``
  0/255 masks; ``jpeg=True`` writes both as JPEG (quality 90), so masks carry JPEG noise as in the
  lab. ``exposure="dark"`` draws a *second hospital*: other patients, exposed darker and with less
  contrast (mean intensity about 70 against about 108), as the Montgomery X-rays (mean 113) are
  against the Shenzhen ones (163): a set for cross-site evaluation, never for training.

Every image is drawn from ``np.random.default_rng([seed, index])`` (a dark X-ray from
``[seed, index, 1]``): the same seed gives byte-identical files, and asking for more images never
changes the earlier ones.

Command line::

    python -m lunghelpers.synthetic --kind ct|xray --count N --out DIR [--size S] [--seed S]
        [--jpeg] [--exposure standard|dark] [--overwrite]

Without ``--out`` it fills ``data/synthetic/<kind>`` (the kit's default data) if that is missing.
``--overwrite`` replaces a generated set with other settings, but only if the folder holds nothing
but the files the generator wrote (listed in ``dataset.json``); the new set is written next to the
old one and swapped in when complete, so a failure leaves the old set as it was. Every error is
one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lunghelpers import data, paths
from lunghelpers._quiet import progress_bar as tqdm

KINDS = ("ct", "xray")
#: X-ray exposures: "standard" (the embedded default set) and "dark" (a second hospital).
EXPOSURES = ("standard", "dark")
DEFAULT_COUNTS = {"ct": 267, "xray": 200}
DEFAULT_SIZE = 512
MINIMUM_SIZE = 64
MAXIMUM_SIZE = 4096
MAXIMUM_COUNT = 100_000
MARKER_FILE = "dataset.json"
# Bump when the drawing code changes, so old folders are not taken for new ones.
GENERATOR_VERSION = 2
JPEG_QUALITY = 90
AIR_HU = -1000.0
# Constant values real scanners write outside their field of view, and how often each occurs.
FIELD_OF_VIEW_VALUES = (-2048.0, -3024.0)
FIELD_OF_VIEW_CHANCES = (0.45, 0.25)
RIGHT_LUNG_VALUE = 128  # the patient's right lung, on the image's left
LEFT_LUNG_VALUE = 255


def _outline(center, half_axes, angle_degrees, rng, roughness, points=96):
    """Return the (points, 2) x/y corners of an ellipse whose radius wobbles smoothly.

    The radius is 1 + sum_k a_k cos(k theta + phi_k) for harmonics k = 2..5 with a_k drawn from
    U(0, roughness / 2), so a shape stays one smooth blob but no two are alike.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    radius = np.ones_like(theta)
    for harmonic in (2, 3, 4, 5):
        radius += rng.uniform(0.0, roughness / 2) * np.cos(
            harmonic * theta + rng.uniform(0.0, 2.0 * np.pi)
        )
    x = half_axes[0] * radius * np.cos(theta)
    y = half_axes[1] * radius * np.sin(theta)
    angle = np.deg2rad(angle_degrees)
    return np.stack(
        [
            center[0] + x * np.cos(angle) - y * np.sin(angle),
            center[1] + x * np.sin(angle) + y * np.cos(angle),
        ],
        axis=1,
    )


def _region(size, outline):
    """Return the boolean (size, size) region inside a closed outline (cv2.fillPoly)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], 1)
    return canvas.astype(bool)


def _ellipse(size, center, half_axes, angle_degrees=0.0):
    """Return the boolean (size, size) region inside a plain ellipse (cv2.ellipse)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    axes = (max(1, round(half_axes[0])), max(1, round(half_axes[1])))
    cv2.ellipse(canvas, (round(center[0]), round(center[1])), axes, angle_degrees, 0, 360, 1, -1)
    return canvas.astype(bool)


def _erode(region, pixels):
    """Shrink a boolean region by about ``pixels`` with an elliptical kernel (cv2.erode)."""
    diameter = 2 * max(1, round(pixels)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
    return cv2.erode(region.astype(np.uint8), kernel).astype(bool)


def _smooth_noise(rng, size, sigma):
    """Return a (size, size) float32 field of smooth noise with unit standard deviation.

    Noise is drawn on a grid ``sigma`` times coarser and resized up with bilinear interpolation,
    which gives blobs about ``sigma`` pixels wide at a fraction of the cost of blurring full-size
    noise.
    """
    coarse_size = max(2, round(size / max(sigma, 1.0)))
    coarse = rng.standard_normal((coarse_size, coarse_size), dtype=np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    return field / field.std()


def ct_slice(rng, size=DEFAULT_SIZE):
    """Draw one axial CT-like slice: (image int16 (size, size) in HU, mask uint8 0/128/255).

    Anatomy, at 512 px (all lengths scale with size / 512): air (-1000 HU) around an elliptical
    body with a fat layer (~-100 HU) over soft tissue (~40 HU) and a flattened back lying on a
    curved patient table; two lungs (~-850 HU, smooth texture denser towards the back, vessels up
    to +40 HU) whose size follows a random level between apex and base; the heart (blood ~45 HU,
    or contrast-enhanced ~120-250 HU on a third of slices) and the descending aorta between them;
    the trachea (air) near the apex; a vertebra (cortical ring ~750 HU) with spinal canal and
    processes; about 7-11 ribs and the sternum. The whole slice is rotated by up to 10 degrees,
    blurred slightly and given Gaussian noise (8-25 HU). On 70 % of slices everything outside the
    scanner's circular field of view is set to a constant, -2048 or -3024, as real scanners do.
    The two lungs never touch: each stays on its side of the body's midline.
    """
    scale = size / DEFAULT_SIZE
    rows, columns = np.ogrid[0:size, 0:size]
    level = rng.uniform()  # 0 = lung apex, 1 = lung base
    lung_scale = 0.75 + 0.25 * np.sin(np.pi * level)
    center_x = size / 2 + rng.uniform(-20, 20) * scale
    center_y = size / 2 + rng.uniform(-25, 10) * scale
    body_width, body_height = rng.uniform(190, 235) * scale, rng.uniform(140, 175) * scale
    back = center_y + 0.9 * body_height
    texture = _smooth_noise(rng, size, 2 * scale)
    hu = np.full((size, size), AIR_HU, dtype=np.float32)

    table_x = np.linspace(0, size, 33)
    table_y = (
        back
        + rng.uniform(4, 12) * scale
        - rng.uniform(10, 30) * scale * ((table_x - center_x) / (size / 2)) ** 2
    )
    table = np.zeros((size, size), dtype=np.uint8)
    table_points = np.round(np.stack([table_x, table_y], axis=1)).astype(np.int32)
    cv2.polylines(table, [table_points], False, 1, max(1, round(rng.uniform(5, 9) * scale)))
    hu[table.astype(bool)] = rng.uniform(100, 300)

    body_outline = _outline(
        (center_x, center_y), (body_width, body_height), rng.uniform(-5, 5), rng, 0.03
    )
    body_outline[:, 1] = np.minimum(body_outline[:, 1], back)
    body = _region(size, body_outline)
    fat_thickness = rng.uniform(5, 18) * scale
    inner = _erode(body, fat_thickness)
    hu[body] = rng.uniform(-110, -80) + 8 * texture[body]
    hu[inner] = rng.uniform(30, 55) + 8 * texture[inner]
    chest_width, chest_height = body_width - fat_thickness, body_height - fat_thickness

    vertebra_radius = chest_height * rng.uniform(0.14, 0.17)
    vertebra_center = (center_x, center_y + chest_height * rng.uniform(0.5, 0.58))
    vertebra = _ellipse(size, vertebra_center, (vertebra_radius, vertebra_radius))
    canal_center = (center_x, vertebra_center[1] + 1.45 * vertebra_radius)
    canal = _ellipse(size, canal_center, (0.45 * vertebra_radius, 0.45 * vertebra_radius))
    processes = _ellipse(
        size,
        (center_x, canal_center[1] + 0.6 * vertebra_radius),
        (0.6 * vertebra_radius, 0.25 * vertebra_radius),
    )
    for side in (-1, 1):
        processes |= _ellipse(
            size,
            (center_x + side * 1.2 * vertebra_radius, vertebra_center[1] + 0.6 * vertebra_radius),
            (0.6 * vertebra_radius, 0.2 * vertebra_radius),
            side * 20,
        )
    processes &= ~canal & inner
    aorta_radius = 0.5 * vertebra_radius
    aorta = _ellipse(
        size,
        (center_x + 1.1 * vertebra_radius, vertebra_center[1] - 1.1 * vertebra_radius),
        (aorta_radius, aorta_radius),
    )
    blood_hu = rng.uniform(120, 250) if rng.uniform() < 1 / 3 else rng.uniform(35, 55)
    heart_scale = np.clip((level - 0.25) / 0.6, 0.0, 1.0)
    heart = np.zeros((size, size), dtype=bool)
    if heart_scale > 0.1:
        heart = _ellipse(
            size,
            (
                center_x + chest_width * rng.uniform(0.02, 0.15),
                center_y - chest_height * rng.uniform(0.0, 0.25),
            ),
            (
                chest_width * rng.uniform(0.25, 0.35) * heart_scale,
                chest_height * rng.uniform(0.35, 0.5) * heart_scale,
            ),
            rng.uniform(-35, -10),
        )
    trachea = np.zeros((size, size), dtype=bool)
    if level < 0.45:
        trachea_radius = rng.uniform(7, 11) * scale
        trachea = _ellipse(
            size,
            (
                center_x + rng.uniform(-4, 4) * scale,
                center_y - chest_height * rng.uniform(0.15, 0.3),
            ),
            (trachea_radius, trachea_radius),
        )
    sternum = _ellipse(
        size,
        (center_x, center_y - 0.93 * chest_height),
        (rng.uniform(12, 18) * scale, rng.uniform(5, 8) * scale),
    )
    ribs = np.zeros((size, size), dtype=bool)
    rib_count = rng.integers(10, 15)
    for angle in (
        np.linspace(0, 360, rib_count, endpoint=False)
        + rng.uniform(0, 360)
        + rng.uniform(-6, 6, rib_count)
    ):
        angle %= 360
        if abs(angle - 270) < 20 or abs(angle - 90) < 28:
            continue  # the sternum (front, top of the image) and the spine (back) have no ribs
        radians = np.deg2rad(angle)
        rib_center = (
            center_x + 0.93 * chest_width * np.cos(radians),
            center_y + 0.93 * chest_height * np.sin(radians),
        )
        ribs |= _ellipse(
            size,
            rib_center,
            (rng.uniform(7, 11) * scale, rng.uniform(3.5, 5.5) * scale),
            angle + 90,
        )
    ribs &= inner

    hu[heart | aorta] = blood_hu
    hu[trachea] = AIR_HU
    hu[vertebra] = rng.uniform(650, 900)
    hu[_erode(vertebra, 0.2 * vertebra_radius)] = rng.uniform(200, 350)
    hu[canal] = rng.uniform(10, 40)
    hu[processes] = rng.uniform(500, 800)
    hu[ribs] = rng.uniform(500, 900)
    hu[sternum] = rng.uniform(400, 600)

    solid = cv2.dilate(
        (heart | aorta | trachea | vertebra | canal | processes | ribs | sternum).astype(np.uint8),
        np.ones((3, 3), np.uint8),
    ).astype(bool)
    lung_space = _erode(inner, rng.uniform(8, 14) * scale) & ~solid
    midline_margin = max(2.0, 6 * scale)
    lungs = []
    for side in (-1, 1):
        offset = chest_width * rng.uniform(0.42, 0.5)
        side_scale = lung_scale * rng.uniform(0.9, 1.1)
        half_axes = (
            offset * rng.uniform(0.8, 1.0) * side_scale,
            chest_height * rng.uniform(0.75, 0.95) * side_scale,
        )
        lung_center = (center_x + side * offset, center_y + chest_height * rng.uniform(-0.12, 0.05))
        outline = _outline(lung_center, half_axes, side * rng.uniform(0, 15), rng, 0.06)
        lungs.append(
            _region(size, outline) & lung_space & (side * (columns - center_x) >= midline_margin)
        )
    lung = lungs[0] | lungs[1]
    posterior = np.clip((rows - center_y) / chest_height, 0.0, 1.0)
    lung_hu = (
        rng.uniform(-880, -820)
        + 25 * _smooth_noise(rng, size, 3 * scale)
        + rng.uniform(20, 60) * posterior
    )
    with_vessels = np.where(lung, lung_hu, hu)
    lung_pixels = np.flatnonzero(lung)
    for pixel in rng.choice(
        lung_pixels, size=min(rng.integers(20, 50), lung_pixels.size), replace=False
    ):
        vessel_center = (int(pixel % size), int(pixel // size))
        cv2.circle(
            with_vessels,
            vessel_center,
            max(1, round(rng.uniform(1, 3.2) * scale)),
            float(rng.uniform(-250, 40)),
            -1,
        )
    hu = np.where(lung, with_vessels, hu)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[lungs[0]] = RIGHT_LUNG_VALUE
    mask[lungs[1]] = LEFT_LUNG_VALUE

    rotation = cv2.getRotationMatrix2D((center_x, center_y), rng.uniform(-10, 10), 1.0)
    hu = cv2.warpAffine(hu, rotation, (size, size), flags=cv2.INTER_LINEAR, borderValue=AIR_HU)
    mask = cv2.warpAffine(mask, rotation, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    hu = cv2.GaussianBlur(hu, (0, 0), 0.7 * scale + 0.3)
    hu += rng.uniform(8, 25) * rng.standard_normal((size, size), dtype=np.float32)

    draw = rng.uniform()
    field_of_view_radius = size * rng.uniform(0.47, 0.5)
    outside = (columns - size / 2) ** 2 + (rows - size / 2) ** 2 > field_of_view_radius**2
    for value, threshold in zip(FIELD_OF_VIEW_VALUES, np.cumsum(FIELD_OF_VIEW_CHANCES)):
        if draw < threshold:
            hu[outside] = value
            mask[outside] = 0
            break
    return np.clip(np.round(hu), -32768, 32767).astype(np.int16), mask


def xray_projection(rng, size=DEFAULT_SIZE, exposure="standard"):
    """Draw one frontal chest X-ray-like projection: (image uint8 (size, size), mask uint8 0/255).

    Brightness stands for attenuation: dark air around a bright torso and neck; two dark lung
    fields (narrow apex, wide base, smooth random outline, texture); a bright mediastinum and a
    heart that overlaps the patient's left lung (image's right) and is cut out of its mask; the
    spine; rib arches (6-9 per side) and clavicles drawn over the lungs, which stay lung in the
    mask; a brighter abdomen below the lungs. Then a random rotation (5 degrees), scale
    (0.9-1.1) and shift, a soft intensity gradient, blur, gamma 0.7-1.4, contrast and brightness
    changes and Gaussian noise. The lung fields stay on their own side of the midline and never
    touch. ``exposure="dark"`` (another hospital's exposure and processing) then applies gamma
    1.6-2.0, contrast 0.8-0.9 and a lift of 0.02-0.05: darker, flatter images that a per-image
    min-max scaling does not undo (a gamma is not linear).
    """
    scale = size / DEFAULT_SIZE
    rows, columns = np.ogrid[0:size, 0:size]
    center_x = size / 2
    background = rng.uniform(0.02, 0.08)
    density = np.full((size, size), background, dtype=np.float32)
    torso = _region(
        size,
        _outline(
            (center_x, 330 * scale),
            (rng.uniform(215, 245) * scale, rng.uniform(300, 340) * scale),
            rng.uniform(-3, 3),
            rng,
            0.02,
        ),
    )
    neck = _ellipse(
        size, (center_x, 40 * scale), (rng.uniform(55, 70) * scale, rng.uniform(90, 110) * scale)
    )
    body = torso | neck
    density[body] = rng.uniform(0.55, 0.68)

    lung_top, lung_bottom = rng.uniform(60, 95) * scale, rng.uniform(400, 450) * scale
    lungs = []
    for side in (-1, 1):
        medial = rng.uniform(20, 35) * scale
        width = rng.uniform(120, 150) * scale
        lung_center_x = center_x + side * (medial + width / 2)
        outline = _outline(
            (lung_center_x, (lung_top + lung_bottom) / 2),
            (width / 2, (lung_bottom - lung_top) / 2),
            side * rng.uniform(-3, 5),
            rng,
            0.05,
        )
        height_fraction = np.clip((outline[:, 1] - lung_top) / (lung_bottom - lung_top), 0.0, 1.0)
        outline[:, 0] = lung_center_x + (outline[:, 0] - lung_center_x) * (
            0.7 + 0.4 * height_fraction
        )
        lungs.append(_region(size, outline) & torso & (side * (columns - center_x) >= medial))
    heart = _ellipse(
        size,
        (center_x + rng.uniform(20, 45) * scale, lung_bottom - rng.uniform(70, 100) * scale),
        (rng.uniform(75, 100) * scale, rng.uniform(60, 80) * scale),
        rng.uniform(-25, -5),
    )
    lungs = [lung & ~heart for lung in lungs]
    lung = lungs[0] | lungs[1]

    abdomen = body & (rows > lung_bottom - 20 * scale) & ~lung
    density[abdomen] += rng.uniform(0.05, 0.1)
    mediastinum = (
        body & (np.abs(columns - center_x) < rng.uniform(30, 45) * scale) & (rows < lung_bottom)
    )
    density[mediastinum] = rng.uniform(0.75, 0.85)
    density[heart] = rng.uniform(0.72, 0.82)
    density[body & (np.abs(columns - center_x) < rng.uniform(18, 25) * scale)] += 0.06
    lung_density = (
        rng.uniform(0.18, 0.3)
        + 0.03 * _smooth_noise(rng, size, 4 * scale)
        - 0.05 * (rows - lung_top) / (lung_bottom - lung_top)
    )
    density[lung] = lung_density[lung]

    bones = np.zeros((size, size), dtype=np.float32)
    for side in (-1, 1):
        for rib_y in np.linspace(
            lung_top + 30 * scale, lung_bottom - 40 * scale, rng.integers(6, 10)
        ):
            cv2.ellipse(
                bones,
                (
                    round(center_x + side * rng.uniform(60, 90) * scale),
                    round(rib_y + rng.uniform(-8, 8) * scale),
                ),
                (round(rng.uniform(90, 120) * scale), round(rng.uniform(25, 40) * scale)),
                side * rng.uniform(5, 15),
                180,
                360,
                float(rng.uniform(0.07, 0.12)),
                max(1, round(rng.uniform(7, 11) * scale)),
            )
        clavicle_start = (round(center_x + side * 25 * scale), round(rng.uniform(115, 140) * scale))
        clavicle_end = (
            round(center_x + side * rng.uniform(150, 180) * scale),
            round(rng.uniform(85, 110) * scale),
        )
        cv2.line(
            bones, clavicle_start, clavicle_end, 0.15, max(1, round(rng.uniform(12, 16) * scale))
        )
    density += np.where(body, bones, 0.0)
    mask = np.where(lung, 255, 0).astype(np.uint8)

    transform = cv2.getRotationMatrix2D(
        (center_x, size / 2), rng.uniform(-5, 5), rng.uniform(0.9, 1.1)
    )
    transform[:, 2] += rng.uniform(-15, 15, 2) * scale
    density = cv2.warpAffine(
        density, transform, (size, size), flags=cv2.INTER_LINEAR, borderValue=float(background)
    )
    mask = cv2.warpAffine(mask, transform, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    density += (
        rng.uniform(-0.08, 0.08) * (columns - center_x) / size
        + rng.uniform(-0.08, 0.08) * (rows - size / 2) / size
    )
    density = cv2.GaussianBlur(density, (0, 0), 1.2 * scale + 0.3)
    density = np.clip(density, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    density = density * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
    density += rng.uniform(0.008, 0.025) * rng.standard_normal((size, size), dtype=np.float32)
    if exposure == "dark":  # drawn last, so the standard set's images stay as they were
        density = np.clip(density, 0.0, 1.0) ** rng.uniform(1.6, 2.0) * rng.uniform(0.8, 0.9)
        density += rng.uniform(0.02, 0.05)
    return np.clip(np.round(density * 255.0), 0, 255).astype(np.uint8), mask


def make_pair(kind, seed, index, size=DEFAULT_SIZE, exposure="standard"):
    """Return (image, mask) number ``index`` of a set, drawn from default_rng([seed, index]).

    A ``"dark"`` X-ray is drawn from default_rng([seed, index, 1]): other patients than the
    standard set of the same seed, as a second hospital has.
    """
    if exposure == "standard":
        rng = np.random.default_rng([seed, index])
    else:
        rng = np.random.default_rng([seed, index, EXPOSURES.index(exposure)])
    return ct_slice(rng, size) if kind == "ct" else xray_projection(rng, size, exposure)


def _layout(kind, jpeg):
    """Return (image folder, mask folder, file name pattern) of a kind, as in the real sets."""
    if kind == "ct":
        return "2d_images", "2d_masks", "ID_{index:04d}_Z_0000.tif"
    return "cxr", "masks", "SYNCXR_{index:04d}" + (".jpg" if jpeg else ".png")


def _write(path, array):
    """Write an image file with OpenCV (JPEG at JPEG_QUALITY), raising OSError if that fails."""
    parameters = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if Path(path).suffix == ".jpg" else []
    if not cv2.imwrite(str(path), array, parameters):
        raise OSError(f"OpenCV could not write {path}")


def _is_integer(value):
    """True for Python and NumPy integers, False for bools (True is an int in Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_settings(kind, count, size, seed, jpeg, exposure="standard"):
    """Raise ValueError for an unknown kind or exposure, or a count, size or seed out of range."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not _is_integer(count) or not 1 <= count <= MAXIMUM_COUNT:
        raise ValueError(
            f"count must be a positive integer of at most {MAXIMUM_COUNT}, got {count!r}"
        )
    if not _is_integer(size) or not MINIMUM_SIZE <= size <= MAXIMUM_SIZE:
        raise ValueError(
            f"size must be an integer of at least {MINIMUM_SIZE} and at most {MAXIMUM_SIZE} "
            f"pixels, got {size!r}"
        )
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(jpeg, (bool, np.bool_)):
        raise ValueError(f"jpeg must be True or False, got {jpeg!r}")
    if jpeg and kind != "xray":
        raise ValueError("jpeg=True is only for kind='xray' (CT slices are int16 TIFF)")
    if exposure not in EXPOSURES:
        raise ValueError(f"exposure must be one of {EXPOSURES}, got {exposure!r}")
    if exposure != "standard" and kind != "xray":
        raise ValueError(f"exposure={exposure!r} is only for kind='xray'")


def _read_marker(folder):
    """Return the settings stored in a generated folder's marker file, or None if there is none."""
    marker = Path(folder) / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        settings = json.loads(marker.read_text())
        if not isinstance(settings, dict):
            raise ValueError(f"expected a JSON object, found {type(settings).__name__}")
    except (OSError, ValueError) as error:
        raise data.DataError(
            f"{marker} is damaged ({error}): expected the settings a generated set keeps there; "
            f"if {folder} holds nothing of yours, delete it and generate the set again"
        ) from None
    return settings


def _same_settings(marker, settings):
    """True when a marker holds these settings; a marker without ``exposure`` is a standard set."""
    return (
        marker is not None
        and {key: marker.get(key) for key in settings} == settings
        and marker.get("exposure", "standard") == settings.get("exposure", "standard")
    )


def _set_files(kind, count, jpeg):
    """The relative paths (POSIX style) of the image and mask files of a set, sorted."""
    image_folder, mask_folder, pattern = _layout(kind, jpeg)
    names = [pattern.format(index=index) for index in range(count)]
    return sorted(f"{folder}/{name}" for folder in (image_folder, mask_folder) for name in names)


def _generated_files(folder, marker):
    """The files a generated set wrote: its manifest (marker "files"), or those its settings imply.

    Sets written before the manifest existed list no files; their names follow from kind, count
    and jpeg.
    """
    if isinstance(marker.get("files"), list):
        return set(marker["files"])
    try:
        return set(_set_files(marker["kind"], int(marker["count"]), bool(marker.get("jpeg"))))
    except (KeyError, TypeError, ValueError):
        raise data.DataError(
            f"{Path(folder) / MARKER_FILE} lists no files and no valid kind and count: cannot tell "
            f"the generated files of {folder} from yours; move your files out and delete it"
        ) from None


def _foreign_files(folder, marker):
    """Relative paths under a generated folder that the generator did not write, sorted."""
    generated = _generated_files(folder, marker) | {MARKER_FILE}
    parents = {str(Path(name).parent) for name in generated} - {"."}
    foreign = []
    for path in Path(folder).rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink() and relative in parents:
            continue
        if relative not in generated:
            foreign.append(relative)
    return sorted(foreign)


def _swap_in(temporary, out_dir):
    """Replace out_dir by the complete folder ``temporary``; on failure out_dir stays as it was."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    try:
        temporary.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _restore_interrupted_swap(out_dir):
    """Put back an old set that a killed _swap_in left as .<name>.old-<pid>; drop stale ones."""
    data.remove_stale_temporaries(out_dir)
    prefix = f".{out_dir.name}.old-"
    if not out_dir.parent.is_dir():
        return
    for path in sorted(out_dir.parent.iterdir()):
        pid = path.name[len(prefix):]
        if not (path.name.startswith(prefix) and pid.isdigit()):
            continue
        if data._process_is_running(int(pid)):
            continue
        if not out_dir.exists():
            path.rename(out_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _output_folder(out_dir):
    """Return out_dir as a Path with a name (".", ".." resolved), or raise ValueError."""
    if not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
        raise ValueError(
            f"out_dir (--out) must be the path of a folder to write, got {out_dir!r}"
        )
    out_dir = Path(out_dir)
    if out_dir.name in ("", ".", ".."):
        out_dir = out_dir.resolve()
    if out_dir.name == "":
        raise ValueError(f"out_dir must name a folder below the file system root, got {out_dir}")
    return out_dir


def generate(
    kind, count, out_dir, size=DEFAULT_SIZE, seed=0, jpeg=False, overwrite=False, progress=True,
    exposure="standard",
):
    """Write ``count`` synthetic pairs of ``kind`` ("ct" or "xray") under out_dir; return out_dir.

    Files go to out_dir/2d_images + out_dir/2d_masks (CT) or out_dir/cxr + out_dir/masks (X-ray);
    see ct_slice and xray_projection for what is drawn. The set is written to a temporary folder
    next to out_dir and renamed when complete, with a marker file ``dataset.json`` holding kind,
    count, size, seed, jpeg (and exposure, unless standard) and the list of files written, so a
    folder is either complete or absent. If out_dir already holds a set with the same settings it
    is returned as it is; a set with other settings raises DataError unless ``overwrite=True``.
    Overwriting refuses a folder holding files the generator did not write (naming them), and
    swaps the new set in only once it is complete, so a failure leaves the old set intact. A
    folder that is not a generated set is never touched. ``exposure="dark"`` (X-ray only) draws
    the second hospital (see make_pair and xray_projection).
    """
    _check_settings(kind, count, size, seed, jpeg, exposure)
    out_dir = _output_folder(out_dir)
    settings = {
        "kind": kind,
        "count": int(count),
        "size": int(size),
        "seed": int(seed),
        "jpeg": bool(jpeg),
        "version": GENERATOR_VERSION,
    }
    if exposure != "standard":  # standard sets keep the marker they always had
        settings["exposure"] = exposure
    _restore_interrupted_swap(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise data.DataError(f"{out_dir} is a file: expected a missing or empty folder")
    if out_dir.exists():
        existing = _read_marker(out_dir)
        if _same_settings(existing, settings):
            return out_dir
        if existing is None and any(out_dir.iterdir()):
            raise data.DataError(
                f"{out_dir} exists and is not a generated data set: expected a missing or empty "
                "folder"
            )
        if existing is not None and not overwrite:
            shown = {key: existing.get(key) for key in {**settings, "exposure": None}
                     if key in settings or key in existing}
            raise data.DataError(
                f"{out_dir} holds a synthetic set with other settings {shown}, expected "
                f"{settings}: choose another folder or pass overwrite=True (--overwrite)"
            )
        if existing is not None:
            foreign = _foreign_files(out_dir, existing)
            if foreign:
                raise data.DataError(
                    f"{out_dir} holds {len(foreign)} file(s) the generator did not write: "
                    f"{data._name_list(foreign)}; overwriting replaces only generated files, so "
                    "move these out of the folder first, or choose another folder"
                )
    image_folder, mask_folder, pattern = _layout(kind, jpeg)
    temporary = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        (temporary / image_folder).mkdir(parents=True)
        (temporary / mask_folder).mkdir()
        for index in tqdm(range(count), desc=f"generating {kind}", disable=not progress):
            image, mask = make_pair(kind, seed, index, size, exposure)
            name = pattern.format(index=index)
            _write(temporary / image_folder / name, image)
            _write(temporary / mask_folder / name, mask)
        marker = {**settings, "files": _set_files(kind, count, jpeg)}
        (temporary / MARKER_FILE).write_text(json.dumps(marker, indent=1))
        if out_dir.is_dir():
            _swap_in(temporary, out_dir)
        else:
            try:
                temporary.rename(out_dir)
            except OSError:
                # Another process (e.g. a parallel papermill run) finished the same set first.
                existing = _read_marker(out_dir) if out_dir.is_dir() else None
                if not _same_settings(existing, settings):
                    raise
                shutil.rmtree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def ensure_dataset(
    kind="ct",
    root=paths.SYNTHETIC_ROOT,
    count=None,
    size=DEFAULT_SIZE,
    seed=0,
    jpeg=False,
    progress=True,
    exposure="standard",
):
    """Return the folder of a synthetic set, generating it on first use.

    With the defaults the folder is root/"ct" (267 CT slices, like the real CT set) or
    root/"xray" (200 X-rays: the real Shenzhen copy has 566, 200 keep generation and the lab's
    80/20 split quick). Other settings get their own folder, e.g. root/"ct-n40-s128-seed1", so sets
    are never mixed; a dark X-ray set (a second hospital) is root/"xray-dark". Pass the result to
    data.dataset_dirs to get the image and mask folders.
    """
    count = DEFAULT_COUNTS.get(kind, 0) if count is None else count
    _check_settings(kind, count, size, seed, jpeg, exposure)
    name = kind
    if (count, size, seed, jpeg) != (DEFAULT_COUNTS[kind], DEFAULT_SIZE, 0, False):
        name = f"{kind}-n{count}-s{size}-seed{seed}" + ("-jpeg" if jpeg else "")
    name += "" if exposure == "standard" else f"-{exposure}"
    folder = Path(root) / name
    # A set written by an older version of this generator is replaced: it is ours to regenerate.
    existing = _read_marker(folder) if folder.is_dir() else None
    outdated = existing is not None and existing.get("version") != GENERATOR_VERSION
    return generate(
        kind, count, folder, size=size, seed=seed, jpeg=jpeg, overwrite=outdated, progress=progress,
        exposure=exposure,
    )


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), without the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fail(prog, message):
    """Print one line 'prog: error: message' on stderr and exit with status 2."""
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    """Command line: generate a synthetic set (see the module docstring); say where, how fast.

    Every error (a bad option, size or count, a folder that cannot be written or holds other
    files) is one line on stderr and exit status 2, with no traceback.
    """
    parser = _Parser(
        prog="python -m lunghelpers.synthetic",
        description="Generate synthetic lung CT slices or chest X-rays with masks.",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="ct",
        help="ct: int16 TIFF slices; xray: 8-bit PNG projections",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help=f"number of pairs, 1 to {MAXIMUM_COUNT} (default: 267 for ct, 200 for xray)",
    )
    parser.add_argument(
        "--out",
        type=str,
        default=None,
        help=f"output folder (default: {paths.SYNTHETIC_ROOT}/<kind>)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=f"image side in pixels, {MINIMUM_SIZE} to {MAXIMUM_SIZE} (default {DEFAULT_SIZE})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives identical files"
    )
    parser.add_argument(
        "--jpeg", action="store_true", help="X-ray only: write images and masks as JPEG"
    )
    parser.add_argument(
        "--exposure",
        choices=EXPOSURES,
        default="standard",
        help="X-ray only: dark = a second hospital (other patients, darker, less contrast)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a generated set that has other settings (refused if the folder holds "
        "files the generator did not write)",
    )
    arguments = parser.parse_args(argv)
    if arguments.overwrite and arguments.out is None:
        parser.error(
            "--overwrite needs --out: the default folders are named by their settings and are "
            "never overwritten"
        )
    start = time.perf_counter()
    count = DEFAULT_COUNTS[arguments.kind] if arguments.count is None else arguments.count
    try:
        if arguments.out is None:
            folder = ensure_dataset(
                arguments.kind,
                count=count,
                size=arguments.size,
                seed=arguments.seed,
                jpeg=arguments.jpeg,
                exposure=arguments.exposure,
            )
        else:
            folder = generate(
                arguments.kind,
                count,
                arguments.out,
                size=arguments.size,
                seed=arguments.seed,
                jpeg=arguments.jpeg,
                overwrite=arguments.overwrite,
                exposure=arguments.exposure,
            )
    except ValueError as error:  # data.DataError included
        _fail(parser.prog, error)
    except OSError as error:
        target = paths.SYNTHETIC_ROOT if arguments.out is None else arguments.out
        _fail(parser.prog, f"could not write the data set to {target}: {error.strerror or error}")
    except KeyboardInterrupt:
        _fail(parser.prog, "interrupted; the folder was left as it was before")
    settings = _read_marker(folder)
    print(
        f"{settings['count']} {settings['kind']} pairs in {folder} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return folder


if __name__ == "__main__":
    main()
