"""Run named parameter sets through the notebooks with papermill and write one HTML report.

Usage::

    python -m lunghelpers.report experiments/ct_assignment.yaml --scale quick
    python -m lunghelpers.report experiments/lab.yaml experiments/poster.yaml --data-root ../shared/data
    python -m lunghelpers.report experiments/lab.yaml --runs '1*-xray-*' xray-strong --set EPOCHS=40

Each experiment file names the notebooks a run executes, the parameters shared by its runs, the
overrides of the quick scale, and the runs themselves (see ``experiments/README.md``). Every report
goes to a new folder ``reports/<name>-<timestamp>/`` holding ``index.html``, the run folders and the
executed notebooks; nothing earlier is ever overwritten. A run that fails is recorded in the report
with its error and the other runs still finish.

The report reads what the runs wrote (``params.json``, ``history.csv``, ``metrics.json``,
``per_image.csv``, ``figures/*.png``). One exception: a finished run whose notebooks wrote no
``per_image.csv`` (notebook 06 scores one-class runs only) is scored by the report itself on its
held-out split, as notebook 06 scores a run (:func:`score_held_out`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from lunghelpers import paths

SCALES = ("quick", "full")
KERNEL_NAME = "python3"

#: Metrics shown in the summary table, in this order, when a run wrote them.
SUMMARY_METRICS = (
    "best_epoch",
    "best_val_loss",
    "best_val_dice",
    "best_val_precision",
    "best_val_recall",
    "val_dice",
    "val_mean_iou",
    "test_accuracy",
    "test_dice",
    "test_mean_iou",
    "test_mean_iou@0.1",
    "epochs_completed",
    "seconds_per_epoch",
)
#: Folder names of the real sets under ``--data-root`` (the layout of ``../shared/data``).
DATA_SUBDIRS = {"ct": ("kaggle_ct2d", "ct"), "xray": ("xray", "cxr")}


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading ``1e-3`` as a number, as YAML 1.2 does (YAML 1.1 wants ``1.0e-3``)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


class ExperimentFileError(ValueError):
    """An experiment file that cannot be read or lacks what a run needs."""


@dataclass
class RunSpec:
    """One run of an experiment file: its name, notebooks and final parameters."""

    name: str
    notebooks: list
    parameters: dict
    reference: dict = field(default_factory=dict)
    #: The run of the experiment file it comes from (differs from ``name`` for a sweep's runs).
    group: str = ""
    #: The values its ``sweep`` gave this run (empty for a run without a sweep).
    swept: dict = field(default_factory=dict)
    #: Data folders under ``data_root`` to score the finished run on (another hospital's images).
    cross_site: list = field(default_factory=list)
    data_root: str | None = None


@dataclass
class RunResult:
    """What happened to a run: where it lives, whether it finished, its error if not."""

    spec: RunSpec
    run_dir: Path
    executed: list = field(default_factory=list)
    rendered: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def load_experiments(path: str | Path, scale: str = "quick", data_root: str | Path | None = None) -> tuple[dict, list]:
    """Read an experiment file and return its header and the runs with their parameters at ``scale``.

    Parameters are merged in this order, later winning: the file's ``parameters``, the run's
    ``parameters``, then at quick scale the file's ``quick`` and the run's ``quick``, then the
    values of the run's ``sweep`` (one run per combination; a ``sweep`` inside the run's
    ``quick`` replaces it at quick scale). Unknown sections, run keys and parameter names are
    errors naming the file.
    """
    path = Path(path)
    if scale not in SCALES:
        raise ExperimentFileError(f"scale must be one of {SCALES}, got {scale!r}")
    if not path.is_file():
        raise ExperimentFileError(f"experiment file {path} does not exist")
    try:
        document = yaml.load(path.read_text(), Loader=YamlLoader)
    except yaml.YAMLError as error:
        raise ExperimentFileError(f"experiment file {path} is not valid YAML: {error}") from error
    if not isinstance(document, dict) or not document.get("runs"):
        raise ExperimentFileError(f"experiment file {path} must be a mapping with a non-empty 'runs' list")
    unknown = sorted(set(document) - DOCUMENT_KEYS)
    if unknown:
        hints = [f"{key!r}" + did_you_mean(key, DOCUMENT_KEYS, repr) for key in unknown]
        raise ExperimentFileError(f"experiment file {path} has unknown sections {', '.join(hints)}; it may have {sorted(DOCUMENT_KEYS)}")
    header = {
        "name": check_name(document.get("name", path.stem), "the report name", path),
        "description": document.get("description", ""),
        "source": str(path),
    }
    runs = []
    seen = set()
    for index, run in enumerate(document["runs"]):
        if not isinstance(run, dict) or "name" not in run:
            raise ExperimentFileError(f"{path}: run #{index + 1} needs a 'name'")
        check_name(run["name"], "run name", path)
        unknown = sorted(set(run) - RUN_KEYS)
        if unknown:
            raise ExperimentFileError(f"{path}: run {run['name']!r} has unknown keys {unknown}; a run has {sorted(RUN_KEYS)}")
        notebooks = run.get("notebooks", document.get("notebooks"))
        if not notebooks:
            raise ExperimentFileError(f"{path}: run {run['name']!r} names no notebooks")
        if not isinstance(notebooks, list):
            raise ExperimentFileError(f"{path}: run {run['name']!r}: notebooks must be a list of file names")
        for notebook in notebooks:
            if not isinstance(notebook, str) or Path(notebook).name != notebook or not notebook.endswith(".ipynb"):
                raise ExperimentFileError(f"{path}: run {run['name']!r}: notebook {notebook!r} must be the file name of a lesson in notebooks/")
            if not (paths.NOTEBOOKS_ROOT / notebook).is_file():
                raise ExperimentFileError(f"{path}: run {run['name']!r} names missing notebook {notebook!r}")
        quick = dict(run.get("quick", {}))
        sweep = quick.pop("sweep", None) if scale == "quick" and "sweep" in quick else run.get("sweep")
        for name, swept in _expand_sweep(path, str(run["name"]), sweep):
            check_name(name, "run name", path)
            if name.lower() in seen:
                raise ExperimentFileError(f"{path}: run name {name!r} appears twice")
            seen.add(name.lower())  # a, A and a/ must not share a folder on any file system
            parameters = {**document.get("parameters", {}), **run.get("parameters", {})}
            if scale == "quick":
                parameters.update(document.get("quick", {}))
                parameters.update(quick)
            parameters.update(swept)
            parameters["NAME"] = name
            _check_parameter_names(path, name, parameters, notebooks)
            _check_one_class_lesson(path, name, parameters, notebooks)
            if data_root is not None:
                parameters["DATA_DIR"] = str(resolve_data_dir(data_root, parameters.get("DATASET", "ct")))
            sites = run.get("cross_site", document.get("cross_site", []))
            if not isinstance(sites, list) or not all(isinstance(site, str) and site.isidentifier() for site in sites):
                raise ExperimentFileError(f"{path}: run {name!r}: cross_site must be a list of folder names under --data-root")
            runs.append(RunSpec(name, list(notebooks), parameters, run.get("reference", {}), str(run["name"]),
                                swept=swept, cross_site=list(sites),
                                data_root=None if data_root is None else str(Path(data_root).resolve())))
    return header, runs


#: Names of reports and runs: they become folder names, so nothing that could leave its folder.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name, what, path):
    """``name`` if it is a safe folder name (letters, digits, '.', '_', '-'; no '..'), else an error."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ExperimentFileError(
            f"{path}: {what} {name!r} must be 1-100 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit, no '..'): it becomes a folder name"
        )
    return name


