"""One experiment, from a lesson's parameters to a finished run folder.

The training notebook (``notebooks/05_training.ipynb``) is the kit's one training path: its cells
compile the model, list the callbacks and call ``model.fit``. Its ``parameters`` cell holds the
defaults of every run (the CT assignment's recipe); :class:`ExperimentConfig` reads them from
there, so they are written once. Everything that needs a trained run executes that notebook:

1. :func:`prepare_data` reads the image/mask pairs and splits them (plus the robustness study's
   noise and training-set size options); :func:`build_model` builds the U-Net the configuration
   names; :func:`make_datasets` turns the arrays into ``tf.data`` pipelines.
2. :func:`ensure_run` returns a finished run folder, executing the training notebook with
   papermill when it holds none; :func:`load_config` rebuilds a run's configuration from its
   ``params.json``, so the evaluation notebooks rebuild exactly the run's split.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lunghelpers import paths

#: Mask modes whose models have one sigmoid output; the others predict background/right/left.
BINARY_MASK_MODES = ("binary",)
MULTICLASS_MASK_MODES = ("labels", "left_right")


def quick_mode() -> bool:
    """Whether the notebooks should run in quick mode (small data, few epochs).

    Quick mode is switched on by the environment variable ``LUNGHELPERS_QUICK=1``; the test suite
    sets it so that ``pytest --nbval`` runs every notebook in minutes on a CPU. It is read in each
    notebook's ``parameters`` cell, where the student sees it.
    """
    return os.environ.get("LUNGHELPERS_QUICK", "0").strip().lower() in ("1", "true", "yes")


#: Numeric parameters: (type, lower test, upper test, may be None, what is expected).
_ANY = (lambda value: True)
RANGES = {
    "epochs": (int, lambda v: v >= 1, _ANY, False, "a whole number of at least 1"),
    "batch_size": (int, lambda v: v >= 1, _ANY, False, "a whole number of at least 1"),
    "steps_per_epoch": (int, lambda v: v >= 1, _ANY, True, "a whole number of at least 1"),
    "seed": (int, lambda v: v >= 0, _ANY, False, "a whole number of at least 0"),
    "limit": (int, lambda v: v >= 1, _ANY, True, "a whole number of at least 1"),
    "train_size": (int, lambda v: v >= 1, _ANY, True, "a whole number of at least 1"),
    "base_filters": (int, lambda v: v >= 1, _ANY, False, "a whole number of at least 1"),
    "depth": (int, lambda v: v >= 1, lambda v: v <= 8, False, "a whole number from 1 to 8"),
    "learning_rate": ((int, float), lambda v: v > 0, lambda v: v < 1, False, "a number in (0, 1)"),
    "weight_decay": ((int, float), lambda v: v >= 0, lambda v: v < 1, True, "a number in [0, 1)"),
    "momentum": ((int, float), lambda v: v >= 0, lambda v: v < 1, True, "a number in [0, 1)"),
    "clipnorm": ((int, float), lambda v: v > 0, _ANY, True, "a positive number"),
    "ema_momentum": ((int, float), lambda v: v > 0, lambda v: v < 1, True, "a number in (0, 1)"),
    "dropout_rate": ((int, float), lambda v: v >= 0, lambda v: v < 1, False, "a fraction in [0, 1)"),
    "batch_norm_momentum": ((int, float), lambda v: v > 0, lambda v: v < 1, False, "a number in (0, 1)"),
    "train_noise_fraction": ((int, float), lambda v: v >= 0, lambda v: v <= 1, False, "a fraction in [0, 1]"),
    "val_noise_fraction": ((int, float), lambda v: v >= 0, lambda v: v <= 1, False, "a fraction in [0, 1]"),
    "noise_sigma": ((int, float), lambda v: v > 0, _ANY, True, "a positive number"),
    "threshold": ((int, float), lambda v: v > 0, lambda v: v < 1, False, "a number in (0, 1)"),
}

#: The lesson whose ``parameters`` cell defines every run's defaults, and the run's default name.
TRAINING_NOTEBOOK = "05_training.ipynb"


def notebook_parameters(notebook: str = TRAINING_NOTEBOOK) -> dict:
    """The literal assignments of a lesson's ``parameters`` cell, as ``{"EPOCHS": 40, ...}``.

    Lines whose value is not a literal (``QUICK = experiment.quick_mode()``) are left out.
    """
    path = paths.NOTEBOOKS_ROOT / notebook
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    return literal_assignments("".join(cell["source"]))


def literal_assignments(source: str) -> dict:
    """``{name: value}`` of the top-level ``NAME = literal`` lines of some Python source."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


