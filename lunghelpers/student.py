"""The student edition of the lessons: every notebook without the cells that answer its questions.

A lesson tags the cells that answer its discussion questions ``answer``. The student edition is a
copy of each lesson without those cells (nbconvert's ``TagRemovePreprocessor``) and without outputs,
so a student meets the questions before the answers::

    python -m lunghelpers.student OUT_DIR [--overwrite]      (or: ./kit.sh student OUT_DIR)

The edition runs from any folder while the kit is installed: the lessons find the embedded data,
the run folders and the training notebook through ``lunghelpers.paths``, not through paths
relative to the notebook.
"""

import argparse
import sys
from pathlib import Path

from lunghelpers import paths

#: Cells with this tag answer a discussion question; the student edition leaves them out.
ANSWER_TAG = "answer"


def student_notebook(notebook):
    """A copy of ``notebook`` (an nbformat notebook) without ``answer`` cells and outputs."""
    import copy

    from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

    notebook = copy.deepcopy(notebook)
    notebook, resources = TagRemovePreprocessor(remove_cell_tags={ANSWER_TAG}).preprocess(notebook, {})
    notebook, _ = ClearOutputPreprocessor().preprocess(notebook, resources)
    return notebook


def write_edition(out_dir, notebooks=None, overwrite=False):
    """Write the student edition of ``notebooks`` (default: every lesson) into ``out_dir``.

    Returns the paths written. ``out_dir`` may exist only if it is empty, unless ``overwrite`` is
    true: then lessons already there are replaced and other files are left alone. Raises
    ``ValueError`` naming the folder or notebook when the input is unusable.
    """
    import nbformat

    out_dir = Path(out_dir)
    notebooks = sorted(paths.NOTEBOOKS_ROOT.glob("*.ipynb")) if notebooks is None else [Path(p) for p in notebooks]
    if not notebooks:
        raise ValueError(f"no lessons to copy: {paths.NOTEBOOKS_ROOT} holds no .ipynb file")
    for notebook in notebooks:
        if notebook.suffix != ".ipynb" or not notebook.is_file():
            raise ValueError(f"{notebook} is not a notebook file (expected an existing .ipynb file)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} is a file; expected a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"OUT_DIR {out_dir} is not empty; choose a new folder or pass --overwrite")
    if out_dir.resolve() == paths.NOTEBOOKS_ROOT.resolve():
        raise ValueError(f"OUT_DIR {out_dir} is the lessons' own folder; choose another folder")
    editions = {}
    for notebook in notebooks:
        try:
            lesson = nbformat.read(notebook, as_version=4)
        except Exception as error:  # nbformat raises JSON, validation or key errors
            raise ValueError(f"{notebook} is not a readable notebook: {error}") from error
        editions[out_dir / notebook.name] = student_notebook(lesson)
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, edition in editions.items():
        nbformat.write(edition, target)
    return list(editions)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lunghelpers.student",
        description="Write the student edition of every lesson (no cells tagged 'answer', no outputs).",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder for the edition")
    parser.add_argument("--overwrite", action="store_true", help="replace the lessons in a non-empty OUT_DIR")
    arguments = parser.parse_args(argv)
    try:
        written = write_edition(arguments.out_dir, overwrite=arguments.overwrite)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote the student edition of {len(written)} lessons to {Path(arguments.out_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
