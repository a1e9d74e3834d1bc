"""Training runs: compile, fit and record everything in a run folder.

A run folder is the unit of state of the kit (see DESIGN.md). ``train`` writes:

- ``params.json``: every parameter of the run, the library versions, the precision policy, the
  seed and the devices it ran on;
- ``history.csv``: one row per epoch (loss, every metric, ``learning_rate``, ``seconds``);
- ``model.keras``: the model of the epoch with the lowest validation loss;
- ``checkpoint.keras`` and ``state.json``: the latest epoch's model and optimizer state, so an
  interrupted run can resume where it stopped;
- ``metrics.json``: the final and best figures (``lunghelpers.evaluate`` later adds the test ones).

Every file is written atomically: to a temporary file in the same folder, then renamed over the
old one with ``os.replace``, so a crash never leaves a half-written file behind. An existing run
is never overwritten unless ``overwrite=True`` is passed, and even then it is moved aside.
"""

import contextlib
import datetime
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lunghelpers import losses
from lunghelpers import metrics as metric_library

PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
DEFAULT_LEARNING_RATE = 1e-3


def set_precision(mixed_precision=False):
    """Set Keras's global dtype policy and return its name.

    Mixed precision computes layers in 16-bit floats while keeping the weights in float32; on a
    CPU with bf16 support ``mixed_bfloat16`` trains 1.7-3x faster (``benchmarks/bench_training.py``).
    The models of ``lunghelpers.models`` keep their final activation in float32, so probabilities
    and losses stay accurate.
    Call this *before* building the model: a layer takes the policy that is global when it is
    created. Leave it off (the default) when reproducing the SPEC's numbers.

    Args:
        mixed_precision: ``False``, ``None`` or ``"float32"`` for full precision; ``True`` or
            ``"mixed_bfloat16"`` for bfloat16; ``"mixed_float16"`` for float16 (GPUs).

    Returns:
        The name of the policy now in force.
    """
    if mixed_precision is None or mixed_precision is False:
        policy = "float32"
    elif mixed_precision is True:
        policy = "mixed_bfloat16"
    elif mixed_precision in PRECISION_POLICIES:
        policy = mixed_precision
    else:
        raise ValueError(
            f"mixed_precision must be True, False or one of {PRECISION_POLICIES}, "
            f"got {mixed_precision!r}."
        )
    keras.mixed_precision.set_global_policy(policy)
    return policy


def set_seed(seed, deterministic_ops=False):
    """Seed Python, NumPy and TensorFlow so that the same seed gives the same numbers.

    Call it before building the model (the seed fixes the initial weights) and before making
    the datasets (it fixes shuffling and augmentation draws that take no explicit seed). On the
    CPU this is enough for identical losses run after run (tested). On a GPU some kernels
    (e.g. convolution backward passes) are non-deterministic; ``deterministic_ops=True`` asks
    TensorFlow for deterministic ones, for the whole process and at some cost in speed. Results
    still differ across hardware and library versions.
    """
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def atomic_path(path):
    """Give a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file lives in the same folder (so ``os.replace`` is an atomic rename on the
    same file system) and keeps the suffix of ``path`` (so ``model.save`` and ``savefig`` see
    ``.keras`` or ``.png``). If the block raises, the temporary file is removed and ``path``
    keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}-", suffix=f".tmp{path.suffix}"
    )
    os.close(handle)
    temporary_path = Path(temporary_name)
    try:
        yield temporary_path
        temporary_path.chmod(0o644)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def _to_json_value(value):
    """Turn NumPy scalars/arrays and paths into plain JSON values (``json.dumps`` default)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def write_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, default=_to_json_value)
    with atomic_path(path) as temporary_path:
        temporary_path.write_text(text + "\n", encoding="utf-8")