_DEFAULTS = {name.lower(): value for name, value in notebook_parameters().items()}


def _default(name):
    value = _DEFAULTS[name]
    return field(default_factory=lambda: value) if isinstance(value, (list, dict)) else field(default=value)


@dataclass
class ExperimentConfig:
    """Every knob of one training run; the defaults are the training notebook's ``parameters`` cell.

    Field names are the notebook's parameter names in lower case. ``data_dir=None`` means the
    embedded synthetic data of kind ``dataset`` (generated on first use).
    """

    name: str = _default("name")
    run_dir: str | None = _default("run_dir")
    dataset: str = _default("dataset")
    data_dir: str | None = _default("data_dir")
    image_size: int | tuple[int, int] = _default("image_size")
    split: tuple[float, ...] = _default("split")
    shuffle_split: bool = _default("shuffle_split")
    seed: int = _default("seed")
    limit: int | None = _default("limit")
    mask_mode: str = _default("mask_mode")
    normalization: str = _default("normalization")
    train_size: int | None = _default("train_size")
    train_noise_fraction: float = _default("train_noise_fraction")
    val_noise_fraction: float = _default("val_noise_fraction")
    noise_sigma: float | None = _default("noise_sigma")
    model: str = _default("model")
    base_filters: int = _default("base_filters")
    depth: int = _default("depth")
    dropout_rate: float = _default("dropout_rate")
    batch_norm: bool = _default("batch_norm")
    batch_norm_momentum: float = _default("batch_norm_momentum")
    upsampling: str = _default("upsampling")
    loss: str = _default("loss")
    optimizer: str = _default("optimizer")
    learning_rate: float = _default("learning_rate")
    weight_decay: float | None = _default("weight_decay")
    momentum: float | None = _default("momentum")
    clipnorm: float | None = _default("clipnorm")
    ema_momentum: float | None = _default("ema_momentum")
    schedule: str = _default("schedule")
    batch_size: int = _default("batch_size")
    epochs: int = _default("epochs")
    steps_per_epoch: int | None = _default("steps_per_epoch")
    augment: Any = _default("augment")
    mixed_precision: bool | str = _default("mixed_precision")
    distribute: bool = _default("distribute")
    cache: bool = _default("cache")
    threshold: float = _default("threshold")

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)
        ):
            raise ValueError(f"image_size must be an int or a (height, width) pair of ints of at least 8, got {self.image_size!r}")
        self.image_size = tuple(size)
        if isinstance(self.split, str) or not all(isinstance(v, (int, float)) for v in self.split):
            raise ValueError(f"split must be a list of fractions such as [0.6, 0.2, 0.2], got {self.split!r}")
        self.split = tuple(float(v) for v in self.split)
        if not isinstance(self.name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", self.name) or ".." in self.name:
            raise ValueError(
                f"name must be 1-100 letters, digits, '.', '_' or '-' (no '..', no '/'), got {self.name!r}: "
                "it becomes the folder runs/NAME; set RUN_DIR for a folder elsewhere"
            )
        if self.data_dir is not None:
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        if self.run_dir is not None:
            self.run_dir = str(Path(self.run_dir).expanduser().resolve())
        if self.dataset not in ("ct", "xray"):
            raise ValueError(f"dataset must be 'ct' or 'xray', got {self.dataset!r}")
        if self.mask_mode not in BINARY_MASK_MODES + MULTICLASS_MASK_MODES:
            raise ValueError(
                f"mask_mode must be one of {BINARY_MASK_MODES + MULTICLASS_MASK_MODES}, "
                f"got {self.mask_mode!r}"
            )
        if self.model not in ("simple_unet", "unet"):
            raise ValueError(f"model must be 'simple_unet' or 'unet', got {self.model!r}")
        for name, (kind, low, high, optional, what) in RANGES.items():
            value = getattr(self, name)
            if value is None and optional:
                continue
            ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not (low(value) and high(value)):
                raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")

    @classmethod
    def from_namespace(cls, namespace: dict, ignore=("QUICK",)) -> "ExperimentConfig":
        """Collect a notebook's upper-case parameters (``EPOCHS``, ``LOSS``, ...) into a configuration.

        The training notebook calls ``ExperimentConfig.from_namespace(globals())`` after its
        parameters cell. An upper-case name that is no parameter (a misspelt ``EPOCH`` injected by
        papermill, say) is an error naming the closest parameter, never silently dropped.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        names = [key for key in namespace if key.isupper() and not key.startswith("_") and key not in ignore]
        unknown = [key for key in names if key.lower() not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key.lower(), sorted(known), n=1)
                hints.append(f"{key} (did you mean {close[0].upper()}?)" if close else key)
            raise ValueError(f"unknown parameters {', '.join(hints)}; the parameters are {sorted(k.upper() for k in known)}")
        return cls(**{key.lower(): namespace[key] for key in names})

    def quick(self, images: int = 60, size: int = 64, epochs: int = 2) -> "ExperimentConfig":
        """A copy shrunk for quick mode: at most ``images`` images of ``size`` px, ``epochs`` epochs.

        Only ever shrinks: a setting already smaller than the quick one is kept.
        """
        limit = images if self.limit is None else min(self.limit, images)
        image_size = tuple(min(side, size) for side in self.image_size)
        train_size = None if self.train_size is None else min(self.train_size, int(limit * self.split[0]))
        return dataclasses.replace(
            self,
            limit=limit,
            image_size=image_size,
            epochs=min(self.epochs, epochs),
            train_size=train_size,
            batch_size=min(self.batch_size, 8),
        )

    @property
    def n_classes(self) -> int:
        """1 for a binary sigmoid model, 3 (background, right lung, left lung) otherwise."""
        return 1 if self.mask_mode in BINARY_MASK_MODES else 3

    @property
    def run_path(self) -> Path:
        """The run folder: ``run_dir`` if given, else ``runs/<name>`` in the project."""
        return Path(self.run_dir) if self.run_dir else (paths.RUNS_ROOT / self.name).resolve()

    def describe(self) -> str:
        """A few lines naming the run folder, the data, the model and the training settings.

        The notebooks print it after their parameters cell, so an executed notebook shows what
        it ran with (quick mode included).
        """
        height, width = self.image_size
        if self.model == "simple_unet":
            model = "simple_unet (filters 64/128/256, dropout 0.5 before the head)"
        else:
            model = (
                f"unet (base filters {self.base_filters}, depth {self.depth}, dropout "
                f"{self.dropout_rate:g}, batch norm {self.batch_norm}, {self.upsampling} upsampling)"
            )
        return (
            f"run folder: {self.run_path}\n"
            f"data: {self.data_dir or f'embedded synthetic {self.dataset} set'}, {height}x{width} px, "
            f"split {self.split} {'shuffled' if self.shuffle_split else 'in file order'} "
            f"(seed {self.seed}), limit {self.limit}, masks {self.mask_mode!r}, "
            f"normalisation {self.normalization!r}\n"
            f"model: {model}, {self.n_classes} output channel(s)\n"
            f"training: loss {self.loss!r}, {self.optimizer} at {self.learning_rate:g}, schedule "
            f"{self.schedule!r}, batch {self.batch_size}, {self.epochs} epoch{'s' * (self.epochs != 1)}, "
            f"augmentation {self.augment!r}, mixed precision {self.mixed_precision}"
        )

    def to_dict(self) -> dict:
        """Plain JSON-friendly parameters, as written to ``params.json``."""
        values = dataclasses.asdict(self)
        values["image_size"] = list(self.image_size)
        values["split"] = list(self.split)
        values["n_classes"] = self.n_classes
        values["run_dir"] = str(self.run_path)
        return values


def cache_folder(config: ExperimentConfig, image_dir) -> Path:
    """Where ``CACHE = True`` keeps a set's on-disk cache: ``data/cache/<set>-<size>-<settings hash>``."""
    import hashlib

    key = json.dumps([str(Path(image_dir).resolve()), list(config.image_size), config.mask_mode,
                      config.normalization, config.limit])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return paths.DATA_ROOT / "cache" / f"{config.dataset}-{config.image_size[0]}px-{digest}"


class CachedRows:
    """Some rows of a memory-mapped cache array, read only when asked for.

    ``len()``, ``shape`` and slicing work without reading a pixel; ``np.asarray`` reads the rows
    (images as float32 in [0, 1], masks as int16 class ids, as ``data.load_pairs`` gives them).
    The training pipeline reads them batch by batch with ``data.cache_dataset``.
    """

    def __init__(self, array, indices, cache_dir, images):
        self.array, self.cache_dir, self.images = array, cache_dir, images
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self):
        return len(self.indices)

    @property
    def shape(self):
        return (len(self.indices), *self.array.shape[1:])

    def __getitem__(self, key):
        if isinstance(key, slice):
            return CachedRows(self.array, self.indices[key], self.cache_dir, self.images)
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        order = np.argsort(self.indices)  # read the memory map front to back
        rows = np.empty(self.shape, self.array.dtype)
        rows[order] = self.array[self.indices[order]]
        if self.images:
            rows = rows.astype(np.float32) / (255.0 if self.array.dtype == np.uint8 else 1.0)
        else:
            rows = rows.astype(np.int16)
        return rows if dtype is None else rows.astype(dtype)