#: The sections of an experiment file.
DOCUMENT_KEYS = {"name", "description", "notebooks", "parameters", "quick", "runs", "cross_site"}
#: The keys a run of an experiment file may have.
RUN_KEYS = {"name", "notebooks", "parameters", "quick", "reference", "sweep", "cross_site"}


def _expand_sweep(path, name, sweep):
    """``[(run name, parameters)]`` for every combination of a run's ``sweep`` values.

    ``sweep: {TRAIN_SIZE: [5, 10], SEED: [220, 221]}`` gives four runs named
    ``<name>-train-size-5-seed-220`` and so on; no sweep gives the run itself.
    """
    import itertools

    if not sweep:
        return [(name, {})]
    if not isinstance(sweep, dict) or not all(isinstance(values, list) and values for values in sweep.values()):
        raise ExperimentFileError(f"{path}: run {name!r}: sweep must map parameter names to non-empty lists")
    runs = []
    for values in itertools.product(*sweep.values()):
        swept = dict(zip(sweep, values))
        suffix = "-".join(f"{key.lower().replace('_', '-')}-{value}" for key, value in swept.items())
        runs.append((f"{name}-{suffix}", swept))
    return runs


def notebook_parameters(notebook: str) -> set:
    """The parameter names of a lesson's ``parameters`` cell, as papermill reads them."""
    import papermill

    return set(papermill.inspect_notebook(str(paths.NOTEBOOKS_ROOT / notebook)))


def did_you_mean(word, known, quote=str) -> str:
    """``" (did you mean X?)"`` for the name of ``known`` closest to ``word`` (ignoring case), or ``""``."""
    import difflib

    by_lower = {str(name).lower(): name for name in sorted(known)}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    return f" (did you mean {quote(by_lower[close[0]])}?)" if close else ""


def _check_parameter_names(path, run_name, parameters, notebooks):
    """Refuse a parameter that none of the run's notebooks has (a typo would be silently ignored)."""
    known = set().union(*(notebook_parameters(notebook) for notebook in notebooks)) | {"RUN_DIR"}
    for key in parameters:
        if not (isinstance(key, str) and key.isidentifier()):
            raise ExperimentFileError(f"{path}: run {run_name!r} has parameter name {key!r}, which is no identifier")
        if key not in known:
            raise ExperimentFileError(
                f"{path}: run {run_name!r} sets {key}{did_you_mean(key, known)}, which is no parameter of {', '.join(notebooks)}"
            )


#: The lesson that evaluates one-class (sigmoid) runs only; the report scores the others itself.
ONE_CLASS_LESSON = "06_evaluation_iou.ipynb"


def _check_one_class_lesson(path, run_name, parameters, notebooks):
    """Refuse notebook 06 for a multi-class run: it would fail there after training."""
    from lunghelpers import experiment

    mask_mode = parameters.get("MASK_MODE", experiment.ExperimentConfig().mask_mode)
    if ONE_CLASS_LESSON in notebooks and mask_mode in experiment.MULTICLASS_MASK_MODES:
        raise ExperimentFileError(
            f"{path}: run {run_name!r} has MASK_MODE {mask_mode!r} (3 classes), but {ONE_CLASS_LESSON} scores "
            "one-class runs only: leave it out of the run's notebooks (the report scores the run itself)")


def select_runs(runs: list, patterns: list, source: str) -> list:
    """The runs whose experiment-file name matches one of ``patterns`` (``--runs``), in file order.

    A pattern is a run's ``name:`` in the file or a shell-style glob (``1*-xray-*``); a sweep's runs
    come all together with the sweep's name. A pattern that matches no run is an error naming the
    closest run name.
    """
    import fnmatch

    groups = list(dict.fromkeys(run.group for run in runs))
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(group, pattern) for group in groups):
            hint = did_you_mean(pattern, groups, repr) or f"; its runs are {', '.join(groups)}"
            raise ExperimentFileError(f"--runs {pattern!r} matches no run of {source}{hint}")
    return [run for run in runs if any(fnmatch.fnmatchcase(run.group, pattern) for pattern in patterns)]


#: Parameters the report sets for each run itself, which ``--set`` may not override.
SET_BY_REPORT = {"NAME": "each run's name", "RUN_DIR": "each run's folder", "DATA_DIR": "use --data-root"}


def apply_overrides(runs: list, overrides: dict) -> None:
    """Give every run the ``--set NAME=VALUE`` values, each to the runs whose notebooks declare it.

    They win over everything the experiment files set. A name no notebook of these runs declares,
    one the report sets itself, one a selected run sweeps, or a value the training configuration refuses is an error naming
    the parameter (a file whose own values are refused is left to fail at run time, as without ``--set``).
    """
    from lunghelpers import experiment

    declared = set().union(*(notebook_parameters(notebook) for run in runs for notebook in run.notebooks))
    for key in overrides:
        if key in SET_BY_REPORT:
            raise ExperimentFileError(f"--set {key}: the report sets {key} itself ({SET_BY_REPORT[key]})")
        if key not in declared:
            raise ExperimentFileError(f"--set {key}{did_you_mean(key, declared - set(SET_BY_REPORT))}: no notebook "
                                      "of the selected runs has that parameter")
        swept = next((run for run in runs if key in run.swept), None)
        if swept is not None:
            raise ExperimentFileError(f"--set {key}: run {swept.group!r} sweeps {key}; one value for all its runs "
                                      "would undo the sweep (select other runs with --runs, or edit the sweep)")
    training = notebook_parameters(experiment.TRAINING_NOTEBOOK)
    for run in runs:
        values = {key: value for key, value in run.parameters.items() if key in training}
        if experiment.TRAINING_NOTEBOOK not in run.notebooks or _config_error(values) is not None:
            continue
        for key in (key for key in overrides if key in training):
            values[key] = overrides[key]
            error = _config_error(values)
            if error:
                raise ExperimentFileError(f"--set {key}={json.dumps(overrides[key], default=str)} is refused "
                                          f"(run {run.name!r}): {error}")
    for run in runs:
        own = set().union(*(notebook_parameters(notebook) for notebook in run.notebooks))
        run.parameters.update({key: value for key, value in overrides.items() if key in own})


