"""Run named parameter sets through the notebooks with papermill and write one HTML report.

Usage::

    python -m lunghelpers.report experiments/ct_assignment.yaml --scale quick
    python -m lunghelpers.report experiments/lab.yaml experiments/poster.yaml --data-root ../shared/data

Each experiment file names the notebooks a run executes, the parameters shared by its runs, the
overrides of the quick scale, and the runs themselves (see ``experiments/README.md``). Every report
goes to a new folder ``reports/<name>-<timestamp>/`` holding ``index.html``, the run folders and the
executed notebooks; nothing earlier is ever overwritten. A run that fails is recorded in the report
with its error and the other runs still finish.

The report only reads what the runs wrote (``params.json``, ``history.csv``, ``metrics.json``,
``figures/*.png``): it never re-computes a number.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import json
import sys
from concurrent.futures import ThreadPoolExecutor
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
#: Parameters shown in the summary table, when a run set them.
SUMMARY_PARAMETERS = (
    "DATASET",
    "MODEL",
    "BASE_FILTERS",
    "LOSS",
    "DROPOUT_RATE",
    "BATCH_NORM",
    "AUGMENT",
    "MASK_MODE",
    "IMAGE_SIZE",
    "EPOCHS",
    "LIMIT",
    "TRAIN_SIZE",
    "TRAIN_NOISE_FRACTION",
    "VAL_NOISE_FRACTION",
)
#: What a quick-scale report says above its table, so nobody takes its numbers for results.
QUICK_SCALE_NOTE = (
    "<p class='quick'><b>Quick scale:</b> every run trains a few epochs on small images (often on only part "
    "of the set), so that the whole report finishes in minutes on a CPU. It shows that each notebook runs and what it writes; its "
    "scores are far from what the recipes reach and must not be compared with the source's figures. Use "
    "<code>--scale full</code> for results.</p>"
)
#: Folder names of the real sets under ``--data-root`` (the layout of ``../shared/data``).
DATA_SUBDIRS = {"ct": ("kaggle_ct2d", "ct"), "xray": ("xray", "cxr")}


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


@dataclass
class RunResult:
    """What happened to a run: where it lives, whether it finished, its error if not."""

    spec: RunSpec
    run_dir: Path
    executed: list = field(default_factory=list)
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
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ExperimentFileError(f"experiment file {path} is not valid YAML: {error}") from error
    if not isinstance(document, dict) or not document.get("runs"):
        raise ExperimentFileError(f"experiment file {path} must be a mapping with a non-empty 'runs' list")
    unknown = sorted(set(document) - DOCUMENT_KEYS)
    if unknown:
        import difflib

        hints = [f"{key!r}" + "".join(f" (did you mean {close!r}?)" for close in difflib.get_close_matches(str(key), sorted(DOCUMENT_KEYS), n=1)) for key in unknown]
        raise ExperimentFileError(f"experiment file {path} has unknown sections {', '.join(hints)}; it may have {sorted(DOCUMENT_KEYS)}")
    header = {
        "name": document.get("name", path.stem),
        "description": document.get("description", ""),
        "source": str(path),
    }
    runs = []
    seen = set()
    for index, run in enumerate(document["runs"]):
        if not isinstance(run, dict) or "name" not in run:
            raise ExperimentFileError(f"{path}: run #{index + 1} needs a 'name'")
        unknown = sorted(set(run) - RUN_KEYS)
        if unknown:
            raise ExperimentFileError(f"{path}: run {run['name']!r} has unknown keys {unknown}; a run has {sorted(RUN_KEYS)}")
        notebooks = run.get("notebooks", document.get("notebooks"))
        if not notebooks:
            raise ExperimentFileError(f"{path}: run {run['name']!r} names no notebooks")
        for notebook in notebooks:
            if not (paths.NOTEBOOKS_ROOT / notebook).is_file():
                raise ExperimentFileError(f"{path}: run {run['name']!r} names missing notebook {notebook!r}")
        quick = dict(run.get("quick", {}))
        sweep = quick.pop("sweep", None) if scale == "quick" and "sweep" in quick else run.get("sweep")
        for name, swept in _expand_sweep(path, str(run["name"]), sweep):
            if name in seen:
                raise ExperimentFileError(f"{path}: run name {name!r} appears twice")
            seen.add(name)
            parameters = {**document.get("parameters", {}), **run.get("parameters", {})}
            if scale == "quick":
                parameters.update(document.get("quick", {}))
                parameters.update(quick)
            parameters.update(swept)
            parameters["NAME"] = name
            _check_parameter_names(path, name, parameters, notebooks)
            if data_root is not None:
                parameters["DATA_DIR"] = str(resolve_data_dir(data_root, parameters.get("DATASET", "ct")))
            runs.append(RunSpec(name, list(notebooks), parameters, run.get("reference", {}), str(run["name"])))
    return header, runs


#: The sections of an experiment file.
DOCUMENT_KEYS = {"name", "description", "notebooks", "parameters", "quick", "runs"}
#: The keys a run of an experiment file may have.
RUN_KEYS = {"name", "notebooks", "parameters", "quick", "reference", "sweep"}


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


def _check_parameter_names(path, run_name, parameters, notebooks):
    """Refuse a parameter that none of the run's notebooks has (a typo would be silently ignored)."""
    import difflib

    known = set().union(*(notebook_parameters(notebook) for notebook in notebooks)) | {"RUN_DIR"}
    for key in parameters:
        if not (isinstance(key, str) and key.isidentifier()):
            raise ExperimentFileError(f"{path}: run {run_name!r} has parameter name {key!r}, which is no identifier")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ExperimentFileError(
                f"{path}: run {run_name!r} sets {key}{hint}, which is no parameter of {', '.join(notebooks)}"
            )


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


