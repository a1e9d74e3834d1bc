"""The robustness study's two routes in ``experiments/poster.yaml`` and lesson 09's ``ROUTE``.

- The X-ray route (``x1``-``x4``) is the CT route's study (``c1``-``c4``) on chest X-rays: the same
  runs, sweeps, optimizer, loss and schedule, differing only in the images (``DATASET: xray``,
  ``MASK_MODE: left_right``, the image size), with no reference figures (the poster's are CT ones).
- At full scale every point of every study runs with at least three seeds and the size sweeps go
  from 5 to 105 images; at quick scale one seed and the sizes 5 and 20, as the CT route.
- With a data root, each route's runs read their own set (``xray/`` and ``kaggle_ct2d/``), and the
  real Shenzhen set gives the poster's 400 training and 100 validation images.
- Every run is 3-class, so no run lists notebook 06 (one-class runs only); the report scores them.
- ``judgement.size_sweep(images=...)`` and ``judgement.route_reference`` name the route's images,
  branch by branch.
- Lesson 09 chooses a route with ``ROUTE`` (default ``"ct"``); its groups are the file's.
- Slow (about 3 minutes on 2 busy cores; the five tiny runs are trained once, for the module): the
  X-ray route's quick runs go through the report on the embedded data with poster.yaml's own
  notebooks and all finish; the report scores them itself (per lung too), draws the size sweep and
  one figure for the three seed-only sweeps, never calls the X-rays slices, and compares only
  runs scored on the same images; lesson 09 with ``ROUTE = "xray"`` reads those same runs without
  training and speaks of X-rays.
"""

import os
import re

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import yaml

from lunghelpers import data, experiment, judgement, paths, report

POSTER = paths.PROJECT_ROOT / "experiments" / "poster.yaml"
LESSON = paths.NOTEBOOKS_ROOT / "09_robustness.ipynb"
SHENZHEN = paths.PROJECT_ROOT.parent / "shared" / "data" / "xray"
#: The study's runs by role: the CT route's group and the X-ray route's.
ROLES = {
    "baseline": ("c1-baseline", "x1-baseline"),
    "noise in training and validation": ("c2-noise-train-and-val", "x2-noise-train-and-val"),
    "clean training, noisy validation": ("c3-clean-train-noisy-val", "x3-clean-train-noisy-val"),
    "training-set size": ("c4-size", "x4-size"),
}
#: What may differ between a CT run and its X-ray twin: the images, and the run's name.
IMAGE_PARAMETERS = {"DATASET", "MASK_MODE", "IMAGE_SIZE", "NAME"}


def runs_by_group(scale, data_root=None):
    _, runs = report.load_experiments(POSTER, scale=scale, data_root=data_root)
    groups = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def points(runs):
    """``{swept values other than SEED: [seeds]}`` of one group's runs."""
    found = {}
    for run in runs:
        point = tuple(sorted((key, value) for key, value in run.swept.items() if key != "SEED"))
        found.setdefault(point, []).append(run.parameters["SEED"])
    return found


# --- the experiment file --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", report.SCALES)
def test_each_xray_run_is_its_ct_twin_on_xrays(scale):
    groups = runs_by_group(scale)
    assert set(groups) == {name for pair in ROLES.values() for name in pair}, "poster.yaml's runs are the two routes' studies"
    for role, (ct, xray) in ROLES.items():
        assert [run.swept for run in groups[ct]] == [run.swept for run in groups[xray]], f"{role}: other sweeps"
        for ct_run, xray_run in zip(groups[ct], groups[xray]):
            differing = {key for key in set(ct_run.parameters) | set(xray_run.parameters)
                         if ct_run.parameters.get(key) != xray_run.parameters.get(key)}
            assert differing <= IMAGE_PARAMETERS, f"{xray_run.name} differs from {ct_run.name} in {differing - IMAGE_PARAMETERS}"
            assert xray_run.name == xray_run.group + ct_run.name[len(ct_run.group):]
            assert xray_run.parameters["DATASET"] == "xray" and xray_run.parameters["MASK_MODE"] == "left_right"
            assert ct_run.parameters["DATASET"] == "ct" and ct_run.parameters["MASK_MODE"] == "labels"
            assert xray_run.reference == {}, "the poster reported no X-ray figures"
            assert ct_run.reference, f"{ct_run.name}: the poster's CT figure is gone"


