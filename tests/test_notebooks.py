"""Tests of the notebook series: structure, papermill runs of 05 and 06, and a report.

- Every notebook in ``notebooks/`` has exactly one cell tagged ``parameters``, is committed without
  outputs and names the ``python3`` kernel.
- Every parameter an experiment file sets is a parameter of each notebook the file runs (a name
  papermill injects but the notebook does not define would be silently ignored).
- Notebook 05 runs through papermill with overridden parameters and writes a complete run folder;
  06 then evaluates that folder without training again, and a run of other data is refused.
- ``report.run_report`` on two tiny runs, one made to fail, writes a report that records the
  failure, and a second report goes to a new folder.

The notebooks run in quick mode (``QUICK=True``) on 20 images of 32 px for one epoch, with the
explicit kernel name, as the report runs them.
"""

import ast
import hashlib

import keras
import nbformat
import pandas as pd
import papermill
import pytest
import yaml

from lunghelpers import experiment, paths, report, train

NOTEBOOKS = sorted(paths.NOTEBOOKS_ROOT.glob("*.ipynb"))
EXPERIMENT_FILES = sorted((paths.PROJECT_ROOT / "experiments").glob("*.yaml"))
#: Parameters the report sets for every run, on top of those of the experiment file.
REPORT_PARAMETERS = {"NAME", "RUN_DIR", "DATA_DIR"}
#: Overrides that keep a papermill run of the training notebook to a few seconds of training.
TINY_RUN = {"QUICK": True, "EPOCHS": 1, "LIMIT": 20, "IMAGE_SIZE": 32}
#: Notebooks that train or read one run and must agree on its defaults.
RUN_NOTEBOOKS = ("05_training.ipynb", "06_evaluation_iou.ipynb", "07_gallery_by_iou_band.ipynb")
#: The CT assignment's source defaults (SPEC A), which the training notebook must hold.
CT_ASSIGNMENT_DEFAULTS = {
    "NAME": "ct-assignment",
    "DATASET": "ct",
    "DATA_DIR": None,
    "IMAGE_SIZE": (128, 128),
    "SPLIT": (0.6, 0.2, 0.2),
    "SHUFFLE_SPLIT": False,
    "SEED": 220,
    "LIMIT": None,
    "MASK_MODE": "binary",
    "NORMALIZATION": "minmax",
    "BATCH_SIZE": 16,
    "EPOCHS": 40,
    "LEARNING_RATE": 0.001,
    "OPTIMIZER": "adam",
    "SCHEDULE": "source",
    "MODEL": "simple_unet",
    "BASE_FILTERS": 8,
    "DEPTH": 4,
    "DROPOUT_RATE": 0.0,
    "BATCH_NORM": False,
    "UPSAMPLING": "transpose",
    "LOSS": "bce",
    "AUGMENT": "source",
    "MIXED_PRECISION": False,
    "RUN_DIR": None,
    "OVERWRITE": False,
    "RESUME": False,
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
    document = yaml.safe_load(path.read_text())
    shared = set(document.get("parameters", {})) | set(document.get("quick", {}))
    names = {}
    for run in document["runs"]:
        run_names = shared | set(run.get("parameters", {})) | set(run.get("quick", {}))
        for notebook in run.get("notebooks", document.get("notebooks", [])):
            names.setdefault(notebook, set()).update(run_names)
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


def test_the_run_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    missing = [name for name in RUN_NOTEBOOKS if name not in names]
    assert not missing, f"missing notebooks {missing} in {paths.NOTEBOOKS_ROOT}"


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
def test_notebooks_define_every_parameter_of_the_experiment_file(experiment_file):
    for notebook, names in experiment_parameters(experiment_file).items():
        path = paths.NOTEBOOKS_ROOT / notebook
        assert path.is_file(), f"{experiment_file.name} runs {notebook}, which does not exist"
        defined = set(parameter_defaults(path))
        missing = sorted((names | REPORT_PARAMETERS) - defined)
        assert not missing, f"{notebook} lacks parameters {missing} set by {experiment_file.name}"


def test_training_notebook_holds_the_ct_assignment_defaults():
    defaults = parameter_defaults(paths.NOTEBOOKS_ROOT / "05_training.ipynb")
    differing = {
        name: defaults.get(name, "<missing>")
        for name, value in CT_ASSIGNMENT_DEFAULTS.items()
        if defaults.get(name, "<missing>") != value
    }
    assert not differing


@pytest.mark.parametrize("notebook", RUN_NOTEBOOKS[1:])
def test_run_notebooks_share_the_training_defaults(notebook):
    """06 and 07 rebuild 05's split and model, so shared parameters must default alike."""
    training = parameter_defaults(paths.NOTEBOOKS_ROOT / "05_training.ipynb")
    reader = parameter_defaults(paths.NOTEBOOKS_ROOT / notebook)
    shared = set(training) & set(reader)
    assert set(CT_ASSIGNMENT_DEFAULTS) - {"OVERWRITE", "RESUME"} <= shared
    assert {name: reader[name] for name in shared} == {name: training[name] for name in shared}


# ----------------------------------------------------------------------------------------------
# Execution


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Run 05 with overridden parameters; return the parameters, the run folder and its metrics then."""
    folder = tmp_path_factory.mktemp("notebooks")
    run_dir = folder / "papermill-run"
    parameters = {**TINY_RUN, "NAME": "papermill-run", "RUN_DIR": str(run_dir)}
    execute("05_training.ipynb", folder / "05_training.ipynb", parameters)
    return parameters, run_dir, train.read_json(run_dir / "metrics.json")


def test_training_notebook_writes_the_run_folder(trained_run):
    _, run_dir, metrics_after_training = trained_run
    record = train.read_json(run_dir / "params.json")["params"]
    assert (record["name"], record["epochs"], record["run_dir"]) == ("papermill-run", 1, str(run_dir))
    # The overrides, and quick mode's smaller batch (the CT assignment's 16 becomes 8).
    assert (record["image_size"], record["limit"], record["batch_size"]) == ([32, 32], 20, 8)
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 1
    assert history["learning_rate"].iloc[0] == pytest.approx(0.001)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert model.output_shape == (None, 32, 32, 1)
    expected_keys = {"train_loss", "val_loss", "val_dice", "best_epoch", "epochs_completed"}
    assert expected_keys <= set(metrics_after_training)
    assert metrics_after_training["epochs_completed"] == 1
    assert not [key for key in metrics_after_training if key.startswith("test_")]
    assert (run_dir / "figures" / "learning_curves.png").stat().st_size > 0


def test_training_notebook_trains_exactly_as_train_experiment(trained_run, tmp_path):
    """Notebook 05 and ``experiment.train_experiment`` (which 06 and 07 use to train a missing run) agree.

    The same parameters must give the same model whichever way the run was trained, so nothing the
    notebook does for the student (such as showing a batch) may change the training stream.
    """
    _, run_dir, _ = trained_run
    recorded = train.read_json(run_dir / "params.json")["params"]
    recorded.pop("n_classes")
    config = experiment.ExperimentConfig(**{**recorded, "run_dir": str(tmp_path / "again")})
    experiment.train_experiment(config, verbose=0)
    by_notebook = pd.read_csv(run_dir / "history.csv").drop(columns="seconds")
    by_function = pd.read_csv(tmp_path / "again" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(by_notebook, by_function)


def test_evaluation_notebook_scores_the_run_without_training_again(trained_run, tmp_path):
    parameters, run_dir, metrics_after_training = trained_run
    model_bytes = (run_dir / "model.keras").read_bytes()
    execute("06_evaluation_iou.ipynb", tmp_path / "06_evaluation_iou.ipynb", parameters)
    metrics = train.read_json(run_dir / "metrics.json")
    new_keys = {"test_accuracy", "test_mean_iou", "test_mean_iou@0.1", "test_dice", "n_test"}
    assert new_keys <= set(metrics) - set(metrics_after_training)
    assert metrics["n_test"] == 4  # the last 20 % of the 20 images
    assert 0.0 <= metrics["test_mean_iou"] <= 1.0
    assert metrics["best_epoch"] == metrics_after_training["best_epoch"]
    assert len(pd.read_csv(run_dir / "per_image.csv")) == 4
    assert (run_dir / "figures" / "threshold_sweep.png").stat().st_size > 0
    assert (run_dir / "model.keras").read_bytes() == model_bytes


def test_reading_notebooks_refuse_a_run_trained_on_other_data(tmp_path):
    """06 and 07 get their run from ``experiment.ensure_run``: a run of other data is refused, not scored."""
    trained = experiment.ExperimentConfig(run_dir=str(tmp_path), image_size=64, limit=60)
    train.write_json(tmp_path / "params.json", {"params": trained.to_dict()})
    train.write_json(tmp_path / "metrics.json", {"val_loss": 0.1})
    (tmp_path / "model.keras").write_bytes(b"")
    assert experiment.ensure_run(trained) == tmp_path
    full_size = experiment.ExperimentConfig(run_dir=str(tmp_path))
    expected = r"image_size: run \[64, 64\], here \[128, 128\], limit: run 60, here None"
    with pytest.raises(ValueError, match=expected):
        experiment.ensure_run(full_size)


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
    assert "<td>good</td>" in page and "<td>broken</td>" in page
    assert "<td class='failed'>failed</td>" in page
    assert "Unknown loss name" in page  # the notebook's error, in the failure section
    assert report.QUICK_SCALE_NOTE in page  # quick-scale numbers are flagged as no results
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
