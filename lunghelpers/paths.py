"""Where the kit keeps its data, runs and reports, relative to the project folder."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = PROJECT_ROOT / "data"
SYNTHETIC_ROOT = DATA_ROOT / "synthetic"
RUNS_ROOT = PROJECT_ROOT / "runs"
REPORTS_ROOT = PROJECT_ROOT / "reports"
NOTEBOOKS_ROOT = PROJECT_ROOT / "notebooks"
