"""Training throughput of the source's exact pipeline against the kit's, float32 and mixed bfloat16.

For each preset, three set-ups train the same model in this one process:

1. source: the source notebook's pipeline, model and compile: two ``ImageDataGenerator.flow``
   streams with a shared seed, zipped in a Python generator and wrapped in
   ``tf.data.Dataset.from_generator(...).repeat()``; Keras's own ``BatchNormalization`` layers;
   binary cross-entropy and the accuracy metric;
2. kit float32: ``augment.make_dataset`` (one paired transform per example, parallel map,
   prefetch), the kit's model (the same layers and weights, its batch norm layers
   ``models.FusedBatchNormalization``) and the training notebook's compile (the preset's loss, accuracy, Dice, IoU,
   precision, recall);
3. kit mixed_bfloat16: the same with ``train.set_precision("mixed_bfloat16")``.

Presets: ``ct`` (the CT assignment: ``simple_unet``, 128 px, batch 16, its augmentation),
``lab-base8`` (the lab's U-Net with 8 base filters, 256 px, batch 8, the lab's augmentation) and
``lab-base16-bn`` (16 base filters with batch norm, as in task 1e). Each set-up is built and warmed
up once (graph tracing); then ``--rounds`` rounds each time one epoch of ``--steps`` steps of every
set-up, in an order that rotates from round to round, so that the machine's drift hits all set-ups
alike. It prints, per set-up, the median images/s with the min-max over rounds, and the median of
the per-round ratios to the source (each round's ratio compares set-ups timed seconds apart).

It also prints images per CPU-second (the process's user + system time) and the cores kept busy
(CPU time over wall time). The 2-core build machine is a virtual machine whose host takes CPU time
away for seconds at a time: whole rounds then run at half the speed or less (many wall-clock
figures sit on that floor), while the CPU time the same work costs moves much less. So the
CPU-time ratio is the steadier measure of the work each set-up does; the wall-clock ratio still
matters, because CPU time cannot see a pipeline that leaves a core idle (cores busy shows that).
The header names the CPU and whether it has what makes bfloat16 fast (``train.bfloat16_is_fast``:
AMX or a GPU); with AVX512-BF16 alone, bfloat16 is slower than float32.

``--accuracy-epochs N`` also trains the CT preset's kit pipeline for N epochs in float32 and in
bfloat16 from the same seed and prints both validation Dice figures (bfloat16 should be within
0.01). Usage::

    python benchmarks/bench_training.py [--presets ct lab-base8 lab-base16-bn] [--rounds 7] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from lunghelpers import augment, data, losses, metrics, models, synthetic, train  # noqa: E402  (quiet TF first)

import keras  # noqa: E402

PRESETS = {
    "ct": dict(size=128, batch=16, model=lambda shape: models.simple_unet(shape), loss="bce",
               source_augment=dict(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1),
               kit_augment=augment.SOURCE_CT),
    "lab-base8": dict(size=256, batch=8, model=lambda shape: models.unet(shape, base_filters=8, depth=4), loss="dice",
                      source_augment=dict(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
                                          zoom_range=0.2, horizontal_flip=True),
                      kit_augment="lab"),
    "lab-base16-bn": dict(size=256, batch=8, loss="dice",
                          model=lambda shape: models.unet(shape, base_filters=16, depth=4, batch_norm=True, dropout_rate=0.2),
                          source_augment=dict(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
                                              zoom_range=0.2, horizontal_flip=True),
                          kit_augment="lab"),
}
SETUPS = ("source", "kit float32", "kit bfloat16")


def load(size, limit=160):
    image_dir, mask_dir = data.dataset_dirs(synthetic.ensure_dataset("ct"), kind="ct")
    images, masks, _ = data.load_pairs(image_dir, mask_dir, image_size=(size, size), limit=limit, progress=False)
    return images, masks


def keras_batch_norm(layer):
    """Keras's own BatchNormalization in place of the kit's fused one, for the source's model."""
    if isinstance(layer, models.FusedBatchNormalization):
        return keras.layers.BatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def build(preset, setup, images, masks):
    """A compiled model and its endless training dataset for one set-up of ``preset``."""
    shape = (preset["size"], preset["size"], 1)
    train.set_precision("mixed_bfloat16" if setup == "kit bfloat16" else False)
    keras.utils.set_random_seed(0)
    model = preset["model"](shape)
    train.set_precision(False)
    if setup == "source":
        model = keras.models.clone_model(model, clone_function=keras_batch_norm)
        dataset = augment.image_data_generator_pair(
            images, masks.astype("float32"), batch_size=preset["batch"], seed=220, **preset["source_augment"]).repeat()
        model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy", metrics=["accuracy"])
    else:
        dataset = augment.make_dataset(images, masks, preset["batch"],
                                       augment=augment.get_config(preset["kit_augment"]), seed=220)
        model.compile(optimizer=keras.optimizers.Adam(), loss=losses.get_loss(preset["loss"]),
                      metrics=metrics.training_metrics(1))
    return model, dataset


