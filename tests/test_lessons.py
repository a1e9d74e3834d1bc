"""The lessons' shape and a quiet start.

Shape, from every notebook's JSON (code parsed with ``ast``, IPython magics left out):

- 05 trains with ``model.compile(...)``, ``model.optimizer.build(...)`` and ``model.fit(...)`` in its cells; 03 builds the U-Net from
  ``Conv2D``, ``MaxPool2D``, ``UpSampling2D``, ``Dropout`` and ``concatenate`` in its cells.
- No cell chooses sentences: no ``if``/``else``, conditional expression or ``match`` with a branch
  holding four or more words of text (a bare ``if ...: raise`` check is fine).
- Per lesson at most 5 ``raise`` and at most 150 code lines outside the parameters cell; at least
  one cell tagged ``answer``; a late markdown cell "Exercises" with 2-4 exercises; a parameters cell
  papermill reads completely; no outputs committed.
- A lesson imports the kit before Keras or TensorFlow (the kit makes TensorFlow's start quiet).
- No notebook, README.md or module of the package refers to the course's specification or design
  files ("SPEC", "DESIGN.md"), which a clone does not have.

Quiet start: importing the kit and then Keras writes none of TensorFlow's start-up lines (absl,
oneDNN, CUDA) to standard error, while Python warnings still show, in a plain interpreter and in a
Jupyter kernel; there the kit's progress bars leave their final state as text.
"""

import ast
import os
import re
import subprocess
import sys
import textwrap

import nbformat
import papermill
import pytest

from lunghelpers import paths

NOTEBOOKS = sorted(paths.NOTEBOOKS_ROOT.glob("*.ipynb"))
NAMES = [path.name for path in NOTEBOOKS]
MAX_RAISES = 5
MAX_CODE_LINES = 150
MIN_PROSE_WORDS = 4
#: Start-up lines of TensorFlow's C++ code (absl's log prefix "I0000 00:00:..." included).
TENSORFLOW_NOISE = re.compile(r"tensorflow|absl|cuda|cuInit|oneDNN|cpu_feature_guard|^[IWEF]\d{4} ", re.I | re.M)


def lesson(name):
    return nbformat.read(paths.NOTEBOOKS_ROOT / name, as_version=4)


def is_parameters(cell):
    return "parameters" in cell.metadata.get("tags", [])


def python_source(cell):
    """The cell's code without IPython magics and shell lines, which ``ast`` cannot parse."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def is_answer(cell):
    return "answer" in cell.metadata.get("tags", [])


def code_cells(notebook, parameters=False):
    return [cell for cell in notebook.cells if cell.cell_type == "code" and (parameters or not is_parameters(cell))]


def parse(cell, name):
    try:
        return ast.parse(python_source(cell))
    except SyntaxError as error:
        pytest.fail(f"{name}: a code cell does not parse ({error}):\n{cell.source[:300]}")


def trees(name, parameters=False):
    return [parse(cell, name) for cell in code_cells(lesson(name), parameters)]


def text_words(nodes):
    """Words in the string constants (f-string parts included) under ``nodes``."""
    return sum(
        len(node.value.split())
        for root in nodes
        for node in ast.walk(root)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def sentence_branches(tree):
    """Source lines of the ``if``, conditional expressions and ``match`` that choose between texts."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            if not node.orelse and all(isinstance(statement, ast.Raise) for statement in node.body):
                continue  # a check: `if bad: raise ...`
            branches = [[statement] for statement in node.body + node.orelse if not isinstance(statement, ast.Raise)]
        elif isinstance(node, ast.IfExp):
            branches = [[node.body], [node.orelse]]
        elif isinstance(node, ast.Match):
            branches = [case.body for case in node.cases]
        else:
            continue
        if any(text_words(branch) >= MIN_PROSE_WORDS for branch in branches):
            found.append(ast.unparse(node).splitlines()[0])
    return found


