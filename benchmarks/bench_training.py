"""Training throughput: the source pipeline against the kit's, in float32 and mixed bfloat16.

Three set-ups train the CT assignment's ``simple_unet`` at 128 px, batch 16, on the embedded CT
data, each for the same number of optimizer steps after a warm-up epoch (graph tracing):

1. source: two ``ImageDataGenerator`` streams with a shared seed, wrapped in
   ``tf.data.Dataset.from_generator``; BCE loss and the accuracy metric (the source notebook);
2. kit float32: ``augment.make_dataset`` (one paired transform, parallel map, prefetch) with the
   kit's loss and metrics (accuracy, Dice, IoU, precision, recall);
3. kit mixed_bfloat16: the same with ``train.set_precision("mixed_bfloat16")``.

It prints images per second and the ratio of each set-up to the source, measured in this one
process, so the ratios hold even when the machine's absolute speed varies. Usage::

    python benchmarks/bench_training.py [--steps 12] [--size 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from lunghelpers import augment, data, losses, metrics, models, synthetic, train  # noqa: E402


def timed_fit(model, dataset, steps: int, repeats: int) -> float:
    """Images per second over ``repeats`` timed epochs of ``steps`` steps, after a warm-up epoch."""
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=repeats, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per set-up")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    arguments = parser.parse_args()

    image_dir, mask_dir = data.dataset_dirs(synthetic.ensure_dataset("ct"), kind="ct")
    images, masks, _ = data.load_pairs(
        image_dir, mask_dir, image_size=(arguments.size, arguments.size), limit=160, progress=False
    )
    shape = (arguments.size, arguments.size, 1)
    n_images = arguments.steps * arguments.repeats * arguments.batch
    results = {}

    def run(label, dataset, precision, source_recipe):
        train.set_precision(precision)
        keras.utils.set_random_seed(0)
        model = models.simple_unet(shape)
        if source_recipe:
            model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy", metrics=["accuracy"])
        else:
            model.compile(
                optimizer=keras.optimizers.Adam(),
                loss=losses.get_loss("bce"),
                metrics=metrics.training_metrics(1),
            )
        seconds = timed_fit(model, dataset, arguments.steps, arguments.repeats)
        train.set_precision(False)
        results[label] = n_images / seconds
        print(f"{label:<28} {results[label]:7.2f} images/s  ({seconds:.1f} s for {n_images} images)", flush=True)

    source_dataset = augment.image_data_generator_pair(
        images, masks.astype("float32"), batch_size=arguments.batch, seed=220,
        rotation_range=10, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
    )
    kit_dataset = augment.make_dataset(images, masks, arguments.batch, augment=augment.SOURCE_CT, seed=220)
    print(f"simple_unet {shape}, batch {arguments.batch}, {arguments.steps} steps x {arguments.repeats} epochs, "
          f"{os.cpu_count()} CPU threads")
    run("source (ImageDataGenerator)", source_dataset, False, True)
    run("kit float32", kit_dataset, False, False)
    run("kit mixed_bfloat16", kit_dataset, "mixed_bfloat16", False)
    baseline = results["source (ImageDataGenerator)"]
    for label, speed in results.items():
        print(f"ratio {label:<28} {speed / baseline:5.2f}x the source")


if __name__ == "__main__":
    main()