def read_json(path):
    """Read a JSON file written by ``write_json``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path, frame):
    """Write a pandas DataFrame to CSV at ``path`` atomically (no index column)."""
    with atomic_path(path) as temporary_path:
        frame.to_csv(temporary_path, index=False)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, by name, so no module spells a file name twice."""

    path: Path

    @property
    def name(self):
        return self.path.name

    @property
    def params_path(self):
        return self.path / "params.json"

    @property
    def history_path(self):
        return self.path / "history.csv"

    @property
    def model_path(self):
        return self.path / "model.keras"

    @property
    def metrics_path(self):
        return self.path / "metrics.json"

    @property
    def per_image_path(self):
        return self.path / "per_image.csv"

    @property
    def figures_dir(self):
        return self.path / "figures"

    @property
    def checkpoint_path(self):
        return self.path / "checkpoint.keras"

    @property
    def state_path(self):
        return self.path / "state.json"

    def has_results(self):
        """True when the folder holds a trained model or metrics, i.e. work that must not be lost."""
        return self.model_path.exists() or self.metrics_path.exists()

    def update_metrics(self, new_metrics):
        """Merge ``new_metrics`` into ``metrics.json`` (existing keys are kept unless replaced)."""
        merged = read_json(self.metrics_path) if self.metrics_path.exists() else {}
        merged.update(new_metrics)
        write_json(self.metrics_path, merged)
        return merged


def environment():
    """Describe where a run executes: library versions, platform and devices.

    Results vary across hardware (CPU vs GPU kernels, thread counts) and library versions even
    with the same seed, so every run folder records them.
    """
    devices = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device)
        devices.append(f"{device.device_type}: {details.get('device_name', device.name)}")
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "backend": keras.backend.backend(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": devices,
    }


def _timestamp():
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _move_aside(path):
    """Rename ``path`` to ``<name>.old-<timestamp>`` (with a counter if that exists) and return it."""
    aside = path.with_name(f"{path.name}.old-{_timestamp()}")
    counter = 2
    while aside.exists():
        aside = path.with_name(f"{path.name}.old-{_timestamp()}-{counter}")
        counter += 1
    path.rename(aside)
    return aside


def create_run(run_dir, params, overwrite=False, resume=False, training=None):
    """Create (or reopen for resuming) a run folder and write its ``params.json``.

    Rules, so that no finished work is ever lost:

    - a new or empty folder (or one without ``model.keras``/``metrics.json``, e.g. holding only
      an executed notebook) is used as it is;
    - ``resume=True`` and a ``state.json`` present: the folder is reopened, ``params.json`` keeps
      its content and gains a record of the resumption;
    - a folder holding a run (``model.keras`` or ``metrics.json``) raises ``FileExistsError``
      unless ``overwrite=True``, which renames the old folder to ``<name>.old-<timestamp>``
      (nothing is deleted) and starts afresh.

    Args:
        run_dir: the run folder, e.g. ``RUNS_ROOT / "ct-assignment"``.
        params: the run's parameters (a notebook's parameters cell), any JSON-serialisable dict.
        overwrite: move an existing run aside instead of refusing.
        resume: reopen an interrupted run.
        training: optional dict of the training settings (``train`` passes its own).

    Returns:
        The ``RunFolder``.
    """
    if overwrite and resume:
        raise ValueError("Pass either overwrite=True or resume=True, not both.")
    run = RunFolder(Path(run_dir))
    if resume and run.state_path.exists():
        record = read_json(run.params_path)
        record.setdefault("resumed_at", []).append(datetime.datetime.now().isoformat())
        write_json(run.params_path, record)
        return run
    if run.has_results():
        if resume:
            raise FileExistsError(
                f"Run folder {run.path} holds a run without state.json, so it cannot be "
                f"resumed; pass overwrite=True to move it aside to {run.name}.old-<timestamp>."
            )
        if not overwrite:
            raise FileExistsError(
                f"Run folder {run.path} already holds a run (model.keras or metrics.json). "
                "Pass overwrite=True to move it aside to "
                f"{run.name}.old-<timestamp> and start again, or resume=True to continue an "
                "interrupted run."
            )
        _move_aside(run.path)
    run.figures_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run": run.name,
        "created_at": datetime.datetime.now().isoformat(),
        "params": dict(params or {}),
        "training": dict(training or {}),
        "precision_policy": keras.mixed_precision.global_policy().name,
        "environment": environment(),
    }
    write_json(run.params_path, record)
    return run