def machine():
    """The CPU, and whether it has what makes bfloat16 fast (``train.bfloat16_is_fast``)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    fast = "AMX or a GPU: bfloat16 is fast" if train.bfloat16_is_fast() else "no AMX, no GPU: bfloat16 is not faster"
    return f"{names[0] if names else platform.processor() or 'unknown CPU'} ({fast})"


def benchmark(name, rounds, steps):
    preset = PRESETS[name]
    images, masks = load(preset["size"])
    built = {setup: build(preset, setup, images, masks) for setup in SETUPS}
    for model, dataset in built.values():  # warm-up: trace the graphs
        model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    walls = {setup: [] for setup in SETUPS}
    cpus = {setup: [] for setup in SETUPS}
    for round_index in range(rounds):
        order = SETUPS[round_index % 3:] + SETUPS[:round_index % 3]
        for setup in order:
            model, dataset = built[setup]
            start, start_cpu = time.perf_counter(), cpu_seconds()
            model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
            walls[setup].append(time.perf_counter() - start)
            cpus[setup].append(cpu_seconds() - start_cpu)
    images = steps * preset["batch"]
    print(f"\n{name}: {preset['size']} px, batch {preset['batch']}, {steps} steps a round, {rounds} rounds, "
          f"{os.cpu_count()} CPU threads, {machine()}")
    print("| set-up | images/s, median [min-max] | vs source, median of per-round ratios [min-max] "
          "| images per CPU-second | vs source | cores busy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for setup in SETUPS:
        cells = []
        for times in (walls, cpus):
            speed = [images / seconds for seconds in times[setup]]
            ratios = [source / mine for mine, source in zip(times[setup], times["source"])]
            cells += [f"{statistics.median(speed):.2f} [{min(speed):.2f}-{max(speed):.2f}]",
                      f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"]
        busy = statistics.median(cpu / wall for cpu, wall in zip(cpus[setup], walls[setup]))
        print(f"| {setup} | {' | '.join(cells)} | {busy:.2f} |", flush=True)


def cpu_seconds():
    """User plus system CPU time of this process and its threads, in seconds."""
    times = os.times()
    return times.user + times.system


def accuracy(epochs):
    """Validation Dice of the CT preset's kit pipeline after ``epochs`` epochs, float32 vs bfloat16."""
    preset = PRESETS["ct"]
    images, masks = load(preset["size"], limit=200)
    (train_x, train_y), (val_x, val_y) = data.split(images, masks, fractions=(0.8, 0.2))
    figures = {}
    for setup in ("kit float32", "kit bfloat16"):
        model, _ = build(preset, setup, images, masks)
        dataset = augment.make_dataset(train_x, train_y, preset["batch"], augment=augment.SOURCE_CT, seed=220)
        validation = augment.make_dataset(val_x, val_y, preset["batch"], shuffle=False, repeat=False)
        history = model.fit(dataset, validation_data=validation, epochs=epochs,
                            steps_per_epoch=len(train_x) // preset["batch"], shuffle=False, verbose=0)
        figures[setup] = history.history["val_dice"][-1]
    print(f"\nct, {epochs} epochs from seed 0: validation Dice float32 {figures['kit float32']:.4f}, "
          f"bfloat16 {figures['kit bfloat16']:.4f} (difference {figures['kit bfloat16'] - figures['kit float32']:+.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=list(PRESETS))
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per preset (at least 7 for a median)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per set-up and round")
    parser.add_argument("--accuracy-epochs", type=int, default=0, help="also compare float32 and bfloat16 Dice after N epochs")
    arguments = parser.parse_args()
    for name in arguments.presets:
        benchmark(name, arguments.rounds, arguments.steps)
    if arguments.accuracy_epochs:
        accuracy(arguments.accuracy_epochs)


if __name__ == "__main__":
    main()
