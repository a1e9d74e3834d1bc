"""Tests of lunghelpers.train: run folders, atomic writes, resuming, seeds, precision, learning."""

import json
import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lunghelpers import augment, data, models, synthetic, train


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


def test_set_precision_sets_and_names_the_policy(tmp_path):
    try:
        assert train.set_precision(True) == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert train.set_precision("mixed_float16") == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert train.set_precision(False) == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
        with pytest.raises(ValueError, match="mixed_precision"):
            train.set_precision("half")
        train.set_precision(True)
        run = train.create_run(tmp_path / "run", {})
        assert train.read_json(run.params_path)["precision_policy"] == "mixed_bfloat16"
    finally:
        train.set_precision(False)


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    """A two-epoch run with seed 3 whose learning rate halves each epoch: (run folder, history)."""
    train_data, validation_data = tiny_data
    halve_each_epoch = keras.callbacks.LearningRateScheduler(lambda epoch: 1e-3 * 0.5**epoch)
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    history = train.train(
        tiny_model(seed=3),
        train_data,
        validation_data,
        run_dir=run_dir,
        epochs=2,
        loss="bce_dice",
        callbacks=[halve_each_epoch],
        params={"seed": 3, "image_size": 32},
        seed=3,
        verbose=0,
    )
    return run_dir, history


def test_train_writes_a_complete_run_folder(finished_run, tiny_data):
    run_dir, history = finished_run
    expected_files = {"params.json", "history.csv", "model.keras", "metrics.json",
                      "checkpoint.keras", "state.json", "figures"}
    assert {path.name for path in run_dir.iterdir()} == expected_files

    params = train.read_json(run_dir / "params.json")
    assert params["params"] == {"seed": 3, "image_size": 32}
    assert params["training"]["epochs"] == 2
    assert params["training"]["loss"] == "bce_dice"
    assert params["training"]["seed"] == 3
    assert params["precision_policy"] == "float32"
    assert params["environment"]["tensorflow"] == tf.__version__
    assert params["environment"]["keras"] == keras.__version__
    assert params["environment"]["devices"][0].startswith("CPU")

    saved_history = pd.read_csv(run_dir / "history.csv")
    assert list(saved_history["epoch"]) == [0, 1]
    assert saved_history["learning_rate"].tolist() == pytest.approx([1e-3, 5e-4])
    for column in ("loss", "val_loss", "dice", "val_dice", "val_precision", "val_recall"):
        assert column in saved_history
    pd.testing.assert_frame_equal(saved_history, history, check_dtype=False)

    summary = train.read_json(run_dir / "metrics.json")
    best = int(history["val_loss"].idxmin())
    assert summary["best_epoch"] == best
    assert summary["best_val_loss"] == pytest.approx(history["val_loss"][best])
    assert summary["best_val_dice"] == pytest.approx(history["val_dice"][best])
    assert summary["train_dice"] == pytest.approx(history["dice"].iloc[-1])
    assert summary["val_dice"] == pytest.approx(history["val_dice"].iloc[-1])
    assert summary["epochs_completed"] == 2
    assert summary["threshold"] == 0.5
    for key in ("val_precision", "val_recall", "val_loss", "seconds_per_epoch"):
        assert key in summary
    assert train.read_json(run_dir / "state.json")["last_epoch"] == 1

    validation_images = tiny_data[1][0]
    best_model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert best_model.predict(validation_images, verbose=0).shape == (4, 32, 32, 1)


def test_existing_run_is_refused_without_overwrite(tmp_path, tiny_data):
    train_data, validation_data = tiny_data
    run = train.create_run(tmp_path / "finished", {"epochs": 1})
    train.write_json(run.metrics_path, {"val_dice": 0.5})
    with pytest.raises(FileExistsError, match="overwrite=True") as error:
        train.train(tiny_model(), train_data, validation_data, run_dir=run.path, epochs=1,
                    loss="bce", verbose=0)
    assert str(run.path) in str(error.value)
    assert train.read_json(run.metrics_path) == {"val_dice": 0.5}
    assert train.read_json(run.params_path)["params"] == {"epochs": 1}


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run_dir = tmp_path / "run"
    run = train.create_run(run_dir, {"epochs": 1})
    train.write_json(run.metrics_path, {"val_dice": 0.5})
    train.create_run(run_dir, {"epochs": 2}, overwrite=True)
    (aside,) = tmp_path.glob("run.old-*")
    assert train.read_json(aside / "metrics.json") == {"val_dice": 0.5}
    assert train.read_json(aside / "params.json")["params"] == {"epochs": 1}
    assert train.read_json(run_dir / "params.json")["params"] == {"epochs": 2}
    assert not (run_dir / "metrics.json").exists()