def called_names(tree):
    """Names of what is called: ``f`` for ``f(...)``, ``fit`` for ``model.fit(...)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
            elif isinstance(node.func, ast.Name):
                names.add(node.func.id)
    return names


def code_lines(cell):
    return sum(1 for line in python_source(cell).splitlines() if line.strip() and not line.strip().startswith("#"))


# --- the checker's own logic, on made-up cells --------------------------------------------------------


def test_sentence_branches_are_found_and_checks_are_not():
    chooses = textwrap.dedent(
        """
        if loss_rose:
            print("the model is over-fitting its training set")
        verdict = "looks fine to me" if ok else "no"
        """
    )
    neutral = textwrap.dedent(
        """
        if bad:
            raise AssertionError("the masks must hold lung and background")
        label = "bce" if use_bce else "dice"
        if n > 2:
            x = f(n)
        """
    )
    assert len(sentence_branches(ast.parse(chooses))) == 2
    assert sentence_branches(ast.parse(neutral)) == []


def test_code_lines_leave_out_comments_blank_lines_and_magics():
    cell = nbformat.v4.new_code_cell("%matplotlib inline\n# a comment\n\nx = 1\ny = f(\n    x)\n")
    assert code_lines(cell) == 3
    assert called_names(parse(cell, "made-up")) == {"f"}


# --- the lessons ---------------------------------------------------------------------------------------


def test_there_are_lessons():
    assert len(NOTEBOOKS) >= 10, f"expected the ten lessons in {paths.NOTEBOOKS_ROOT}"


def test_training_lesson_compiles_and_fits_in_its_cells():
    calls = set().union(*(called_names(tree) for tree in trees("05_training.ipynb")))
    missing = {"compile", "build", "fit"} - calls
    assert not missing, f"05_training.ipynb: no .{'(, .'.join(sorted(missing))}( call in its code cells"


def test_training_lesson_swaps_in_the_weight_average_before_the_checkpoint_saves():
    """``SwapEMAWeights`` must come before ``ModelCheckpoint`` in 05's callbacks, or an
    ``EMA_MOMENTUM`` run would keep the raw weights while its figures are the average's
    (``test_train`` shows what goes wrong otherwise)."""
    cell = next(cell.source for cell in code_cells(lesson("05_training.ipynb")) if "callbacks = [" in cell.source)
    assert 0 <= cell.find("SwapEMAWeights") < cell.find("ModelCheckpoint"), cell


def test_unet_lesson_builds_the_unet_from_keras_layers():
    calls = set().union(*(called_names(tree) for tree in trees("03_unet.ipynb")))
    missing = {"Conv2D", "MaxPool2D", "UpSampling2D", "Dropout", "concatenate"} - calls
    assert not missing, f"03_unet.ipynb: its code cells never call {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_no_cell_chooses_sentences(name):
    found = [line for tree in trees(name, parameters=True) for line in sentence_branches(tree)]
    assert not found, f"{name}: {len(found)} branches choose sentences: " + "; ".join(found[:5])


@pytest.mark.parametrize("name", NAMES)
def test_at_most_five_raise_per_lesson(name):
    raises = sum(isinstance(node, ast.Raise) for tree in trees(name) for node in ast.walk(tree))
    assert raises <= MAX_RAISES, f"{name}: {raises} raise statements outside the parameters cell (at most {MAX_RAISES})"


@pytest.mark.parametrize("name", NAMES)
def test_at_most_150_code_lines_outside_the_parameters_cell(name):
    lines = sum(code_lines(cell) for cell in code_cells(lesson(name)))
    assert lines <= MAX_CODE_LINES, f"{name}: {lines} code lines outside the parameters cell (at most {MAX_CODE_LINES})"


@pytest.mark.parametrize("name", NAMES)
def test_every_lesson_tags_its_answers(name):
    answers = [cell for cell in lesson(name).cells if is_answer(cell)]
    assert answers, f"{name}: no cell tagged 'answer'"


@pytest.mark.parametrize("name", NAMES)
def test_every_lesson_ends_with_two_to_four_exercises(name):
    cells = lesson(name).cells
    heading = re.compile(r"^#+\s*Exercises\b", re.M)
    # The last markdown cell of the student edition (answer cells left out), or one of the last three.
    markdown = [i for i, cell in enumerate(cells) if cell.cell_type == "markdown" and not is_answer(cell)]
    late = [i for i in markdown if heading.search(cells[i].source) and (i == markdown[-1] or i >= len(cells) - 3)]
    assert late, f"{name}: neither its last markdown cell nor one of its last three cells is an 'Exercises' heading"
    exercises = cells[late[-1]].source[heading.search(cells[late[-1]].source).end():]
    items = re.findall(r"^(?:\d+[.)]|[-*])\s+\S", exercises, re.M)
    assert 2 <= len(items) <= 4, f"{name}: the Exercises cell lists {len(items)} exercises (expected 2-4)"


@pytest.mark.parametrize("name", NAMES)
def test_papermill_reads_every_parameter(name):
    cells = [cell for cell in lesson(name).cells if cell.cell_type == "code" and is_parameters(cell)]
    assert len(cells) == 1, f"{name}: {len(cells)} cells tagged 'parameters' (expected one)"
    assigned = {
        target.id
        for node in parse(cells[0], name).body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    seen = set(papermill.inspect_notebook(str(paths.NOTEBOOKS_ROOT / name)))
    assert seen, f"{name}: papermill finds no parameter in the parameters cell"
    assert assigned <= seen, f"{name}: papermill does not see the parameters {sorted(assigned - seen)}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    executed = [i for i, cell in enumerate(lesson(name).cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not executed, (
        f"{name}: cells {executed} hold outputs; clear them: jupyter nbconvert --clear-output --inplace notebooks/{name}"
    )


def imports_in_order(name):
    """Top-level module names in the order the lesson imports them (cells in order, then lines)."""
    for tree in trees(name, parameters=True):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield node.module.split(".")[0]


@pytest.mark.parametrize("name", NAMES)
def test_the_kit_is_imported_before_tensorflow(name):
    order = list(imports_in_order(name))
    tensorflow = [module for module in order if module in ("keras", "tensorflow")]
    if tensorflow:  # a lesson that imports neither gets TensorFlow through the kit, quietly
        assert "lunghelpers" in order and order.index("lunghelpers") < order.index(tensorflow[0]), (
            f"{name} imports {tensorflow[0]} before lunghelpers: TensorFlow's start-up lines would show "
            "(put `from lunghelpers import ...` above `import keras`)"
        )


def project_texts():
    """(file, text) of every notebook's cells, README.md and each module of the package."""
    for path in NOTEBOOKS:
        yield path.name, "\n".join(cell.source for cell in lesson(path.name).cells)
    yield "README.md", (paths.PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for path in sorted((paths.PROJECT_ROOT / "lunghelpers").glob("*.py")):
        yield f"lunghelpers/{path.name}", path.read_text(encoding="utf-8")


def test_no_reference_to_specification_or_design_files():
    pattern = re.compile(r"\bSPEC\b|DESIGN\.md")
    found = [
        f"{name}:{number}: {line.strip()[:90]}"
        for name, text in project_texts()
        for number, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"{len(found)} lines name files a clone does not have:\n" + "\n".join(found)


# --- a quiet start ------------------------------------------------------------------------------------


def run_python(code, extra_path=None):
    environment = dict(os.environ)
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the kit's own default, as in a fresh terminal
    if extra_path:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), environment.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment,
        cwd=paths.PROJECT_ROOT, timeout=300,
    )


