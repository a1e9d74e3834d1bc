"""The student edition: every lesson without its ``answer`` cells, runnable from another folder.

- The edition of every lesson keeps every other cell, in order and unchanged, and no output.
- The edition of a made-up lesson whose answer cell would fail, and of the U-Net lesson, passes
  ``pytest --nbval`` run in the edition's own folder (quick mode).
- No lesson's code names a path relative to the notebook folder, so every lesson runs from there.
- ``python -m lunghelpers.student OUT_DIR`` refuses a non-empty folder unless ``--overwrite`` and a
  file, each with one error line and exit status 2.
"""

import ast
import os
import subprocess
import sys

import nbformat
import pytest

from lunghelpers import paths, student

LESSONS = sorted(paths.NOTEBOOKS_ROOT.glob("*.ipynb"))


def is_answer(cell):
    return student.ANSWER_TAG in cell.metadata.get("tags", [])


def test_the_edition_leaves_out_the_answers_and_keeps_every_other_cell(tmp_path):
    written = student.write_edition(tmp_path / "edition")
    assert [path.name for path in written] == [path.name for path in LESSONS]
    removed = 0
    for lesson_path, edition_path in zip(LESSONS, written):
        lesson = nbformat.read(lesson_path, as_version=4)
        edition = nbformat.read(edition_path, as_version=4)
        kept = [(cell.cell_type, cell.source) for cell in lesson.cells if not is_answer(cell)]
        assert [(cell.cell_type, cell.source) for cell in edition.cells] == kept, lesson_path.name
        assert not any(is_answer(cell) for cell in edition.cells)
        assert all(not cell.outputs and cell.execution_count is None for cell in edition.cells if cell.cell_type == "code")
        assert edition.metadata.kernelspec.name == lesson.metadata.kernelspec.name
        removed += len(lesson.cells) - len(edition.cells)
    assert removed > 0, "no lesson has a cell tagged 'answer'"


def made_up_lesson():
    cells = [
        nbformat.v4.new_code_cell("SIDE = 3", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("## Question\nHow many pixels has a square of side `SIDE`?"),
        nbformat.v4.new_code_cell("raise AssertionError('the answer cell was left in the edition')",
                                  metadata={"tags": ["answer"]}),
        nbformat.v4.new_markdown_cell("*Answer.* SIDE squared.", metadata={"tags": ["answer"]}),
        nbformat.v4.new_code_cell("pixels = SIDE * SIDE\nprint(pixels)"),
        nbformat.v4.new_markdown_cell("## Exercises\n1. Try SIDE = 4.\n2. Try a rectangle."),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def run_nbval(folder):
    environment = dict(os.environ, LUNGHELPERS_QUICK="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval", "-p", "no:cacheprovider", "."],
        cwd=folder, capture_output=True, text=True, env=environment, timeout=900,
    )


def test_the_edition_passes_nbval_from_its_own_folder(tmp_path):
    made_up = tmp_path / "lessons" / "00_made_up.ipynb"
    made_up.parent.mkdir()
    nbformat.write(made_up_lesson(), made_up)
    edition = tmp_path / "edition"
    student.write_edition(edition, [made_up, paths.NOTEBOOKS_ROOT / "03_unet.ipynb"])
    assert len(nbformat.read(edition / "00_made_up.ipynb", as_version=4).cells) == 4
    result = run_nbval(edition)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def relative_paths(notebook_path):
    """String constants in the lesson's code that start with ./ or ../ (comments are not code)."""
    found = []
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(("./", "../")):
                found.append(node.value)
    return found


@pytest.mark.parametrize("lesson", LESSONS, ids=[path.name for path in LESSONS])
def test_lessons_name_no_path_relative_to_their_folder(lesson):
    found = relative_paths(lesson)
    assert not found, f"{lesson.name} uses {found}: use lunghelpers.paths so the student edition runs elsewhere"


def run_command(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "lunghelpers.student", *map(str, arguments)],
        capture_output=True, text=True, timeout=300,
    )


def test_command_writes_the_edition_and_refuses_a_used_folder(tmp_path):
    out_dir = tmp_path / "edition"
    first = run_command(out_dir)
    assert first.returncode == 0, first.stderr
    assert sorted(path.name for path in out_dir.iterdir()) == [path.name for path in LESSONS]

    again = run_command(out_dir)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0, again.stderr
    assert str(out_dir) in again.stderr and "--overwrite" in again.stderr

    (out_dir / "my notes.txt").write_text("mine")
    (out_dir / LESSONS[0].name).write_text("an old edition")
    overwritten = run_command(out_dir, "--overwrite")
    assert overwritten.returncode == 0, overwritten.stderr
    assert (out_dir / "my notes.txt").read_text() == "mine"
    nbformat.read(out_dir / LESSONS[0].name, as_version=4)  # the lesson again, not the old text


def test_command_refuses_a_file_as_out_dir(tmp_path):
    a_file = tmp_path / "edition.ipynb"
    a_file.write_text("{}")
    result = run_command(a_file)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(a_file) in result.stderr and "folder" in result.stderr


def test_write_edition_names_a_notebook_that_is_not_one(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("not json")
    with pytest.raises(ValueError, match="broken.ipynb is not a readable notebook"):
        student.write_edition(tmp_path / "edition", [broken])
    with pytest.raises(ValueError, match="missing.ipynb is not a notebook file"):
        student.write_edition(tmp_path / "edition", [tmp_path / "missing.ipynb"])