@pytest.mark.parametrize("scale", report.SCALES)
def test_no_run_lists_the_one_class_lesson(scale):
    for run in report.load_experiments(POSTER, scale=scale)[1]:
        assert run.parameters["MASK_MODE"] in ("labels", "left_right")
        assert report.ONE_CLASS_LESSON not in run.notebooks and "05_training.ipynb" in run.notebooks, run.name


def test_the_full_scale_xray_route_has_the_posters_recipe_on_its_images():
    groups = runs_by_group("full")
    for _, xray in ROLES.values():
        for run in groups[xray]:
            parameters = run.parameters
            assert parameters["LIMIT"] == 500 and parameters["SPLIT"] == [0.8, 0.2] and parameters["SHUFFLE_SPLIT"] is True
            assert parameters["IMAGE_SIZE"] in (128, 192, 256)
            assert (parameters["OPTIMIZER"], parameters["LOSS"], parameters["SCHEDULE"], parameters["EPOCHS"]) == (
                "rmsprop", "ce_dice", "plateau", 50)


@pytest.mark.parametrize("group", [name for pair in ROLES.values() for name in pair])
def test_every_point_runs_with_three_seeds_at_full_scale(group):
    found = points(runs_by_group("full")[group])
    assert all(len(set(seeds)) >= 3 for seeds in found.values()), found
    sizes = sorted(dict(point).get("TRAIN_SIZE") for point in found)
    if group.endswith("size"):
        assert sizes[0] == 5 and sizes[-1] == 105 and len(sizes) >= 5, sizes
    else:
        assert sizes == [None]


@pytest.mark.parametrize("group", [name for pair in ROLES.values() for name in pair])
def test_quick_scale_keeps_one_seed_and_small_sizes(group):
    runs = runs_by_group("quick")[group]
    found = points(runs)
    assert all(len(seeds) == 1 for seeds in found.values()), found
    assert all(run.parameters["IMAGE_SIZE"] == 64 and run.parameters["LIMIT"] == 60 for run in runs)
    if group.endswith("size"):
        assert sorted(dict(point)["TRAIN_SIZE"] for point in found) == [5, 20]
    else:
        assert len(runs) == 1


def test_a_data_root_gives_each_route_its_own_set(tmp_path):
    for folder in ("kaggle_ct2d/2d_images", "kaggle_ct2d/2d_masks", "xray/cxr", "xray/masks"):
        (tmp_path / folder).mkdir(parents=True)
    for group, runs in runs_by_group("full", data_root=tmp_path).items():
        expected = tmp_path / ("xray" if group.startswith("x") else "kaggle_ct2d")
        assert {run.parameters["DATA_DIR"] for run in runs} == {str(expected.resolve())}, group


@pytest.mark.skipif(not SHENZHEN.is_dir(), reason=f"the Shenzhen X-rays are not at {SHENZHEN}")
def test_the_shenzhen_set_gives_400_training_and_100_validation_xrays():
    runs = runs_by_group("full", data_root=SHENZHEN.parent)["x1-baseline"]
    for run in runs:
        parameters = run.parameters
        assert parameters["DATA_DIR"] == str(SHENZHEN.resolve())
        pairs = data.find_pairs(*data.dataset_dirs(parameters["DATA_DIR"], kind="xray"))
        count = min(parameters["LIMIT"], len(pairs))
        parts = data.split_indices(count, parameters["SPLIT"], shuffle=parameters["SHUFFLE_SPLIT"], seed=parameters["SEED"])
        assert [len(part) for part in parts] == [400, 100]
    splits = [set(data.split_indices(500, [0.8, 0.2], shuffle=True, seed=run.parameters["SEED"])[1]) for run in runs]
    assert len({frozenset(split) for split in splits}) == len(runs), "each seed draws its own validation images"


# --- the route's sentences ------------------------------------------------------------------------


def steady(mean, seed, count=20, spread=0.01):
    names = [f"image{i:02d}" for i in range(count)]
    return pd.Series(np.clip(mean + spread * np.random.default_rng(seed).standard_normal(count), 0, 1), index=names)