def execute_run(spec: RunSpec, report_dir: Path, progress: bool = True) -> RunResult:
    """Execute the run's notebooks in order with papermill; record the first error and stop there."""
    import time

    import papermill

    run_dir = report_dir / "runs" / spec.name
    notebook_dir = run_dir / "notebooks"
    notebook_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(spec, run_dir)
    start = time.perf_counter()
    for notebook in spec.notebooks:
        output = notebook_dir / notebook
        own = notebook_parameters(notebook)
        parameters = {key: value for key, value in spec.parameters.items() if key in own}
        parameters["RUN_DIR"] = str(run_dir)
        try:
            papermill.execute_notebook(
                str(paths.NOTEBOOKS_ROOT / notebook),
                str(output),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(paths.NOTEBOOKS_ROOT),
                progress_bar=progress,
            )
            result.executed.append(output)
        except Exception as error:  # noqa: BLE001 - any failure is recorded, the other runs go on
            if output.exists():
                result.executed.append(output)
            result.error = f"{notebook}: {summarize_error(error)}"
            break
    result.seconds = time.perf_counter() - start
    return result


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


def image_tag(path: Path, width: str = "100%") -> str:
    """An <img> with the PNG embedded, so the report is one self-contained file."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    title = html.escape(path.stem.replace("_", " "))
    return f'<figure><img style="max-width:{width}" src="data:image/png;base64,{encoded}" alt="{title}"><figcaption>{title}</figcaption></figure>'


def summary_table(results: list) -> pd.DataFrame:
    """One row per run: status, the parameters that differ between runs, the final metrics."""
    rows = []
    for result in results:
        metrics = read_json(result.run_dir / "metrics.json")
        row = {"run": result.spec.name, "status": "failed" if result.error else "ok"}
        for key in SUMMARY_PARAMETERS:
            if key in result.spec.parameters:
                value = result.spec.parameters[key]
                row[key.lower()] = json.dumps(value) if isinstance(value, (list, dict)) else value
        for key in SUMMARY_METRICS:
            if key in metrics:
                row[key] = metrics[key]
        for key, value in result.spec.reference.items():
            row[f"source {key}"] = value
        row["minutes"] = round(result.seconds / 60, 2)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_figures(results: list, report_dir: Path) -> list:
    """Validation curves of all finished runs side by side, saved as PNGs in the report folder."""
    from lunghelpers import plots

    histories = {}
    for result in results:
        history_path = result.run_dir / "history.csv"
        if history_path.exists():
            histories[result.spec.name] = pd.read_csv(history_path)
    figures = []
    if not histories:
        return figures
    for metric in ("val_loss", "val_dice"):
        if any(metric in history for history in histories.values()):
            figure = plots.compare_curves(histories, metric=metric)
            path = report_dir / f"compare_{metric}.png"
            plots.save_figure(figure, path)
            figures.append(path)
    return figures


def write_report(header: dict, results: list, report_dir: Path, scale: str, command: str) -> Path:
    """Write ``index.html`` from the run folders; returns its path."""
    table = summary_table(results)
    comparisons = comparison_figures(results, report_dir)
    styles = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}.failed{background:#fde8e8}figure{display:inline-block;margin:0.5em;vertical-align:top}"
        "figcaption{font-size:0.8em;color:#555}pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;white-space:pre-wrap}"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(header['name'])} report</title><style>{styles}</style></head><body>",
        f"<h1>{html.escape(header['name'])}</h1>",
        f"<p>{html.escape(str(header['description']))}</p>",
        f"<p>Scale: <b>{scale}</b>. Written {_dt.datetime.now():%Y-%m-%d %H:%M}. Command: <code>{html.escape(command)}</code>. "
        f"Experiment file: <code>{html.escape(header['source'])}</code>.</p>",
        "<p>Numbers come from each run's <code>metrics.json</code>. Dice, IoU, precision and recall are foreground "
        "(lung) scores at threshold 0.5 unless a column says otherwise; CPU runs are reproducible with the same seed, "
        "other hardware may differ in the last digits.</p>",
        QUICK_SCALE_NOTE if scale == "quick" else "",
        "<h2>Final metrics</h2>",
        table.to_html(index=False, float_format=lambda value: f"{value:.4f}", na_rep="", border=0)
        .replace("<td>failed</td>", "<td class='failed'>failed</td>"),
    ]
    failures = [result for result in results if result.error]
    if failures:
        parts.append("<h2>Failed runs</h2>")
        for result in failures:
            parts.append(f"<h3>{html.escape(result.spec.name)}</h3><pre>{html.escape(result.error)}</pre>")
    if comparisons:
        parts.append("<h2>Learning curves, all runs</h2>")
        parts.extend(image_tag(path, "48%") for path in comparisons)
    parts.append("<h2>Runs</h2>")
    for result in results:
        parts.append(f"<h3 id='{html.escape(result.spec.name)}'>{html.escape(result.spec.name)}</h3>")
        if result.error:
            parts.append("<p><b>Failed</b>: see the error above and the executed notebook.</p>")
        links = [
            f"<a href='{html.escape(str(path.relative_to(report_dir)))}'>{html.escape(path.name)}</a>"
            for path in result.executed
        ]
        if links:
            parts.append("<p>Executed notebooks: " + ", ".join(links) + "</p>")
        for figure in sorted((result.run_dir / "figures").glob("*.png")):
            parts.append(image_tag(figure, "48%"))
        parameter_rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(json.dumps(value))}</td></tr>"
            for key, value in sorted(result.spec.parameters.items())
        )
        parts.append(f"<details><summary>Parameters</summary><table>{parameter_rows}</table></details>")
    parts.append("</body></html>")
    index = report_dir / "index.html"
    temporary = index.with_suffix(".html.tmp")
    temporary.write_text("\n".join(parts), encoding="utf-8")
    temporary.replace(index)
    table.to_csv(report_dir / "summary.csv", index=False)
    return index


def run_report(
    experiment_files: list,
    scale: str = "quick",
    data_root: str | Path | None = None,
    jobs: int = 1,
    reports_root: str | Path | None = None,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Execute every run of the experiment files and write the report; returns ``index.html``.

    All files are read and checked before anything runs, so a typo fails fast and writes nothing.
    """
    loaded = [load_experiments(path, scale=scale, data_root=data_root) for path in experiment_files]
    runs = [run for _, run_list in loaded for run in run_list]
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
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
    report_dir = new_report_dir(header["name"], reports_root)
    print(f"Report folder: {report_dir} ({len(runs)} runs, scale {scale})", flush=True)
    if jobs <= 1:
        results = []
        for position, spec in enumerate(runs, start=1):
            print(f"[{position}/{len(runs)}] {spec.name}", flush=True)
            results.append(execute_run(spec, report_dir, progress))
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda spec: execute_run(spec, report_dir, False), runs))
    for result in results:
        status = f"FAILED ({result.error})" if result.error else "ok"
        print(f"  {result.spec.name}: {status}", flush=True)
    return write_report(header, results, report_dir, scale, command)


