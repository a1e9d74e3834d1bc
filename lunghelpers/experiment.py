"""One experiment from notebook parameters to a finished run folder.

The notebooks keep their hyperparameters as plain names in a ``parameters`` cell so papermill can
override them. They collect those names into an :class:`ExperimentConfig` and call the steps
below, so the training notebook, the evaluation notebook and the report all load, split and
build things the same way: same seed, same split, same numbers.

The steps, in the order a notebook shows them:

1. :func:`prepare_data` reads the image/mask pairs and splits them (plus the poster's noise and
   training-set size options).
2. :func:`build_model` builds the U-Net the configuration names.
3. :func:`make_datasets` turns the arrays into ``tf.data`` pipelines (augmentation on training only).
4. :func:`train_experiment` does 1-3, trains, evaluates on the held-out split and writes the run
   folder; :func:`ensure_run` reuses a finished run folder instead of training again.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


@dataclass
class ExperimentConfig:
    """Every knob of one training run, with the CT assignment's source defaults.

    Field names are the notebooks' parameter names in lower case. ``data_dir=None`` means the
    embedded synthetic data of kind ``dataset`` (generated on first use).
    """

    name: str = "ct-assignment"
    dataset: str = "ct"
    data_dir: str | None = None
    image_size: int | tuple[int, int] = 128
    split: tuple[float, ...] = (0.6, 0.2, 0.2)
    shuffle_split: bool = False
    seed: int = 220
    limit: int | None = None
    mask_mode: str = "binary"
    normalization: str = "minmax"
    batch_size: int = 16
    epochs: int = 40
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    momentum: float | None = None
    clipnorm: float | None = None
    schedule: str = "source"
    model: str = "simple_unet"
    base_filters: int = 8
    depth: int = 4
    dropout_rate: float = 0.0
    batch_norm: bool = False
    batch_norm_momentum: float = 0.99
    upsampling: str = "transpose"
    loss: str = "bce"
    augment: Any = "source"
    train_size: int | None = None
    train_noise_fraction: float = 0.0
    val_noise_fraction: float = 0.0
    noise_sigma: float | None = None
    mixed_precision: bool | str = False
    threshold: float = 0.5
    run_dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.split = tuple(float(v) for v in self.split)
        if self.dataset not in ("ct", "xray"):
            raise ValueError(f"dataset must be 'ct' or 'xray', got {self.dataset!r}")
        if self.mask_mode not in BINARY_MASK_MODES + MULTICLASS_MASK_MODES:
            raise ValueError(
                f"mask_mode must be one of {BINARY_MASK_MODES + MULTICLASS_MASK_MODES}, "
                f"got {self.mask_mode!r}"
            )
        if self.model not in ("simple_unet", "unet"):
            raise ValueError(f"model must be 'simple_unet' or 'unet', got {self.model!r}")
        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, params: dict) -> "ExperimentConfig":
        """Build a configuration from notebook parameters (any case); unknown names are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key.lower(): value for key, value in params.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown experiment parameters {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_namespace(cls, namespace: dict) -> "ExperimentConfig":
        """Collect a notebook's upper-case parameters (``EPOCHS``, ``LOSS``, ...) into a configuration.

        Upper-case names that are not fields (``QUICK``, figure options) are left alone, so a
        notebook can call ``ExperimentConfig.from_namespace(globals())`` after its parameters cell.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{
            key.lower(): value
            for key, value in namespace.items()
            if key.isupper() and key.lower() in known
        })

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
        return Path(self.run_dir) if self.run_dir else paths.RUNS_ROOT / self.name

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


def count_pairs(config: ExperimentConfig) -> int:
    """How many image/mask pairs ``config`` loads: the pairs in its data folders, at most ``limit``."""
    from lunghelpers import data

    n_pairs = len(data.find_pairs(*data_folders(config)))
    return n_pairs if config.limit is None else min(config.limit, n_pairs)


def prepare_data(config: ExperimentConfig, progress: bool = True) -> Splits:
    """Load, normalise and split the data as ``config`` says.

    Applies, in this order: the split (seeded shuffle only when ``shuffle_split``), the poster's
    training-set size (the first ``train_size`` training images), and the poster's Gaussian noise on a
    seeded fraction of the training and/or validation images. Evaluation sets never get noise
    unless ``val_noise_fraction`` asks for it.
    """
    from lunghelpers import augment, data

    image_dir, mask_dir = data_folders(config)
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
    """Training pipeline (shuffled, repeated, augmented) and a plain validation pipeline."""
    from lunghelpers import augment

    augment_config = augment.get_config(config.augment)
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


def steps_per_epoch(config: ExperimentConfig, splits: Splits) -> int:
    """The source's ``training images // batch size`` (at least one step)."""
    if config.steps_per_epoch:
        return int(config.steps_per_epoch)
    return max(1, len(splits.train.images) // config.batch_size)


def training_arguments(config: ExperimentConfig, splits: Splits) -> dict:
    """The keyword arguments of ``train.train`` for ``config``: one definition for every notebook.

    Holds the run folder, the number of epochs, ``steps_per_epoch``, the loss, the metrics, the
    optimizer, the schedule's callbacks, the threshold and the parameters to record. Call
    ``train.train(model, train_ds, val_ds, **training_arguments(config, splits))``; the training
    notebook prints this dict so the student sees what ``compile`` and ``fit`` receive.
    """
    from lunghelpers import losses, metrics, schedules, train

    return {
        "run_dir": config.run_path,
        "epochs": config.epochs,
        "steps_per_epoch": steps_per_epoch(config, splits),
        "loss": losses.get_loss(config.loss, n_classes=config.n_classes),
        "metrics": metrics.training_metrics(config.n_classes, threshold=config.threshold),
        "threshold": config.threshold,
        "learning_rate": config.learning_rate,
        "optimizer": train.make_optimizer(
            config.optimizer,
            config.learning_rate,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            clipnorm=config.clipnorm,
        ),
        "callbacks": schedules.callbacks(config.schedule, config.epochs, config.learning_rate),
        "params": config.to_dict(),
        "overwrite": config.overwrite,
        "resume": config.resume,
    }


def train_experiment(config: ExperimentConfig, splits: Splits | None = None, verbose: int | str = "auto"):
    """Train the configured model and write a complete run folder; returns the history DataFrame.

    The run folder receives ``params.json``, ``history.csv``, ``model.keras`` (best validation loss),
    ``metrics.json`` (training figures plus the held-out evaluation), ``per_image.csv`` and the
    learning-curve figure. An existing finished run is refused unless ``overwrite`` or ``resume``.
    """
    import keras

    from lunghelpers import evaluate, plots, train

    keras.utils.set_random_seed(config.seed)
    train.set_precision(config.mixed_precision)
    try:
        splits = splits if splits is not None else prepare_data(config)
        model = build_model(config)
        train_ds, val_ds = make_datasets(config, splits)
        history = train.train(
            model, train_ds, val_ds, **training_arguments(config, splits), verbose=verbose
        )
        split_name, held_out = splits.evaluation
        evaluate.evaluate_run(
            config.run_path,
            held_out.images,
            held_out.masks,
            held_out.names,
            batch_size=config.batch_size,
            split=split_name,
        )
        figure = plots.learning_curves(history)
        plots.save_figure(figure, config.run_path / "figures" / "learning_curves.png")
    finally:
        train.set_precision(False)
    return history


#: Parameters that decide which images a run's held-out split holds and how they look.
DATA_PARAMETERS = (
    "dataset",
    "data_dir",
    "image_size",
    "split",
    "shuffle_split",
    "seed",
    "limit",
    "mask_mode",
    "normalization",
    "val_noise_fraction",
    "noise_sigma",
)


def check_run_data(config: ExperimentConfig, run_path: str | Path) -> None:
    """Raise ``ValueError`` if the run in ``run_path`` was trained on other data than ``config``'s.

    Compares the ``DATA_PARAMETERS`` of ``config`` with those recorded in the run's
    ``params.json`` (e.g. a run trained at full size evaluated by a notebook in quick mode).
    """
    from lunghelpers import train

    recorded = train.read_json(Path(run_path) / "params.json").get("params", {})
    wanted = config.to_dict()
    differing = {
        name: (recorded[name], wanted[name])
        for name in DATA_PARAMETERS
        if name in recorded and recorded[name] != wanted[name]
    }
    if differing:
        details = ", ".join(f"{name}: run {old!r}, here {new!r}" for name, (old, new) in differing.items())
        raise ValueError(
            f"The run in {run_path} was trained on other data than these parameters describe "
            f"({details}). Use the parameters the run was trained with (see its params.json), "
            "or another RUN_DIR/NAME to train a new run."
        )


def ensure_run(config: ExperimentConfig, verbose: int | str = "auto") -> Path:
    """Return the run folder, training it first if it has no finished model yet.

    This is what lets the evaluation and gallery notebooks run on their own: given the folder the
    training notebook wrote they only read it; given an empty path they train the same
    configuration first (and say so).

    A finished run must have been trained on the data ``config`` describes (the parameters in
    ``DATA_PARAMETERS``, as recorded in its ``params.json``): otherwise the notebook would score
    the model on other images, or on images of the wrong size, so a ``ValueError`` names the
    parameters that differ.
    """
    run_path = config.run_path
    if (run_path / "metrics.json").exists() and (run_path / "model.keras").exists():
        check_run_data(config, run_path)
        return run_path
    print(f"No finished run in {run_path}: training it now with these parameters.")
    train_experiment(config, verbose=verbose)
    return run_path


#: Parameters that only say how to treat an existing run folder, not what the run is.
RUN_HANDLING_PARAMETERS = ("overwrite", "resume")


def variant(config: ExperimentConfig, name: str, **changes) -> ExperimentConfig:
    """One run of a comparison: ``config`` with ``changes``, in the sub-folder ``name`` of its run folder.

    The lab and robustness notebooks train several runs (``variant(config, "1b", loss="dice")``)
    side by side under one run folder, so a notebook's ``RUN_DIR`` holds all of its runs.
    """
    return dataclasses.replace(config, name=name, run_dir=str(config.run_path / name), **changes)


def train_or_reuse(config: ExperimentConfig, verbose: int | str = "auto") -> bool:
    """Train ``config``'s run unless its folder already holds a finished run of the same parameters.

    Re-running a notebook then reuses its runs instead of training them again. A finished run
    trained with other parameters (e.g. in quick mode) is never reused silently: it raises
    ``ValueError`` naming the differences, unless ``config.overwrite`` is set, which moves the old
    run aside and trains anew. Returns True when it trained, False when it reused the run.
    """
    from lunghelpers import train

    run = train.RunFolder(config.run_path)
    if run.metrics_path.exists() and run.model_path.exists() and not config.overwrite:
        recorded = train.read_json(run.params_path).get("params", {})
        wanted = json.loads(json.dumps(config.to_dict()))
        differing = {
            name: (recorded.get(name), value)
            for name, value in wanted.items()
            if name not in RUN_HANDLING_PARAMETERS and recorded.get(name) != value
        }
        if differing:
            details = ", ".join(f"{name}: run {old!r}, here {new!r}" for name, (old, new) in differing.items())
            raise ValueError(
                f"{run.path} holds a finished run with other parameters ({details}). Set "
                "OVERWRITE = True to move it aside and train again, or choose another NAME/RUN_DIR."
            )
        print(f"Reusing the finished run in {run.path} (same parameters).")
        return False
    train_experiment(config, verbose=verbose)
    return True
