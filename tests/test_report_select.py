"""The report's ``--runs`` (run only some runs) and ``--set NAME=VALUE`` (override a parameter for every run).

- ``--runs`` keeps the runs named as in the file's ``runs:`` list, by exact name or shell-style glob;
  a sweep's name brings all its runs. One report runs only the selected run, with ``--set EPOCHS=2``
  over the file's 1 epoch: it trains 2 epochs, and the header states the selection and the override.
- A ``--runs`` name that matches nothing, a ``--set`` name no notebook has (closest match named), one
  the report sets itself, one a selected run sweeps, a value the training configuration refuses or a
  malformed ``--set`` is a one-line error with exit status 2, and nothing is written.
- ``--set`` wins over the file's, the run's and the quick values, and goes only to runs
  whose notebooks declare the parameter (each notebook then gets only its own, as without ``--set``).
- Runs scored at another hospital (``cross_site``) show the in-site validation Dice beside the
  cross-site Dice in the results table, each with its interval.

The one executed run trains in quick mode on 20 images of 32 px, as the other report tests.
"""

import pandas as pd
import pytest
import yaml

from lunghelpers import report, train

TINY = {"QUICK": True, "EPOCHS": 1, "LIMIT": 20, "IMAGE_SIZE": 32}
RUNS = [
    {"name": "alpha", "quick": {"EPOCHS": 1}},
    {"name": "beta"},
    {"name": "grid", "sweep": {"SEED": [1, 2]}},
]


def experiment_file(tmp_path, runs=RUNS, **document):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "notebooks": ["05_training.ipynb"], "parameters": TINY,
                                    "quick": {"EPOCHS": 1}, "runs": runs, **document}))
    return path


def test_runs_are_selected_by_name_glob_and_sweep_name(tmp_path):
    path = experiment_file(tmp_path)
    _, runs = report.load_experiments(path)
    assert [run.name for run in report.select_runs(runs, ["beta"], str(path))] == ["beta"]
    assert [run.name for run in report.select_runs(runs, ["gr*", "a?pha"], str(path))] == [
        "alpha", "grid-seed-1", "grid-seed-2"]  # file order, the sweep's runs all together
    assert [run.name for run in report.select_runs(runs, ["grid"], str(path))] == ["grid-seed-1", "grid-seed-2"]
    with pytest.raises(report.ExperimentFileError, match=r"'grid-seed-1' matches no run .*; its runs are alpha, beta, grid$"):
        report.select_runs(runs, ["grid-seed-1"], str(path))  # a sweep is selected by its own name

def refused(tmp_path, capsys, *arguments):
    """Run the command, which must refuse: exit status 2, one line on stderr, no report written."""
    reports = tmp_path / "reports"
    try:
        status = report.main([str(experiment_file(tmp_path)), "--reports-root", str(reports), "--no-progress", *arguments])
    except SystemExit as done:  # argparse's own errors
        status = done.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert not reports.exists()
    return lines[0]


@pytest.mark.parametrize("arguments, named", [
    (["--runs", "alpah"], "--runs 'alpah' matches no run of"),
    (["--runs", "alpha", "grd"], "(did you mean 'grid'?)"),
    (["--runs", "z*"], "its runs are alpha, beta, grid"),
    (["--set", "EPOCH=3"], "--set EPOCH (did you mean EPOCHS?)"),
    (["--set", "epochs=3"], "--set epochs (did you mean EPOCHS?)"),
    (["--set", "EPOCHS=0"], "--set EPOCHS=0 is refused (run 'alpha'): epochs must be a whole number of at least 1"),
    (["--set", "LEARNING_RATE=2"], "--set LEARNING_RATE=2 is refused"),
    (["--set", "EPOCHS=3", "--set", "IMAGE_SIZE=[64, 4]"], "--set IMAGE_SIZE=[64, 4] is refused"),
    (["--set", "NAME=x"], "--set NAME: the report sets NAME itself"),
    (["--set", "SEED=3"], "--set SEED: run 'grid' sweeps SEED; one value for all its runs would undo the sweep"),
    (["--set", "EPOCHS"], "argument --set: expected NAME=VALUE"),
])
def test_bad_selections_and_settings_are_refused_before_anything_runs(tmp_path, capsys, arguments, named):
    line = refused(tmp_path, capsys, *arguments)
    assert named in line and "Traceback" not in line


