"""Run folders, and the callbacks that fill them while ``model.fit`` trains.

A run folder (``runs/<name>/``) is the unit of state of the kit. The training notebook (05)
creates it with :func:`open_run`, compiles the model and passes these callbacks to ``model.fit``:

- ``AtomicModelCheckpoint`` (Keras's ``ModelCheckpoint``, written atomically) keeps
  ``model.keras``, the epoch with the lowest validation loss: the only model file of a finished run;
- ``keras.callbacks.CSVLogger`` appends one row per epoch to ``history.csv`` (Keras's ``epoch``
  column counts from 0; people read epochs from 1, as Keras prints them);
- ``keras.callbacks.BackupAndRestore`` keeps ``backup/`` (weights, optimizer state, epoch) while
  the run is unfinished, so a run killed mid-epoch continues from its last finished epoch, and
  deletes it at the end;
- :class:`RunLog` adds each epoch's seconds to the logs and writes ``metrics.json`` at the end.

``params.json`` (parameters, library versions, machine) is written first. The kit's own files are
written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves half a file; an earlier run is never overwritten or deleted.
"""

import contextlib
import contextlib
import datetime
import json
import math
import os
import platform
import tempfile
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lunghelpers import models  # noqa: F401  (registers FusedBatchNormalization for load_model)


PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
DEFAULT_LEARNING_RATE = 1e-3


def bfloat16_is_fast(cpu_flags=None, gpus=None) -> bool:
    """Whether this machine computes ``mixed_bfloat16`` faster than float32.

    True with a GPU, or on a CPU with AMX tiles (``amx_bf16`` in ``/proc/cpuinfo``: oneDNN then
    multiplies bfloat16 matrices in them). A CPU with AVX512-BF16 alone is not enough: its
    bfloat16 dot products do no more multiply-adds a cycle than its two float32 FMA units, and
    the conversions come on top, so there training in bfloat16 is slower (measured with
    ``benchmarks/bench_training.py``).

    Args:
        cpu_flags: the CPU's feature flags; ``None`` reads them from ``/proc/cpuinfo`` (none
            where there is no such file).
        gpus: the GPUs TensorFlow sees; ``None`` asks TensorFlow.
    """
    if gpus is None:
        gpus = tf.config.list_physical_devices("GPU")
    if cpu_flags is None:
        cpu_flags = read_cpu_flags()
    return bool(gpus) or "amx_bf16" in cpu_flags


def read_cpu_flags() -> set:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``, ...); empty elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def precision_policy(mixed_precision=False) -> str:
    """The name of the Keras dtype policy that ``MIXED_PRECISION`` stands for on this machine.

    Args:
        mixed_precision: ``False``, ``None`` or ``"float32"`` for full precision; ``True`` or
            ``"mixed_bfloat16"`` for bfloat16; ``"mixed_float16"`` for float16 (GPUs);
            ``"auto"`` for bfloat16 where :func:`bfloat16_is_fast`, float32 elsewhere.
    """
    if mixed_precision is None or mixed_precision is False:
        return "float32"
    if mixed_precision is True:
        return "mixed_bfloat16"
    if mixed_precision == "auto":
        return "mixed_bfloat16" if bfloat16_is_fast() else "float32"
    if mixed_precision in PRECISION_POLICIES:
        return mixed_precision
    raise ValueError(
        f"mixed_precision must be True, False, 'auto' or one of {PRECISION_POLICIES}, "
        f"got {mixed_precision!r}."
    )