def make_optimizer(name="adam", learning_rate=DEFAULT_LEARNING_RATE, weight_decay=None,
                   momentum=None, clipnorm=None):
    """Build a Keras optimizer by name.

    - ``"adam"``: the CT assignment and the lab (default rate 1e-3, lab 1e-4);
    - ``"rmsprop"``: the poster, with ``momentum``, ``weight_decay`` (decoupled: each step
      ``w <- w - learning_rate * weight_decay * w``) and ``clipnorm`` (each gradient rescaled
      so its L2 norm is at most ``clipnorm``);
    - ``"sgd"``: plain (momentum) gradient descent for comparison.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    options = {"learning_rate": learning_rate, "weight_decay": weight_decay, "clipnorm": clipnorm}
    if name == "adam":
        if momentum is not None:
            raise ValueError("momentum is not a parameter of Adam; use 'rmsprop' or 'sgd'.")
        return keras.optimizers.Adam(**options)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(momentum=momentum or 0.0, **options)
    return keras.optimizers.SGD(momentum=momentum or 0.0, **options)


def _check_steps(data, steps, data_name, steps_name):
    """Refuse an endless tf.data Dataset without a number of steps (fit would never end an epoch)."""
    if (
        steps is None
        and isinstance(data, tf.data.Dataset)
        and data.cardinality() == tf.data.INFINITE_CARDINALITY
    ):
        raise ValueError(
            f"{data_name} is a tf.data.Dataset that repeats forever; pass {steps_name} "
            "(e.g. number of images // batch size) so Keras knows where an epoch ends."
        )


def _check_optimizer_options(optimizer, learning_rate, weight_decay, momentum, clipnorm):
    """Refuse options that an optimizer object would silently ignore.

    With an optimizer object, ``learning_rate`` may still be given (it is recorded), but it must
    equal the optimizer's own rate; the other options belong on the object.
    """
    if any(option is not None for option in (weight_decay, momentum, clipnorm)):
        raise ValueError(
            "weight_decay, momentum and clipnorm apply to a named optimizer; set them on the "
            f"{type(optimizer).__name__} object you passed instead."
        )
    if learning_rate is not None:
        own_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if not math.isclose(own_rate, learning_rate, rel_tol=1e-6):
            raise ValueError(
                f"learning_rate={learning_rate} differs from the rate {own_rate} of the "
                f"{type(optimizer).__name__} object passed as optimizer; give the rate once."
            )


def _name_of(value):
    """A readable name for a loss or optimizer given as a string or an object."""
    if isinstance(value, str):
        return value
    return getattr(value, "__name__", None) or getattr(value, "name", None) or type(value).__name__


def summarize_history(history, threshold=0.5):
    """Final and best figures of a training history, the training part of ``metrics.json``.

    Final figures are the last epoch's: ``train_<metric>`` for training columns (``loss`` ->
    ``train_loss``, ``dice`` -> ``train_dice``) and ``val_<metric>`` as logged. The best epoch is
    the one with the lowest validation loss (the epoch saved as ``model.keras``); ``best_<val
    metric>`` are that epoch's values. Epochs count from 0, as Keras logs them.
    """
    if history.empty:
        raise ValueError("history has no epochs; nothing to summarise.")
    last = history.iloc[-1]
    summary = {}
    for column in history.columns:
        if column in ("epoch", "seconds"):
            continue
        if column == "learning_rate":
            summary["final_learning_rate"] = float(last[column])
        elif column.startswith("val_"):
            summary[column] = float(last[column])
        else:
            summary[f"train_{column}"] = float(last[column])
    if "val_loss" in history and history["val_loss"].notna().any():
        best = history.loc[history["val_loss"].idxmin()]
        summary["best_epoch"] = int(best["epoch"])
        for column in history.columns:
            if column.startswith("val_"):
                summary[f"best_{column}"] = float(best[column])
    summary["epochs_completed"] = int(len(history))
    summary["threshold"] = threshold
    if "seconds" in history:
        summary["seconds_per_epoch"] = float(history["seconds"].mean())
    return summary


class RunRecorder(keras.callbacks.Callback):
    """Record each finished epoch in the run folder, atomically and in a crash-safe order.

    At the end of every epoch: save ``model.keras`` if the validation loss improved, save
    ``checkpoint.keras`` (model and optimizer state), rewrite ``history.csv``, and last write
    ``state.json``, which marks the epoch as done. A run killed between two of these steps
    resumes from the last epoch that ``state.json`` names.
    """

    def __init__(self, run, epochs, rows=(), best_val_loss=math.inf, best_epoch=None):
        super().__init__()
        self.run = run
        self.epochs = epochs
        self.rows = list(rows)
        self.best_val_loss = best_val_loss
        self.best_epoch = best_epoch
        self.started = None
        self.learning_rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch}
        row.update({key: float(value) for key, value in logs.items()})
        row["learning_rate"] = float(logs.get("learning_rate", self.learning_rate))
        row["seconds"] = time.perf_counter() - self.started
        val_loss = row.get("val_loss", math.nan)
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_epoch = epoch
            with atomic_path(self.run.model_path) as temporary_path:
                self.model.save(temporary_path)
        with atomic_path(self.run.checkpoint_path) as temporary_path:
            self.model.save(temporary_path)
        self.rows.append(row)
        write_csv(self.run.history_path, pd.DataFrame(self.rows))
        write_json(
            self.run.state_path,
            {
                "last_epoch": epoch,
                "epochs": self.epochs,
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss,
            },
        )


def _restore(model, run):
    """Load the checkpoint (weights and optimizer state) of an interrupted run into ``model``.

    Returns the history rows and the best validation loss/epoch recorded so far. History rows
    after the last epoch of ``state.json`` (written before a crash finished the epoch) are
    dropped, so each epoch appears once.
    """
    state = read_json(run.state_path)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(run.checkpoint_path)
    history = pd.read_csv(run.history_path)
    history = history[history["epoch"] <= state["last_epoch"]]
    return state, history.to_dict("records")


def train(model, train_data, validation_data, *, run_dir, epochs, steps_per_epoch=None,
          validation_steps=None, loss, learning_rate=None, optimizer="adam",
          weight_decay=None, momentum=None, clipnorm=None, metrics=None, threshold=0.5,
          callbacks=(), params=None, seed=None, overwrite=False, resume=False, verbose=2):
    """Compile and fit ``model``, writing a complete run folder; return the history.

    The run folder (see the module docstring) gets ``params.json`` first, then after every epoch
    ``history.csv``, ``model.keras`` (best validation loss), ``checkpoint.keras`` and
    ``state.json``, and at the end ``metrics.json`` (see ``summarize_history``).

    Resuming: rebuild the same model, call ``train`` again with the same arguments and
    ``resume=True``. If the folder has a ``state.json``, the weights and optimizer state of the
    last finished epoch are loaded and fitting continues at the next epoch up to ``epochs``, so
    the run ends with as many epochs as an uninterrupted one and ``history.csv`` lists each epoch
    once. The random stream and callback state (e.g. ReduceLROnPlateau's patience counter) are
    not restored, so a resumed run is close to, not identical to, an uninterrupted one.

    Args:
        model: a built Keras model (``lunghelpers.models``); set the precision policy with
            ``set_precision`` before building it.
        train_data: a ``tf.data.Dataset`` (or Keras ``PyDataset``) of (image, target) batches,
            e.g. from ``augment.make_dataset``.
        validation_data: a dataset like ``train_data`` or an (images, targets) tuple of arrays;
            the best model is chosen by its loss.
        run_dir: the run folder.
        epochs: total number of epochs of the run.
        steps_per_epoch: batches per epoch; required when ``train_data`` repeats forever
            (the source uses training images // batch size).
        validation_steps: batches per validation pass; required when ``validation_data``
            repeats forever.
        loss: a name for ``losses.get_loss`` ("bce", "dice", "bce_dice", "cce",
            "multiclass_dice", "generalized_dice", "ce_dice") or a loss callable.
        learning_rate: initial rate for a named optimizer (default 1e-3, Adam's default).
        optimizer: "adam", "rmsprop" or "sgd" (see ``make_optimizer``), or a Keras optimizer
            (then leave weight_decay, momentum and clipnorm unset; a learning_rate given too
            must equal the optimizer's).
        weight_decay, momentum, clipnorm: options of a named optimizer (the poster's RMSprop).
        metrics: metrics for compile; default ``metrics.training_metrics(n_classes, threshold)``
            with n_classes read from the model's output.
        threshold: the probability threshold of the default metrics, recorded in metrics.json.
        callbacks: extra Keras callbacks (e.g. ``schedules.callbacks(...)``).
        params: the notebook's parameters, recorded in ``params.json``.
        seed: if given, ``keras.utils.set_random_seed(seed)`` before fitting (shuffling,
            dropout); seed the model's initial weights with ``set_seed`` before building it.
        overwrite: move an existing finished run aside (``<name>.old-<timestamp>``) and start anew.
        resume: continue an interrupted run (see above).
        verbose: Keras's verbosity; 2 prints one line per epoch, readable in executed notebooks.

    Returns:
        pandas DataFrame with one row per epoch of the whole run: ``epoch``, ``loss``, the
        metrics, their ``val_`` versions, ``learning_rate`` and ``seconds``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if validation_data is None:
        raise ValueError("validation_data is required: the best model is chosen by validation loss.")
    _check_steps(train_data, steps_per_epoch, "train_data", "steps_per_epoch")
    _check_steps(validation_data, validation_steps, "validation_data", "validation_steps")

    n_classes = int(model.output_shape[-1])
    loss_function = losses.get_loss(loss, n_classes=n_classes) if isinstance(loss, str) else loss
    if isinstance(optimizer, str):
        optimizer = make_optimizer(
            optimizer,
            learning_rate=DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate,
            weight_decay=weight_decay,
            momentum=momentum,
            clipnorm=clipnorm,
        )
    else:
        _check_optimizer_options(optimizer, learning_rate, weight_decay, momentum, clipnorm)
    if metrics is None:
        metrics = metric_library.training_metrics(n_classes, threshold=threshold)

    training = {
        "model": model.name,
        "model_parameters": int(model.count_params()),
        "n_classes": n_classes,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "validation_steps": validation_steps,
        "loss": _name_of(loss),
        "optimizer": keras.optimizers.serialize(optimizer),
        "metrics": [_name_of(metric) for metric in metrics],
        "threshold": threshold,
        "callbacks": [type(callback).__name__ for callback in callbacks],
        "seed": seed,
    }
    run = create_run(run_dir, params, overwrite=overwrite, resume=resume, training=training)

    model.compile(optimizer=optimizer, loss=loss_function, metrics=metrics)
    if resume and run.state_path.exists():
        state, rows = _restore(model, run)
        initial_epoch = state["last_epoch"] + 1
        recorder = RunRecorder(run, epochs, rows, state["best_val_loss"], state["best_epoch"])
    else:
        initial_epoch = 0
        recorder = RunRecorder(run, epochs)

    if initial_epoch < epochs:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            callbacks=[*callbacks, recorder],
            # A dataset shuffles itself (augment.make_dataset); Keras would only warn.
            shuffle=False,
            verbose=verbose,
        )
    history = pd.DataFrame(recorder.rows)
    run.update_metrics(summarize_history(history, threshold=threshold))
    return history