def main(argv: list | None = None) -> int:
    """Command line entry point; returns 0 when every run finished, 1 when some failed."""
    parser = argparse.ArgumentParser(
        prog="python -m lunghelpers.report",
        description="Execute experiment parameter sets through the notebooks and write an HTML report.",
    )
    parser.add_argument("experiments", nargs="+", help="experiment YAML files (see experiments/)")
    parser.add_argument("--scale", choices=SCALES, default="quick", help="quick (minutes on a CPU) or full (the recipes' own settings)")
    parser.add_argument("--data-root", default=None, help="folder with the real sets (e.g. ../shared/data); default: embedded synthetic data")
    parser.add_argument("--jobs", type=int, default=1, help="runs executed at the same time (default 1)")
    parser.add_argument("--reports-root", default=None, help="where report folders go (default: reports/)")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's progress bars")
    arguments = parser.parse_args(argv)
    command = "python -m lunghelpers.report " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        index = run_report(
            arguments.experiments,
            scale=arguments.scale,
            data_root=arguments.data_root,
            jobs=arguments.jobs,
            reports_root=arguments.reports_root,
            progress=not arguments.no_progress,
            command=command,
        )
    except ExperimentFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Report written: {index}")
    failed = "failed" in pd.read_csv(index.parent / "summary.csv")["status"].tolist()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
