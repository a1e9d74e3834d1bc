"""Learning-rate schedules as Keras callbacks, and a plot to compare them.

Why schedule the rate: a large rate moves fast towards a good region but then jumps around the
minimum; a smaller rate later lets the weights settle into it. A schedule gets both.

Schedules named here (`callbacks(name, epochs, initial_rate)`):
- "source": the CT assignment's step-then-exponential decay (`source_schedule`).
- "plateau": the poster's `ReduceLROnPlateau`, which cuts the rate when the validation loss stops
  improving (`plateau_callback`).
- "cosine": cosine decay with optional linear warm-up (`cosine_schedule`).
- "constant": the initial rate throughout (the lab's setting).
"""

import functools
import math

import keras
import matplotlib.pyplot as plt

SCHEDULE_NAMES = ("source", "plateau", "cosine", "constant")


def source_schedule(epoch, learning_rate=None, initial_rate=1e-3, hold_epochs=20, factor=0.1):
    """The CT assignment's schedule: a function of the epoch only.

        rate(epoch) = initial_rate                                         epoch < hold_epochs
        rate(epoch) = initial_rate * factor ** (epoch - hold_epochs + 1)   otherwise

    With the defaults: 1e-3 for epochs 0..19, then 1e-4 at epoch 20, 1e-5 at 21, ... 1e-9 at 25.
    The rate at epoch 25 is a millionth of the start, so training effectively stops after about
    three decayed epochs: the source's epochs 23..39 change the weights by almost nothing.

    The source's docstring says the start rate is 0.0001, but its code and text use 0.001 (the
    Adam default). The project uses 0.001 because the code that produced the reported numbers
    ran with it.

    `learning_rate` (the optimizer's current rate) is accepted and ignored, so the function can
    be passed directly to `keras.callbacks.LearningRateScheduler(source_schedule)`.
    """
    if epoch < hold_epochs:
        return initial_rate
    return initial_rate * factor ** (epoch - hold_epochs + 1)


def cosine_schedule(epoch, initial_rate, epochs, warmup_epochs=0):
    """Cosine decay from `initial_rate` to 0 over `epochs`, after an optional linear warm-up.

        warm-up (epoch < w):  rate = initial_rate * (epoch + 1) / w
        decay:                rate = initial_rate * (1 + cos(pi * (epoch - w) / (epochs - w))) / 2

    The rate is `initial_rate` at the first epoch after warm-up, half of it half-way and 0 at
    epoch `epochs` (the end of training; the last trained epoch, `epochs - 1`, still has a small
    positive rate). The decay is slow at the start and end and fastest in the middle.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"warmup_epochs must be in [0, epochs) = [0, {epochs}), got {warmup_epochs!r}."
        )
    if epoch < warmup_epochs:
        return initial_rate * (epoch + 1) / warmup_epochs
    progress = min(epoch - warmup_epochs, epochs - warmup_epochs) / (epochs - warmup_epochs)
    return initial_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def plateau_callback(monitor="val_loss", factor=0.1, patience=5, min_lr=1e-7):
    """The poster's ReduceLROnPlateau: multiply the rate by `factor` after `patience` epochs
    without improvement of `monitor`, never below `min_lr`.

    It starts from the optimizer's own rate, so create the optimizer with the initial rate.
    """
    return keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, factor=factor, patience=patience, min_lr=min_lr, verbose=1
    )


def _check(name, epochs, initial_rate):
    """Raise ValueError for an unknown schedule name, epochs < 1 or a rate <= 0."""
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"Unknown schedule {name!r}; valid names are {SCHEDULE_NAMES}.")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if initial_rate <= 0:
        raise ValueError(f"initial_rate must be positive, got {initial_rate!r}.")


def _epoch_function(name, epochs, initial_rate):
    """The rate as a function (epoch, current_rate) -> rate for the schedules defined per epoch."""
    if name == "source":
        return functools.partial(source_schedule, initial_rate=initial_rate)
    if name == "cosine":
        return lambda epoch, learning_rate=None: cosine_schedule(epoch, initial_rate, epochs)
    return lambda epoch, learning_rate=None: initial_rate


def callbacks(name, epochs, initial_rate):
    """Keras callbacks that apply the schedule `name` ("source", "plateau", "cosine",
    "constant") over `epochs` epochs starting at `initial_rate`; pass them to `model.fit`.

    "plateau" reacts to the validation loss, so its rate starts at the optimizer's rate:
    create the optimizer with `initial_rate`. The others set the rate at every epoch start and
    Keras logs it as `learning_rate` in the history.
    """
    _check(name, epochs, initial_rate)
    if name == "plateau":
        return [plateau_callback()]
    return [keras.callbacks.LearningRateScheduler(_epoch_function(name, epochs, initial_rate))]


def rates(name, epochs, initial_rate):
    """The rate of each epoch 0..epochs-1 for the schedule `name`.

    "plateau" has no fixed rates (they depend on the validation loss): ValueError.
    """
    _check(name, epochs, initial_rate)
    if name == "plateau":
        raise ValueError(
            "The 'plateau' schedule has no fixed per-epoch rates: they follow the validation loss."
        )
    schedule = _epoch_function(name, epochs, initial_rate)
    return [schedule(epoch) for epoch in range(epochs)]


def plot_schedule(schedule, epochs, ax=None, initial_rate=1e-3):
    """Plot the rate per epoch on a log scale; returns the matplotlib Axes.

    `schedule` is a name accepted by `rates` or a function `(epoch, current_rate) -> rate` as
    `keras.callbacks.LearningRateScheduler` takes it (such as `source_schedule`); a function is
    run the way the callback runs it, starting from `initial_rate`.
    """
    if callable(schedule):
        values, rate = [], initial_rate
        for epoch in range(epochs):
            rate = schedule(epoch, rate)
            values.append(rate)
        label = getattr(schedule, "__name__", "schedule")
    else:
        values = rates(schedule, epochs, initial_rate)
        label = schedule
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(epochs), values, marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax
