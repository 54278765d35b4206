"""The project's promises about itself: installable metadata, conda parity, the README's Quick start,
ruff-clean code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# pip name -> conda name where they differ
CONDA_NAMES = {"torch": "pytorch"}
# pip-only helpers conda does not need (back-ports for old Pythons) or that the conda file adds itself
PIP_ONLY = {"tomli"}


def _requirements(specs: list[str]) -> dict[str, str]:
    """'numpy>=1.24; marker' -> {'numpy': '1.24'} (name -> lower bound, '' when unbounded)."""
    out = {}
    for spec in specs:
        spec = spec.split(";")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(?:>=\s*([0-9.]+))?.*", spec)
        assert m, f"cannot parse requirement {spec!r}"
        out[m.group(1).lower()] = m.group(3) or ""
    return out


def _conda_environment(text: str) -> dict[str, str]:
    """Parse environment.yml's conda dependencies (a tiny YAML subset: '  - name>=x')."""
    deps, in_deps = {}, False
    for line in text.splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        # conda packages ("  - name>=x") and pip-only ones in the pip section ("      - name>=x")
        if in_deps and re.match(r"^(  |      )- [A-Za-z]", line):
            spec = line.split("- ", 1)[1].split("#")[0].strip()
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9.]+))?", spec)
            if m:
                deps[m.group(1).lower()] = m.group(2) or ""
    return deps


def _disagreements(environment_yml: str) -> list[str]:
    """Every package or lower bound on which environment.yml and pyproject.toml differ."""
    pip_reqs = _requirements(PYPROJECT["project"]["dependencies"])
    pip_reqs |= _requirements(PYPROJECT["project"]["optional-dependencies"]["test"])
    conda = _conda_environment(environment_yml)
    problems = []
    for name, bound in pip_reqs.items():
        if name in PIP_ONLY:
            continue
        conda_name = CONDA_NAMES.get(name, name)
        if conda_name not in conda:
            problems.append(f"environment.yml lacks {conda_name} (pyproject has {name})")
        elif conda[conda_name] != bound:
            problems.append(
                f"{conda_name}: environment.yml >={conda[conda_name]}, pyproject >={bound}"
            )
    extra = set(conda) - {CONDA_NAMES.get(n, n) for n in pip_reqs} - {"python", "pip"}
    problems += [f"environment.yml has {name}, pyproject does not" for name in sorted(extra)]
    if "-e ." not in environment_yml:
        problems.append("environment.yml must pip-install the package itself (-e .)")
    return problems


def test_runtime_dependencies_are_ranges_not_pins():
    deps = PYPROJECT["project"]["dependencies"]
    for spec in deps:
        assert "==" not in spec, f"{spec}: users and Colab bring their own versions; use a range"
    reqs = _requirements(deps)
    assert reqs["torch"] and reqs["ipywidgets"] == "7.7"  # Colab still ships ipywidgets 7.x
    for name in ("torch", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "jupytext", "tqdm"):
        assert name in reqs


def test_environment_yml_agrees_with_pyproject():
    assert _disagreements((ROOT / "environment.yml").read_text()) == []


def test_the_parity_check_catches_drift():
    text = (ROOT / "environment.yml").read_text()
    assert _disagreements(text.replace("numpy>=1.24", "numpy>=1.20"))
    assert _disagreements(text.replace("  - tqdm>=4.66\n", ""))
    assert _disagreements(text + "  - pandas>=2.0\n")


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_has_exactly_two_commands():
    first, second = _quick_start_commands()  # exactly two
    assert "pip install" in first and "jupyter lab" in first
    assert "pip install" in second and '".[test]"' in second and "pytest" in second


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts the second Quick start command; run its extractor and compare."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"test_cmd=\$\(awk '(.*?)' README\.md\)", script)
    assert awk, ".ci/run no longer reads the test command from README.md"
    if shutil.which("awk") is None:
        pytest.skip("awk not installed")
    out = subprocess.run(
        ["awk", awk.group(1), str(ROOT / "README.md")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == _quick_start_commands()[1]


def test_pytest_configuration_collects_unit_tests_and_notebooks():
    opts = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert opts["testpaths"] == ["tests", "notebooks"]


def test_code_is_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    out = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
