"""Tests for lunghelpers.schedules: known rates, Keras callbacks in a short fit, the plot."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import matplotlib
import numpy as np
import pytest

from lunghelpers import schedules

matplotlib.use("Agg")


@pytest.mark.parametrize(
    "epoch, expected", [(0, 1e-3), (19, 1e-3), (20, 1e-4), (21, 1e-5), (25, 1e-9)]
)
def test_source_schedule_values(epoch, expected):
    assert schedules.source_schedule(epoch) == pytest.approx(expected, rel=1e-12)
    # The optimizer's current rate, which LearningRateScheduler passes, is ignored.
    assert schedules.source_schedule(epoch, 0.5) == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_endpoints_and_warmup():
    assert schedules.cosine_schedule(0, 0.01, 10) == pytest.approx(0.01)
    assert schedules.cosine_schedule(5, 0.01, 10) == pytest.approx(0.005)
    assert schedules.cosine_schedule(10, 0.01, 10) == pytest.approx(0.0, abs=1e-15)
    assert 0 < schedules.cosine_schedule(9, 0.01, 10) < 0.001
    # Two warm-up epochs: 1/2 then the full rate, which then decays over the remaining 8.
    assert schedules.cosine_schedule(0, 0.01, 10, warmup_epochs=2) == pytest.approx(0.005)
    assert schedules.cosine_schedule(2, 0.01, 10, warmup_epochs=2) == pytest.approx(0.01)
    assert schedules.cosine_schedule(6, 0.01, 10, warmup_epochs=2) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="warmup_epochs"):
        schedules.cosine_schedule(0, 0.01, 10, warmup_epochs=10)


def test_rates_per_name():
    assert schedules.rates("source", 22, 1e-3)[19:] == pytest.approx([1e-3, 1e-4, 1e-5])
    assert schedules.rates("constant", 3, 1e-4) == [1e-4, 1e-4, 1e-4]
    assert schedules.rates("cosine", 4, 1.0) == pytest.approx([1.0, 0.853553, 0.5, 0.146447],
                                                              rel=1e-5)
    with pytest.raises(ValueError, match="validation loss"):
        schedules.rates("plateau", 3, 1e-3)


@pytest.mark.parametrize(
    "name, epochs, initial_rate, message",
    [("step", 3, 1e-3, "valid names"), ("cosine", 0, 1e-3, "epochs"), ("source", 3, 0, "rate")],
)
def test_invalid_arguments_raise(name, epochs, initial_rate, message):
    with pytest.raises(ValueError, match=message):
        schedules.callbacks(name, epochs, initial_rate)
    with pytest.raises(ValueError, match=message):
        schedules.rates(name, epochs, initial_rate)


def test_plateau_callback_has_the_poster_settings():
    [callback] = schedules.callbacks("plateau", 10, 1e-3)
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    assert (callback.monitor, callback.factor, callback.patience, callback.min_lr) == (
        "val_loss", 0.1, 5, 1e-7
    )


def fit_rates(schedule_callbacks, epochs=3):
    """Fit a one-layer model on 8 samples; return the optimizer's rate seen in each epoch."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: seen.append(
            float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        )
    )
    data = np.arange(16, dtype=np.float32).reshape(8, 2)
    history = model.fit(data, data[:, :1], batch_size=8, epochs=epochs, verbose=0,
                        callbacks=[*schedule_callbacks, record])
    return seen, history.history["learning_rate"]


def test_optimizer_follows_the_source_schedule_during_fit():
    scheduler = keras.callbacks.LearningRateScheduler(
        functools.partial(schedules.source_schedule, hold_epochs=1)
    )
    seen, logged = fit_rates([scheduler])
    assert seen == pytest.approx([1e-3, 1e-4, 1e-5], rel=1e-5)
    assert logged == pytest.approx([1e-3, 1e-4, 1e-5], rel=1e-5)


def test_optimizer_follows_the_named_cosine_schedule_during_fit():
    seen, _ = fit_rates(schedules.callbacks("cosine", 3, 1e-2))
    assert seen == pytest.approx(schedules.rates("cosine", 3, 1e-2), rel=1e-5)


def test_plot_schedule_by_name_and_by_function():
    ax = schedules.plot_schedule("source", 30)
    assert ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), schedules.rates("source", 30, 1e-3))
    schedules.plot_schedule(schedules.source_schedule, 30, ax=ax)
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), ax.lines[0].get_ydata())
    matplotlib.pyplot.close(ax.figure)