def _config_error(values: dict) -> str | None:
    """Why the training configuration refuses these notebook parameters, or ``None``."""
    from lunghelpers import experiment

    try:
        experiment.ExperimentConfig.from_namespace(values)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def resolve_data_dir(data_root: str | Path, dataset: str) -> Path:
    """The data folder of ``dataset`` under ``data_root``: the root itself or its known sub-folder.

    The path is made absolute: the notebooks run in ``notebooks/``, not where the command was typed.
    """
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise ExperimentFileError(f"--data-root {root} is not a folder")
    marker_folders = {"ct": "2d_images", "xray": "cxr"}
    if (root / marker_folders[dataset]).is_dir():
        return root
    for candidate in DATA_SUBDIRS[dataset]:
        if (root / candidate / marker_folders[dataset]).is_dir():
            return root / candidate
    raise ExperimentFileError(
        f"--data-root {root} holds no {dataset} set: expected {marker_folders[dataset]}/ in it or in "
        f"one of {list(DATA_SUBDIRS[dataset])}"
    )


def new_report_dir(name: str, root: Path | None = None) -> Path:
    """Create ``reports/<name>-<timestamp>/`` (an absolute path); never reuses an existing folder."""
    root = (Path(root) if root is not None else paths.REPORTS_ROOT).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = root / (f"{name}-{stamp}" if attempt == 0 else f"{name}-{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new report folder under {root}")


def execute_run(spec: RunSpec, report_dir: Path, progress: bool = True, timeout: float | None = None) -> RunResult:
    """Execute the run's notebooks in order with papermill; record the first error and stop there.

    Each notebook gets only its own parameters (plus ``RUN_DIR``); everything the notebooks print
    goes to the run's ``log.txt``, and each executed notebook is also rendered as HTML beside it.
    ``timeout`` bounds every cell, so a stuck run fails instead of stalling the report.
    """
    import time

    import papermill

    from lunghelpers.experiment import papermill_parameters

    run_dir = report_dir / "runs" / spec.name
    notebook_dir = run_dir / "notebooks"
    notebook_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(spec, run_dir)
    start = time.perf_counter()
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        for notebook in spec.notebooks:
            output = notebook_dir / notebook
            own = notebook_parameters(notebook)
            parameters = {key: value for key, value in spec.parameters.items() if key in own}
            parameters["RUN_DIR"] = str(run_dir)
            log.write(f"==== {notebook} ====\n")
            log.flush()
            try:
                papermill.execute_notebook(
                    str(paths.NOTEBOOKS_ROOT / notebook),
                    str(output),
                    parameters=papermill_parameters(parameters),
                    kernel_name=KERNEL_NAME,
                    cwd=str(paths.NOTEBOOKS_ROOT),
                    progress_bar=False,
                    log_output=True,
                    stdout_file=log,
                    stderr_file=log,
                    execution_timeout=timeout,
                )
                result.executed.append(output)
            except Exception as error:  # noqa: BLE001 - any failure is recorded, the other runs go on
                if output.exists():
                    result.executed.append(output)
                result.error = f"{notebook}: {summarize_error(error)}"
                break
    if result.error is None:
        result.error = score_held_out(run_dir) or cross_site(spec, run_dir)
    result.seconds = time.perf_counter() - start
    result.rendered = [render_notebook(path) for path in result.executed]
    return result


def score_held_out(run_dir: Path) -> str | None:
    """Score a trained run on its held-out split when its notebooks did not; an error message or ``None``.

    Notebook 06 scores one-class runs only. A run without ``per_image.csv`` but with a model (a
    multi-class run, or one that only trains) is scored here as 06 scores a run:
    ``evaluate.evaluate_run`` on the held-out split that ``experiment.prepare_data`` rebuilds from
    its ``params.json``, so every run of a report has its per-image table and held-out figures
    (a multi-class run also each lung's Dice, ``<split>_dice_class1`` and ``_class2``).
    """
    from lunghelpers import evaluate, experiment, train

    run = train.RunFolder(run_dir)
    if run.per_image_path.exists() or not run.model_path.exists():
        return None
    try:
        config = experiment.load_config(run_dir)
        split, held_out = experiment.prepare_data(config, progress=False).evaluation
        evaluate.evaluate_run(run_dir, held_out.images, held_out.masks, held_out.names,
                              batch_size=config.batch_size, split=split)
    except Exception as error:  # noqa: BLE001 - recorded as the run's failure
        return f"held-out evaluation: {summarize_error(error)}"
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        log.write(f"scored by the report on its {len(held_out.names)} {split} images (evaluate.evaluate_run): "
                  "its notebooks wrote no per_image.csv\n")
    return None


def cross_site(spec: RunSpec, run_dir: Path) -> str | None:
    """Score a finished run on each of its ``cross_site`` folders; an error message or ``None``.

    Without ``--data-root`` there is no other site to score on: the run says so in its log.
    """
    if not spec.cross_site:
        return None
    if spec.data_root is None:
        with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"cross-site evaluation on {spec.cross_site} skipped: no --data-root given\n")
        return None
    from lunghelpers import evaluate

    for site in spec.cross_site:
        try:
            evaluate.evaluate_folder(run_dir, Path(spec.data_root) / site, name=site, progress=False)
        except Exception as error:  # noqa: BLE001 - recorded as the run's failure
            return f"cross-site evaluation on {site}: {summarize_error(error)}"
    return None


def render_notebook(path: Path) -> Path | None:
    """An HTML rendering of an executed notebook beside it (``None`` if it cannot be rendered)."""
    import nbconvert
    import nbformat

    try:
        body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(path, as_version=4))
    except Exception:  # noqa: BLE001 - a broken copy still has its .ipynb link
        return None
    html_path = path.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return html_path