class Subset(NamedTuple):
    """Images, masks and file names of one part of a split."""

    images: np.ndarray
    masks: np.ndarray
    names: list


class Splits(NamedTuple):
    """The parts of a split; ``test`` is ``None`` for the lab's 80/20 train/validation split."""

    train: Subset
    val: Subset
    test: Subset | None

    @property
    def evaluation(self) -> tuple[str, Subset]:
        """The held-out part a run is judged on: the test set if there is one, else validation."""
        return ("test", self.test) if self.test is not None else ("val", self.val)


def data_folders(config: ExperimentConfig) -> tuple[Path, Path]:
    """The image and mask folders for ``config`` (embedded synthetic data when ``data_dir`` is None)."""
    from lunghelpers import data, synthetic

    if config.data_dir is None:
        root = synthetic.ensure_dataset(config.dataset)
    else:
        root = Path(config.data_dir).expanduser()
    return data.dataset_dirs(root, kind=config.dataset)


def prepare_data(config: ExperimentConfig, progress: bool = True) -> Splits:
    """Load, normalise and split the data as ``config`` says.

    Applies, in this order: the split (seeded shuffle only when ``shuffle_split``), the poster's
    training-set size (the first ``train_size`` training images), and the poster's Gaussian noise on a
    seeded fraction of the training and/or validation images. Evaluation sets never get noise
    unless ``val_noise_fraction`` asks for it.
    """
    from lunghelpers import augment, data

    image_dir, mask_dir = data_folders(config)
    if config.cache:
        if config.train_noise_fraction or config.val_noise_fraction:
            raise ValueError("CACHE streams images from disk; the noise options need them in memory: set CACHE = False")
        cache_dir = data.build_cache(
            image_dir, mask_dir, cache_folder(config, image_dir), image_size=config.image_size,
            mask_mode=config.mask_mode, normalization=config.normalization, limit=config.limit, progress=progress,
        )
        images, masks, names = data.load_cache(cache_dir)
    else:
        images, masks, names = data.load_pairs(
            image_dir,
            mask_dir,
            image_size=config.image_size,
            mask_mode=config.mask_mode,
            normalization=config.normalization,
            limit=config.limit,
            progress=progress,
        )
    index_parts = data.split_indices(
        len(images), config.split, shuffle=config.shuffle_split, seed=config.seed
    )
    if config.cache:
        parts = [Subset(CachedRows(images, i, cache_dir, True), CachedRows(masks, i, cache_dir, False),
                        [names[k] for k in i]) for i in index_parts]
    else:
        parts = [Subset(images[i], masks[i], [names[k] for k in i]) for i in index_parts]
    train = parts[0]
    if config.train_size is not None:
        if not 1 <= config.train_size <= len(train.images):
            raise ValueError(
                f"train_size must be between 1 and the {len(train.images)} training images, "
                f"got {config.train_size}"
            )
        keep = slice(0, config.train_size)
        train = Subset(train.images[keep], train.masks[keep], train.names[keep])
    sigma = config.noise_sigma if config.noise_sigma is not None else augment.POSTER_NOISE_SIGMA
    val = parts[1]
    if config.train_noise_fraction > 0:
        noisy, _ = augment.add_gaussian_noise(
            train.images, sigma=sigma, fraction=config.train_noise_fraction, seed=config.seed
        )
        train = train._replace(images=noisy)
    if config.val_noise_fraction > 0:
        noisy, _ = augment.add_gaussian_noise(
            val.images, sigma=sigma, fraction=config.val_noise_fraction, seed=config.seed + 1
        )
        val = val._replace(images=noisy)
    test = parts[2] if len(parts) > 2 else None
    return Splits(train, val, test)


