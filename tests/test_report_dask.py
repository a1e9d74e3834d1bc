"""The report on a Dask cluster: ``--jobs 2`` starts a LocalCluster of two single-threaded workers.

- Two tiny runs on the cluster give the same histories as the same runs one after the other
  (to within float32 rounding: the kernels use fewer TensorFlow threads, which changes the order
  of floating-point sums, so the last digits may differ).
- A worker killed in the middle of a run fails that run with a message naming the worker; the
  other run finishes and the report is written.
"""

import threading
import time

import numpy as np
import psutil
import pytest
import yaml

from lunghelpers import report, train

TINY = {"QUICK": True, "EPOCHS": 1, "LIMIT": 20, "IMAGE_SIZE": 32}


def experiment_file(tmp_path, runs):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "notebooks": ["05_training.ipynb"], "parameters": TINY, "runs": runs}))
    return path


def test_a_local_cluster_gives_the_sequential_reports_histories(tmp_path):
    path = experiment_file(tmp_path, [{"name": "bce"}, {"name": "dice", "parameters": {"LOSS": "dice"}}])
    sequential = report.run_report([path], reports_root=tmp_path / "one", progress=False)
    distributed = report.run_report([path], reports_root=tmp_path / "two", progress=False, jobs=2)
    for name in ("bce", "dice"):
        one = train.read_history(train.RunFolder(sequential.parent / "runs" / name)).drop(columns="seconds")
        two = train.read_history(train.RunFolder(distributed.parent / "runs" / name)).drop(columns="seconds")
        assert list(one.columns) == list(two.columns) and len(one) == len(two) == 1
        np.testing.assert_allclose(one.to_numpy(float), two.to_numpy(float), rtol=1e-3, atol=1e-4)
    assert "failed" not in (distributed.parent / "summary.csv").read_text()


def kernel_writing(history_path):
    """The kernel process that has ``history_path`` open (CSVLogger keeps it open while training)."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(process.info["cmdline"] or []) and any(
                    handle.path == str(history_path) for handle in process.open_files()):
                return process
        except (psutil.Error, OSError):
            continue
    return None


def test_a_killed_worker_fails_its_run_and_the_others_finish(tmp_path):
    path = experiment_file(tmp_path, [
        {"name": "victim", "parameters": {"QUICK": False, "EPOCHS": 60, "BATCH_SIZE": 8}},
        {"name": "survivor"},
    ])
    reports_root = tmp_path / "reports"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(index=report.run_report(
        [path], reports_root=reports_root, progress=False, jobs=2)))
    thread.start()
    deadline = time.monotonic() + 300
    kernel = None
    while kernel is None and time.monotonic() < deadline:
        histories = list(reports_root.glob("*/runs/victim/history.csv"))
        if histories and histories[0].stat().st_size > 0:
            kernel = kernel_writing(histories[0].resolve())
        time.sleep(0.2)
    assert kernel is not None, "the victim run never started training"
    worker = kernel.parent()
    worker.kill()
    kernel.kill()
    thread.join(timeout=300)
    assert not thread.is_alive() and "index" in outcome
    summary = (outcome["index"].parent / "summary.csv").read_text()
    rows = {line.split(",")[0]: line for line in summary.splitlines()[1:]}
    assert ",ok," in rows["survivor"] and ",failed," in rows["victim"]
    page = outcome["index"].read_text(encoding="utf-8")
    assert "the Dask worker running it failed" in page and "Incomplete" not in page