def set_precision(mixed_precision=False):
    """Set Keras's global dtype policy and return its name.

    Mixed precision computes layers in 16-bit floats while keeping the weights in float32. Whether
    that is faster depends on the hardware: ``mixed_bfloat16`` trains about twice as fast on a GPU
    or a CPU with AMX, and slower on a CPU with AVX512-BF16 alone (see :func:`bfloat16_is_fast`;
    ``"auto"`` chooses by it). The models of ``lunghelpers.models`` keep their final activation in
    float32, so probabilities and losses stay accurate.
    Call this *before* building the model: a layer takes the policy that is global when it is
    created. Leave it off (the default) when reproducing the source's numbers.

    Args:
        mixed_precision: as for :func:`precision_policy`.

    Returns:
        The name of the policy now in force.
    """
    policy = precision_policy(mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def distribution_strategy(distribute=False):
    """The ``tf.distribute`` strategy to build, compile and fit a model under.

    ``distribute=False``: Keras's default strategy (one device, nothing changes).
    ``distribute=True``: ``tf.distribute.MirroredStrategy`` over every GPU, each batch split
    between them. On a machine without a GPU, ``LUNGHELPERS_LOGICAL_CPUS=N`` in the environment
    splits the CPU into N logical devices first, so the same path can be tried (and tested) there;
    it must be called before TensorFlow has placed any tensor.
    """
    if not distribute:
        return tf.distribute.get_strategy()
    logical = int(os.environ.get("LUNGHELPERS_LOGICAL_CPUS", "0") or 0)
    if logical > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)
        return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    return tf.distribute.MirroredStrategy()


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
    def backup_dir(self):
        """``keras.callbacks.BackupAndRestore``'s folder: present only while a run is unfinished."""
        return self.path / "backup"

    def has_results(self):
        """True when the folder holds a trained model or metrics, i.e. work that must not be lost."""
        return self.model_path.exists() or self.metrics_path.exists()

    def params(self):
        """The run's parameters, as recorded in ``params.json``."""
        return read_json(self.params_path)["params"]

    def read_history(self):
        """``history.csv`` as a DataFrame (see :func:`read_history`)."""
        return read_history(self)

    @property
    def finished(self):
        """True when the run trained all its epochs: a model, metrics, no backup left to resume from."""
        if not (self.model_path.exists() and self.metrics_path.exists()) or self.backup_dir.exists():
            return False
        completed = read_json(self.metrics_path).get("epochs_completed", 0)
        return completed >= self.params().get("epochs", math.inf)

    @property
    def initial_epoch(self):
        """Where ``model.fit`` starts: all epochs for a finished run (it trains nothing), else 0.

        An interrupted run also passes 0: ``BackupAndRestore`` then moves the start to the epoch
        after the last one it backed up.
        """
        return int(self.params()["epochs"]) if self.finished else 0

    @property
    def best_val_loss(self):
        """The lowest validation loss in ``history.csv`` so far (``None`` before the first epoch).

        Passed to ``ModelCheckpoint(initial_value_threshold=...)`` so that a continued run only
        replaces ``model.keras`` with a better epoch.
        """
        history = self.read_history()
        if history.empty or "val_loss" not in history:
            return None
        return float(history["val_loss"].min())

    def update_metrics(self, new_metrics):
        """Merge ``new_metrics`` into ``metrics.json`` (existing keys are kept unless replaced)."""
        merged = read_json(self.metrics_path) if self.metrics_path.exists() else {}
        definitions = {**merged.get("definitions", {}), **new_metrics.get("definitions", {})}
        merged.update(new_metrics)
        if definitions:
            merged["definitions"] = definitions
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


class RunParametersError(ValueError):
    """A run folder already holds a run with other parameters than the ones given."""