def build_model(config: ExperimentConfig):
    """The U-Net ``config`` names, for its image size and number of classes."""
    from lunghelpers import models

    input_shape = (*config.image_size, 1)
    if config.model == "simple_unet":
        if config.n_classes != 1:
            raise ValueError(
                "model='simple_unet' has one sigmoid output; use model='unet' for "
                f"mask_mode={config.mask_mode!r}"
            )
        return models.simple_unet(input_shape)
    return models.unet(
        input_shape,
        base_filters=config.base_filters,
        depth=config.depth,
        dropout_rate=config.dropout_rate,
        batch_norm=config.batch_norm,
        batch_norm_momentum=config.batch_norm_momentum,
        upsampling=config.upsampling,
        n_classes=config.n_classes,
    )


def make_datasets(config: ExperimentConfig, splits: Splits):
    """Training pipeline (shuffled, repeated, augmented) and a plain validation pipeline.

    With ``CACHE = True`` both read their batches from the on-disk cache as training consumes
    them, so memory holds the batches in flight, not the set.
    """
    from lunghelpers import augment, data

    augment_config = augment.get_config(config.augment)
    if isinstance(splits.train.images, CachedRows):  # CACHE: batches read from the memory maps
        cache_dir = splits.train.images.cache_dir
        train_ds = data.cache_dataset(cache_dir, splits.train.images.indices, config.batch_size, shuffle=True,
                                      seed=config.seed, repeat=True, n_classes=config.n_classes, augment=augment_config)
        val_ds = data.cache_dataset(cache_dir, splits.val.images.indices, config.batch_size, shuffle=False,
                                    repeat=False, n_classes=config.n_classes)
        return train_ds, val_ds
    train_ds = augment.make_dataset(
        splits.train.images,
        splits.train.masks,
        config.batch_size,
        augment=augment_config,
        shuffle=True,
        seed=config.seed,
        repeat=True,
        n_classes=config.n_classes,
    )
    val_ds = augment.make_dataset(
        splits.val.images,
        splits.val.masks,
        config.batch_size,
        augment=None,
        shuffle=False,
        repeat=False,
        n_classes=config.n_classes,
    )
    return train_ds, val_ds


