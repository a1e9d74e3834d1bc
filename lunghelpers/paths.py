"""Where the kit keeps its data, runs and reports, relative to the project folder.

``LUNGHELPERS_RUNS`` and ``LUNGHELPERS_REPORTS`` move run and report folders elsewhere (the test
suite points them at a temporary folder so tests never touch a user's runs).
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = PROJECT_ROOT / "data"
SYNTHETIC_ROOT = DATA_ROOT / "synthetic"
RUNS_ROOT = Path(os.environ.get("LUNGHELPERS_RUNS", PROJECT_ROOT / "runs"))
REPORTS_ROOT = Path(os.environ.get("LUNGHELPERS_REPORTS", PROJECT_ROOT / "reports"))
NOTEBOOKS_ROOT = PROJECT_ROOT / "notebooks"
