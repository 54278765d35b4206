"""From the instructor's notebooks to student versions, and from submissions back to grades.

Student versions (``python -m ddpm_teach.course student OUT``): in every code cell tagged
``solution`` each function keeps its decorators, signature and docstring, and its body becomes

    raise NotImplementedError("<exercise id>: <the task, restated>")

Imports in a solution cell are kept; anything else there is an error (it would either leak the
answer or be lost silently). Every output, execution count, cell metadata but the tags, and the
notebook metadata but the kernel's are removed: a figure drawn with the solution, or stored widget
state, would give the answer away.

Grading (``python -m ddpm_teach.course grade SUBMISSIONS --out grades.csv``): SUBMISSIONS holds one
folder per student. Each notebook found there runs headless in its own kernel (nbclient), in the
student's folder, with ``DDPM_TEACH_BUDGET=smoke`` and ``DDPM_TEACH_GRADING`` naming a file that
:func:`ddpm_teach.exercises.check` appends its verdicts to, under a time limit for the whole
notebook. Cells that raise do not stop the run (later exercises still count). grades.csv gets one
row per student, notebook and exercise: ``student,notebook,exercise,passed,message``; what befell
the notebook as a whole (unreadable, a cell raised, timed out, kernel died) is a row with exercise
``*``; an exercise whose check never ran is "not reached". The grader itself never stops on a
student's notebook.

What it trusts: the verdicts are written by the checks that run inside the student's kernel, next
to the student's code, which could just as well write a verdict of its own (the trace file's name
is in its environment) or replace ``check``. Python has no sandbox that would stop that, so the
grade is evidence that the solutions pass, as a test run is, not proof against cheating: for marks
that count, an instructor also reads the solution cells.
"""

from __future__ import annotations

import ast
import copy
import csv
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .course import Book

__all__ = [
    "CSV_COLUMNS",
    "SOLUTION_TAG",
    "GradeRow",
    "grade_notebook",
    "grade_submissions",
    "leaked_lines",
    "make_student_notebook",
    "solution_stub",
    "write_student_versions",
]

SOLUTION_TAG = "solution"
CSV_COLUMNS = ("student", "notebook", "exercise", "passed", "message")
#: ``check("q-sample", q_sample)``: the exercise id and the function handed in.
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.-]+)["']\s*,\s*([A-Za-z_]\w*)""")


# ================================================================================ student versions
def _tasks_by_function(nb: Any) -> dict[str, tuple[str, str]]:
    """function name -> (exercise id, task) for every function a check() call hands in."""
    from .exercises import EXERCISES

    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for exercise_id, fn in CHECK_CALL.findall(cell.source):
                ex = EXERCISES.get(exercise_id)
                found[fn] = (exercise_id, ex.task if ex else f"implement {fn}")
    return found