def summarize_error(error: BaseException) -> str:
    """A short, readable account of a failure (papermill's cell errors carry the notebook's error)."""
    name = getattr(error, "ename", None) or type(error).__name__
    value = getattr(error, "evalue", None) or str(error)
    text = f"{name}: {value}".strip()
    return text if len(text) < 2000 else text[:2000] + " ..."


def read_json(path: Path) -> dict:
    """A run's JSON file, or an empty dict when the run never wrote it (a failed run)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def data_uri(path: Path) -> str:
    """A PNG as a data URI, so the report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"name": str})
    except (OSError, ValueError):
        return None


def _run_files(result: RunResult) -> dict:
    """What a run wrote: its params, metrics, history and per-image table."""
    from lunghelpers import train

    record = read_json(result.run_dir / "params.json")
    history = train.read_history(train.RunFolder(result.run_dir)) if (result.run_dir / "history.csv").exists() else None
    return {
        "params": record.get("params", {}),
        "precision_policy": record.get("precision_policy"),
        "metrics": read_json(result.run_dir / "metrics.json"),
        "history": history,
        "per_image": _read_csv(result.run_dir / "per_image.csv"),
    }


def held_out_split(metrics: dict) -> str | None:
    """The split a run's per-image table scores: "test" when it has a test split, else "val"."""
    if "n_test" in metrics:
        return "test"
    if "n_val" in metrics:
        return "val"
    return None


SPLIT_WORDS = {"test": "test", "val": "validation"}
#: The classes of a multi-class run (``MASK_MODE`` labels or left_right): the patient's lungs.
LUNG_CLASSES = {1: "right", 2: "left"}
#: What a dataset's images are called in the report's sentences.
IMAGE_WORDS = {"ct": "slices", "xray": "X-rays"}


def results_table(results: list, files: dict) -> pd.DataFrame:
    """One row per run, every figure from the kept model (``model.keras``), with intervals.

    Columns say in words which model, split and reduction each figure is: the kept epoch's
    validation loss and Dice as Keras logged them (pooled over the validation pixels), then the
    held-out split's per-image means with the seeded 95 % bootstrap interval ``metrics.json``
    holds (for a multi-class run also each lung's Dice), then the source's reported figures
    beside ours. Nothing is recomputed here.
    """
    rows = []
    for result in results:
        run = files[result.spec.name]
        metrics, table = run["metrics"], run["per_image"]
        row = {"run": result.spec.name, "status": "failed" if result.error else "ok"}
        if "best_epoch" in metrics:
            row["kept epoch"] = f"{metrics['best_epoch']} of {metrics.get('epochs_completed', '?')}"
        for key, label in (("best_val_loss", "validation loss"), ("best_val_dice", "validation Dice")):
            if key in metrics:
                row[f"{label} (kept epoch, pooled)"] = metrics[key]
        split = held_out_split(metrics)
        if split is not None:
            words = SPLIT_WORDS[split]
            for key, label in ((f"{split}_dice", "Dice"), (f"{split}_mean_iou", "IoU at 0.5"),
                               (f"{split}_mean_iou@0.1", "IoU at 0.1")):
                if key in metrics:
                    interval = (f" [{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}]"
                                if key + "_ci_low" in metrics else "")
                    row[f"{words} {label} (kept model, per-image mean, 95% interval)"] = f"{metrics[key]:.3f}{interval}"
            for class_id, lung in LUNG_CLASSES.items():  # a multi-class run: each lung on its own
                if f"{split}_dice_class{class_id}" in metrics:
                    row[f"{words} {lung} lung Dice (class {class_id}, kept model, per-image mean)"] = (
                        f"{metrics[f'{split}_dice_class{class_id}']:.3f}")
            if f"{split}_accuracy" in metrics:
                row[f"{words} pixel accuracy (kept model)"] = metrics[f"{split}_accuracy"]
            row["images"] = metrics.get(f"n_{split}")
        for site in result.spec.cross_site:
            key = f"cross_site.{site}.dice"
            if key in metrics:
                row[f"{site} Dice (kept model, per-image mean, 95% interval)"] = (
                    f"{metrics[key]:.3f} [{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}]")
        for key, value in result.spec.reference.items():
            row[f"source: {key}"] = value
        if "seconds_per_epoch" in metrics:
            row["s / epoch"] = metrics["seconds_per_epoch"]
        row["minutes"] = round(result.seconds / 60, 2)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(results: list) -> pd.DataFrame:
    """``summary.csv``: one row per run, its status, what it set and the raw figures of metrics.json."""
    rows = []
    for result in results:
        metrics = read_json(result.run_dir / "metrics.json")
        row = {"run": result.spec.name, "status": "failed" if result.error else "ok"}
        row.update({key.lower(): json.dumps(value) if isinstance(value, (list, dict)) else value
                    for key, value in result.spec.parameters.items() if key not in ("NAME", "RUN_DIR")})
        row.update({key: value for key, value in metrics.items() if key in SUMMARY_METRICS})
        row["minutes"] = round(result.seconds / 60, 2)
        rows.append(row)
    return pd.DataFrame(rows)


def parameter_tables(results: list, files: dict) -> tuple[pd.DataFrame, dict]:
    """The parameters that differ between runs (a table) and those they share (a dict).

    Beside the parameters, ``PRECISION_POLICY``: the Keras dtype policy each run trained with, which
    ``MIXED_PRECISION = "auto"`` leaves to the machine.
    """
    recorded = {result.spec.name: {**files[result.spec.name]["params"],
                                   "precision_policy": files[result.spec.name]["precision_policy"]}
                for result in results}
    names = sorted({key for params in recorded.values() for key in params} - {"name", "run_dir", "data_dir"})
    shared, differing = {}, []
    for key in names:
        values = [json.dumps(params.get(key)) for params in recorded.values()]
        if len(set(values)) == 1:
            shared[key] = values[0]
        else:
            differing.append(key)
    table = pd.DataFrame({run: {key.upper(): json.dumps(params.get(key)) for key in differing}
                          for run, params in recorded.items()}).T
    table.index.name = "run"
    return table, {key.upper(): value for key, value in shared.items()}


