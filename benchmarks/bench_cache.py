"""Peak memory of the on-disk cache against loading a whole set into memory (the source's way).

    python benchmarks/bench_cache.py [--count 400] [--source-size 512] [--image-size 256]

Generates ``count`` synthetic CT slices in a temporary folder, then runs each step in a fresh
child process and samples its resident memory every 5 ms (Linux: /proc/self/statm):

1. baseline, as the source did: ``data.load_pairs`` into float32 images and int16 masks;
2. ``data.build_cache`` into uint8 memory-mapped .npy files, one slice at a time;
3. one epoch of ``data.cache_dataset`` batches (TensorFlow imported before measuring).

It prints each step's time and peak memory growth: "resident" counts every page the process
holds, "anonymous" leaves out pages of memory-mapped files, which the system can drop at any time
because they are copies of the cache on disk. The last lines extrapolate to the lab's 8000 slices.
"""

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

MEBIBYTE = 2**20
TARGET_COUNT = 8000


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
    from lunghelpers import data

    image_dir, mask_dir = data.dataset_dirs(folder)
    size = (image_size, image_size)
    if step == "epoch":
        # Imported before sampling starts, so TensorFlow's own memory is not counted.
        import tensorflow as tf  # noqa: F401
    figures = {}
    sampler = MemorySampler()
    start = time.perf_counter()
    if step == "baseline":
        images, masks, _ = data.load_pairs(image_dir, mask_dir, image_size=size, progress=False)
        figures["array_mebibytes"] = (images.nbytes + masks.nbytes) / MEBIBYTE
    elif step == "cache":
        data.build_cache(
            image_dir, mask_dir, Path(folder) / "cache", image_size=size, progress=False
        )
    else:
        dataset = data.cache_dataset(Path(folder) / "cache", batch_size=batch_size, repeat=False)
        figures["batches"] = sum(1 for _ in dataset)
    figures["seconds"] = time.perf_counter() - start
    figures["resident"], figures["anonymous"] = sampler.stop()
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=400, help="synthetic CT slices to generate (default 400)"
    )
    parser.add_argument(
        "--source-size", type=int, default=512, help="side of the generated slices (default 512)"
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="side after resizing (default 256)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    arguments = parser.parse_args()

    from lunghelpers import synthetic

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "ct"
        start = time.perf_counter()
        synthetic.generate(
            "ct", arguments.count, folder, size=arguments.source_size, progress=False
        )
        seconds = time.perf_counter() - start
        source = f"{arguments.count} CT slices of {arguments.source_size} px"
        print(f"generated {source} in {seconds:.1f} s")
        print(f"{'step':<40}{'seconds':>9}{'resident MiB':>14}{'anonymous MiB':>15}")
        baseline = measure("baseline", folder, arguments.image_size, arguments.batch_size)
        cache = measure("cache", folder, arguments.image_size, arguments.batch_size)
        epoch = measure("epoch", folder, arguments.image_size, arguments.batch_size)
        rows = [
            ("load_pairs (float32 in memory)", baseline),
            ("build_cache (uint8 on disk)", cache),
            (f"cache_dataset, one epoch ({epoch['batches']} batches)", epoch),
        ]
        for label, figures in rows:
            print(
                f"{label:<40}{figures['seconds']:9.1f}"
                f"{figures['resident']:14.0f}{figures['anonymous']:15.0f}"
            )
        cache_files = (folder / "cache").iterdir()
        cache_mebibytes = sum(path.stat().st_size for path in cache_files) / MEBIBYTE

    count, side = arguments.count, arguments.image_size
    array_mebibytes = baseline["array_mebibytes"]
    cache_anonymous = max(cache["anonymous"], epoch["anonymous"], 1.0)
    print(f"in-memory arrays: {array_mebibytes:.0f} MiB; cache on disk: {cache_mebibytes:.0f} MiB")
    print(
        "baseline anonymous peak / cache anonymous peak: "
        f"{baseline['anonymous'] / cache_anonymous:.1f}x at {count} slices"
    )
    print(
        f"extrapolated to {TARGET_COUNT} slices at {side} px: in memory "
        f"{array_mebibytes / count * TARGET_COUNT / 1024:.2f} GiB of arrays; cache "
        f"{cache_mebibytes / count * TARGET_COUNT / 1024:.2f} GiB on disk (its pages may stay "
        "resident as file cache), while its anonymous memory does not grow with the count"
    )


if __name__ == "__main__":
    main()