def solution_stub(source: str, tasks: Mapping[str, tuple[str, str]] | None = None) -> str:
    """A solution cell's source with each function body replaced by ``raise NotImplementedError``.

    ``tasks`` maps a function name to (exercise id, task), the text of the error.
    """
    tasks = tasks or {}
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(
            f"solution cell: not plain Python (line {err.lineno}: {err.msg})"
        ) from None
    lines = source.splitlines()
    parts = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            parts.append(ast.get_source_segment(source, node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(_function_stub(node, lines, tasks.get(node.name)))
        else:
            raise ValueError(
                f"solution cell: line {node.lineno}: only imports and function definitions may "
                f"stand at the top level of a solution cell, found {type(node).__name__}; move it "
                "to another cell or into the function"
            )
    return "\n\n\n".join(p for p in parts if p)


def _function_stub(
    node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], task: tuple[str, str] | None
) -> str:
    """Decorators, signature and docstring of ``node``, then a body that raises."""
    first = node.body[0]
    doc = first if ast.get_docstring(node, clean=False) is not None else None
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
    if lines[first.lineno - 1][: first.col_offset].strip():
        # the body starts on the signature's line (`def f(x): return x`): rebuild the header
        bare = copy.deepcopy(node)
        bare.body = [doc, ast.Pass()] if doc else [ast.Pass()]
        header = ast.unparse(bare).splitlines()[:-1]
        indent = " " * 4
    else:
        # the signature as written, without comment lines between it and the body
        header = [ln for ln in lines[start : first.lineno - 1] if not ln.strip().startswith("#")]
        if doc:
            header += lines[doc.lineno - 1 : doc.end_lineno]
        indent = " " * first.col_offset
    exercise_id, text = task or ("", f"implement {node.name}")
    message = f"{exercise_id}: {text}" if exercise_id else text
    return "\n".join(
        [
            *header,
            f"{indent}# Your code here: replace the line below.",
            f"{indent}raise NotImplementedError({message!r})",
        ]
    )


def make_student_notebook(nb: Any) -> Any:
    """A copy of ``nb`` with solutions stubbed, outputs cleared and metadata scrubbed."""
    nb = copy.deepcopy(nb)
    tasks = _tasks_by_function(nb)
    for i, cell in enumerate(nb.cells):
        tags = list(cell.metadata.get("tags", []))
        cell.metadata = {"tags": tags} if tags else {}
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        if SOLUTION_TAG in tags:
            try:
                cell.source = solution_stub(cell.source, tasks)
            except ValueError as err:
                raise ValueError(f"cell {i + 1}: {err}") from None
    nb.metadata = {k: nb.metadata[k] for k in ("kernelspec", "language_info") if k in nb.metadata}
    return nb


def leaked_lines(original: Any, student: Any) -> list[str]:
    """Lines of solution bodies (not signature, docstring or imports) found in the student
    version's other code cells. Not searched: markdown, the author's prose, and the stubs, whose
    task text may quote a line on purpose (a hint such as "with half = dim // 2")."""
    import nbformat

    others = copy.deepcopy(student)
    others.cells = [
        cell
        for cell in student.cells
        if cell.cell_type == "code" and SOLUTION_TAG not in cell.metadata.get("tags", [])
    ]
    text = nbformat.writes(others)
    leaked = []
    for cell in original.cells:
        if cell.cell_type != "code" or SOLUTION_TAG not in cell.metadata.get("tags", []):
            continue
        kept = set(solution_stub(cell.source).splitlines())
        for line in cell.source.splitlines():
            code = line.strip()
            # short lines (`return x`, `else:`) prove nothing when found elsewhere
            if len(code) < 10 or code.startswith("#") or line in kept:
                continue
            if json.dumps(code, ensure_ascii=False)[1:-1] in text:
                leaked.append(code)
    return leaked


def write_student_versions(book: Book, out: str | Path, chapters: Sequence[str] = ()) -> list[Path]:
    """Write the student version of each chapter (default: every ready one) into ``out``."""
    import nbformat

    # Every chapter is made and checked before anything is written: a refusal leaves ``out`` as
    # it was, not half of a course.
    students = []
    for ch in book.select(chapters):
        original = nbformat.read(book.root / ch.notebook, as_version=4)
        try:
            student = make_student_notebook(original)
        except ValueError as err:
            raise ValueError(f"{ch.notebook}: {err}") from None
        leaked = leaked_lines(original, student)
        if leaked:
            raise ValueError(
                f"{ch.notebook}: solution code also appears outside the solution cells, e.g. "
                f"{leaked[0]!r}; the student version would give it away"
            )
        students.append((ch.notebook.name, student))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, student in students:
        nbformat.write(student, out / name)
        written.append(out / name)
    return written


# ======================================================================================== grading
@dataclass(frozen=True)
class GradeRow:
    """One row of grades.csv."""

    student: str
    notebook: str
    exercise: str
    passed: bool
    message: str


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_ids(nb: Any) -> list[str]:
    ids = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            ids += [i for i, _ in CHECK_CALL.findall(cell.source) if i not in ids]
    return ids


def grade_notebook(
    path: str | Path, timeout: float = 600, expected: Sequence[str] = ()
) -> list[tuple[str, bool, str]]:
    """Run one notebook headless and return (exercise, passed, message) rows (see module doc).

    ``expected`` lists exercises the notebook should check (from the instructor's version); those
    its own cells name are added.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    expected = list(dict.fromkeys(expected))
    status: list[tuple[str, bool, str]] = []
    try:
        nb = nbformat.read(path, as_version=4)
        with warnings.catch_warnings():  # old notebooks without cell ids are fine to grade
            warnings.filterwarnings("ignore", message="Cell is missing an id field")
            nbformat.validate(nb)  # read() only logs schema errors; a cell without source crashes
        expected += [i for i in _check_ids(nb) if i not in expected]
    except Exception as err:
        return _failed_rows("not a readable notebook", err, "could not be read", expected)

    # The clock starts with the first cell: kernel start-up has its own limit (startup_timeout).
    current = {"cell": 0, "deadline": None}

    def on_cell_execute(cell: Any, cell_index: int) -> None:
        current["cell"] = cell_index + 1

    def time_left(cell: Any) -> float:
        if current["deadline"] is None:
            current["deadline"] = time.monotonic() + timeout
        return max(1.0, current["deadline"] - time.monotonic())

    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout_func=time_left,
        allow_errors=True,  # a broken cell must not hide later exercises
        record_timing=False,
        shutdown_kernel="immediate",
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent.resolve())}},
        on_cell_execute=on_cell_execute,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "checks.jsonl"
        trace.touch()
        env = {**os.environ, "DDPM_TEACH_BUDGET": "smoke", "DDPM_TEACH_GRADING": str(trace)}
        try:
            client.execute(env=env)
        except CellTimeoutError:
            status.append(
                ("*", False, f"timed out: still running cell {current['cell']} after {timeout:g} s")
            )
        except DeadKernelError:
            status.append(
                (
                    "*",
                    False,
                    f"the kernel died in cell {current['cell']} (a crash or out of memory)",
                )
            )
        except Exception as err:
            status.append(("*", False, _one_line(f"could not run: {type(err).__name__}: {err}")))
        results = {}
        for line in trace.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
                results[str(record["exercise"])] = (bool(record["passed"]), str(record["message"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line the student's code wrote there is no verdict
    for i, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            err = errors[0]
            status.append(
                (
                    "*",
                    False,
                    _one_line(f"cell {i + 1} raised {err.get('ename')}: {err.get('evalue')}"),
                )
            )
            break  # the first one is what the student needs to fix first
    rows = list(status)
    for exercise_id in expected + [e for e in results if e not in expected]:
        passed, message = results.get(
            exercise_id, (False, "not reached: its check did not run (see the * rows)")
        )
        rows.append((exercise_id, passed, _one_line(message)))
    return rows


def _failed_rows(
    what: str, err: Exception, why: str, expected: Sequence[str]
) -> list[tuple[str, bool, str]]:
    """The rows of a notebook that could not be run at all: one * row, then every expected
    exercise as not reached."""
    reason = _one_line(f"{type(err).__name__}: {err}", 200)
    return [("*", False, f"{what} ({reason})")] + [
        (e, False, f"not reached: the notebook {why}") for e in expected
    ]


def grade_submissions(
    submissions: str | Path,
    out_csv: str | Path,
    timeout: float = 600,
    book: Book | None = None,
) -> list[GradeRow]:
    """Grade every student folder in ``submissions``; write and return the rows of grades.csv.

    With ``book``, a submitted notebook named like a chapter's is expected to run every check of
    the instructor's version, so a deleted check cell counts as not reached.
    """
    import nbformat

    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(
            f"submissions: expected a folder of student folders, got {submissions}"
        )
    expected_by_name: dict[str, list[str]] = {}
    if book is not None:
        for ch in book.chapters:
            if (book.root / ch.notebook).is_file():
                expected_by_name[ch.notebook.name] = _check_ids(
                    nbformat.read(book.root / ch.notebook, as_version=4)
                )
    rows = []
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    for student in students:
        notebooks = sorted(
            p for p in student.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
        )
        if not notebooks:
            rows.append(GradeRow(student.name, "*", "*", False, "no notebook found"))
        for nb_path in notebooks:
            name = nb_path.relative_to(student).as_posix()
            expected = expected_by_name.get(nb_path.name, ())
            try:
                graded = grade_notebook(nb_path, timeout, expected)
            except Exception as err:  # one submission must never stop the others' grading
                graded = _failed_rows(
                    "the grader failed on this notebook", err, "could not be graded", expected
                )
            rows += [GradeRow(student.name, name, e, p, m) for e, p, m in graded]
            done = sum(p for e, p, _ in graded if e != "*")
            total = sum(e != "*" for e, _, _ in graded)
            print(f"{student.name}/{name}: {done}/{total} passed", file=sys.stderr)
    out_csv = Path(out_csv)
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(astuple(r) for r in rows)
    return rows