def quick_banner(files: dict) -> str:
    """What a quick-scale report says above its numbers, from the runs' own parameters."""
    sizes, epochs, images = set(), set(), set()
    for run in files.values():
        params, metrics = run["params"], run["metrics"]
        if params:
            sizes.add("x".join(str(side) for side in params.get("image_size", [])))
            epochs.add(str(metrics.get("epochs_completed", params.get("epochs"))))
            images.add(f"at most {params['limit']}" if params.get("limit") else "all")
    return (
        f"Quick scale: these runs trained {'/'.join(sorted(epochs, key=str)) or '?'} epochs at "
        f"{'/'.join(sorted(sizes)) or '?'} px on {'/'.join(sorted(images))} images each, so that the whole "
        "report finishes in minutes on a CPU. It shows that every notebook runs and what it writes; its scores are "
        "far from what the recipes reach and must not be compared with the source's figures. Use --scale full for results."
    )


#: The ``params.json`` keys a run's held-out images and masks depend on (``experiment.prepare_data``).
HELD_OUT_PARAMS = ("dataset", "data_dir", "limit", "split", "shuffle_split", "seed", "image_size", "mask_mode",
                   "normalization")


def held_out_images(run: dict):
    """A key that two runs share exactly when they were scored on the same held-out images and masks.

    The same data (``DATASET``, ``DATA_DIR``, how the images are read and split), the same split,
    the same noise on it (validation noise only: a test split never gets any) and the same image
    names in ``per_image.csv``. ``None`` for a run without per-image Dice.
    """
    split, table, params = held_out_split(run["metrics"]), run["per_image"], run["params"]
    if split is None or table is None or "dice" not in table or "name" not in table:
        return None
    noise = (params.get("val_noise_fraction"), params.get("noise_sigma")) if (
        split == "val" and params.get("val_noise_fraction")) else None
    data = json.dumps([params.get(key) for key in HELD_OUT_PARAMS], default=str)
    return split, data, json.dumps(noise), tuple(sorted(table["name"].astype(str)))


def _dice(run: dict) -> pd.Series:
    return run["per_image"].set_index("name")["dice"]


def comparisons(results: list, files: dict) -> list:
    """Each run's per-image Dice against the first run scored on the same images, as judgement words it.

    ``judgement.compare_settings`` reads each pair: a run that has not learned to find the lungs
    (a quick run, say) answers nothing, whatever the difference. Runs on other images (another dataset or data folder, another split or seed, noise on the
    validation images) are never compared: their difference would mix the models with the images.
    """
    from lunghelpers import judgement

    first = {}
    sentences = []
    for result in results:
        run = files[result.spec.name]
        key = held_out_images(run)
        if key is None:
            continue
        if key not in first:
            first[key] = result.spec.name
            continue
        name, other = result.spec.name, first[key]
        sentences.append(judgement.compare_settings(f"{name} or {other}?", name, _dice(run), other,
                                                    _dice(files[other]), metric="dice", split=key[0]))
    return sentences


def studies(results: list, report_dir: Path, files: dict) -> list:
    """One figure and one reading per study: held-out Dice of a sweep's runs, mean and spread over seeds.

    Runs of one experiment-file run (its ``group``) that a ``sweep`` made are a study. A sweep over
    a parameter other than ``SEED`` has one point per value of it (mean and sd over the seeds); a
    training-set size sweep is read by ``judgement.size_sweep`` on the per-image scores, averaged
    over seeds, naming the dataset's images. Sweeps over ``SEED`` only share one figure per dataset
    and split: one point per group, its mean and sd over the seeds; groups scored on the same
    images (the same seeds, data and validation noise) are compared by ``judgement.compare_settings``
    on each image's Dice averaged over the seeds.
    """
    groups = {}
    for result in results:
        if result.spec.swept and files[result.spec.name]["per_image"] is not None:
            groups.setdefault(result.spec.group, []).append(result)
    found = {}  # a sweep's group, or (dataset, split) for the SEED-only sweeps: {group: runs}, in run order
    for group, members in groups.items():
        run = files[members[0].spec.name]
        if set(members[0].spec.swept) - {"SEED"}:
            found[group] = {group: members}
        else:
            found.setdefault((run["params"].get("dataset"), held_out_split(run["metrics"]) or "val"), {})[group] = members
    made = [_seed_study(by_group, *key, report_dir, files) if isinstance(key, tuple) else
            _sweep_study(key, by_group[key], report_dir, files) for key, by_group in found.items()]
    return [study for study in made if study is not None]


def _seed_of(result: RunResult):
    return result.spec.swept.get("SEED", result.spec.parameters.get("SEED"))


def _sweep_study(group, members, report_dir, files):
    """The figure and reading of a sweep over a parameter other than ``SEED`` (see :func:`studies`)."""
    from lunghelpers import judgement, plots

    parameter = next(key for key in members[0].spec.swept if key != "SEED")
    run = files[members[0].spec.name]
    split = held_out_split(run["metrics"]) or "val"
    rows = [{parameter: result.spec.swept.get(parameter, result.spec.parameters.get(parameter)),
             "dice": files[result.spec.name]["metrics"].get(f"{split}_dice")} for result in members]
    table = pd.DataFrame(rows).dropna()
    if table.empty:
        return None
    seeds = len({_seed_of(result) for result in members})
    title = f"{group}: {SPLIT_WORDS[split]} Dice (kept model, per-image mean) by {parameter}, {seeds} seed(s)"
    path = report_dir / f"study_{group}.png"
    plots.save_figure(plots.sweep_errorbars(table, parameter, "dice", title=title), path)
    sentence = ""
    if parameter == "TRAIN_SIZE":
        scores = {}
        for result in members:
            scores.setdefault(int(result.spec.swept["TRAIN_SIZE"]), []).append(_dice(files[result.spec.name]))
        sentence = judgement.size_sweep({size: pd.concat(parts, axis=1).mean(axis=1) for size, parts in scores.items()},
                                        split=split, images=IMAGE_WORDS.get(run["params"].get("dataset"), "images"))
    return {"src": data_uri(path), "caption": title, "sentence": sentence}


