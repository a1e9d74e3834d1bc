"""What the report reads out of finished runs: held-out scores, comparisons and studies.

Made-up run folders (``params.json``, ``metrics.json``, ``per_image.csv`` written by hand), so no
test here trains; one scores a hand-weighted model on a few embedded X-rays.

- A run whose notebooks wrote no ``per_image.csv`` is scored by the report on its held-out split
  (a multi-class run per lung too); a run already scored, or one without a model, is left alone.
- The results table shows each lung's Dice of a multi-class run.
- A run is compared only with runs scored on the same images: the same data, split, seed and
  validation noise, and the same image names.
- Sweeps over ``SEED`` only share one figure per dataset: one point per run group with its spread
  over the seeds, and ``judgement.compare_settings`` between groups scored on the same images.
- A training-set size sweep is read with the dataset's word for its images (slices, X-rays).
- The parameter tables name the precision policy each run got (``MIXED_PRECISION = "auto"``).
"""

import re

import numpy as np
import pandas as pd
import pytest

from lunghelpers import experiment, plots, report, train

NAMES = [f"img{i:02d}" for i in range(12)]


def made_up(report_dir, name, params, scores, split="val", group=None, swept=None, names=NAMES, metrics=None):
    """A finished run's folder as the notebooks and the report leave it, and its result."""
    run = train.open_run(report_dir / "runs" / name, params)
    scores = np.broadcast_to(np.asarray(scores, dtype=float), (len(names),))
    pd.DataFrame({"name": names, "dice": scores}).to_csv(run.per_image_path, index=False)
    train.write_json(run.metrics_path, {f"n_{split}": len(names), f"{split}_dice": float(scores.mean()), **(metrics or {})})
    spec = report.RunSpec(name, ["05_training.ipynb"], {"NAME": name}, group=group or name, swept=swept or {})
    return report.RunResult(spec, run.path)


def files_of(results):
    return {result.spec.name: report._run_files(result) for result in results}


def compared(sentences):
    """``[(run, run it is compared with)]`` of compare_runs/compare_settings sentences."""
    return re.findall(r"Mean \w+ Dice: (\S+) [0-9.]+, (\S+) [0-9.]+", "\n".join(sentences))


# --- comparisons ----------------------------------------------------------------------------------


def test_runs_are_compared_only_with_the_first_run_scored_on_the_same_images(tmp_path):
    ct, noisy = {"dataset": "ct", "seed": 1}, {"dataset": "ct", "seed": 1, "val_noise_fraction": 0.5}
    results = [
        made_up(tmp_path, "ct-a", ct, 0.9),
        made_up(tmp_path, "xray-a", {"dataset": "xray", "seed": 1}, 0.8),  # other images, same names
        made_up(tmp_path, "ct-noisy-a", noisy, 0.7),  # the same names, with noise
        made_up(tmp_path, "ct-b", {**ct, "epochs": 9}, 0.92),  # trained otherwise, scored on ct-a's images
        made_up(tmp_path, "ct-seed-2", {"dataset": "ct", "seed": 2}, 0.9, names=[f"other{i}" for i in range(12)]),
        made_up(tmp_path, "ct-test", ct, 0.9, split="test"),
        made_up(tmp_path, "ct-noisy-b", noisy, 0.75),
        made_up(tmp_path, "xray-b", {"dataset": "xray", "seed": 1}, 0.85),
    ]
    assert compared(report.comparisons(results, files_of(results))) == [
        ("ct-b", "ct-a"), ("ct-noisy-b", "ct-noisy-a"), ("xray-b", "xray-a")]


def test_a_run_that_has_not_learned_is_not_called_better_or_worse(tmp_path):
    ct = {"dataset": "ct", "seed": 1}
    results = [made_up(tmp_path, "ct-a", ct, 0.9), made_up(tmp_path, "ct-quick", ct, 0.2),
               made_up(tmp_path, "ct-b", ct, [0.95, 0.97] * 6)]
    quick, learned = report.comparisons(results, files_of(results))
    assert "ct-quick has **not learned to find the lungs yet**" in quick and "better" not in quick
    assert "**ct-b is better than ct-a** beyond the noise" in learned


