"""A quiet TensorFlow start and progress bars that executed notebooks keep.

Importing TensorFlow 2.21 on a machine without a GPU writes six to eight lines to the process's
standard error (file descriptor 2): "All log messages before absl::InitializeLog() is called are
written to STDERR", the oneDNN notice, "Could not find cuda drivers" and, when the first device is
looked up, "failed call to cuInit". It writes them before its C++ logging (absl) is set up, when
absl sends every message to standard error whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so no
environment variable hides them; and a Jupyter kernel shows all that reaches descriptor 2 as red
text under the cell.

``install()`` (run by ``import lunghelpers``, which stays cheap: it imports no TensorFlow) puts a
hook in ``sys.meta_path``. Whoever imports TensorFlow first after that (``import keras``, a module of
the kit, ``import tensorflow``) imports it with descriptor 2 pointed at a temporary file; the hook
also lists the GPUs there, so the CUDA lines come out during the import too. Descriptor 2 is put
back right after, so TensorFlow's later errors and every Python warning stay visible; Python's own
``sys.stderr`` keeps writing to the real standard error during the import as well. What TensorFlow
wrote is kept in ``tensorflow_startup_log()``, and written out if the import fails.
``TF_CPP_MIN_LOG_LEVEL`` defaults to 3: TensorFlow's later C++ log lines stay hidden too, such as
the "E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512" notice of the first training
step, which is logged as an error but only says that a fallback kernel is used. Real failures still
reach the student as Python exceptions with TensorFlow's message; set ``TF_CPP_MIN_LOG_LEVEL=0``
before importing the kit to see every C++ line.
``TF_ENABLE_ONEDNN_OPTS`` is left alone: the numbers stay those of the default build.

``progress_bar(iterable, **tqdm_arguments)`` is ``tqdm`` drawn as text. In a Jupyter kernel the
text is one display output that each refresh replaces (``display_id``), so a notebook executed by
papermill or nbval keeps the bar's final state ("100%| 267/267"), where ``tqdm.auto`` leaves a
widget that no saved notebook can redraw, stuck at "0%"; and it is not red, as a bar on standard
error would be.
"""

import contextlib
import importlib.abc
import os
import sys

#: Environment variables set (unless already set) before TensorFlow is imported.
TENSORFLOW_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}

_startup_log = ""


def tensorflow_startup_log():
    """What TensorFlow wrote to standard error while the kit imported it ("" before that)."""
    return _startup_log


@contextlib.contextmanager
def _capture_descriptor_2(captured):
    """Point file descriptor 2 at a temporary file; append what it received to ``captured``.

    Python's ``sys.stderr`` is pointed at a copy of the real descriptor 2 meanwhile, when it writes to
    descriptor 2, so Python warnings raised during the block still show.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    python_stderr = sys.stderr
    try:
        writes_to_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # Jupyter's stream, or none: no descriptor
        writes_to_fd2 = False
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        try:
            os.dup2(log.fileno(), 2)
            if writes_to_fd2:
                sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, errors="replace")
            yield
        finally:
            if writes_to_fd2:
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode("utf-8", errors="replace"))


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with descriptor 2 captured, then lists the GPUs there too."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        global _startup_log
        uninstall()  # only the first import: a mere importlib.util.find_spec("tensorflow") keeps the hook
        # The module keeps TensorFlow's loader: this one only wraps the first execution.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        captured = []
        try:
            with _capture_descriptor_2(captured):
                self.loader.exec_module(module)
                # Initialises the CUDA platform now ("failed call to cuInit" on a CPU machine).
                module.config.list_physical_devices("GPU")
        except BaseException:
            _startup_log = "".join(captured)
            sys.stderr.write(_startup_log)  # the import failed: what TensorFlow said may say why
            raise
        _startup_log = "".join(captured)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader in a ``_QuietLoader``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _TensorFlowFinder()


def install():
    """Make the next import of TensorFlow quiet (nothing to do once it is imported)."""
    if "tensorflow" in sys.modules or _FINDER in sys.meta_path:
        return
    for name, value in TENSORFLOW_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    sys.meta_path.insert(0, _FINDER)


def uninstall():
    """Remove the import hook (TensorFlow then imports as it would without the kit)."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)


def _in_jupyter_kernel():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def progress_bar(iterable=None, **tqdm_arguments):
    """``tqdm(iterable, **tqdm_arguments)`` as text; in a Jupyter kernel, one output updated in place."""
    from tqdm import tqdm

    if not _in_jupyter_kernel():
        return tqdm(iterable, **tqdm_arguments)

    import io

    from IPython.display import display

    class TextBar(tqdm):
        """Draws the bar as a text output that the kernel updates (``display_id``), not on a stream.

        Papermill and nbval keep the last update of such an output, so an executed notebook keeps
        the final state of the bar; a live notebook redraws it in place.
        """

        handle = None

        def display(self, msg=None, pos=None):
            text = {"text/plain": self.__str__() if msg is None else msg}
            if self.handle is None:
                self.handle = display(text, raw=True, display_id=True)
            else:
                self.handle.update(text, raw=True)
            return True

    tqdm_arguments.setdefault("file", io.StringIO())  # the bar's newlines: no stream output at all
    tqdm_arguments.setdefault("ascii", False)
    return TextBar(iterable, **tqdm_arguments)
