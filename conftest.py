"""Test-wide settings, applied before any test or notebook runs.

- Quick mode for every notebook pytest executes: the notebooks read ``LUNGHELPERS_QUICK`` in their
  ``parameters`` cell and then use a few dozen small images and two epochs, so
  ``pytest --nbval notebooks/`` finishes in minutes on a CPU. Set ``LUNGHELPERS_QUICK=0`` to run
  them at their real settings under pytest.
- Run and report folders go to a fresh temporary folder, so tests never touch ``runs/`` or
  ``reports/`` and can run again and again. The notebook kernels inherit these variables.
- Under pytest-xdist (``./kit.sh test`` runs two workers) each worker gets its own folders: notebooks
  05, 06 and 07 share a run folder (06 and 07 train it when it is missing), and two workers must not
  train the same folder at once. Workers inherit the first process's environment, so the variables
  are set anew in each worker.
- Each process removes its scratch folder when the session ends (a session's runs take a few hundred
  MB); run with ``LUNGHELPERS_RUNS`` set to keep the runs of a one-process session for a look.
"""

import os
import shutil
import tempfile

os.environ.setdefault("LUNGHELPERS_QUICK", "1")
_scratch = tempfile.mkdtemp(prefix="lunghelpers-tests-")
for _name, _folder in (("LUNGHELPERS_RUNS", "runs"), ("LUNGHELPERS_REPORTS", "reports")):
    if os.environ.get("PYTEST_XDIST_WORKER") or _name not in os.environ:
        os.environ[_name] = os.path.join(_scratch, _folder)


def pytest_unconfigure(config):
    shutil.rmtree(_scratch, ignore_errors=True)