@pytest.mark.parametrize("a, b, same", [
    ({"val_noise_fraction": 0.0, "noise_sigma": 0.2}, {}, True),  # no noise: its sigma is nothing
    ({"val_noise_fraction": 0.5}, {"val_noise_fraction": 0.5, "noise_sigma": 0.2}, False),
    ({"train_noise_fraction": 0.5, "train_size": 5, "loss": "dice"}, {}, True),  # training only
    ({"image_size": [64, 64]}, {"image_size": [128, 128]}, False),
    ({"mask_mode": "labels"}, {"mask_mode": "left_right"}, False),  # other masks
    ({"data_dir": "/data/a"}, {"data_dir": None}, False),
], ids=["unused-sigma", "sigma", "training", "size", "masks", "data"])
def test_what_makes_two_runs_scored_on_the_same_images(a, b, same):
    table = pd.DataFrame({"name": NAMES, "dice": 0.9})
    key_a, key_b = (report.held_out_images({"metrics": {"n_val": 12}, "per_image": table, "params": {"seed": 1, **params}})
                    for params in (a, b))
    assert (key_a == key_b) is same
    test_split = [report.held_out_images({"metrics": {"n_test": 12}, "per_image": table, "params": params})
                  for params in ({"val_noise_fraction": 0.5}, {})]
    assert test_split[0] == test_split[1], "a test split never gets noise"


# --- studies --------------------------------------------------------------------------------------


def seed_sweep(tmp_path, group, params, scores, dataset="ct"):
    """Two runs of a sweep over SEED only, each seed with its own validation images."""
    return [made_up(tmp_path, f"{group}-seed-{seed}", {"dataset": dataset, "seed": seed, **params}, score,
                    group=group, swept={"SEED": seed}, names=[f"s{seed}-{name}" for name in NAMES])
            for seed, score in zip((1, 2), scores)]


def test_seed_only_sweeps_share_one_figure_per_dataset_with_one_point_per_group(tmp_path, monkeypatch):
    drawn = []
    original = plots.sweep_errorbars
    monkeypatch.setattr(plots, "sweep_errorbars", lambda table, parameter, *a, **k: (
        drawn.append((table.copy(), parameter)), original(table, parameter, *a, **k))[1])
    noisy = {"val_noise_fraction": 0.5}
    results = [*seed_sweep(tmp_path, "c1-base", {}, (0.95, 0.93)),
               *seed_sweep(tmp_path, "c2-noisy-train", {**noisy, "train_noise_fraction": 0.5}, (0.9, 0.8)),
               *seed_sweep(tmp_path, "c3-noisy-val", noisy, (0.7, 0.6)),
               *seed_sweep(tmp_path, "x1-base", {}, (0.9, 0.85), dataset="xray")]
    found = report.studies(results, tmp_path, files_of(results))
    assert [study["caption"] for study in found] == [
        "c1-base, c2-noisy-train, c3-noisy-val: validation Dice (kept model, per-image mean), mean and sd over 2 "
        "seed(s) per run",
        "x1-base: validation Dice (kept model, per-image mean), mean and sd over 2 seed(s) per run"]
    assert [parameter for _, parameter in drawn] == ["run", "run"]
    points = drawn[0][0].groupby("run")["dice"].agg(["mean", "std", "count"])
    assert points["count"].tolist() == [2, 2, 2]
    assert points["mean"].round(3).tolist() == [0.94, 0.85, 0.65]
    assert points["std"].round(4).tolist() == [round(np.std([0.95, 0.93], ddof=1), 4),
                                                round(np.std([0.9, 0.8], ddof=1), 4), round(np.std([0.7, 0.6], ddof=1), 4)]
    assert (tmp_path / "study_seeds_c1-base.png").stat().st_size > 0
    assert (tmp_path / "study_seeds_x1-base.png").stat().st_size > 0
    ct_reading = found[0]["sentence"]
    # c2 and c3 share the half-noisy validation slices of both seeds; c1 was scored on clean ones.
    assert compared([ct_reading]) == [("c3-noisy-val", "c2-noisy-train")]
    assert "**c3-noisy-val or c2-noisy-train, on the same validation slices?**" in ct_reading
    assert "c3-noisy-val 0.650, c2-noisy-train 0.850" in ct_reading  # each image's Dice over the seeds
    assert "paired over 24 validation images" in ct_reading and "**c2-noisy-train is better than c3-noisy-val**" in ct_reading
    assert "c1-base was scored on validation slices that no other run of this figure was scored on" in ct_reading
    assert found[1]["sentence"] == ""  # one group: nothing to compare it with


@pytest.mark.parametrize("dataset, words", [("xray", "X-rays"), ("ct", "slices")])
def test_a_size_sweep_is_read_with_the_datasets_word_for_its_images(tmp_path, dataset, words):
    results = [made_up(tmp_path, f"size-{size}", {"dataset": dataset, "seed": 1, "train_size": size},
                       np.linspace(0.93, 0.97, 12), group="size", swept={"TRAIN_SIZE": size}) for size in (5, 20)]
    (study,) = report.studies(results, tmp_path, files_of(results))
    assert study["caption"] == "size: validation Dice (kept model, per-image mean) by TRAIN_SIZE, 1 seed(s)"
    assert "**Even 5 images are within the noise of the best**" in study["sentence"]
    assert f"a few {words} suffice" in study["sentence"]


# --- the results table and the report's own scoring -----------------------------------------------