#: Entries of ``params`` that say where a run lives, not what it is: never compared.
LOCATION_PARAMETERS = ("name", "run_dir")


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists, NumPy scalars numbers)."""
    return json.loads(json.dumps(value, default=_to_json_value))


def _remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a kill interrupted (``.<stem>-*.tmp<suffix>``)."""
    for stale in Path(folder).glob(".*-*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def differences(recorded, params):
    """``{name: (recorded value, new value)}`` for the parameters that differ (location ones aside).

    A training parameter that a run's ``params.json`` lacks because it was added to the kit later
    counts as recorded with its default value, so an older run stays the same run.
    """
    from lunghelpers.experiment import ExperimentConfig

    defaults = _plain({field.name: getattr(ExperimentConfig(), field.name) for field in dataclasses.fields(ExperimentConfig)})
    recorded, params = _plain(recorded), _plain(params)
    recorded = {**{key: defaults[key] for key in params if key in defaults and key not in recorded}, **recorded}
    return {
        key: (recorded.get(key), params.get(key))
        for key in sorted(set(recorded) | set(params))
        if key not in LOCATION_PARAMETERS and recorded.get(key) != params.get(key)
    }


def open_run(run_dir, params, name_parameter="NAME"):
    """Create the run folder ``run_dir`` for a run with ``params``, or reopen it for the same run.

    The rules, which make "run the notebook again" just work and never lose a result:

    - a folder without ``params.json`` is new: it is created and ``params.json`` is written
      (parameters, library versions, machine). A folder that holds a model or metrics but no
      ``params.json`` is refused: it is not a run folder of this kit;
    - a folder whose ``params.json`` records the same parameters is reopened as it is: a finished
      run is reused (``RunFolder.initial_epoch`` is its number of epochs, so ``fit`` trains
      nothing), an interrupted one continues from its last finished epoch
      (``keras.callbacks.BackupAndRestore`` in the training notebook);
    - an interrupted run may be continued with a larger ``epochs`` (recorded in ``params.json``);
    - any other difference raises :class:`RunParametersError` naming the parameters that differ
      and ``name_parameter``, the notebook parameter that gives a new run its own folder.

    ``name`` and ``run_dir`` are not compared (a moved folder is the same run). Temporary files
    left by an interrupted write are removed.
    """
    run = RunFolder(Path(run_dir).expanduser().resolve())
    params = _plain(dict(params or {}))
    policy = precision_policy(params.get("mixed_precision"))  # refuses a bad value before any file is written
    if run.path.exists() and not run.path.is_dir():
        raise NotADirectoryError(f"Run folder {run.path} is a file, not a folder.")
    if run.path.is_dir():
        _remove_stale_temporaries(run.path)
    if not run.params_path.exists():
        if run.has_results():
            raise RunParametersError(
                f"{run.path} holds a model or metrics but no params.json, so it is not a run folder of "
                f"this kit; set {name_parameter} (or RUN_DIR) to train in another folder."
            )
        run.figures_dir.mkdir(parents=True, exist_ok=True)
        write_json(run.params_path, {
            "run": run.name,
            "created_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "params": params,
            "precision_policy": policy,
            "environment": environment(),
        })
        return run
    try:
        record = read_json(run.params_path)
        recorded = record["params"]
    except (ValueError, KeyError, TypeError) as error:
        raise RunParametersError(
            f"{run.params_path} is damaged ({error}); move the folder away or set {name_parameter} "
            "to train in another folder."
        ) from error
    differing = differences(recorded, params)
    longer = (
        set(differing) == {"epochs"}
        and not run.finished
        and isinstance(params.get("epochs"), int)
        and params["epochs"] > recorded.get("epochs", 0)
    )
    if longer:
        record["params"]["epochs"] = params["epochs"]
        record.setdefault("continued", []).append(
            {"at": datetime.datetime.now().isoformat(timespec="seconds"), "epochs": params["epochs"]}
        )
        write_json(run.params_path, record)
    elif differing:
        details = "; ".join(f"{key.upper()}: {old!r} there, {new!r} here" for key, (old, new) in differing.items())
        advice = (f"Set {name_parameter} to a new name (or RUN_DIR to another folder)" if name_parameter == "NAME"
                  else f"Set {name_parameter} to another folder")
        raise RunParametersError(
            f"{run.path} holds a run with other parameters ({details}). Nothing was changed. "
            f"{advice} to train this one beside it."
        )
    _check_backup(run)
    return run


def _check_backup(run):
    """Refuse to continue from a damaged ``BackupAndRestore`` backup, naming the file and what to do.

    Keras keeps a copy of the previous epoch's backup (``double_checkpoint``) and falls back to it,
    so only a backup whose both copies are unreadable stops here.
    """
    if not run.backup_dir.is_dir():
        return
    import h5py

    def readable(weights, metadata):
        try:
            with h5py.File(weights, "r"):
                pass
            json.loads(Path(metadata).read_text())
            return True
        except (OSError, ValueError):
            return False

    latest = (run.backup_dir / "latest.weights.h5", run.backup_dir / "training_metadata.json")
    previous = tuple(path.with_name(path.name + ".bkp") for path in latest)
    if not any(path.exists() for path in latest + previous):
        return
    if not (readable(*latest) or readable(*previous)):
        raise RunParametersError(
            f"The backup of the interrupted run in {run.backup_dir} is damaged ({latest[0].name} or "
            f"{latest[1].name} cannot be read). Move {run.backup_dir} away to train the run again from "
            "epoch 1 (history.csv and model.keras stay), or set NAME to train a new run beside it."
        )


def read_history(run):
    """``history.csv`` of ``run`` as a DataFrame, each epoch once (Keras's ``epoch`` counts from 0).

    A run killed between writing an epoch's row and backing the epoch up repeats that epoch when it
    continues; the later row is kept.
    """
    path = RunFolder(Path(run.path if isinstance(run, RunFolder) else run)).history_path
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    history = pd.read_csv(path)
    if history.empty:
        return history
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)

