"""Bad parameters, experiment files, run folders and report commands: a table of cases.

Each case asserts the error class, that the message names the parameter, key or file at fault,
and that nothing on disk changed (every file's bytes and modification time are the same before
and after). The data layer and the synthetic generator have their own table in
``test_bad_inputs.py``.
"""

import subprocess
import sys

import pytest
import yaml

from lunghelpers import experiment, paths, report, train


def snapshot(folder):
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


CONFIG_CASES = [
    ({"dataset": "mri"}, "dataset"),
    ({"mask_mode": "classes"}, "mask_mode"),
    ({"model": "resnet"}, "model"),
    ({"name": "../escape"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": ""}, "name"),
    ({"name": ".hidden"}, "name"),
    ({"image_size": "64"}, "image_size"),
    ({"image_size": [64, "64"]}, "image_size"),
    ({"split": "0.8,0.2"}, "split"),
    ({"steps_per_epoch": -1}, "steps_per_epoch"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"weight_decay": -1}, "weight_decay"),
    ({"clipnorm": 0}, "clipnorm"),
    ({"ema_momentum": 1.0}, "ema_momentum"),
    ({"epochs": None}, "epochs"),
]


@pytest.mark.parametrize("values, named", CONFIG_CASES, ids=[f"{named}={values[named]!r}" for values, named in CONFIG_CASES])
def test_bad_configuration_values_are_refused_by_name(values, named, tmp_path):
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"\b{named}\b"):
        experiment.ExperimentConfig(**values)
    assert snapshot(tmp_path) == before


NAMESPACE_CASES = [({"EPOCH": 3}, "EPOCHS"), ({"LERNING_RATE": 0.1}, "LEARNING_RATE"),
                   ({"BATCHSIZE": 4}, "BATCH_SIZE"), ({"AUGMENTATION": "lab"}, "AUGMENT")]


@pytest.mark.parametrize("namespace, closest", NAMESPACE_CASES, ids=[next(iter(n)) for n, _ in NAMESPACE_CASES])
def test_misspelt_notebook_parameters_name_the_closest_one(namespace, closest):
    with pytest.raises(ValueError, match=rf"{next(iter(namespace))} \(did you mean {closest}\?\)"):
        experiment.ExperimentConfig.from_namespace(namespace)


GOOD_RUN = {"name": "a"}
FILE_CASES = [
    ("paramters", {"notebooks": ["05_training.ipynb"], "paramters": {}, "runs": [GOOD_RUN]}, "paramters"),
    ("quik", {"notebooks": ["05_training.ipynb"], "quik": {}, "runs": [GOOD_RUN]}, "quik"),
    ("run key", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "parameter": {}}]}, "parameter"),
    ("unknown parameter", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "parameters": {"EPOCH": 3}}]}, "EPOCH"),
    ("code as key", {"notebooks": ["05_training.ipynb"],
                     "runs": [{"name": "a", "parameters": {"__import__('os').system('touch x')": 1}}]}, "no identifier"),
    ("lower-case key", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "parameters": {"epochs": 3}}]}, "epochs"),
    ("name escapes", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "../../x"}]}, "run name '../../x'"),
    ("name with slash", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a/"}]}, "run name 'a/'"),
    ("names differ by case", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a"}, {"name": "A"}]}, "appears twice"),
    ("report name escapes", {"name": "../r", "notebooks": ["05_training.ipynb"], "runs": [GOOD_RUN]}, "report name"),
    ("notebook path escapes", {"notebooks": ["../05_training.ipynb"], "runs": [GOOD_RUN]}, "notebook '../05_training.ipynb'"),
    ("missing notebook", {"notebooks": ["99_nothing.ipynb"], "runs": [GOOD_RUN]}, "99_nothing.ipynb"),
    ("notebooks not a list", {"notebooks": "05_training.ipynb", "runs": [GOOD_RUN]}, "notebooks must be a list"),
    ("no runs", {"notebooks": ["05_training.ipynb"], "runs": []}, "non-empty 'runs'"),
    ("run without name", {"notebooks": ["05_training.ipynb"], "runs": [{"parameters": {}}]}, "needs a 'name'"),
    ("sweep not lists", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "sweep": {"SEED": 3}}]}, "sweep"),
    ("cross_site not a list", {"notebooks": ["05_training.ipynb"], "runs": [{"name": "a", "cross_site": "x"}]}, "cross_site"),
]


@pytest.mark.parametrize("document, named", [case[1:] for case in FILE_CASES], ids=[case[0] for case in FILE_CASES])
def test_bad_experiment_files_are_refused_naming_the_file_and_the_key(document, named, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    before = snapshot(tmp_path)
    with pytest.raises(report.ExperimentFileError) as error:
        report.load_experiments(path)
    assert str(path) in str(error.value) and named in str(error.value)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "x").exists()


RUN_FOLDER_CASES = [
    ("other parameters", lambda folder: train.open_run(folder, {"epochs": 3, "loss": "dice"}), "LOSS: 'bce' there, 'dice' here"),
    ("misspelt name in params", lambda folder: train.open_run(folder, {"epochs": 3, "loss": "bce", "lr": 1}), "LR: None there, 1 here"),
    ("damaged params.json", lambda folder: train.open_run(folder, {"epochs": 3, "loss": "bce"}), "params.json is damaged"),
]


@pytest.mark.parametrize("action, message", [case[1:] for case in RUN_FOLDER_CASES], ids=[case[0] for case in RUN_FOLDER_CASES])
def test_run_folders_refuse_another_run_and_change_nothing(action, message, tmp_path):
    folder = tmp_path / "run"
    train.open_run(folder, {"epochs": 3, "loss": "bce"})
    (folder / "model.keras").write_bytes(b"a finished model")
    if "damaged" in message:
        (folder / "params.json").write_text("{")
    before = snapshot(tmp_path)
    with pytest.raises(train.RunParametersError, match=message):
        action(folder)
    assert snapshot(tmp_path) == before


CLI_CASES = [
    (["experiments/ct_assignment.yaml", "--jobs", "0"], "--jobs"),
    (["experiments/ct_assignment.yaml", "--scale", "huge"], "--scale"),
    (["experiments/ct_assignment.yaml", "--timeout", "-1"], "--timeout"),
    (["no/such/file.yaml"], "no/such/file.yaml"),
    (["experiments/ct_assignment.yaml", "--data-root", "/no/such/folder"], "/no/such/folder"),
    ([], "experiments"),
]


@pytest.mark.parametrize("arguments, named", CLI_CASES, ids=[" ".join(case[0]) or "nothing" for case in CLI_CASES])
def test_report_command_errors_are_one_line_without_a_traceback(arguments, named, tmp_path):
    reports = tmp_path / "reports"
    done = subprocess.run([sys.executable, "-m", "lunghelpers.report", *arguments, "--reports-root", str(reports)],
                          cwd=paths.PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr
    assert not reports.exists() or not any(reports.iterdir())