def _seed_study(by_group, dataset, split, report_dir, files):
    """The figure and reading of the sweeps over ``SEED`` only of one dataset and split (see :func:`studies`)."""
    from lunghelpers import judgement, plots

    rows = [{"run": group, "dice": files[result.spec.name]["metrics"].get(f"{split}_dice")}
            for group, members in by_group.items() for result in members]
    table = pd.DataFrame(rows).dropna()
    if table.empty:
        return None
    seeds = table.groupby("run")["dice"].count()
    counts = "/".join(str(count) for count in sorted(set(seeds)))
    title = (f"{', '.join(by_group)}: {SPLIT_WORDS[split]} Dice (kept model, per-image mean), "
             f"mean and sd over {counts} seed(s) per run")
    figure = plots.sweep_errorbars(table, "run", "dice", title=f"{SPLIT_WORDS[split]} Dice (kept model, per-image "
                                   f"mean) by run: mean and sd over {counts} seed(s)")
    for line in figure.axes[0].get_lines():
        line.set_linestyle("none")  # one point per run: nothing lies between them
    figure.axes[0].tick_params(axis="x", labelsize=7)
    path = report_dir / f"study_seeds_{next(iter(by_group))}.png"
    plots.save_figure(figure, path)
    images = f"{SPLIT_WORDS[split]} {IMAGE_WORDS.get(dataset, 'images')}"
    same = {}  # the groups by the images they were scored on, seed by seed
    for group, members in by_group.items():
        keys = frozenset(held_out_images(files[result.spec.name]) for result in members)
        if None not in keys:
            same.setdefault(keys, []).append(group)

    def seed_mean(group):  # each image's Dice, averaged over the group's seeds whose split holds it
        return pd.concat([_dice(files[result.spec.name]) for result in by_group[group]], axis=1).mean(axis=1)

    sentences = [judgement.compare_settings(f"{other} or {first}, on the same {images}?", other, seed_mean(other),
                                            first, seed_mean(first), metric="dice", split=split)
                 for first, *others in same.values() for other in others]
    if sentences and seeds.max() > 1:
        sentences.append("Each image's Dice there is its mean over the seeds whose split holds it.")
    alone = [names[0] for names in same.values() if len(names) == 1]
    if alone and len(by_group) > 1:
        sentences.append(
            f"{', '.join(alone)} {'was' if len(alone) == 1 else 'were'} scored on {images} that no other run of "
            "this figure was scored on (another split, data or noise), so "
            f"{'its point is' if len(alone) == 1 else 'their points are'} not compared with the others: "
            "a difference would mix the models with the images.")
    return {"src": data_uri(path), "caption": title, "sentence": "\n\n".join(sentences)}


def comparison_figures(results: list, report_dir: Path, files: dict) -> list:
    """Validation curves of all runs side by side, saved as PNGs in the report folder."""
    from lunghelpers import plots

    histories = {name: run["history"] for name, run in files.items() if run["history"] is not None and not run["history"].empty}
    figures = []
    for metric in ("val_loss", "val_dice"):
        if histories and any(metric in history for history in histories.values()):
            path = report_dir / f"compare_{metric}.png"
            plots.save_figure(plots.compare_curves(histories, metric=metric), path)
            figures.append(path)
    return figures


def _git_commit() -> str:
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=paths.PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + (" with uncommitted changes" if dirty else "")) or "unknown"


