"""Tests of the notebook series: structure, papermill runs of 05 and 06, and a report.

- Every notebook in ``notebooks/`` has exactly one cell tagged ``parameters``, is committed without
  outputs and names the ``python3`` kernel; papermill sees every parameter.
- Every parameter an experiment file sets is a parameter of each notebook the file runs (a name
  papermill injects but the notebook does not define would be silently ignored).
- Notebook 05 is the one training path: run through papermill it writes a complete run folder with
  one model file; run again with the same parameters it reuses the run and changes no file; with
  other parameters, or a misspelt one, it refuses and changes nothing. ``experiment.ensure_run``
  trains a missing run by executing it, and a run killed with SIGKILL mid-epoch resumes with every
  finished epoch kept, each once. 06 then evaluates a run folder without training again.
- ``report.run_report`` on two tiny runs, one made to fail, writes a report that records the
  failure, and a second report goes to a new folder.

The notebooks run in quick mode (``QUICK=True``) on 20 images of 32 px for one epoch, with the
explicit kernel name, as the report runs them.
"""

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

import keras
import nbformat
import numpy as np
import pandas as pd
import papermill
import psutil
import pytest
import yaml

from lunghelpers import experiment, paths, report, train

NOTEBOOKS = sorted(paths.NOTEBOOKS_ROOT.glob("*.ipynb"))
EXPERIMENT_FILES = sorted((paths.PROJECT_ROOT / "experiments").glob("*.yaml"))
#: Parameters the report sets for every run, on top of those of the experiment file.
REPORT_PARAMETERS = {"NAME", "RUN_DIR", "DATA_DIR"}
#: Overrides that keep a papermill run of the training notebook to a few seconds of training.
TINY_RUN = {"QUICK": True, "EPOCHS": 1, "LIMIT": 20, "IMAGE_SIZE": 32}
#: The CT assignment's recipe, which the training notebook's parameters cell must hold by default.
CT_ASSIGNMENT_DEFAULTS = {
    "NAME": "ct-assignment",
    "DATASET": "ct",
    "DATA_DIR": None,
    "IMAGE_SIZE": (128, 128),
    "SPLIT": (0.6, 0.2, 0.2),
    "SHUFFLE_SPLIT": False,
    "SEED": 220,
    "BATCH_SIZE": 16,
    "EPOCHS": 40,
    "LEARNING_RATE": 0.001,
    "OPTIMIZER": "adam",
    "SCHEDULE": "source",
    "MODEL": "simple_unet",
    "LOSS": "bce",
    "AUGMENT": "source",
    "NORMALIZATION": "minmax",
    "MIXED_PRECISION": False,
}


def read_notebook(path):
    return nbformat.read(path, as_version=4)


def parameters_cells(notebook):
    return [
        cell
        for cell in notebook.cells
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])
    ]


def parameter_defaults(path):
    """``{NAME: default}`` of a notebook's parameters cell; defaults that are not literals map to None."""
    (cell,) = parameters_cells(read_notebook(path))
    defaults = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        defaults[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        defaults[target.id] = None
    return defaults


def experiment_parameters(path):
    """``{notebook: set of parameter names}`` that an experiment file passes to each of its notebooks."""
    names = {}
    for scale in report.SCALES:
        for run in report.load_experiments(path, scale=scale)[1]:
            for notebook in run.notebooks:
                names.setdefault(notebook, set()).update(run.parameters)
    return names


def execute(notebook, output, parameters):
    """Run a notebook of the series with papermill, as the report does."""
    papermill.execute_notebook(
        str(paths.NOTEBOOKS_ROOT / notebook),
        str(output),
        parameters=parameters,
        kernel_name=report.KERNEL_NAME,
        cwd=str(paths.NOTEBOOKS_ROOT),
        progress_bar=False,
    )


def file_digests(folder):
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ----------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_exactly_one_parameters_cell(path):
    assert len(parameters_cells(read_notebook(path))) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(path):
    code_cells = [cell for cell in read_notebook(path).cells if cell.cell_type == "code"]
    with_outputs = [number for number, cell in enumerate(code_cells) if cell.outputs]
    counted = [number for number, cell in enumerate(code_cells) if cell.execution_count is not None]
    assert not with_outputs, f"code cells {with_outputs} have outputs"
    assert not counted, f"code cells {counted} have an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_names_the_python3_kernel(path):
    kernelspec = read_notebook(path).metadata["kernelspec"]
    assert kernelspec["name"] == "python3"
    assert kernelspec["language"] == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_papermill_sees_every_parameter(path):
    """papermill skips a parameter line holding more than one '=' (even in its comment), so it could not list it."""
    seen = set(papermill.inspect_notebook(str(path)))
    assert seen == set(parameter_defaults(path))


@pytest.mark.parametrize("experiment_file", EXPERIMENT_FILES, ids=lambda path: path.name)
def test_every_parameter_of_an_experiment_file_belongs_to_a_notebook_it_runs(experiment_file):
    """The report passes each notebook its own parameters; one that no notebook has would be lost."""
    notebooks = experiment_parameters(experiment_file)
    defined = set().union(*(parameter_defaults(paths.NOTEBOOKS_ROOT / notebook) for notebook in notebooks))
    names = set().union(*notebooks.values())
    assert not sorted((names | REPORT_PARAMETERS) - defined)


def test_a_misspelt_experiment_parameter_is_refused_with_the_closest_name(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "parameters": {"EPOCH": 3}}]}))
    with pytest.raises(report.ExperimentFileError, match=r"EPOCH \(did you mean EPOCHS\?\)"):
        report.load_experiments(path)


