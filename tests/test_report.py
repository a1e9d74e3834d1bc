"""Tests of lunghelpers.report's reading of experiment files (no notebook is executed here).

- Parameters merge in the documented order: the file's, the run's, then at quick scale the file's
  ``quick`` and the run's ``quick``; every run gets its ``NAME``.
- ``--data-root`` becomes an absolute ``DATA_DIR`` for each run's dataset, whether the root is the
  set itself or holds it in a known sub-folder, because the notebooks run in ``notebooks/`` and a
  relative path typed elsewhere would point nowhere there.
- Bad experiment files and roots fail with an error naming the file, the run or the folder.
- A report folder is new, absolute, and never an existing one.
"""

import os

import pytest
import yaml

from lunghelpers import report


def write_experiment(folder, document, name="experiment.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(document))
    return path


DOCUMENT = {
    "name": "merge",
    "notebooks": ["05_training.ipynb"],
    "parameters": {"EPOCHS": 40, "LOSS": "bce", "DATASET": "ct"},
    "quick": {"EPOCHS": 3},
    "runs": [
        {"name": "plain"},
        {"name": "own", "parameters": {"LOSS": "dice", "EPOCHS": 50}, "quick": {"EPOCHS": 2},
         "reference": {"val_dice": 0.99}},
    ],
}


@pytest.mark.parametrize(
    "scale, expected",
    [
        ("full", {"plain": (40, "bce"), "own": (50, "dice")}),
        ("quick", {"plain": (3, "bce"), "own": (2, "dice")}),
    ],
)
def test_parameters_merge_in_the_documented_order(tmp_path, scale, expected):
    header, runs = report.load_experiments(write_experiment(tmp_path, DOCUMENT), scale=scale)
    assert header["name"] == "merge"
    assert {run.name: (run.parameters["EPOCHS"], run.parameters["LOSS"]) for run in runs} == expected
    assert [run.parameters["NAME"] for run in runs] == ["plain", "own"]
    assert runs[1].reference == {"val_dice": 0.99}
    assert all("DATA_DIR" not in run.parameters for run in runs)


def make_set(root, dataset):
    """Empty folders in the layout of a real set: 2d_images/ + 2d_masks/ or cxr/ + masks/."""
    for folder in {"ct": ("2d_images", "2d_masks"), "xray": ("cxr", "masks")}[dataset]:
        (root / folder).mkdir(parents=True)
    return root


def test_a_relative_data_root_becomes_an_absolute_data_dir_per_dataset(tmp_path, monkeypatch):
    make_set(tmp_path / "shared" / "kaggle_ct2d", "ct")
    make_set(tmp_path / "shared" / "xray", "xray")
    document = {**DOCUMENT, "runs": [{"name": "ct-run"}, {"name": "xray-run", "parameters": {"DATASET": "xray"}}]}
    path = write_experiment(tmp_path, document)
    monkeypatch.chdir(tmp_path)
    _, runs = report.load_experiments(path, data_root="shared")
    data_dirs = {run.name: run.parameters["DATA_DIR"] for run in runs}
    assert data_dirs == {
        "ct-run": str(tmp_path.resolve() / "shared" / "kaggle_ct2d"),
        "xray-run": str(tmp_path.resolve() / "shared" / "xray"),
    }
    assert all(os.path.isabs(value) for value in data_dirs.values())
    # The root may also be the set itself.
    assert report.resolve_data_dir("shared/kaggle_ct2d", "ct") == tmp_path.resolve() / "shared" / "kaggle_ct2d"


def test_a_data_root_without_the_dataset_is_refused(tmp_path):
    make_set(tmp_path / "xray", "xray")
    with pytest.raises(report.ExperimentFileError, match=r"holds no ct set: expected 2d_images/"):
        report.resolve_data_dir(tmp_path, "ct")
    with pytest.raises(report.ExperimentFileError, match="is not a folder"):
        report.resolve_data_dir(tmp_path / "missing", "ct")


@pytest.mark.parametrize(
    "document, message",
    [
        ({"name": "x", "runs": []}, "non-empty 'runs' list"),
        ({**DOCUMENT, "runs": [{"parameters": {}}]}, r"run #1 needs a 'name'"),
        ({**DOCUMENT, "runs": [{"name": "a"}, {"name": "a"}]}, "run name 'a' appears twice"),
        ({**DOCUMENT, "notebooks": ["99_missing.ipynb"]}, "missing notebook '99_missing.ipynb'"),
        ({"runs": [{"name": "a"}]}, "run 'a' names no notebooks"),
    ],
)
def test_bad_experiment_files_name_what_is_wrong(tmp_path, document, message):
    path = write_experiment(tmp_path, document)
    with pytest.raises(report.ExperimentFileError, match=message):
        report.load_experiments(path)


def test_missing_file_invalid_yaml_and_unknown_scale(tmp_path):
    with pytest.raises(report.ExperimentFileError, match="does not exist"):
        report.load_experiments(tmp_path / "nothing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("runs: [unclosed\n")
    with pytest.raises(report.ExperimentFileError, match="broken.yaml is not valid YAML"):
        report.load_experiments(broken)
    with pytest.raises(report.ExperimentFileError, match="scale must be one of"):
        report.load_experiments(write_experiment(tmp_path, DOCUMENT), scale="medium")


def test_report_folders_are_new_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = report.new_report_dir("same", "reports")
    second = report.new_report_dir("same", "reports")
    assert first.is_absolute() and first.parent == tmp_path.resolve() / "reports"
    assert first != second and first.is_dir() and second.is_dir()


def test_cross_site_folders_are_read_and_skipped_without_a_data_root(tmp_path):
    path = tmp_path / "sites.yaml"
    path.write_text(
        "notebooks: [05_training.ipynb]\n"
        "runs:\n  - {name: a, cross_site: [montgomery]}\n  - {name: b}\n"
        "  - {name: c, cross_site: montgomery}\n"
    )
    with pytest.raises(report.ExperimentFileError, match="cross_site must be a list"):
        report.load_experiments(path)
    path.write_text(path.read_text().replace("  - {name: c, cross_site: montgomery}\n", ""))
    _, (a, b) = report.load_experiments(path)
    assert (a.cross_site, b.cross_site, a.data_root) == (["montgomery"], [], None)
    (tmp_path / "run").mkdir()
    assert report.cross_site(a, tmp_path / "run") is None
    assert "skipped: no --data-root" in (tmp_path / "run" / "log.txt").read_text()


def test_unknown_sections_and_run_keys_are_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("notebooks: [05_training.ipynb]\nparamters: {EPOCHS: 3}\nruns: [{name: a}]\n")
    with pytest.raises(report.ExperimentFileError, match=r"'paramters' \(did you mean 'parameters'\?\)"):
        report.load_experiments(path)
    path.write_text("notebooks: [05_training.ipynb]\nruns: [{name: a, quik: {EPOCHS: 1}}]\n")
    with pytest.raises(report.ExperimentFileError, match=r"unknown keys \['quik'\]"):
        report.load_experiments(path)


def test_a_sweep_expands_into_one_run_per_combination(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "notebooks: [05_training.ipynb]\n"
        "runs:\n  - name: size\n    sweep: {TRAIN_SIZE: [5, 10], SEED: [1, 2]}\n    quick: {sweep: {TRAIN_SIZE: [5]}}\n"
    )
    _, runs = report.load_experiments(path, scale="full")
    assert [run.name for run in runs] == ["size-train-size-5-seed-1", "size-train-size-5-seed-2",
                                         "size-train-size-10-seed-1", "size-train-size-10-seed-2"]
    assert runs[3].parameters["TRAIN_SIZE"] == 10 and runs[3].parameters["SEED"] == 2 and runs[3].group == "size"
    _, runs = report.load_experiments(path, scale="quick")
    assert [run.name for run in runs] == ["size-train-size-5"]