def _styled(table: pd.DataFrame) -> str:
    """A pandas Styler rendering: numbers to 4 digits, failed runs marked."""
    if table.empty:
        return ""
    styler = table.style.format(precision=4, na_rep="")
    if "status" in table:
        styler = styler.map(lambda value: "background:#fde8e8" if value == "failed" else "", subset=["status"])
    return styler.hide(axis="index").to_html() if "run" in table else styler.to_html()


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ header.name }} report</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1320px;padding:0 1em;color:#222;line-height:1.45}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #ddd;margin:.5em 0 1em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3;text-align:center}
.banner{background:#fff6d6;border:1px solid #e6c200;padding:.6em 1em;border-radius:4px}
.incomplete{background:#fde8e8;border:1px solid #c00;padding:.6em 1em;border-radius:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}
.meta{color:#555;font-size:.9em}
</style></head><body>
<h1>{{ header.name }}</h1>
<p>{{ header.description }}</p>
<p class="meta">Scale <b>{{ scale }}</b> · written {{ written }} · total time {{ total_minutes }} min · commit {{ commit }}
{% for key, value in versions.items() %} · {{ key }} {{ value }}{% endfor %}<br>
Command: <code>{{ command }}</code> · experiment file: <code>{{ header.source }}</code></p>
{% if header.selected %}<p>Selected runs: {{ header.selected }}</p>{% endif %}
{% for override in header.overrides %}<p>Every run: <b>{{ override }}</b> (--set on the command line)</p>{% endfor %}
{% if not complete %}<p class="incomplete"><b>Incomplete:</b> {{ finished }} of {{ total }} runs finished
({{ finished_names }}); the report was interrupted or is still running.</p>{% endif %}
{% if banner %}<p class="banner">{{ banner }}</p>{% endif %}
<h2>Results</h2>
<p>Every figure of a row comes from the same model: the kept epoch's weights (<code>model.keras</code>, the lowest
validation loss). Validation loss and Dice are that epoch's, as Keras logged them (pooled over all validation pixels);
held-out figures are means over images of that model's per-image scores at threshold 0.5 (IoU also at the source's 0.1),
with a seeded 95&nbsp;% bootstrap interval over images. Epochs count from 1. Same seed and machine, same numbers;
other CPUs, GPUs or thread counts change them, the source recipe's by up to 0.02 in IoU.</p>
<div class="scroll">{{ results_html }}</div>
{% for sentence in comparisons %}{{ sentence }}{% endfor %}
<h2>What the runs set</h2>
<div class="scroll">{{ parameters_html }}</div>
<details><summary>Parameters every run shares</summary><p class="meta">{% for key, value in shared.items() %}{{ key }} = {{ value }}{% if not loop.last %} · {% endif %}{% endfor %}</p></details>
{% if failures %}<h2>Failed runs</h2>
{% for run in failures %}<h3>{{ run.name }}</h3><pre>{{ run.error }}</pre><p>Log: <a href="{{ run.log }}">{{ run.log }}</a>{% for link in run.links %} · <a href="{{ link }}">{{ link.split('/')[-1] }}</a>{% endfor %}</p>{% endfor %}{% endif %}
{% if studies %}<h2>Studies</h2>
{% for study in studies %}<figure><img src="{{ study.src }}" alt="{{ study.caption }}" style="max-width:760px"><figcaption>{{ study.caption }}</figcaption></figure>{{ study.sentence }}{% endfor %}{% endif %}
{% if compare_figures %}<h2>Learning curves, all runs</h2><div class="grid">
{% for figure in compare_figures %}<figure><img src="{{ figure.src }}" alt="{{ figure.caption }}"><figcaption>{{ figure.caption }}</figcaption></figure>{% endfor %}</div>{% endif %}
<h2>Runs</h2>
{% for run in runs %}<h3 id="{{ run.name }}">{{ run.name }}</h3>
<p>{% if run.links %}Executed notebooks: {% for link in run.links %}<a href="{{ link }}">{{ link.split('/')[-1] }}</a>{% if not loop.last %}, {% endif %}{% endfor %} · {% endif %}log: <a href="{{ run.log }}">log.txt</a></p>
{{ run.reading }}
<div class="grid">{% for figure in run.figures %}<figure><img src="{{ figure.src }}" alt="{{ figure.caption }}"><figcaption>{{ figure.caption }}</figcaption></figure>{% endfor %}</div>
{% endfor %}
</body></html>
"""


def write_report(header: dict, results: list, report_dir: Path, scale: str, command: str,
                 total: int | None = None, seconds: float = 0.0) -> Path:
    """Write ``index.html`` (and ``summary.csv``) from the run folders; returns its path.

    Called after every finished run, so an interrupted report's page says which runs finished.
    """
    import jinja2
    import mistune

    from lunghelpers import judgement, train

    files = {result.spec.name: _run_files(result) for result in results}
    results_frame = results_table(results, files)
    parameters_frame, shared = parameter_tables(results, files)
    environment = next((read_json(r.run_dir / "params.json").get("environment", {}) for r in results
                        if (r.run_dir / "params.json").exists()), {})
    runs, failures = [], []
    for result in results:
        run = files[result.spec.name]
        links = [str(path.relative_to(report_dir)) for path in (result.rendered or result.executed) if path]
        entry = {
            "name": result.spec.name,
            "links": links,
            "log": str((result.run_dir / "log.txt").relative_to(report_dir)),
            "reading": "",
            "figures": [{"src": data_uri(path), "caption": f"{result.spec.name}: {path.stem.replace('_', ' ')}"}
                        for path in sorted((result.run_dir / "figures").glob("*.png"))],
        }
        if run["history"] is not None and not run["history"].empty:
            entry["reading"] = jinja2.utils.markupsafe.Markup(mistune.html(
                judgement.learning_curves(run["history"], schedule=run["params"].get("schedule"))))
        runs.append(entry)
        if result.error:
            failures.append({**entry, "error": result.error})
    compare = [{"src": data_uri(path), "caption": f"all runs: {path.stem.replace('compare_', '').replace('_', ' ')} per epoch"}
               for path in comparison_figures(results, report_dir, files)]
    page = jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        header=header,
        scale=scale,
        written=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        total_minutes=f"{seconds / 60:.1f}",
        commit=_git_commit(),
        versions={key: environment[key] for key in ("tensorflow", "keras", "python") if key in environment},
        command=command,
        complete=(total is None or len(results) >= total),
        finished=len(results),
        total=total,
        finished_names=", ".join(result.spec.name for result in results) or "none",
        banner=quick_banner(files) if scale == "quick" else "",
        results_html=jinja2.utils.markupsafe.Markup(_styled(results_frame)),
        parameters_html=jinja2.utils.markupsafe.Markup(_styled(parameters_frame)),
        shared=shared,
        comparisons=[jinja2.utils.markupsafe.Markup(mistune.html(sentence)) for sentence in comparisons(results, files)],
        failures=failures,
        compare_figures=compare,
        studies=[{**study, "sentence": jinja2.utils.markupsafe.Markup(mistune.html(study["sentence"]))}
                 for study in studies(results, report_dir, files)],
        runs=runs,
    )
    index = report_dir / "index.html"
    with train.atomic_path(index) as temporary:
        temporary.write_text(page, encoding="utf-8")
    train.write_csv(report_dir / "summary.csv", summary_table(results))
    return index


def thread_settings(jobs: int) -> dict:
    """Environment for the kernels of ``jobs`` runs sharing this machine: cores split between them.

    TensorFlow otherwise gives every kernel a thread per core, and ``jobs`` kernels then fight for
    the same cores.
    """
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    return {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads}


def _execute_on_worker(spec, report_dir, timeout, environment):
    """What a Dask worker runs for one run (module level, so it pickles by reference)."""
    os.environ.update(environment)
    return execute_run(spec, Path(report_dir), False, timeout)


def run_distributed(runs: list, report_dir: Path, timeout: float | None, jobs: int, scheduler: str | None = None):
    """Execute runs on a Dask cluster and yield their results as they finish.

    Without ``scheduler``, a ``LocalCluster`` of ``jobs`` single-threaded worker processes is
    started, and each kernel gets ``cpu_count // jobs`` TensorFlow threads. With ``scheduler``
    (``tcp://host:8786``), the runs go to that cluster (``dask scheduler`` / ``dask worker``, or
    dask-jobqueue on SLURM); its workers must see this kit and the report folder at the same paths.
    A worker that dies mid-run makes that run fail with a clear message (no retry: a half-trained
    run is never silently restarted elsewhere); the other runs go on.
    """
    import dask
    from distributed import Client, LocalCluster, as_completed

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = None if scheduler else LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50)
        with Client(scheduler or cluster) as client:
            environment = thread_settings(jobs if scheduler is None else 1)
            futures = {client.submit(_execute_on_worker, spec, str(report_dir), timeout, environment,
                                     key=f"run-{spec.name}", pure=False): spec for spec in runs}
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    yield future.result()
                except Exception as error:  # noqa: BLE001 - a lost worker fails its run only
                    result = RunResult(spec, report_dir / "runs" / spec.name)
                    result.error = f"the Dask worker running it failed: {summarize_error(error)}"
                    yield result
        if cluster is not None:
            cluster.close()


class EpochPrinter:
    """Print one line per finished epoch of every run while the report runs (``--jobs N`` too).

    It reads what the runs write (``history.csv``, ``params.json``) every second, so the console
    shows progress without any of the kernels' own output.
    """

    COLUMNS = ("loss", "val_loss", "val_dice")

    def __init__(self, report_dir: Path, names: list, stream=None):
        import threading

        self.report_dir, self.names = report_dir, names
        self.stream = stream or sys.stdout
        self.seen = {name: 0 for name in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self):
        while not self._stop.wait(1.0):
            self.poll()

    def poll(self):
        from lunghelpers import train

        for name in self.names:
            run = train.RunFolder(self.report_dir / "runs" / name)
            try:
                history = run.read_history()
                epochs = read_json(run.params_path).get("params", {}).get("epochs", "?")
            except (OSError, ValueError):
                continue
            for _, row in history.iloc[self.seen[name]:].iterrows():
                figures = " ".join(f"{column} {row[column]:.4f}" for column in self.COLUMNS if column in row)
                print(f"[{name}] epoch {int(row['epoch']) + 1}/{epochs} {figures}", file=self.stream, flush=True)
            self.seen[name] = max(self.seen[name], len(history))


#: Per-cell time limit of a report's notebooks, by scale (seconds): a stuck run fails, the report goes on.
DEFAULT_TIMEOUTS = {"quick": 1800, "full": 12 * 3600}


def run_report(
    experiment_files: list,
    scale: str = "quick",
    data_root: str | Path | None = None,
    jobs: int = 1,
    reports_root: str | Path | None = None,
    progress: bool = True,
    command: str = "",
    timeout: float | None = None,
    scheduler: str | None = None,
    select: list | None = None,
    overrides: dict | None = None,
) -> Path:
    """Execute every run of the experiment files and write the report; returns ``index.html``.

    ``select`` (``--runs``) keeps only the runs it names (see :func:`select_runs`); ``overrides``
    (``--set``) sets notebook parameters for every run (see :func:`apply_overrides`). The page's
    header says both. All files, names and values are read and checked before anything runs, so a
    typo fails fast and writes nothing.
    The page is written at the start and after every run, marked incomplete until the last one;
    the kernels' own output goes to ``kernels.log`` and each run's ``log.txt``, not the console.
    ``jobs > 1`` runs them on a Dask ``LocalCluster`` of that many workers, ``scheduler`` on an
    existing Dask cluster (see :func:`run_distributed`).
    """
    import time

    from lunghelpers.experiment import stderr_to

    loaded = [load_experiments(path, scale=scale, data_root=data_root) for path in experiment_files]
    runs = [run for _, run_list in loaded for run in run_list]
    available = len(runs)
    if select:
        runs = select_runs(runs, select, ", ".join(str(path) for path in experiment_files))
    if overrides:
        apply_overrides(runs, overrides)
    names = [run.name for run in runs]
    lowered = [name.lower() for name in names]
    duplicates = sorted({name for name in names if lowered.count(name.lower()) > 1})
    if duplicates:
        raise ExperimentFileError(f"run names must be unique across the experiment files: {duplicates}")
    if len(loaded) == 1:
        header = loaded[0][0]
    else:
        header = {
            "name": "+".join(head["name"] for head, _ in loaded),
            "description": " ".join(str(head["description"]) for head, _ in loaded),
            "source": ", ".join(head["source"] for head, _ in loaded),
        }
    header = {**header, "overrides": [f"{key} = {json.dumps(value, default=str)}" for key, value in (overrides or {}).items()]}
    if select:
        chosen = ", ".join(dict.fromkeys(run.group for run in runs))
        header["selected"] = f"{chosen} (--runs {' '.join(shlex.quote(pattern) for pattern in select)}: {len(runs)} of {available} runs)"
    timeout = DEFAULT_TIMEOUTS[scale] if timeout is None else timeout
    report_dir = new_report_dir(header["name"], reports_root)
    print(f"Report folder: {report_dir} ({len(runs)} runs, scale {scale})", flush=True)
    start = time.perf_counter()
    results = []
    write_report(header, results, report_dir, scale, command, total=len(runs))

    def finished(result):
        results.append(result)
        status = f"FAILED ({result.error})" if result.error else f"ok in {result.seconds / 60:.1f} min"
        print(f"  {result.spec.name}: {status}", flush=True)
        write_report(header, results, report_dir, scale, command, total=len(runs), seconds=time.perf_counter() - start)

    with stderr_to(report_dir / "kernels.log"), EpochPrinter(report_dir, names) if progress else contextlib.nullcontext():
        if jobs <= 1 and scheduler is None:
            for position, spec in enumerate(runs, start=1):
                print(f"[{position}/{len(runs)}] {spec.name}", flush=True)
                finished(execute_run(spec, report_dir, progress, timeout))
        else:
            for result in run_distributed(runs, report_dir, timeout, jobs, scheduler):
                finished(result)
    order = {name: position for position, name in enumerate(names)}
    results.sort(key=lambda result: order[result.spec.name])
    return write_report(header, results, report_dir, scale, command, total=len(runs), seconds=time.perf_counter() - start)


def parse_setting(text: str) -> tuple:
    """``("EPOCHS", 40)`` from ``"EPOCHS=40"`` (``--set``): the value is read as YAML."""
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE such as EPOCHS=40, got {text!r}")
    try:
        return name, yaml.load(value, Loader=YamlLoader)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a YAML value") from None


def main(argv: list | None = None) -> int:
    """Command line entry point; returns 0 when every run finished, 1 when some failed, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m lunghelpers.report",
        description="Execute experiment parameter sets through the notebooks and write an HTML report.",
    )
    parser.add_argument("experiments", nargs="+", help="experiment YAML files (see experiments/)")
    parser.add_argument("--scale", choices=SCALES, default="quick", help="quick (minutes on a CPU) or full (the recipes' own settings)")
    parser.add_argument("--data-root", default=None, help="folder with the real sets (e.g. ../shared/data); default: embedded synthetic data")
    parser.add_argument("--jobs", type=int, default=1, help="runs executed at the same time on a local Dask cluster of that many workers (default 1: one after the other)")
    parser.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://host:8786) to send the runs to")
    parser.add_argument("--reports-root", default=None, help="where report folders go (default: reports/)")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds a notebook cell may run before its run fails (default {DEFAULT_TIMEOUTS['quick']} at quick scale, {DEFAULT_TIMEOUTS['full']} at full scale)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="NAME",
                        help="run only these runs of the files (names as in their runs: list, shell-style globs allowed; a sweep by its name)")
    parser.add_argument("--set", action="append", type=parse_setting, default=[], metavar="NAME=VALUE", dest="overrides",
                        help="set a notebook parameter for every run, over everything the files set (VALUE is YAML: 40, true, [256, 256]); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no epoch lines on the console")
    parser.error = lambda message: parser.exit(2, f"error: {message} (see --help)\n")
    arguments = parser.parse_args(argv)
    if arguments.jobs < 1 or (arguments.timeout is not None and arguments.timeout <= 0):
        parser.exit(2, "error: --jobs must be at least 1 and --timeout positive\n")
    command = "python -m lunghelpers.report " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        index = run_report(
            arguments.experiments,
            scale=arguments.scale,
            data_root=arguments.data_root,
            jobs=arguments.jobs,
            reports_root=arguments.reports_root,
            progress=not arguments.no_progress,
            command=command,
            timeout=arguments.timeout,
            scheduler=arguments.scheduler,
            select=arguments.runs,
            overrides=dict(arguments.overrides),
        )
    except (ExperimentFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the report folder says which runs finished", file=sys.stderr)
        return 130
    print(f"Report written: {index}")
    failed = "failed" in pd.read_csv(index.parent / "summary.csv")["status"].tolist()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