def test_size_sweep_names_the_routes_images_where_a_few_suffice():
    base = steady(0.95, seed=1)
    sweep = {5: base + np.random.default_rng(2).normal(0, 0.005, 20), 105: base}
    assert "a few slices suffice" in judgement.size_sweep(sweep)
    text = judgement.size_sweep(sweep, images="X-rays")
    assert "**Even 5 images are within the noise of the best**" in text and "a few X-rays suffice" in text
    assert "slices" not in text


@pytest.mark.parametrize("sweep, expected", [
    ({5: steady(0.2, 1), 20: steady(0.3, 2)}, "**No run has learned to find the lungs yet**"),
    ({5: steady(0.6, 1), 20: steady(0.95, 2), 105: steady(0.95, 3)}, "**From 20 images on**"),
], ids=["not-learned", "from-a-size-on"])
def test_size_sweeps_other_readings_do_not_depend_on_the_images_word(sweep, expected):
    text = judgement.size_sweep(sweep, images="X-rays", split="val")
    assert text == judgement.size_sweep(sweep, split="val") and expected in text


def test_the_stopgap_route_size_sweep_is_gone():
    assert not hasattr(judgement, "route_size_sweep")
    assert "route_size_sweep" not in LESSON.read_text(encoding="utf-8")


def test_route_reference_without_a_figure_says_there_is_none_on_these_images():
    text = judgement.route_reference("x1-baseline", 0.9312, None, images="X-rays", synthetic=False, quick=False)
    assert text.startswith("**x1-baseline**: validation Dice 0.931.")
    assert "**no figure on X-rays**" in text and "nothing to compare" in text


@pytest.mark.parametrize("settings, expected", [
    ({"synthetic": True, "quick": True}, "Quick mode"),
    ({"synthetic": True, "quick": False}, "embedded synthetic images"),
    ({"synthetic": False, "quick": False}, "**It matches**"),
], ids=["quick", "synthetic", "real"])
def test_route_reference_with_the_posters_figure_is_against_reference(settings, expected):
    text = judgement.route_reference("c1-baseline", 0.99, 0.991, images="slices", **settings)
    assert text == judgement.against_reference("c1-baseline", 0.99, 0.991, **settings) and expected in text


# --- lesson 09 ------------------------------------------------------------------------------------


def lesson_assignments(tagged_parameters):
    """``{name: value}`` of the literal assignments of lesson 09's parameters cell, or of its other cells."""
    cells = [cell for cell in nbformat.read(LESSON, as_version=4).cells if cell.cell_type == "code"
             and ("parameters" in cell.metadata.get("tags", [])) == tagged_parameters]
    found = {}
    for cell in cells:
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        found.update(experiment.literal_assignments(source))
    return found


def test_lesson_09_reads_the_ct_route_by_default_and_knows_the_files_groups():
    assert lesson_assignments(True)["ROUTE"] == "ct"
    lesson = lesson_assignments(False)
    groups, words = lesson["GROUPS"], lesson["IMAGE_WORDS"]
    assert set(groups) == set(words) == {"ct", "xray"}
    assert words == {"ct": "slices", "xray": "X-rays"}
    file_groups = set(runs_by_group("full"))
    for route, index in (("ct", 0), ("xray", 1)):
        assert sorted(groups[route].values()) == sorted(pair[index] for pair in ROLES.values())
        assert set(groups[route].values()) <= file_groups


# --- slow: the X-ray route's quick runs through the report, then lesson 09 --------------------------


@pytest.fixture(scope="module")
def xray_report(tmp_path_factory):
    """The report of the X-ray route's quick runs (poster.yaml's own runs and notebooks) on the embedded data."""
    folder = tmp_path_factory.mktemp("xray-route")
    document = yaml.safe_load(POSTER.read_text())
    document["runs"] = [run for run in document["runs"] if run["name"].startswith("x")]
    path = folder / "poster-xray.yaml"
    path.write_text(yaml.safe_dump(document))
    index = report.run_report([path], scale="quick", reports_root=folder / "reports", progress=False)
    return path, index


