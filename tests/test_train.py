"""Tests of lunghelpers.train: run folders, the callbacks that fill them, atomic writes, precision.

The training notebook's own path (compile, callbacks, fit, a kill and a resume) is tested by
papermill runs in ``test_notebooks.py``; here each piece is tested on a tiny U-Net in-process.
"""

import json
import platform
from pathlib import Path
import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lunghelpers import augment, data, losses, metrics, models, synthetic, train


def ellipse_data(count, size, seed):
    """Images of one bright noisy ellipse on grey, and its mask: a task a tiny U-Net learns fast."""
    random = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 1), np.float32)
    masks = np.zeros((count, size, size, 1), np.float32)
    for index in range(count):
        mask = np.zeros((size, size), np.uint8)
        centre = tuple(int(value) for value in random.integers(size // 3, 2 * size // 3, 2))
        axes = tuple(int(value) for value in random.integers(size // 8, size // 4, 2))
        cv2.ellipse(mask, centre, axes, float(random.uniform(0, 180)), 0, 360, 1, -1)
        noise = random.normal(0.0, 0.1, (size, size))
        images[index, ..., 0] = np.clip(0.3 + 0.4 * mask + noise, 0.0, 1.0)
        masks[index, ..., 0] = mask
    return images, masks


@pytest.fixture(scope="module")
def tiny_data():
    """Eight 32x32 training and four validation images (tf.data batches of 4, arrays)."""
    images, masks = ellipse_data(12, 32, seed=1)
    train_data = tf.data.Dataset.from_tensor_slices((images[:8], masks[:8])).batch(4)
    return train_data, (images[8:], masks[8:])


def tiny_model(seed=0):
    """A two-level U-Net with 4 base filters, built after seeding so weights are reproducible."""
    train.set_seed(seed)
    return models.unet((32, 32, 1), base_filters=4, depth=2)


def test_set_precision_sets_and_names_the_policy():
    try:
        assert train.set_precision(True) == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert train.set_precision("mixed_float16") == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert train.set_precision(False) == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
        with pytest.raises(ValueError, match="mixed_precision"):
            train.set_precision("half")
    finally:
        train.set_precision(False)


@pytest.mark.parametrize("flags, gpus, fast", [
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, [], True),  # AMX: bfloat16 matrix tiles
    ({"avx512f", "avx512_bf16"}, [], False),  # AVX512-BF16 alone: no faster than float32 FMA
    (set(), ["GPU:0"], True),  # any GPU
    (set(), [], False),
])
def test_bfloat16_is_fast_with_amx_or_a_gpu_only(flags, gpus, fast):
    assert train.bfloat16_is_fast(cpu_flags=flags, gpus=gpus) is fast


@pytest.mark.parametrize("fast, policy", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_precision_follows_the_hardware(monkeypatch, fast, policy):
    monkeypatch.setattr(train, "bfloat16_is_fast", lambda: fast)
    assert train.precision_policy("auto") == policy


def test_this_machines_cpu_flags_are_read():
    if not Path("/proc/cpuinfo").exists() or platform.machine() != "x86_64":
        pytest.skip("reads /proc/cpuinfo of an x86-64 Linux machine")
    flags = train.read_cpu_flags()
    assert {"sse2", "avx"} <= flags and "flags" not in flags  # every x86-64 CPU this kit runs on has them
    assert train.bfloat16_is_fast(gpus=[]) is ("amx_bf16" in flags)


def test_params_json_records_the_policy_the_run_asks_for(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "bfloat16_is_fast", lambda: False)
    cases = {"bf16": True, "auto": "auto", "default": None}
    for name, value in cases.items():
        params = {} if value is None else {"mixed_precision": value}
        run = train.open_run(tmp_path / name, params)
        recorded = train.read_json(run.params_path)["precision_policy"]
        assert recorded == {"bf16": "mixed_bfloat16", "auto": "float32", "default": "float32"}[name]
    assert keras.mixed_precision.global_policy().name == "float32"  # recording sets nothing


def test_a_bad_precision_is_refused_before_the_run_folder_exists(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision must be .*'auto'.*got 'half'"):
        train.open_run(tmp_path / "run", {"mixed_precision": "half"})
    assert not (tmp_path / "run").exists()


def test_atomic_writes_leave_only_the_target_files(tmp_path):
    train.write_json(tmp_path / "data.json", {"value": np.float32(0.5), "ids": np.arange(3)})
    frame = pd.DataFrame({"epoch": [0, 1], "loss": [0.7, 0.4]})
    train.write_csv(tmp_path / "history.csv", frame)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.json", "history.csv"]
    assert json.loads((tmp_path / "data.json").read_text()) == {"value": 0.5, "ids": [0, 1, 2]}
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "history.csv"), frame)


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    train.write_json(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with train.atomic_path(target) as temporary_path:
            temporary_path.write_text("half written")
            raise RuntimeError("crash while writing")
    assert train.read_json(target) == {"old": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def fit_tiny(run, tiny_data, epochs, extra_callbacks=(), learning_rate=1e-3, seed=0, ema_momentum=None):
    """Train a tiny U-Net into ``run`` with the training notebook's callbacks; return the model."""
    train_data, validation_data = tiny_data
    model = tiny_model(seed)
    model.compile(optimizer=train.make_optimizer("adam", learning_rate, ema_momentum=ema_momentum),
                  loss="binary_crossentropy", metrics=metrics.training_metrics(1))
    model.optimizer.build(model.trainable_variables)  # as notebook 05: fit traces its step once
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate),
        train.RunLog(run),
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema_momentum else []),
        train.AtomicModelCheckpoint(run.model_path, monitor="val_loss", save_best_only=True,
                                    initial_value_threshold=run.best_val_loss),
        keras.callbacks.CSVLogger(run.history_path, append=True),
        keras.callbacks.BackupAndRestore(run.backup_dir, double_checkpoint=True),
        *extra_callbacks,
    ]
    model.fit(train_data, validation_data=validation_data, epochs=epochs,
              initial_epoch=run.initial_epoch, callbacks=callbacks, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("built, traces", [(False, 2), (True, 1)])
def test_an_optimizer_built_before_fit_lets_fit_trace_its_step_once(tiny_data, built, traces):
    """Why notebook 05 calls ``model.optimizer.build``: fit traces its training step once more when
    that step creates the optimizer's variables, which doubles every run's start-up."""
    train_data, _ = tiny_data
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=metrics.training_metrics(1))
    if built:
        model.optimizer.build(model.trainable_variables)
    step, calls = model.train_step, []
    model.train_step = lambda batch: calls.append(batch) or step(batch)  # runs once per trace
    model.fit(train_data, epochs=2, shuffle=False, verbose=0)  # the data set is already in order
    assert len(calls) == traces


PARAMS = {"epochs": 3, "loss": "bce", "seed": 0, "name": "a", "run_dir": "/somewhere"}


def test_a_new_run_folder_gets_params_json_and_nothing_else(tmp_path):
    run = train.open_run(tmp_path / "run", PARAMS)
    record = train.read_json(run.params_path)
    assert record["params"] == PARAMS and record["run"] == "run"
    assert {"tensorflow", "keras", "devices"} <= set(record["environment"])
    assert sorted(path.name for path in run.path.iterdir()) == ["figures", "params.json"]
    assert (run.initial_epoch, run.finished, run.best_val_loss) == (0, False, None)


def test_a_finished_run_is_reused_and_fit_trains_nothing(tmp_path, tiny_data):
    run = train.open_run(tmp_path / "run", PARAMS)
    fit_tiny(run, tiny_data, epochs=3)
    assert run.finished and run.initial_epoch == 3
    assert sorted(path.name for path in run.path.iterdir()) == [
        "figures", "history.csv", "metrics.json", "model.keras", "params.json"]
    before = {path.name: path.read_bytes() for path in run.path.iterdir() if path.is_file()}
    # Moved folder or another name: the same run.
    again = train.open_run(tmp_path / "run", {**PARAMS, "name": "b", "run_dir": "/elsewhere"})
    fit_tiny(again, tiny_data, epochs=3)
    assert {path.name: path.read_bytes() for path in run.path.iterdir() if path.is_file()} == before


def test_other_parameters_in_the_same_folder_are_refused_by_name(tmp_path, tiny_data):
    run = train.open_run(tmp_path / "run", PARAMS)
    fit_tiny(run, tiny_data, epochs=3)
    before = {path.name: path.read_bytes() for path in run.path.iterdir() if path.is_file()}
    with pytest.raises(train.RunParametersError, match=r"LOSS: 'bce' there, 'dice' here.*Set NAME"):
        train.open_run(run.path, {**PARAMS, "loss": "dice"})
    with pytest.raises(train.RunParametersError, match=r"EPOCHS: 3 there, 5 here"):
        train.open_run(run.path, {**PARAMS, "epochs": 5})  # a finished run is not extended
    with pytest.raises(train.RunParametersError, match=r"LIMIT: None there, 10 here"):
        train.open_run(run.path, {**PARAMS, "limit": 10}, name_parameter="NAME")
    assert {path.name: path.read_bytes() for path in run.path.iterdir() if path.is_file()} == before


def test_a_folder_with_results_but_no_params_json_is_refused(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"someone else's model")
    with pytest.raises(train.RunParametersError, match="no params.json"):
        train.open_run(tmp_path, PARAMS)
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"]


def test_a_damaged_params_json_is_named(tmp_path):
    (tmp_path / "params.json").write_text("{not json")
    with pytest.raises(train.RunParametersError, match=r"params.json is damaged"):
        train.open_run(tmp_path, PARAMS)


class StopAfter(keras.callbacks.Callback):
    """Interrupt training in the middle of epoch ``epoch`` (counted from 0), as a kill would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._current_epoch == self.epoch and batch == 0:
            raise KeyboardInterrupt

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch


def test_an_interrupted_run_continues_and_lists_each_epoch_once(tmp_path, tiny_data):
    run = train.open_run(tmp_path / "run", {**PARAMS, "epochs": 4})
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(run, tiny_data, epochs=4, extra_callbacks=[StopAfter(2)])
    first = run.read_history()
    assert list(first["epoch"]) == [0, 1] and run.backup_dir.is_dir() and not run.finished
    # A longer run may continue an interrupted one; params.json records it.
    run = train.open_run(tmp_path / "run", {**PARAMS, "epochs": 5})
    assert train.read_json(run.params_path)["params"]["epochs"] == 5
    fit_tiny(run, tiny_data, epochs=5)
    history = run.read_history()
    assert list(history["epoch"]) == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2], first)
    assert run.finished and not run.backup_dir.exists()
    assert train.read_json(run.metrics_path)["epochs_completed"] == 5


def test_history_rows_repeated_by_a_kill_are_read_once(tmp_path):
    run = train.RunFolder(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,loss\n0,0.9\n1,0.8\n1,0.7\n2,0.6\n")
    assert run.read_history().to_dict("list") == {"epoch": [0, 1, 2], "loss": [0.9, 0.7, 0.6]}
    (tmp_path / "history.csv").write_text("")  # CSVLogger opened it, no epoch finished yet
    assert run.read_history().empty and run.best_val_loss is None


def test_model_checkpoint_keeps_the_best_epoch_and_never_a_half_file(tmp_path, tiny_data, monkeypatch):
    run = train.open_run(tmp_path / "run", PARAMS)
    fit_tiny(run, tiny_data, epochs=3)
    history = run.read_history()
    best = int(history["val_loss"].idxmin())
    metrics_json = train.read_json(run.metrics_path)
    assert metrics_json["best_epoch"] == best + 1  # counted from 1, as Keras prints it
    assert "pooled" in metrics_json["definitions"]["best_*"]  # the file says what its keys mean
    assert metrics_json["best_val_loss"] == pytest.approx(history["val_loss"].min())
    saved = run.model_path.read_bytes()

    def crash_while_saving(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash_while_saving)
    checkpoint = train.AtomicModelCheckpoint(run.model_path, monitor="val_loss", save_best_only=True)
    checkpoint.set_model(tiny_model())
    with pytest.raises(OSError, match="disk full"):
        checkpoint.on_epoch_end(0, {"val_loss": 0.0})
    assert run.model_path.read_bytes() == saved
    assert not [path.name for path in run.path.iterdir() if path.name.startswith(".")]


def test_stale_temporary_files_are_removed_when_a_run_is_opened(tmp_path):
    train.open_run(tmp_path, PARAMS)
    (tmp_path / ".model-saving.tmp.keras").write_bytes(b"")
    (tmp_path / ".history-x1y2.tmp.csv").write_bytes(b"partial")
    train.open_run(tmp_path, PARAMS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figures", "params.json"]


def test_a_nan_loss_stops_training_with_a_message_and_keeps_the_last_good_model(tmp_path, tiny_data):
    run = train.open_run(tmp_path / "run", PARAMS)

    class PoisonAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                for weight in self.model.trainable_weights:
                    weight.assign(weight * np.nan)

    train_data, validation_data = tiny_data
    model = tiny_model()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    callbacks = [train.RunLog(run),
                 train.AtomicModelCheckpoint(run.model_path, monitor="val_loss", save_best_only=True),
                 keras.callbacks.CSVLogger(run.history_path, append=True), PoisonAfterFirstEpoch()]
    with pytest.raises(FloatingPointError, match=r"Epoch 2: the training loss is nan"):
        model.fit(train_data, validation_data=validation_data, epochs=3, callbacks=callbacks, shuffle=False, verbose=0)
    kept = keras.models.load_model(run.model_path, compile=False)
    assert all(np.isfinite(keras.ops.convert_to_numpy(weight)).all() for weight in kept.weights)
    assert list(run.read_history()["epoch"]) == [0]


def test_summarize_history_known_answer():
    history = pd.DataFrame({
        "epoch": [0, 1, 2],
        "loss": [0.9, 0.5, 0.3],
        "val_loss": [0.8, 0.4, 0.6],
        "val_dice": [0.2, 0.7, 0.65],
        "learning_rate": [1e-3, 1e-3, 1e-4],
        "seconds": [3.0, 1.0, 2.0],
    })
    assert train.summarize_history(history) == {
        "last_loss": 0.3, "last_val_loss": 0.6, "last_val_dice": 0.65, "last_learning_rate": 1e-4,
        "best_epoch": 2, "best_loss": 0.5, "best_val_loss": 0.4, "best_val_dice": 0.7,
        "best_learning_rate": 1e-3, "epochs_completed": 3, "threshold": 0.5, "seconds_per_epoch": 2.0,
        "definitions": train.HISTORY_DEFINITIONS,
    }
    with pytest.raises(ValueError, match="no epochs"):
        train.summarize_history(pd.DataFrame())


def test_make_optimizer_builds_the_posters_rmsprop():
    optimizer = train.make_optimizer("rmsprop", 1e-4, weight_decay=1e-5, momentum=0.9, clipnorm=1.0)
    config = optimizer.get_config()
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert config["learning_rate"] == pytest.approx(1e-4)
    assert (config["momentum"], config["weight_decay"], config["clipnorm"]) == (0.9, 1e-5, 1.0)
    with pytest.raises(ValueError, match="momentum"):
        train.make_optimizer("adam", momentum=0.9)
    with pytest.raises(ValueError, match="optimizer"):
        train.make_optimizer("adagrad")


def test_make_optimizer_keeps_a_moving_average_of_the_weights_only_when_asked():
    assert train.make_optimizer("adam", 1e-3).get_config()["use_ema"] is False
    config = train.make_optimizer("sgd", 1e-2, ema_momentum=0.95).get_config()
    assert (config["use_ema"], config["ema_momentum"]) == (True, 0.95)


def test_the_kept_model_is_the_one_validated_with_or_without_a_weight_average(tmp_path, tiny_data):
    """With ``EMA_MOMENTUM`` the epoch's validation figures are those of the averaged weights
    (``SwapEMAWeights`` puts them in the model), so the checkpoint must save those weights: the
    kept model, evaluated again, gives the validation loss logged for its epoch. (With the swap
    after the checkpoint, the averaged weights would be validated and the raw ones saved.)"""
    logged = {}
    for ema_momentum in (None, 0.9):
        run = train.open_run(tmp_path / str(ema_momentum), PARAMS)
        fit_tiny(run, tiny_data, epochs=2, learning_rate=1e-2, ema_momentum=ema_momentum)
        kept = keras.models.load_model(run.model_path, compile=False)
        kept.compile(loss="binary_crossentropy")
        logged[ema_momentum] = run.read_history()["val_loss"].to_numpy()
        best = train.read_json(run.metrics_path)["best_epoch"]
        assert kept.evaluate(*tiny_data[1], verbose=0) == pytest.approx(logged[ema_momentum][best - 1], rel=1e-4)
    # Same seed, same steps: only the validated weights differ (the average lags behind).
    assert not np.allclose(logged[None], logged[0.9], rtol=1e-3)


def test_learning_really_happens(tmp_path):
    """A U-Net on 40 synthetic CT slices at 64 px: validation Dice climbs from 0 to above 0.7.

    The fixed HU window gives the lungs the same contrast on every slice, so ten short epochs
    suffice (final validation Dice 0.89-0.96 for seeds 0-2 on the development CPU).
    """
    root = synthetic.generate("ct", 40, tmp_path / "ct", size=128, seed=0, progress=False)
    images, masks, _ = data.load_pairs(*data.dataset_dirs(root), image_size=(64, 64),
                                       normalization="window", progress=False)
    (train_images, train_masks), (validation_images, validation_masks) = data.split(
        images, masks, fractions=(0.8, 0.2)
    )
    train.set_seed(0)
    model = models.unet((64, 64, 1), base_filters=8, depth=3)
    train_data = augment.make_dataset(train_images, train_masks, batch_size=2, seed=0)
    validation_data = augment.make_dataset(validation_images, validation_masks, batch_size=8,
                                           shuffle=False, repeat=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.get_loss("bce_dice"),
                  metrics=metrics.training_metrics(1))
    history = model.fit(train_data, validation_data=validation_data, epochs=10,
                        steps_per_epoch=len(train_images) // 2, shuffle=False, verbose=0).history
    final_dice, first_dice = history["val_dice"][-1], history["val_dice"][0]
    assert final_dice > 0.7
    assert final_dice - first_dice >= 0.2


def test_a_parameter_added_to_the_kit_later_keeps_an_older_run_the_same_run(tmp_path):
    older = {"epochs": 3, "loss": "bce"}  # recorded before CACHE existed
    train.open_run(tmp_path, older)
    train.open_run(tmp_path, {**older, "cache": False})  # the default: the same run
    with pytest.raises(train.RunParametersError, match=r"CACHE: False there, True here.*Set RUNS_DIR to another folder"):
        train.open_run(tmp_path, {**older, "cache": True}, name_parameter="RUNS_DIR")


def test_a_damaged_backup_is_named_with_what_to_do(tmp_path, tiny_data):
    run = train.open_run(tmp_path / "run", {**PARAMS, "epochs": 4})
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(run, tiny_data, epochs=4, extra_callbacks=[StopAfter(2)])
    (run.backup_dir / "latest.weights.h5").write_bytes(b"\0" * 10)
    train.open_run(run.path, {**PARAMS, "epochs": 4})  # the previous epoch's copy is good: Keras falls back to it
    (run.backup_dir / "latest.weights.h5.bkp").write_bytes(b"\0" * 10)
    with pytest.raises(train.RunParametersError, match=r"backup .* is damaged .*Move .*backup away"):
        train.open_run(run.path, {**PARAMS, "epochs": 4})