def test_training_notebook_holds_the_ct_assignment_recipe():
    defaults = parameter_defaults(paths.NOTEBOOKS_ROOT / "05_training.ipynb")
    differing = {
        name: defaults.get(name, "<missing>")
        for name, value in CT_ASSIGNMENT_DEFAULTS.items()
        if defaults.get(name, "<missing>") != value
    }
    assert not differing


# ----------------------------------------------------------------------------------------------
# Execution


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Run 05 with overridden parameters; return the parameters, the run folder and its files then."""
    folder = tmp_path_factory.mktemp("notebooks")
    run_dir = folder / "papermill-run"
    parameters = {**TINY_RUN, "NAME": "papermill-run", "RUN_DIR": str(run_dir)}
    execute("05_training.ipynb", folder / "05_training.ipynb", parameters)
    return parameters, run_dir, file_digests(run_dir)


def test_training_notebook_writes_the_run_folder(trained_run):
    _, run_dir, _ = trained_run
    record = train.read_json(run_dir / "params.json")["params"]
    assert (record["name"], record["epochs"], record["run_dir"]) == ("papermill-run", 1, str(run_dir))
    # The overrides, and quick mode's smaller batch (the CT assignment's 16 becomes 8).
    assert (record["image_size"], record["limit"], record["batch_size"]) == ([32, 32], 20, 8)
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0]
    assert history["learning_rate"].iloc[0] == pytest.approx(0.001)
    assert history["seconds"].iloc[0] > 0
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 32, 32, 1)
    metrics = train.read_json(run_dir / "metrics.json")
    assert {"last_loss", "best_val_loss", "best_val_dice", "best_epoch", "epochs_completed"} <= set(metrics)
    assert (metrics["best_epoch"], metrics["epochs_completed"]) == (1, 1)
    assert not [key for key in metrics if key.startswith("test_")]
    assert (run_dir / "figures" / "learning_curves.png").stat().st_size > 0
    # One model file; Keras's backup is gone once the run finished.
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "figures", "history.csv", "metrics.json", "model.keras", "params.json"]


def test_running_the_training_notebook_again_reuses_the_finished_run(trained_run, tmp_path):
    parameters, run_dir, files = trained_run
    output = tmp_path / "again.ipynb"
    execute("05_training.ipynb", output, parameters)
    assert file_digests(run_dir) == files
    printed = "".join(
        "".join(out.get("text", "")) for cell in read_notebook(output).cells for out in cell.get("outputs", [])
    )
    assert "Epoch 1/1" not in printed  # nothing was trained again


def test_other_parameters_under_the_same_name_are_refused_and_change_nothing(trained_run, tmp_path):
    parameters, run_dir, files = trained_run
    with pytest.raises(papermill.PapermillExecutionError, match=r"LOSS: 'bce' there, 'dice' here.*Set NAME"):
        execute("05_training.ipynb", tmp_path / "other.ipynb", {**parameters, "LOSS": "dice"})
    with pytest.raises(papermill.PapermillExecutionError, match=r"EPOCH \(did you mean EPOCHS\?\)"):
        execute("05_training.ipynb", tmp_path / "typo.ipynb", {**parameters, "EPOCH": 3})
    assert file_digests(run_dir) == files


def test_ensure_run_returns_a_finished_run_or_names_what_differs(trained_run):
    parameters, run_dir, files = trained_run
    run = experiment.ensure_run(run_dir, **parameters)
    assert run.path == run_dir and run.finished
    assert experiment.ensure_run(run_dir).path == run_dir  # "the run in this folder", whatever it set
    with pytest.raises(train.RunParametersError, match=r"IMAGE_SIZE: \[32, 32\] there, \[48, 48\] here"):
        experiment.ensure_run(run_dir, **{**parameters, "IMAGE_SIZE": 48})
    assert file_digests(run_dir) == files


def test_ensure_run_trains_a_missing_run_by_executing_the_training_notebook(tmp_path):
    run = experiment.ensure_run(tmp_path / "new", **TINY_RUN, LOSS="dice")
    assert run.finished and run.params()["loss"] == "dice"
    executed = read_notebook(run.path / "05_training.ipynb")
    assert any("model.fit(" in cell.source for cell in executed.cells if cell.cell_type == "code")
    assert len(run.read_history()) == 1


def test_a_training_run_killed_mid_epoch_resumes_and_loses_no_finished_epoch(tmp_path):
    """SIGKILL papermill and its kernel during epoch 3 of 12, run the notebook again: epochs 1-12, each once."""
    run_dir = tmp_path / "killed"
    # Quick mode would cap the run at 2 epochs: the same tiny set without it.
    parameters = {**TINY_RUN, "QUICK": False, "EPOCHS": 12, "LIMIT": 40, "BATCH_SIZE": 8, "RUN_DIR": str(run_dir)}
    arguments = [sys.executable, "-m", "papermill", str(paths.NOTEBOOKS_ROOT / "05_training.ipynb"),
                 str(tmp_path / "first.ipynb"), "--cwd", str(paths.NOTEBOOKS_ROOT), "-k", report.KERNEL_NAME,
                 "--no-progress-bar", "-y", json.dumps(parameters)]
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # BackupAndRestore's record of the epochs it backed up: kill once epoch 2 is, during epoch 3.
    backed_up = run_dir / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(backed_up.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    for victim in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
        victim.kill()
    process.wait()
    before = train.read_history(train.RunFolder(run_dir)).iloc[:2]
    assert list(before["epoch"]) == [0, 1] and not train.RunFolder(run_dir).finished

    run = experiment.ensure_run(run_dir, **{key: value for key, value in parameters.items() if key != "RUN_DIR"})
    history = run.read_history()
    assert list(history["epoch"]) == list(range(12))
    assert pd.read_csv(run.history_path)["epoch"].tolist().count(0) == 1
    pd.testing.assert_frame_equal(history.iloc[:2], before)  # the backed-up epochs, as they were
    assert run.finished and train.read_json(run.metrics_path)["epochs_completed"] == 12


def test_evaluation_notebook_scores_the_run_without_training_again(trained_run, tmp_path):
    _, run_dir, files = trained_run
    model_bytes = (run_dir / "model.keras").read_bytes()
    metrics_before = train.read_json(run_dir / "metrics.json")
    execute("06_evaluation_iou.ipynb", tmp_path / "06_evaluation_iou.ipynb", {"RUN_DIR": str(run_dir)})
    metrics = train.read_json(run_dir / "metrics.json")
    new_keys = {"test_accuracy", "test_mean_iou", "test_mean_iou@0.1", "test_dice", "n_test"}
    assert new_keys <= set(metrics) - set(metrics_before)
    assert metrics["n_test"] == 4  # the last 20 % of the 20 images
    assert 0.0 <= metrics["test_mean_iou"] <= 1.0
    assert metrics["test_dice_ci_low"] <= metrics["test_dice"] <= metrics["test_dice_ci_high"]
    assert "mean over images" in metrics["definitions"]["test_*"] and "best_*" in metrics["definitions"]
    assert metrics["best_epoch"] == metrics_before["best_epoch"]
    assert (run_dir / "model.keras").read_bytes() == model_bytes
    assert file_digests(run_dir)["history.csv"] == files["history.csv"]


def test_report_records_a_failed_run_and_never_overwrites(tmp_path):
    def experiment_file(name, runs):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": "tiny",
            "description": "two tiny runs of the training notebook, one of them broken",
            "notebooks": ["05_training.ipynb"],
            "parameters": TINY_RUN,
            "runs": runs,
        }))
        return path

    broken = {"name": "broken", "parameters": {"LOSS": "no_such_loss"}}
    reports_root = tmp_path / "reports"
    first_index = report.run_report(
        [experiment_file("both", [{"name": "good"}, broken])],
        reports_root=reports_root, progress=False,
    )

    page = first_index.read_text(encoding="utf-8")
    assert ">good</td>" in page and ">broken</td>" in page
    assert "background:#fde8e8" in page  # the failed run's status cell
    assert "Unknown loss name" in page  # the notebook's error, in the failure section
    assert "Quick scale: these runs trained 1 epochs at 32x32 px on at most 20 images" in page  # no results, says the banner
    summary = pd.read_csv(first_index.parent / "summary.csv").set_index("run")
    assert summary.loc["good", "status"] == "ok" and summary.loc["broken", "status"] == "failed"
    good_metrics = train.read_json(first_index.parent / "runs" / "good" / "metrics.json")
    assert summary.loc["good", "epochs_completed"] == good_metrics["epochs_completed"] == 1
    assert f"{good_metrics['seconds_per_epoch']:.4f}" in page
    first_files = file_digests(first_index.parent)

    second_index = report.run_report(
        [experiment_file("broken-only", [broken])], reports_root=reports_root, progress=False
    )
    assert second_index.parent != first_index.parent
    assert sorted(path.name for path in reports_root.iterdir()) == sorted(
        [first_index.parent.name, second_index.parent.name]
    )
    assert file_digests(first_index.parent) == first_files


def test_distribute_trains_under_a_mirrored_strategy_on_two_logical_cpus(tmp_path):
    """DISTRIBUTE = True: the batch is split across devices (two logical CPUs here), same run folder."""
    run_dir = tmp_path / "mirrored"
    environment = {**os.environ, "LUNGHELPERS_LOGICAL_CPUS": "2"}
    parameters = {**TINY_RUN, "DISTRIBUTE": True, "RUN_DIR": str(run_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(paths.NOTEBOOKS_ROOT / "05_training.ipynb"), str(tmp_path / "out.ipynb"),
         "--cwd", str(paths.NOTEBOOKS_ROOT), "-k", report.KERNEL_NAME, "--no-progress-bar", "-y", json.dumps(parameters)],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = "".join("".join(out.get("text", "")) for cell in read_notebook(tmp_path / "out.ipynb").cells
                      for out in cell.get("outputs", []))
    assert "2 device(s)" in printed
    run = train.RunFolder(run_dir)
    assert run.finished and run.params()["distribute"] is True and len(run.read_history()) == 1
    assert keras.models.load_model(run.model_path, compile=False).output_shape == (None, 32, 32, 1)


def test_cache_trains_from_disk_on_the_same_split(tmp_path, monkeypatch):
    """CACHE = True: the run streams its batches from an on-disk cache; the split is the in-memory one."""
    run = experiment.ensure_run(tmp_path / "cached", **TINY_RUN, CACHE=True)
    assert run.finished and run.params()["cache"] is True and len(run.read_history()) == 1
    cached = experiment.prepare_data(experiment.load_config(run.path), progress=False)
    in_memory = experiment.prepare_data(dataclasses.replace(experiment.load_config(run.path), cache=False), progress=False)
    assert isinstance(cached.test.images, experiment.CachedRows)
    assert cached.test.names == in_memory.test.names and len(cached.train.images) == len(in_memory.train.images)
    np.testing.assert_allclose(np.asarray(cached.test.images), in_memory.test.images, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.asarray(cached.test.masks), in_memory.test.masks)
    with pytest.raises(ValueError, match="CACHE"):
        experiment.prepare_data(experiment.ExperimentConfig(cache=True, val_noise_fraction=0.5))