def load_config(run_dir: str | Path) -> ExperimentConfig:
    """The configuration a run was trained with, rebuilt from its ``params.json``.

    With it, ``prepare_data`` rebuilds exactly the run's split, so the evaluation notebooks score
    the images the run never trained on.
    """
    from lunghelpers import train

    run = train.RunFolder(Path(run_dir))
    if not run.params_path.exists():
        raise FileNotFoundError(f"{run.path} is not a run folder: it has no params.json")
    recorded = run.params()
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return ExperimentConfig(**{key: value for key, value in recorded.items() if key in known})


def _training_config(parameters: dict) -> ExperimentConfig:
    """The configuration the training notebook builds from ``parameters`` (quick mode included)."""
    config = ExperimentConfig.from_namespace(parameters)
    return config.quick() if parameters.get("QUICK", quick_mode()) else config


def ensure_run(run_dir: str | Path | None = None, name_parameter: str = "NAME", **parameters):
    """The finished run in ``run_dir``, trained first by executing the training notebook if needed.

    ``parameters`` are training-notebook parameters (``EPOCHS=3, LOSS="dice"``); ``run_dir=None``
    means ``runs/<NAME>``. A folder that holds a finished run with these parameters (or any finished
    run, when no parameters are given) is returned as it is; one with other parameters raises
    ``train.RunParametersError`` naming them. Without parameters, an interrupted run continues with
    the parameters it recorded, and an empty folder gets the notebook's defaults. Otherwise
    ``notebooks/05_training.ipynb`` is executed with papermill, with these parameters and
    ``RUN_DIR``, and its executed copy is kept in the run folder as ``05_training.ipynb``; an
    interrupted run continues where it stopped. So every run of the kit is trained by the cells
    a student reads. ``name_parameter`` is the parameter a refusal tells the caller to change.
    """
    from lunghelpers import train

    parameters = {key: value for key, value in parameters.items() if key != "RUN_DIR"}
    name = parameters.get("NAME", _DEFAULTS["name"])
    run = train.RunFolder(Path(run_dir or paths.RUNS_ROOT / name).expanduser().resolve())
    if run.finished:
        if parameters:
            differing = train.differences(run.params(), _training_config(parameters).to_dict())
            if differing:  # raises RunParametersError, naming them and name_parameter
                train.open_run(run.path, _training_config(parameters).to_dict(), name_parameter=name_parameter)
        return run
    if not parameters and run.params_path.exists():
        # "The run in this folder": an interrupted run continues with the parameters it recorded.
        parameters = {**{key.upper(): value for key, value in run.params().items() if key in _DEFAULTS},
                      "QUICK": False}
    _execute(TRAINING_NOTEBOOK, run.path / TRAINING_NOTEBOOK, {**parameters, "RUN_DIR": str(run.path)})
    return run


