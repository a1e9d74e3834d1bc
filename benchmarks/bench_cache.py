"""Peak memory of training on a large set: the in-memory path against CACHE = True, measured.

    python benchmarks/bench_cache.py [--count 8000] [--source-size 256] [--image-size 256]

Generates ``count`` synthetic CT slices in a temporary folder, then runs each step in a fresh
child process and samples its resident memory every 5 ms (Linux: /proc/self/statm):

1. the in-memory path, as the source did: ``experiment.prepare_data`` with ``cache=False``
   (float32 images and int16 masks of every slice in memory); loading only, no training;
2. the training notebook's path with ``cache=True``: ``prepare_data`` builds the on-disk cache
   (uint8, one slice at a time) and ``make_datasets`` streams from it; then the lab's CT model
   (U-Net, 8 base filters, batch norm, Dice loss, 256 px, batch 8) trains ONE FULL EPOCH over the
   80 % training part (``model.fit`` with the training notebook's ``steps_per_epoch``).

It prints each step's time, the process's peak resident memory (TensorFlow included) and the
peak "anonymous" memory (resident pages less those of memory-mapped files, which the system can
drop at any time because they are copies of the cache on disk). Nothing is extrapolated.
"""

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

MEBIBYTE = 2**20


class MemorySampler:
    """Sample this process's resident and anonymous memory in a thread; keep the peaks (bytes)."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.start_resident, self.start_anonymous = self.read()
        self.peak_resident, self.peak_anonymous = self.start_resident, self.start_anonymous
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def read(self):
        """Return (resident, anonymous) bytes from /proc/self/statm (resident and shared pages)."""
        fields = Path("/proc/self/statm").read_text().split()
        resident, shared = int(fields[1]) * self.page_size, int(fields[2]) * self.page_size
        return resident, resident - shared

    def sample(self):
        """Keep the highest readings until stop() is called."""
        while self.running:
            resident, anonymous = self.read()
            self.peak_resident = max(self.peak_resident, resident)
            self.peak_anonymous = max(self.peak_anonymous, anonymous)
            time.sleep(self.interval)

    def stop(self):
        """Stop sampling; return (resident growth, anonymous growth) in MiB."""
        self.running = False
        self.thread.join()
        return (
            (self.peak_resident - self.start_resident) / MEBIBYTE,
            (self.peak_anonymous - self.start_anonymous) / MEBIBYTE,
        )


def run_step(step, folder, image_size, batch_size, results):
    """Run one step in this (child) process and put its figures (a dict) in results."""
    from lunghelpers import experiment, losses, metrics  # quiets TensorFlow's start-up lines

    import tensorflow as tf  # noqa: F401  (imported before sampling: its own memory is part of the peak)

    config = experiment.ExperimentConfig(
        name="memory", data_dir=str(folder), image_size=image_size, split=(0.8, 0.2), shuffle_split=True,
        cache=(step == "cache"), model="unet", base_filters=8, depth=4, batch_norm=True, dropout_rate=0.2,
        loss="dice", batch_size=batch_size, augment="none",
    )
    figures = {}
    sampler = MemorySampler()
    start = time.perf_counter()
    splits = experiment.prepare_data(config, progress=False)
    figures["load_seconds"] = time.perf_counter() - start
    if step == "cache":
        import keras

        model = experiment.build_model(config)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=losses.get_loss("dice"),
                      metrics=metrics.training_metrics(1))
        train_ds, val_ds = experiment.make_datasets(config, splits)
        steps = len(splits.train.images) // batch_size
        history = model.fit(train_ds, validation_data=val_ds, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
        figures["steps"] = steps
        figures["val_dice"] = history.history["val_dice"][-1]
    figures["seconds"] = time.perf_counter() - start
    figures["resident"], figures["anonymous"] = sampler.stop()
    figures["peak_resident"] = sampler.peak_resident / MEBIBYTE
    results.put(figures)


def measure(step, folder, image_size, batch_size):
    """Run a step in a fresh spawned process and return its figures."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=run_step, args=(step, folder, image_size, batch_size, results))
    process.start()
    figures = results.get()
    process.join()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=8000, help="synthetic CT slices to generate (default 8000)")
    parser.add_argument("--source-size", type=int, default=256, help="side of the generated slices (default 256)")
    parser.add_argument("--image-size", type=int, default=256, help="side the model sees (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    arguments = parser.parse_args()

    from lunghelpers import paths, synthetic

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "ct"
        start = time.perf_counter()
        synthetic.generate("ct", arguments.count, folder, size=arguments.source_size, progress=False)
        print(f"generated {arguments.count} CT slices of {arguments.source_size} px in {time.perf_counter() - start:.1f} s")
        print(f"{'step':<58}{'seconds':>9}{'peak resident MiB':>19}{'anonymous growth MiB':>22}")
        rows = [("in memory: prepare_data (loading only)", measure("memory", folder, arguments.image_size, arguments.batch_size))]
        cached = measure("cache", folder, arguments.image_size, arguments.batch_size)
        rows.append((f"CACHE = True: build cache + one epoch ({cached['steps']} steps)", cached))
        for label, figures in rows:
            print(f"{label:<58}{figures['seconds']:9.1f}{figures['peak_resident']:19.0f}{figures['anonymous']:22.0f}")
        caches = list((paths.DATA_ROOT / "cache").glob("ct-*"))
        print(f"one epoch on {arguments.count} slices at {arguments.image_size} px: peak resident memory "
              f"{cached['peak_resident'] / 1024:.2f} GiB (validation Dice after it {cached['val_dice']:.3f})")
        for cache in caches:  # the benchmark's own cache of its temporary set
            if str(folder) in (cache / "cache.json").read_text():
                import shutil

                shutil.rmtree(cache)


if __name__ == "__main__":
    main()
