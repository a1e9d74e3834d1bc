"""Test-wide settings, applied before any test or notebook runs.

- Quick mode for every notebook pytest executes: the notebooks read ``LUNGHELPERS_QUICK`` in their
  ``parameters`` cell and then use a few dozen small images and two epochs, so
  ``pytest --nbval notebooks/`` finishes in minutes on a CPU. Set ``LUNGHELPERS_QUICK=0`` to run
  them at their real settings under pytest.
- Run and report folders go to a fresh temporary folder, so tests never touch ``runs/`` or
  ``reports/`` and can run again and again. The notebook kernels inherit these variables.
"""

import os
import tempfile

os.environ.setdefault("LUNGHELPERS_QUICK", "1")
_scratch = tempfile.mkdtemp(prefix="lunghelpers-tests-")
os.environ.setdefault("LUNGHELPERS_RUNS", os.path.join(_scratch, "runs"))
os.environ.setdefault("LUNGHELPERS_REPORTS", os.path.join(_scratch, "reports"))