def test_the_results_table_shows_each_lung_of_a_multi_class_run(tmp_path):
    lungs = {"val_dice_class1": 0.912, "val_dice_class2": 0.884}
    results = [made_up(tmp_path, "left-right", {"mask_mode": "labels"}, 0.9, metrics=lungs),
               made_up(tmp_path, "one-class", {}, 0.9)]
    table = report.results_table(results, files_of(results)).set_index("run")
    assert table.loc["left-right", "validation right lung Dice (class 1, kept model, per-image mean)"] == "0.912"
    assert table.loc["left-right", "validation left lung Dice (class 2, kept model, per-image mean)"] == "0.884"
    assert table.loc["one-class"].isna()["validation right lung Dice (class 1, kept model, per-image mean)"]


def xray_run(folder, **settings):
    """A 3-class X-ray run folder of 10 embedded 32 px X-rays (2 validation) with a hand-weighted model."""
    from known_models import left_right_model

    config = experiment.ExperimentConfig(dataset="xray", mask_mode="left_right", image_size=32, limit=10,
                                         split=[0.8, 0.2], shuffle_split=True, seed=3, **settings)
    run = train.open_run(folder, config.to_dict())
    left_right_model(32).save(run.model_path)
    return run, config


def test_the_report_scores_a_run_its_notebooks_did_not_score_per_lung_too(tmp_path):
    run, config = xray_run(tmp_path / "run")
    assert report.score_held_out(run.path) is None
    table = pd.read_csv(run.per_image_path, dtype={"name": str})
    assert table["name"].tolist() == experiment.prepare_data(config, progress=False).val.names
    metrics = train.read_json(run.metrics_path)
    assert metrics["n_val"] == 2 and metrics["val_dice"] == pytest.approx(table["dice"].mean())
    assert {"val_dice_class1", "val_dice_class2"} <= set(metrics)
    assert "scored by the report on its 2 val images" in (run.path / "log.txt").read_text()
    # Scored already (by notebook 06 or an earlier call): left as it is.
    pd.DataFrame({"name": ["kept"], "dice": [0.5]}).to_csv(run.per_image_path, index=False)
    assert report.score_held_out(run.path) is None
    assert pd.read_csv(run.per_image_path)["name"].tolist() == ["kept"]


def test_a_run_without_a_model_is_not_scored_and_a_failed_scoring_is_the_runs_error(tmp_path):
    untrained = train.open_run(tmp_path / "untrained", experiment.ExperimentConfig().to_dict())
    assert report.score_held_out(untrained.path) is None and not untrained.per_image_path.exists()
    run, _ = xray_run(tmp_path / "run", data_dir=str(tmp_path / "nowhere"))
    error = report.score_held_out(run.path)
    assert error.startswith("held-out evaluation: ") and "nowhere" in error
    assert not run.per_image_path.exists()


def test_an_experiment_file_giving_notebook_06_a_multi_class_run_is_refused(tmp_path):
    path = tmp_path / "lungs.yaml"
    path.write_text("notebooks: [05_training.ipynb, 06_evaluation_iou.ipynb]\n"
                    "runs:\n  - {name: binary}\n  - {name: lungs, parameters: {MASK_MODE: labels}}\n")
    with pytest.raises(report.ExperimentFileError, match=r"run 'lungs' has MASK_MODE 'labels' \(3 classes\), but "
                                                         r"06_evaluation_iou.ipynb scores one-class runs only"):
        report.load_experiments(path)
    path.write_text(path.read_text().replace("parameters: {MASK_MODE: labels}",
                                             "notebooks: [05_training.ipynb], parameters: {MASK_MODE: labels}"))
    _, runs = report.load_experiments(path)
    assert [run.notebooks for run in runs] == [["05_training.ipynb", "06_evaluation_iou.ipynb"], ["05_training.ipynb"]]


# --- parameters -----------------------------------------------------------------------------------


def test_the_parameter_tables_name_the_precision_each_run_got(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "bfloat16_is_fast", lambda: False)
    results = [made_up(tmp_path, "plain", {"mixed_precision": False}, 0.9),
               made_up(tmp_path, "auto", {"mixed_precision": "auto"}, 0.9),
               made_up(tmp_path, "bf16", {"mixed_precision": True}, 0.9)]
    table, shared = report.parameter_tables(results, files_of(results))
    assert table["MIXED_PRECISION"].to_dict() == {"plain": "false", "auto": '"auto"', "bf16": "true"}
    assert table["PRECISION_POLICY"].to_dict() == {"plain": '"float32"', "auto": '"float32"', "bf16": '"mixed_bfloat16"'}
    same = results[:2]
    table, shared = report.parameter_tables(same, files_of(same))
    assert shared["PRECISION_POLICY"] == '"float32"' and "PRECISION_POLICY" not in table