def test_set_wins_over_everything_and_goes_only_to_notebooks_that_declare_it(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"parameters": {}, "runs": [
        {"name": "train", "notebooks": ["05_training.ipynb"], "parameters": {"EPOCHS": 9}, "quick": {"EPOCHS": 4},
         "sweep": {"SEED": [1, 2]}},
        {"name": "score", "notebooks": ["05_training.ipynb", "06_evaluation_iou.ipynb"]},
    ]}))
    _, runs = report.load_experiments(path, scale="quick")
    report.apply_overrides(runs, {"EPOCHS": 5, "HEADLINE_THRESHOLD": 0.4})
    first, second, score = runs
    assert (first.parameters["EPOCHS"], first.parameters["SEED"], second.parameters["SEED"]) == (5, 1, 2)
    report.apply_overrides([score], {"SEED": 7})  # a swept name is refused only where a selected run sweeps it
    assert score.parameters["SEED"] == 7
    assert "HEADLINE_THRESHOLD" not in first.parameters  # notebook 06's: only for runs that execute it
    assert (score.parameters["HEADLINE_THRESHOLD"], score.parameters["EPOCHS"]) == (0.4, 5)
    # A value of the file itself that the configuration refuses is not blamed on --set (the run fails as before).
    _, runs = report.load_experiments(experiment_file(tmp_path, runs=[{"name": "mri", "parameters": {"DATASET": "mri"}}]))
    report.apply_overrides(runs, {"EPOCHS": 3})
    assert runs[0].parameters["EPOCHS"] == 3


def test_a_selected_run_trains_the_epochs_set_on_the_command_line(tmp_path, capsys):
    reports = tmp_path / "reports"
    status = report.main([str(experiment_file(tmp_path)), "--runs", "al*", "--set", "EPOCHS=2",
                          "--reports-root", str(reports), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    (folder,) = reports.iterdir()
    assert sorted(path.name for path in (folder / "runs").iterdir()) == ["alpha"]
    history = train.read_history(train.RunFolder(folder / "runs" / "alpha"))
    assert len(history) == 2  # the file says 1 epoch, in its parameters, its quick section and the run's
    assert train.read_json(folder / "runs" / "alpha" / "params.json")["params"]["epochs"] == 2
    summary = pd.read_csv(folder / "summary.csv")
    assert summary["run"].tolist() == ["alpha"] and summary["epochs"].tolist() == [2]
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "Selected runs: alpha (--runs &#39;al*&#39;: 1 of 4 runs)" in page
    assert "Every run: <b>EPOCHS = 2</b> (--set on the command line)" in page
    assert "EPOCHS = 2" in page.split("Parameters every run shares")[1]  # what the run recorded
    assert "Incomplete" not in page


def test_cross_site_runs_show_the_in_site_validation_dice_beside_the_cross_site_dice(tmp_path):
    spec = report.RunSpec("xray", ["05_training.ipynb"], {"NAME": "xray"}, cross_site=["montgomery"])
    metrics = {"n_val": 113, "val_dice": 0.957, "val_dice_ci_low": 0.950, "val_dice_ci_high": 0.963,
               "cross_site.montgomery.dice": 0.967, "cross_site.montgomery.dice_ci_low": 0.962,
               "cross_site.montgomery.dice_ci_high": 0.970}
    files = {"xray": {"metrics": metrics, "per_image": None, "params": {}, "history": None}}
    row = report.results_table([report.RunResult(spec, tmp_path)], files).iloc[0]
    assert row["validation Dice (kept model, per-image mean, 95% interval)"] == "0.957 [0.950, 0.963]"
    assert row["montgomery Dice (kept model, per-image mean, 95% interval)"] == "0.967 [0.962, 0.970]"


def test_exponent_numbers_are_numbers_on_the_command_line_and_in_the_file(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as the text "1e-3"; the report reads it as YAML 1.2 does.
    assert report.parse_setting("LEARNING_RATE=1e-3") == ("LEARNING_RATE", 0.001)
    assert report.parse_setting("LEARNING_RATE=-2E+1") == ("LEARNING_RATE", -20.0)
    assert report.parse_setting("NAME=1e") == ("NAME", "1e")  # not a number: text, as before
    path = tmp_path / "exp.yaml"
    path.write_text("parameters: {LEARNING_RATE: 5e-4}\nruns: [{name: a, notebooks: [05_training.ipynb]}]\n")
    _, runs = report.load_experiments(path)
    assert runs[0].parameters["LEARNING_RATE"] == 0.0005
