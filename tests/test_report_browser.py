"""The report as a person sees it: rendered by headless Chromium at 1400 px.

A small report of two made-up runs (one finished with figures, one failed) is written with
``report.write_report``; Chromium loads it and a script in the page measures what a reader would
notice: whether the page is wider than the window, whether every image loaded. The test also
checks the table's headers and that every link of the page points to a file of the report.

It needs Debian's ``chromium`` (``.ci/run`` installs it); without it the test is skipped, saying so.
"""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lunghelpers import report, train  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")

MEASURE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(image => !(image.complete && image.naturalWidth > 0)).length;
  const result = document.createElement('pre');
  result.id = 'measured';
  result.textContent = JSON.stringify({scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth, images: images.length, broken: broken});
  document.body.appendChild(result);
});
</script></body>"""


def made_up_run(report_dir, name, epochs=6, wide=False, failed=False):
    """A run folder as the notebooks write it, with a history, metrics, per-image scores, a figure."""
    run = train.open_run(report_dir / "runs" / name, {"epochs": epochs, "image_size": [64, 64], "limit": 60,
                                                        "loss": "bce" if not wide else "x" * 300,
                                                        "schedule": "cosine"})
    spec = report.RunSpec(name, ["05_training.ipynb"], {"NAME": name}, {"test_accuracy": 0.978})
    result = report.RunResult(spec, run.path, seconds=42.0)
    (run.path / "log.txt").write_text("log\n")
    if failed:
        result.error = "05_training.ipynb: ValueError: Unknown loss name"
        return result
    rng = np.random.default_rng(0)
    history = pd.DataFrame({"epoch": range(epochs), "loss": np.linspace(0.6, 0.2, epochs),
                            "val_loss": np.linspace(0.5, 0.25, epochs), "val_dice": np.linspace(0.3, 0.9, epochs),
                            "learning_rate": [1e-3] * epochs})
    history.to_csv(run.history_path, index=False)
    train.write_json(run.metrics_path, {**train.summarize_history(history), "n_test": 12, "test_accuracy": 0.95,
                                        "test_dice": 0.9, "test_dice_ci_low": 0.85, "test_dice_ci_high": 0.94})
    pd.DataFrame({"name": [f"img{i}" for i in range(12)], "dice": rng.uniform(0.8, 1, 12),
                  "iou": rng.uniform(0.7, 1, 12), "iou@0.1": rng.uniform(0.6, 1, 12)}).to_csv(run.per_image_path, index=False)
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot(history["epoch"] + 1, history["val_dice"])
    figure.savefig(run.figures_dir / "learning_curves.png")
    plt.close(figure)
    notebook = run.path / "notebooks" / "05_training.html"
    notebook.parent.mkdir()
    notebook.write_text("<html><body>executed notebook</body></html>")
    result.executed, result.rendered = [notebook.with_suffix(".ipynb")], [notebook]
    return result


def measure(index, tmp_path):
    shutil.copytree(index.parent, tmp_path / "copy")
    page = tmp_path / "copy" / "measured.html"
    page.write_text(index.read_text(encoding="utf-8").replace("</body>", MEASURE, 1), encoding="utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
    assert found, "the page's measuring script did not run"
    return json.loads(html.unescape(found.group(1))), dom


@pytest.mark.parametrize("wide", [False, True], ids=["plain", "long-parameter-values"])
def test_the_report_fits_1400_px_loads_every_image_and_links_only_its_own_files(tmp_path, wide):
    report_dir = tmp_path / "report"
    results = [made_up_run(report_dir, "ct-source", wide=wide), made_up_run(report_dir, "ct-broken", failed=True)]
    header = {"name": "tiny", "description": "two made-up runs", "source": "tiny.yaml"}
    index = report.write_report(header, results, report_dir, "quick", "python -m lunghelpers.report tiny.yaml")
    measured, dom = measure(index, tmp_path)
    assert measured["scrollWidth"] <= measured["innerWidth"], "the page needs horizontal scrolling at 1400 px"
    assert measured["images"] >= 1 and measured["broken"] == 0
    for header_text in ("kept epoch", "validation Dice (kept epoch, pooled)",
                        "test Dice (kept model, per-image mean, 95% interval)", "source: test_accuracy"):
        assert header_text in dom
    links = re.findall(r'href="([^"#][^"]*)"', index.read_text(encoding="utf-8"))
    assert links and all((report_dir / link).is_file() for link in links), links
    assert "Unknown loss name" in dom


def test_an_unfinished_report_says_so(tmp_path):
    report_dir = tmp_path / "report"
    results = [made_up_run(report_dir, "first")]
    header = {"name": "tiny", "description": "", "source": "tiny.yaml"}
    page = report.write_report(header, results, report_dir, "full", "cmd", total=3).read_text(encoding="utf-8")
    assert "Incomplete:</b> 1 of 3 runs finished" in page and "(first)" in page
    page = report.write_report(header, results, report_dir, "full", "cmd", total=1).read_text(encoding="utf-8")
    assert "Incomplete" not in page and "Quick scale" not in page


def test_a_sweep_over_sizes_and_seeds_becomes_one_study_with_error_bars(tmp_path):
    report_dir = tmp_path / "report"
    rng = np.random.default_rng(1)
    results = []
    for size in (5, 20):
        for seed in (1, 2):
            name = f"c4-size-train-size-{size}-seed-{seed}"
            result = made_up_run(report_dir, name)
            result.spec = report.RunSpec(name, ["05_training.ipynb"], {"NAME": name}, {}, "c4-size",
                                         swept={"TRAIN_SIZE": size, "SEED": seed})
            scores = np.clip(rng.normal(0.6 + size / 100, 0.02, 12), 0, 1)
            pd.DataFrame({"name": [f"img{i}" for i in range(12)], "dice": scores}).to_csv(result.run_dir / "per_image.csv", index=False)
            train.write_json(result.run_dir / "metrics.json", {"n_val": 12, "val_dice": float(scores.mean())})
            results.append(result)
    header = {"name": "sweep", "description": "", "source": "sweep.yaml"}
    index = report.write_report(header, results, report_dir, "full", "cmd")
    page = index.read_text(encoding="utf-8")
    assert "<h2>Studies</h2>" in page
    assert "c4-size: validation Dice (kept model, per-image mean) by TRAIN_SIZE, 2 seed(s)" in page
    assert "Mean validation" in page and "training-set size: 5 images" in page  # judgement.size_sweep's sentence
    assert (report_dir / "study_c4-size.png").stat().st_size > 0
    measured, _ = measure(index, tmp_path)
    assert measured["broken"] == 0 and measured["scrollWidth"] <= measured["innerWidth"]