@contextlib.contextmanager
def stderr_to(path: Path):
    """Send this process's file descriptor 2 (and so a child kernel's stderr) to ``path`` meanwhile.

    A kernel started by papermill writes its own start-up lines ("Kernel is running over TCP",
    TensorFlow's C++ log) straight to the stderr it inherits; here they go to a log file instead of
    the lesson or the console.
    """
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield path
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def papermill_parameters(parameters: dict) -> dict:
    """``parameters`` with tuples as lists: papermill writes a tuple into the notebook as a string."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in parameters.items()}


def _execute(notebook: str, output: Path, parameters: dict) -> None:
    """Execute a lesson with papermill; a failing cell becomes a RuntimeError naming the copy."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"Training {output.parent.name}: executing {notebook} (executed copy: {output})", flush=True)
    try:
        with stderr_to(output.parent / "kernel.log"):
            papermill.execute_notebook(
                str(paths.NOTEBOOKS_ROOT / notebook),
                str(output),
                parameters=papermill_parameters(parameters),
                kernel_name="python3",
                cwd=str(paths.NOTEBOOKS_ROOT),
                progress_bar=False,
            )
    except papermill.PapermillExecutionError as error:
        raise RuntimeError(
            f"{notebook} failed for {output.parent}: {error.ename}: {error.evalue} (see {output})"
        ) from None