def test_import_lunghelpers_does_not_import_tensorflow():
    """The package, the report, the data generator and the student edition load without TensorFlow."""
    result = run_python(
        "import sys, lunghelpers, lunghelpers.report, lunghelpers.synthetic, lunghelpers.student\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_name_the_package_lists_resolves():
    result = run_python(
        """
        import lunghelpers
        missing = []
        for name in lunghelpers.__all__:
            try:
                getattr(lunghelpers, name)
            except (AttributeError, ImportError) as error:
                missing.append(f"{name}: {error}")
        print(missing)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def fake_tensorflow(folder, fail=False):
    """A ``tensorflow`` package that writes to file descriptor 2 as TensorFlow's C++ code does."""
    package = folder / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(
        f"""
        import os, types, warnings
        os.write(2, b"I0000 00:00:1.0 port.cc:153] C-level start-up line\\n")
        warnings.warn("a Python warning during the import")
        if {fail}:
            raise ImportError("the fake TensorFlow does not load")
        config = types.SimpleNamespace(list_physical_devices=lambda kind: os.write(2, b"E0000 cuInit line\\n") and [])
        """
    ))


def test_the_first_tensorflow_import_writes_no_c_level_lines_but_python_warnings(tmp_path):
    fake_tensorflow(tmp_path)
    result = run_python(
        """
        import importlib.util, os, sys, warnings, lunghelpers
        assert importlib.util.find_spec("tensorflow") is not None  # a look-up alone imports nothing
        import tensorflow
        assert not any(type(finder).__module__ == "lunghelpers._quiet" for finder in sys.meta_path)
        from lunghelpers import _quiet
        print(repr(_quiet.tensorflow_startup_log()))
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        os.write(2, b"descriptor 2 is back\\n")
        """,
        extra_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "C-level" not in result.stderr and "cuInit" not in result.stderr
    assert "a Python warning during the import" in result.stderr
    assert "descriptor 2 is back" in result.stderr
    log, level = result.stdout.splitlines()
    assert "C-level start-up line" in log and "E0000 cuInit line" in log
    assert level == "3"


def test_a_failing_tensorflow_import_shows_what_it_wrote(tmp_path):
    fake_tensorflow(tmp_path, fail=True)
    result = run_python("import lunghelpers\nimport tensorflow", extra_path=tmp_path)
    assert result.returncode != 0
    assert "C-level start-up line" in result.stderr and "does not load" in result.stderr


def test_real_tensorflow_starts_quietly_after_the_kit():
    result = run_python(
        """
        import warnings
        import lunghelpers.train
        import keras
        import tensorflow as tf
        keras.layers.Dense(2)(tf.ones((1, 3)))
        warnings.warn("a Python warning after the import")
        """
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if TENSORFLOW_NOISE.search(line)]
    assert not noise, "TensorFlow wrote:\n" + "\n".join(noise)
    assert "a Python warning after the import" in result.stderr


def test_progress_bar_outside_a_kernel_is_plain_tqdm():
    import io

    from tqdm import tqdm

    from lunghelpers._quiet import progress_bar

    stream = io.StringIO()
    bar = progress_bar(range(3), desc="counting", file=stream)
    assert type(bar) is tqdm
    assert list(bar) == [0, 1, 2]
    assert "counting: 100%" in stream.getvalue()


def test_a_kernel_shows_no_tensorflow_lines_and_keeps_the_final_progress_bar(tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from lunghelpers import paths\nimport keras"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('a Python warning in the kernel')"),
        nbformat.v4.new_code_cell(
            "from lunghelpers._quiet import progress_bar\nfor _ in progress_bar(range(267), desc='loading pairs'):\n    pass"
        ),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(
        env=environment
    )
    imports, warning, bar = (cell.outputs for cell in notebook.cells)
    stderr = "".join(output.get("text", "") for output in imports if output.get("name") == "stderr")
    assert not TENSORFLOW_NOISE.search(stderr), f"the import cell shows:\n{stderr}"
    assert any("a Python warning in the kernel" in output.get("text", "") for output in warning)
    texts = [output.data["text/plain"] for output in bar if output.output_type == "display_data"]
    assert len(bar) == 1 and len(texts) == 1, f"expected one text output for the bar, got {bar}"
    assert texts[0].startswith("loading pairs: 100%") and "267/267" in texts[0]