def make_optimizer(name="adam", learning_rate=DEFAULT_LEARNING_RATE, weight_decay=None,
                   momentum=None, clipnorm=None, ema_momentum=None):
    """Build a Keras optimizer by name.

    - ``"adam"``: the CT assignment and the lab (default rate 1e-3, lab 1e-4);
    - ``"rmsprop"``: the poster, with ``momentum``, ``weight_decay`` (decoupled: each step
      ``w <- w - learning_rate * weight_decay * w``) and ``clipnorm`` (each gradient rescaled
      so its L2 norm is at most ``clipnorm``);
    - ``"sgd"``: plain (momentum) gradient descent for comparison.

    ``ema_momentum`` (any of them) also keeps an exponential moving average of the weights, updated
    after every step (Keras's ``use_ema``: ``average <- m * average + (1 - m) * weights``);
    ``keras.callbacks.SwapEMAWeights`` puts it in the model for validation and checkpoints.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    options = {"learning_rate": learning_rate, "weight_decay": weight_decay, "clipnorm": clipnorm}
    if ema_momentum is not None:
        options.update(use_ema=True, ema_momentum=ema_momentum)
    if name == "adam":
        if momentum is not None:
            raise ValueError("momentum is not a parameter of Adam; use 'rmsprop' or 'sgd'.")
        return keras.optimizers.Adam(**options)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(momentum=momentum or 0.0, **options)
    return keras.optimizers.SGD(momentum=momentum or 0.0, **options)


def summarize_history(history, threshold=0.5):
    """The training part of ``metrics.json``, from a history as ``read_history`` returns it.

    - ``best_epoch``: the epoch with the lowest validation loss, the one kept as ``model.keras``,
      counted from 1 as Keras prints it ("Epoch 5/40");
    - ``best_<column>``: that epoch's logged figures, e.g. ``best_val_loss``, ``best_val_dice``
      (validation figures of the kept model, pooled over all validation pixels as Keras logs them);
    - ``last_<column>``: the last epoch's figures, e.g. ``last_loss`` and ``last_val_dice``
      (the model in memory at the end, not the kept one);
    - ``epochs_completed``, ``threshold`` (of the Dice/IoU metrics) and ``seconds_per_epoch``.
    """
    if history.empty:
        raise ValueError("history has no epochs; nothing to summarise.")
    columns = [column for column in history.columns if column not in ("epoch", "seconds")]
    last = history.iloc[-1]
    summary = {f"last_{column}": float(last[column]) for column in columns}
    if "val_loss" in history and history["val_loss"].notna().any():
        best = history.loc[history["val_loss"].idxmin()]
        summary["best_epoch"] = int(best["epoch"]) + 1
        summary.update({f"best_{column}": float(best[column]) for column in columns})
    summary["epochs_completed"] = int(len(history))
    summary["threshold"] = threshold
    if "seconds" in history:
        summary["seconds_per_epoch"] = float(history["seconds"].mean())
    summary["definitions"] = HISTORY_DEFINITIONS
    return summary


#: What the training summary's keys mean, written into metrics.json beside them.
HISTORY_DEFINITIONS = {
    "best_epoch": "the epoch of the kept model (model.keras, lowest val_loss), counted from 1",
    "best_*": "the kept epoch's figures as Keras logged them: pooled over all pixels of the split",
    "last_*": "the last epoch's figures as Keras logged them (the model in memory at the end, not the kept one)",
}


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that never leaves half a model file behind.

    It saves exactly when ModelCheckpoint would, but into a temporary file next to ``filepath``
    that is then renamed onto it, so a run killed while saving keeps its previous best model.
    """

    def _save_model(self, epoch, batch, logs):
        final_path = Path(self.filepath)
        temporary_path = final_path.with_name(f".{final_path.stem}-saving.tmp{final_path.suffix}")
        self.filepath = str(temporary_path)
        try:
            super()._save_model(epoch, batch, logs)
            if temporary_path.exists():
                os.replace(temporary_path, final_path)
        finally:
            self.filepath = str(final_path)
            temporary_path.unlink(missing_ok=True)


class RunLog(keras.callbacks.Callback):
    """What Keras's callbacks leave out of a run folder.

    - adds each epoch's wall-clock ``seconds`` (and the ``learning_rate`` if no schedule logged it)
      to the logs, so ``CSVLogger`` writes them into ``history.csv``: put it before the CSVLogger;
    - at the end of training writes ``metrics.json`` (``summarize_history``), atomically;
    - refuses to go on when the loss becomes NaN or infinite (``keras.callbacks.TerminateOnNaN``
      would stop silently): the best model on disk stays the last good one.
    """

    def __init__(self, run, threshold=0.5):
        super().__init__()
        self.run = run
        self.threshold = threshold
        self.trained_epochs = 0
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise FloatingPointError(
                f"Epoch {epoch + 1}: the training loss is {float(loss)}; training stopped. Lower "
                "LEARNING_RATE or check the images for bad pixels. The best model so far is kept in "
                f"{self.run.model_path}."
            )
        if "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = time.perf_counter() - self._started
        self.trained_epochs += 1

    def on_train_end(self, logs=None):
        history = read_history(self.run)
        if self.trained_epochs and not history.empty:
            self.run.update_metrics(summarize_history(history, threshold=self.threshold))