def test_the_xray_routes_quick_runs_finish_through_poster_yamls_notebooks(xray_report):
    _, index = xray_report
    summary = pd.read_csv(index.parent / "summary.csv").set_index("run")
    assert list(summary.index) == ["x1-baseline-seed-220", "x2-noise-train-and-val-seed-220",
                                   "x3-clean-train-noisy-val-seed-220", "x4-size-train-size-5", "x4-size-train-size-20"]
    assert set(summary["status"]) == {"ok"}, summary["status"]
    for run in summary.index:
        assert (index.parent / "runs" / run / "per_image.csv").is_file(), run
        assert "scored by the report on its 12 val images" in (index.parent / "runs" / run / "log.txt").read_text()
    metrics = report.read_json(index.parent / "runs" / "x1-baseline-seed-220" / "metrics.json")
    assert metrics["n_val"] == 12 and {"val_dice_class1", "val_dice_class2"} <= set(metrics)  # 20 % of 60, two lungs


def test_the_report_shows_the_xray_routes_lungs_studies_and_fair_comparisons(xray_report):
    _, index = xray_report
    page = index.read_text(encoding="utf-8")
    for lung in ("right lung Dice (class 1", "left lung Dice (class 2"):
        assert f"validation {lung}, kept model, per-image mean)" in page
    studies = page.split("<h2>Studies</h2>")[1].split("<h2>")[0]
    assert "x4-size: validation Dice (kept model, per-image mean) by TRAIN_SIZE, 1 seed(s)" in studies
    assert ("x1-baseline, x2-noise-train-and-val, x3-clean-train-noisy-val: validation Dice (kept model, per-image "
            "mean), mean and sd over 1 seed(s) per run") in studies
    assert {path.name for path in index.parent.glob("study_*.png")} == {"study_x4-size.png", "study_seeds_x1-baseline.png"}
    assert "Mean validation Dice by training-set size: 5 images" in studies and "slices" not in studies  # size_sweep
    # x2 and x3 are scored on the same half-noisy validation X-rays, x1 on clean ones.
    assert "<strong>x3-clean-train-noisy-val or x2-noise-train-and-val, on the same validation X-rays?</strong>" in studies
    assert "x1-baseline was scored on validation X-rays that no other run of this figure was scored on" in studies
    results = page.split("<h2>Results</h2>")[1].split("<h2>")[0]
    compared = re.findall(r"Mean validation Dice: (\S+) [0-9.]+, (\S+) [0-9.]+", results)
    assert sorted(compared) == [("x3-clean-train-noisy-val-seed-220", "x2-noise-train-and-val-seed-220"),
                                ("x4-size-train-size-20", "x1-baseline-seed-220"),
                                ("x4-size-train-size-5", "x1-baseline-seed-220")]


def test_lesson_09_on_the_xray_route_reads_the_routes_runs_and_speaks_of_xrays(xray_report, tmp_path):
    _, index = xray_report
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    os.symlink(index.parent / "runs", runs_dir / "quick")  # the lesson's RUNS_DIR/quick/<run name>: the report's runs
    models = sorted((index.parent / "runs").rglob("model.keras"))
    before = {path: path.stat().st_mtime_ns for path in models}
    assert len(before) == 5
    output = tmp_path / "09.ipynb"
    papermill.execute_notebook(str(LESSON), str(output), parameters={"ROUTE": "xray", "RUNS_DIR": str(runs_dir)},
                               kernel_name=report.KERNEL_NAME, cwd=str(paths.NOTEBOOKS_ROOT), progress_bar=False)
    assert {path: path.stat().st_mtime_ns for path in models} == before, "the lesson trained instead of reading the runs"
    texts = []
    for cell in nbformat.read(output, as_version=4).cells:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts.extend(str(value) for key, value in out.get("data", {}).items() if key in ("text/markdown", "text/plain"))
    shown = "\n".join(texts)
    assert "x1-baseline-seed-220" in shown and "c1-baseline" not in shown
    assert "validation X-rays per seed (1 seed(s))" in shown
    assert "**x1-baseline**: validation Dice" in shown and "no figure on X-rays" in shown  # route_reference
    assert "**Does noise the model never saw cost Dice?**" in shown and "x1-baseline on clean X-rays" in shown
    assert "**Does training with noise help on noisy X-rays?**" in shown
    assert "Mean validation Dice by training-set size: 5 images" in shown  # size_sweep
    assert "slices" not in shown, [line for line in shown.splitlines() if "slices" in line][:3]
