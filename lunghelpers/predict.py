"""Segment a folder of images with a trained model: masks, overlays and lung areas.

Command line::

    python -m lunghelpers.predict RUN_OR_MODEL INPUT_DIR OUTPUT_DIR [--threshold T] [--overlay] [--overwrite]

``RUN_OR_MODEL`` is a run folder (``model.keras`` + ``params.json``: the images get the run's own
normalisation and image size) or a ``.keras`` file (then min-max normalisation and the model's
input size). Every image file of ``INPUT_DIR`` (any format and size ``data.read_image`` reads:
8- or 16-bit, greyscale or colour) is normalised at its own resolution, resized to the model's
input size, segmented, and its prediction resized back to the image's own size. ``OUTPUT_DIR``
then holds:

- ``masks/<stem>.png``: 0 / 255 for a binary (sigmoid) model, the class ids 0 / 1 / 2
  (background / the patient's right lung, on the image's left / the left lung) for a
  left/right (softmax) model;
- ``overlays/<stem>.png`` with ``--overlay``: the image with the predicted lungs in colour;
- ``areas.csv``: one row per image: its file, size and lung area in pixels (per lung too for a
  left/right model).

Files that are not images or cannot be read are listed on stderr and skipped; the command then
exits with status 1 once the others are done. Every file is written to a temporary name in its
folder and renamed when complete, so an interrupted run leaves no half-written file. An output
folder that already holds results is refused unless ``--overwrite`` is given. Models are loaded
with Keras's safe mode only (no arbitrary code from the file).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lunghelpers import data, models  # noqa: F401  (models: registers FusedBatchNormalization)
from lunghelpers._quiet import progress_bar as tqdm

MASKS_FOLDER = "masks"
OVERLAYS_FOLDER = "overlays"
AREAS_FILE = "areas.csv"
#: What marks an output folder as holding results.
RESULT_NAMES = (AREAS_FILE, MASKS_FOLDER, OVERLAYS_FOLDER)
DEFAULT_THRESHOLD = 0.5
#: Value written to a binary mask's lung pixels.
BINARY_LUNG_VALUE = 255
#: areas.csv column of each class of a 3-class (background, right lung, left lung) model.
LUNG_AREA_COLUMNS = {1: "right_lung_area_px", 2: "left_lung_area_px"}
OVERLAY_ALPHA = 0.45


class PredictError(ValueError):
    """A model, run folder, input or output folder that ``predict`` cannot work with."""


@dataclass
class Predictor:
    """A loaded model and the settings its images need.

    ``image_size`` is (height, width) of the model's input; ``n_classes`` is 1 for a sigmoid
    model, K for a softmax one; ``threshold`` binarises a sigmoid output (probability > threshold).
    """

    model: object
    source: Path
    normalization: str
    image_size: tuple[int, int]
    n_classes: int
    threshold: float
    window: tuple[float, float] = data.DEFAULT_WINDOW

    def describe(self):
        """One line naming the model and the settings it is applied with."""
        height, width = self.image_size
        rule = (
            f"threshold {self.threshold:g}" if self.n_classes == 1
            else f"{self.n_classes} classes by argmax"
        )
        return (
            f"model {self.source}: {width}x{height} px input, normalisation "
            f"{self.normalization!r}, {rule}"
        )


def _load_model(path):
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a bad file.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PredictError(f"could not load the Keras model {path} (safe mode): {reason}") from None


def _check_threshold(threshold):
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise PredictError(f"threshold must be a number between 0 and 1, got {threshold!r}")
    return float(threshold)


def _size_pair(value, where):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (list, tuple)) or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)
    ):
        raise PredictError(f"{where}: image_size must be [height, width], got {value!r}")
    return tuple(value)


def load_predictor(run_or_model, threshold=None):
    """Load a run folder or a ``.keras`` file into a :class:`Predictor`.

    - A run folder must hold ``model.keras`` and ``params.json``; its ``params`` give the
      normalisation (``normalization``), the input size (``image_size``), the number of classes
      (``n_classes``) and the headline ``threshold``, checked against the model itself.
    - A ``.keras`` file gets min-max normalisation, the model's own input size and threshold 0.5.

    ``threshold`` (a sigmoid model's binarisation) replaces the run's; a softmax model takes the
    argmax class and refuses a threshold.
    """
    from lunghelpers import train

    source = Path(run_or_model)
    params = {}
    if source.is_dir():
        run = train.RunFolder(source)
        missing = [path.name for path in (run.model_path, run.params_path) if not path.is_file()]
        if missing:
            raise PredictError(
                f"{source} is not a finished run folder: it has no {' and no '.join(missing)} "
                "(expected a run folder written by training, or a .keras file)"
            )
        try:
            params = train.read_json(run.params_path).get("params") or {}
        except ValueError as error:
            raise PredictError(f"{run.params_path} is not valid JSON: {error}") from None
        model_path = run.model_path
    elif source.is_file():
        if source.suffix != ".keras":
            raise PredictError(f"{source} is not a .keras model file or a run folder")
        model_path = source
    else:
        raise PredictError(f"{source} does not exist: expected a run folder or a .keras model file")

    model = _load_model(model_path)
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[-1] != 1 or len(output_shape) != 4:
        raise PredictError(
            f"{model_path} maps {input_shape} to {output_shape}: expected a segmentation model "
            "from (batch, height, width, 1) images to (batch, height, width, classes)"
        )
    n_classes = int(output_shape[-1])
    if "n_classes" in params and int(params["n_classes"]) != n_classes:
        raise PredictError(
            f"{source}: params.json says n_classes {params['n_classes']} but the model has "
            f"{n_classes} output channel(s)"
        )
    model_size = input_shape[1:3]
    if "image_size" in params:
        image_size = _size_pair(params["image_size"], source / "params.json")
        if None not in model_size and tuple(model_size) != image_size:
            raise PredictError(
                f"{source}: params.json says image_size {list(image_size)} but the model's "
                f"input is {list(model_size)}"
            )
    elif None in model_size:
        raise PredictError(
            f"{model_path} accepts any input size, so it does not say at which size it was "
            "trained: pass its run folder (with params.json) instead"
        )
    else:
        image_size = tuple(int(side) for side in model_size)
    normalization = params.get("normalization", "minmax")
    if normalization not in data.NORMALIZATIONS:
        raise PredictError(
            f"{source}: unknown normalization {normalization!r} (expected one of "
            f"{', '.join(data.NORMALIZATIONS)})"
        )
    if threshold is not None and n_classes > 1:
        raise PredictError(
            f"a threshold applies only to a binary (sigmoid) model; {model_path} predicts "
            f"{n_classes} classes and takes the most probable one"
        )
    threshold = _check_threshold(
        threshold if threshold is not None else params.get("threshold", DEFAULT_THRESHOLD)
    )
    window = tuple(params.get("window", data.DEFAULT_WINDOW))
    return Predictor(model, source, normalization, image_size, n_classes, threshold, window)


def prepare_image(image, normalization="minmax", image_size=(128, 128), window=data.DEFAULT_WINDOW):
    """One raw image (H, W) as the model sees it: float32 (height, width) in [0, 1].

    The same steps as ``data.load_pairs``: normalise at the image's own resolution, resize with
    Lanczos, clip back to [0, 1] (Lanczos overshoots at sharp edges).
    """
    height, width = image_size
    normalized = data.normalize(image, normalization, window)
    resized = cv2.resize(normalized, (width, height), interpolation=cv2.INTER_LANCZOS4)
    return np.clip(resized, 0.0, 1.0)


def segment(predictor, image):
    """Class ids (H, W) uint8 of one raw image (H, W), at the image's own size.

    The model's probabilities are resized back to the image's size (bilinear) before they are
    binarised (sigmoid: probability > threshold gives 1) or turned into classes (softmax: argmax),
    so the mask's border is as smooth as the image allows.
    """
    height, width = image.shape[:2]
    batch = prepare_image(image, predictor.normalization, predictor.image_size, predictor.window)
    probabilities = np.asarray(
        predictor.model.predict_on_batch(batch[np.newaxis, :, :, np.newaxis]), dtype=np.float32
    )[0]
    resized = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    if predictor.n_classes == 1:
        return (resized.reshape(height, width) > predictor.threshold).astype(np.uint8)
    return resized.reshape(height, width, -1).argmax(axis=-1).astype(np.uint8)


def mask_image(labels, n_classes):
    """The PNG content of a mask: 0 / 255 for a binary model, the class ids for a softmax one."""
    if n_classes == 1:
        return (labels > 0).astype(np.uint8) * BINARY_LUNG_VALUE
    return labels.astype(np.uint8)


def overlay_image(image, labels, normalization="minmax", window=data.DEFAULT_WINDOW):
    """BGR uint8 overlay: the normalised image in grey, each predicted class in its colour.

    The colours are those of the kit's figures (``plots.CLASS_COLOURS``): orange for a binary
    lung or the patient's right lung, cyan for the left lung.
    """
    from lunghelpers import plots

    grey = np.round(data.normalize(image, normalization, window) * 255).astype(np.uint8)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for class_id, (red, green, blue) in plots.CLASS_COLOURS.items():
        where = labels == class_id
        colour = np.array([blue, green, red], np.float32) * 255
        picture[where] = (1 - OVERLAY_ALPHA) * picture[where] + OVERLAY_ALPHA * colour
    return np.round(picture).astype(np.uint8)


def areas(labels, n_classes):
    """Lung area in pixels: ``lung_area_px`` and, for a 3-class model, each lung's area."""
    names = LUNG_AREA_COLUMNS if n_classes == 3 else {}
    row = {"lung_area_px": int(np.count_nonzero(labels))}
    for class_id in range(1, n_classes):
        row[names.get(class_id, f"class{class_id}_area_px")] = int(np.count_nonzero(labels == class_id))
    return row


def _write_png(path, picture):
    from lunghelpers import train

    with train.atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), picture):
            raise OSError(f"could not write {path}")


