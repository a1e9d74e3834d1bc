"""The test suite's scratch folder (conftest.py) is removed when a pytest session ends."""

import os
import subprocess
import sys

from lunghelpers import paths


def test_a_session_leaves_no_scratch_folder_behind(tmp_path):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("LUNGHELPERS_RUNS", "LUNGHELPERS_REPORTS", "PYTEST_XDIST_WORKER")}
    environment["TMPDIR"] = str(tmp_path)
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         "tests/test_schedules.py"],
        cwd=paths.PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert not list(tmp_path.glob("lunghelpers-tests-*")), "conftest.py left its scratch folder in TMPDIR"
