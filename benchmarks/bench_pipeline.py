"""Input-pipeline throughput: the source's ImageDataGenerator pair against ``augment.make_dataset``.

Prints images per second of
  (a) the CT assignment's recipe: two ``ImageDataGenerator`` streams with a shared seed, zipped and
      wrapped in ``tf.data.Dataset.from_generator`` (``augment.image_data_generator_pair``), and
  (b) the project's pipeline (``augment.make_dataset``: one projective transform per example,
      vectorised per batch, parallel map, prefetch),
for the CT assignment's setting (SOURCE_CT, 128 px, batch 16) and the lab's (LAB, 256 px, batch 8),
and the ratio (b)/(a). Then it times training steps of the matching models on fixed batches, to
show whether the pipeline can keep up with training on this machine (training images per second
below the pipeline's means the pipeline does not starve training).

Synthetic arrays stand in for the data (pixel values do not change the cost of a transform).

    python benchmarks/bench_pipeline.py [--batches 50] [--warmup 5] [--images 160]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from lunghelpers import augment

SETTINGS = (
    # name, preset, ImageDataGenerator arguments of the same ranges, image size, batch size
    ("source 128px b16", augment.SOURCE_CT, dict(zoom_range=0.1, horizontal_flip=False), 128, 16),
    ("lab 256px b8", augment.LAB, dict(zoom_range=0.2, horizontal_flip=True), 256, 8),
)


def synthetic_pairs(count, size, seed=0):
    """Smooth random images in [0, 1] and thresholded int16 masks, (count, size, size, 1) each."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, size // 8, size // 8, 1), dtype=np.float32)
    images = tf.image.resize(coarse, (size, size), method="bilinear").numpy()
    masks = (images > 0.5).astype(np.int16)
    return images, masks


def images_per_second(dataset, batch_size, batches, warmup):
    """Iterate ``warmup`` batches, then time ``batches`` more; returns images per second."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def training_images_per_second(model, images, targets, steps, loss):
    """Time ``steps`` optimiser steps on one fixed batch after two warm-up steps."""
    model.compile(optimizer="adam", loss=loss)
    for _ in range(2):
        model.train_on_batch(images, targets)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, targets)
    return steps * len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=50, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--images", type=int, default=160, help="training images (CT split: 160)")
    parser.add_argument("--training-steps", type=int, default=5, help="timed steps (0 skips)")
    arguments = parser.parse_args()

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, {arguments.images} images, "
          f"{arguments.batches} timed batches after {arguments.warmup} warm-up batches")
    print(f"{'setting':<18} {'(a) ImageDataGenerator':>24} {'(b) make_dataset':>18} {'(b)/(a)':>8}")
    pipeline_rates = {}
    for name, preset, generator_arguments, size, batch_size in SETTINGS:
        images, masks = synthetic_pairs(arguments.images, size)
        source = augment.image_data_generator_pair(
            images,
            masks,
            batch_size,
            seed=220,
            rotation_range=preset.rotation_degrees,
            width_shift_range=preset.width_shift,
            height_shift_range=preset.height_shift,
            **generator_arguments,
        )
        ours = augment.make_dataset(images, masks, batch_size, augment=preset, seed=220)
        source_rate = images_per_second(source, batch_size, arguments.batches, arguments.warmup)
        our_rate = images_per_second(ours, batch_size, arguments.batches, arguments.warmup)
        pipeline_rates[name] = our_rate
        ratio = our_rate / source_rate
        print(f"{name:<18} {source_rate:>17.0f} img/s {our_rate:>12.0f} img/s {ratio:>7.1f}x")

    if arguments.training_steps < 1:
        return
    try:
        from lunghelpers import models
    except ImportError:
        print("lunghelpers.models is not available yet: training-step comparison skipped")
        return
    print(
        f"\nTraining throughput ({arguments.training_steps} steps on a fixed batch, "
        "after 2 warm-up steps)"
    )
    trainers = (
        ("source 128px b16", "simple_unet", lambda: models.simple_unet((128, 128, 1)), 128, 16),
        (
            "lab 256px b8",
            "unet base 16, BN, dropout 0.2",
            lambda: models.unet((256, 256, 1), base_filters=16, dropout_rate=0.2, batch_norm=True),
            256,
            8,
        ),
    )
    for name, model_name, build, size, batch_size in trainers:
        images, masks = synthetic_pairs(batch_size, size)
        targets = masks.astype(np.float32)
        rate = training_images_per_second(
            build(), images, targets, arguments.training_steps, "binary_crossentropy"
        )
        verdict = "keeps up" if pipeline_rates[name] > rate else "STARVES training"
        margin = pipeline_rates[name] / rate
        print(
            f"{name:<18} {model_name:<30} {rate:>8.1f} img/s; "
            f"pipeline {margin:.0f}x faster -> {verdict}"
        )


if __name__ == "__main__":
    main()