def _input_files(input_dir):
    """(image files, [(file name, reason)] of files skipped as not images), sorted by name."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PredictError(f"input folder {input_dir} does not exist or is not a folder")
    files = sorted(
        path for path in input_dir.iterdir() if path.is_file() and not path.name.startswith(".")
    )
    if not files:
        raise PredictError(f"input folder {input_dir} holds no files: expected image files")
    images = [path for path in files if path.suffix.lower() in data.IMAGE_EXTENSIONS]
    skipped = [
        (path.name, f"not an image file (expected {', '.join(data.IMAGE_EXTENSIONS)})")
        for path in files if path.suffix.lower() not in data.IMAGE_EXTENSIONS
    ]
    return images, skipped


def _output_stems(paths):
    """The output file stem of each image: its stem, or its whole name where stems collide."""
    stems = [path.stem for path in paths]
    return [path.stem if stems.count(path.stem) == 1 else path.name for path in paths]


def _prepare_output(output_dir, input_dir, overwrite):
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise PredictError(f"output folder {output_dir} is a file, not a folder")
    if output_dir.resolve() == Path(input_dir).resolve():
        raise PredictError("the output folder must differ from the input folder")
    existing = [name for name in RESULT_NAMES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise PredictError(
            f"output folder {output_dir} already holds results ({', '.join(existing)}): "
            "choose another folder or pass --overwrite"
        )
    return output_dir


@dataclass
class PredictionResult:
    """What ``predict_folder`` did: one row per segmented image, and the files it skipped."""

    areas: pd.DataFrame
    skipped: list
    output_dir: Path
    predictor: Predictor


def predict_folder(run_or_model, input_dir, output_dir, threshold=None, overlay=False,
                   overwrite=False, progress=True):
    """Segment every image of ``input_dir`` into ``output_dir`` (see the module docstring).

    Returns a :class:`PredictionResult`. Files that are not images or cannot be read are in its
    ``skipped`` list as (file name, reason) and get no output. With ``overwrite`` the masks and
    overlays of an earlier run that this run does not write again are removed at the end, so the
    folder describes one run.
    """
    images, skipped = _input_files(input_dir)
    output_dir = _prepare_output(output_dir, input_dir, overwrite)
    predictor = load_predictor(run_or_model, threshold=threshold)
    masks_dir, overlays_dir = output_dir / MASKS_FOLDER, output_dir / OVERLAYS_FOLDER
    masks_dir.mkdir(parents=True, exist_ok=True)
    if overlay:
        overlays_dir.mkdir(exist_ok=True)
    rows, written = [], set()
    for path, stem in tqdm(list(zip(images, _output_stems(images))), desc="segmenting",
                           unit="image", disable=not progress):
        try:
            image = data.read_image(path)
        except (ValueError, cv2.error) as error:  # data.DataError is a ValueError
            skipped.append((path.name, str(error)))
            continue
        labels = segment(predictor, image)
        mask_path = masks_dir / f"{stem}.png"
        _write_png(mask_path, mask_image(labels, predictor.n_classes))
        written.add(mask_path)
        if overlay:
            overlay_path = overlays_dir / f"{stem}.png"
            _write_png(overlay_path,
                       overlay_image(image, labels, predictor.normalization, predictor.window))
            written.add(overlay_path)
        height, width = image.shape
        rows.append({"image": path.name, "mask": f"{MASKS_FOLDER}/{stem}.png", "height": height,
                     "width": width, **areas(labels, predictor.n_classes)})
    from lunghelpers import train

    columns = ["image", "mask", "height", "width", *areas(np.zeros((1, 1)), predictor.n_classes)]
    table = pd.DataFrame(rows, columns=columns)
    train.write_csv(output_dir / AREAS_FILE, table)
    for folder in (masks_dir, overlays_dir):
        for stale in folder.glob("*.png") if folder.is_dir() else ():
            if stale not in written:
                stale.unlink()
    skipped.sort()
    return PredictionResult(table, skipped, output_dir, predictor)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser():
    parser = _Parser(
        prog="python -m lunghelpers.predict",
        description="Segment every image of a folder with a trained model: masks (PNG at each "
                    "image's own size), optional overlays and areas.csv (lung area in pixels).",
    )
    parser.add_argument("run_or_model", help="a run folder (model.keras + params.json) or a .keras file")
    parser.add_argument("input_dir", help="folder of images (TIFF, PNG, JPEG or BMP; any size)")
    parser.add_argument("output_dir", help="folder for masks/, overlays/ and areas.csv")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binarise a sigmoid output at probability > T (default: the run's, else 0.5)")
    parser.add_argument("--overlay", action="store_true", help="also write overlays/<stem>.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results an output folder already holds")
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit status (0 done, 1 files skipped, 2 error)."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        result = predict_folder(arguments.run_or_model, arguments.input_dir, arguments.output_dir,
                                threshold=arguments.threshold, overlay=arguments.overlay,
                                overwrite=arguments.overwrite)
    except (ValueError, OSError) as error:  # PredictError and data.DataError are ValueErrors.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no partial file was left behind", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or a failing library: still one line, no traceback
        print(f"{parser.prog}: error: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"{result.predictor.describe()}\nsegmented {len(result.areas)} image(s) into {result.output_dir}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):", file=sys.stderr)
        for name, reason in result.skipped:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