def test_finished_run_without_state_cannot_be_resumed(tmp_path):
    run = train.create_run(tmp_path / "run", {})
    train.write_json(run.metrics_path, {"val_dice": 0.5})
    with pytest.raises(FileExistsError, match="cannot be resumed"):
        train.create_run(run.path, {}, resume=True)
    with pytest.raises(ValueError, match="not both"):
        train.create_run(run.path, {}, resume=True, overwrite=True)


def test_folder_without_results_is_reused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "05_training.ipynb").write_text("{}")
    train.create_run(run_dir, {"epochs": 1})
    assert (run_dir / "05_training.ipynb").exists()
    assert (run_dir / "params.json").exists()


class InterruptAtEpoch(keras.callbacks.Callback):
    """Raise KeyboardInterrupt when an epoch begins, as a user pressing Ctrl+C would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_full_number_of_epochs(tmp_path, tiny_data):
    train_data, validation_data = tiny_data
    run_dir = tmp_path / "run"
    arguments = dict(run_dir=run_dir, epochs=4, loss="bce", verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_model(), train_data, validation_data,
                    callbacks=[InterruptAtEpoch(2)], **arguments)
    assert len(pd.read_csv(run_dir / "history.csv")) == 2
    assert train.read_json(run_dir / "state.json")["last_epoch"] == 1
    assert not (run_dir / "metrics.json").exists()
    with pytest.raises(FileExistsError, match="resume=True"):
        train.train(tiny_model(), train_data, validation_data, **arguments)

    model = tiny_model(seed=5)
    history = train.train(model, train_data, validation_data, resume=True, **arguments)
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1, 2, 3]
    assert train.read_json(run_dir / "metrics.json")["epochs_completed"] == 4
    # Optimizer state came back from the checkpoint: 2 steps per epoch over 4 epochs, not 2.
    assert int(model.optimizer.iterations.numpy()) == 8
    assert "resumed_at" in train.read_json(run_dir / "params.json")


def test_same_seed_gives_the_same_first_epoch_loss(tmp_path, tiny_data, finished_run):
    train_data, validation_data = tiny_data
    history = train.train(tiny_model(seed=3), train_data, validation_data,
                          run_dir=tmp_path / "again", epochs=1, loss="bce_dice", seed=3, verbose=0)
    assert history["loss"][0] == finished_run[1]["loss"][0]
    # The seed does matter: another seed starts from other weights.
    other_weights = tiny_model(seed=4).get_weights()[0]
    assert not np.array_equal(tiny_model(seed=3).get_weights()[0], other_weights)


def test_repeating_dataset_needs_steps_per_epoch(tmp_path, tiny_data):
    train_data, validation_data = tiny_data
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.train(tiny_model(), train_data.repeat(), validation_data,
                    run_dir=tmp_path / "run", epochs=1, loss="bce", verbose=0)
    assert not (tmp_path / "run").exists()


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


def test_optimizer_object_with_a_different_learning_rate_is_refused(tmp_path, tiny_data):
    train_data, validation_data = tiny_data
    with pytest.raises(ValueError, match="learning_rate"):
        train.train(tiny_model(), train_data, validation_data, run_dir=tmp_path / "run",
                    epochs=1, loss="bce", optimizer=keras.optimizers.Adam(1e-4),
                    learning_rate=1e-3, verbose=0)


def test_summarize_history_known_answer():
    history = pd.DataFrame({
        "epoch": [0, 1, 2],
        "loss": [0.9, 0.5, 0.3],
        "dice": [0.1, 0.6, 0.8],
        "val_loss": [0.8, 0.4, 0.6],
        "val_dice": [0.2, 0.7, 0.65],
        "learning_rate": [1e-3, 1e-3, 1e-4],
        "seconds": [3.0, 1.0, 2.0],
    })
    summary = train.summarize_history(history)
    assert summary == {
        "train_loss": 0.3, "train_dice": 0.8, "val_loss": 0.6, "val_dice": 0.65,
        "final_learning_rate": 1e-4, "best_epoch": 1, "best_val_loss": 0.4,
        "best_val_dice": 0.7, "epochs_completed": 3, "threshold": 0.5, "seconds_per_epoch": 2.0,
    }


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
    history = train.train(model, train_data, validation_data, run_dir=tmp_path / "run",
                          epochs=10, steps_per_epoch=len(train_images) // 2, loss="bce_dice",
                          learning_rate=1e-3, verbose=0)
    final_dice, first_dice = history["val_dice"].iloc[-1], history["val_dice"].iloc[0]
    assert final_dice > 0.7
    assert final_dice - first_dice >= 0.2
