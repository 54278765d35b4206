"""The slider over t in a real JupyterLab, driven by Debian's chromium through Playwright.

What a unit test cannot see: that JupyterLab renders the output as a widget (not the PNG
fallback), that the slider moves the picture and caption, and that it keeps doing so with the
kernel gone, i.e. the links live in the browser. JupyterLab runs headless on 127.0.0.1 with the
kernels under ``DDPM_TEACH_BUDGET=smoke``. Two tests:

- a throwaway notebook: run it, move both sliders with the keyboard, stop the kernel, move again;
- chapter 01 as committed: clear its saved outputs, run it all, move its first slider and check
  the picture and caption change; a screenshot goes to the test's tmp dir.

Needs `playwright` (pip) and `/usr/bin/chromium` (apt: chromium); skipped without them. It never
downloads a browser (`playwright install` is not used).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)  # 30-100 s when healthy; a hung browser fails, not hangs

CHAPTER_01 = Path(__file__).resolve().parents[1] / "notebooks" / "01_gaussian_noising.ipynb"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SETUP = """\
import math

import torch

from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.viz import forward_slider

schedule = NoiseSchedule.linear(1000)"""

POINTS = """\
angle = torch.linspace(0, 2 * math.pi, 400)
ring = torch.stack([2 * angle.cos(), 2 * angle.sin()], dim=1)
forward_slider(ring, schedule, num_frames=11)"""

IMAGES = """\
yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
shapes = [(xx.abs() < 0.5) & (yy.abs() < 0.5), xx**2 + yy**2 < 0.6, torch.sin(6 * xx) > 0, xx > yy]
images = torch.stack(shapes).float()[:, None] * 2 - 1  # (4, 1, 16, 16) in [-1, 1]
forward_slider(images, schedule, num_frames=11)"""

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _notebook(cells: list[str]) -> dict:
    return {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for src in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


@contextmanager
def _jupyterlab(tmp_path: Path, root: Path) -> Iterator[str]:
    """JupyterLab serving ``root`` on a free local port, no token, isolated config; killed after.

    Its kernels inherit the server's environment: the smoke budget and one thread each.
    """
    home = tmp_path / "jupyter"
    # Silence the news/update prompt, which would cover part of the page.
    notify = home / "settings" / "@jupyterlab" / "apputils-extension"
    notify.mkdir(parents=True)
    (notify / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "OMP_NUM_THREADS": "1",
        "DDPM_TEACH_BUDGET": "smoke",
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "lab.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
         "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
         "--ServerApp.disable_check_xsrf=True",  # lets the test DELETE the kernel over REST
         "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{url}/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on a root holding ``slider.ipynb``: the three cells above, never run."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "slider.ipynb").write_text(json.dumps(_notebook([SETUP, POINTS, IMAGES])))
    with _jupyterlab(tmp_path, root) as url:
        yield url


@pytest.fixture
def chapter_lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on a root holding a copy of chapter 01, saved outputs and widget state included."""
    if not CHAPTER_01.exists():
        pytest.skip(f"chapter 01 is not in notebooks/ (no {CHAPTER_01})")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CHAPTER_01, root / CHAPTER_01.name)
    with _jupyterlab(tmp_path, root) as url:
        yield url


@contextmanager
def _open_notebook(url: str, name: str) -> Iterator:
    """A headless chromium page showing notebook ``name`` in JupyterLab, its session ready."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1250})
            page.set_default_timeout(30_000)
            page.goto(f"{url}/lab/tree/{name}")
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "window.jupyterapp.shell.currentWidget?.sessionContext !== undefined"
            )
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
            yield page
        finally:
            browser.close()


def _screenshot(page, path: Path) -> None:
    """The page with the file browser folded away, so the notebook gets the width."""
    page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
    page.wait_for_timeout(500)  # let the notebook reflow to the freed width
    page.screenshot(path=str(path))


def _watch(output) -> None:
    """Arm an in-page timer: keydown -> this output shows a new caption and a decoded new image."""
    output.evaluate(
        """el => {
            window.__t0 = null; window.__t1 = null;
            document.addEventListener('keydown', () => { window.__t0 = performance.now(); },
                                      {capture: true, once: true});
            const caption = () => el.querySelector('.ddpm-caption')?.textContent;
            const image = () => el.querySelector('img.ddpm-frame');
            const [text0, src0] = [caption(), image().src];
            const poll = () => {
                const img = image();
                if (window.__t0 !== null && caption() !== text0 && img && img.src !== src0
                    && img.complete && img.naturalWidth > 0) {
                    window.__t1 = performance.now();
                } else {
                    setTimeout(poll, 1);
                }
            };
            poll();
        }"""
    )


def _step(output, page, key: str, expect: str) -> tuple[str, float]:
    """Press ``key`` on the slider; wait for the caption to read ``expect``; (img src, ms)."""
    _watch(output)
    output.locator(".noUi-handle").first.press(key)
    caption = output.locator(".ddpm-caption")
    sync_api.expect(caption).to_contain_text(expect, timeout=10_000)
    page.wait_for_function("window.__t1 !== null", timeout=10_000)
    ms = page.evaluate("window.__t1 - window.__t0")
    return output.locator("img.ddpm-frame").first.get_attribute("src"), ms


def test_slider_plays_in_jupyterlab(lab: str, tmp_path: Path) -> None:
    with _open_notebook(lab, "slider.ipynb") as page:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        outputs = page.locator(".jp-OutputArea-output:has(.ddpm-caption)")
        sync_api.expect(outputs).to_have_count(2, timeout=60_000)
        timings = []
        for output in (outputs.nth(0), outputs.nth(1)):
            # Rendered as a widget (the slider exists), not as the static PNG fallback.
            sync_api.expect(output.locator(".widget-slider")).to_be_visible()
            caption = output.locator(".ddpm-caption")
            sync_api.expect(caption).to_contain_text("x_0 = data")
            src0 = output.locator("img.ddpm-frame").first.get_attribute("src")
            src1, ms = _step(output, page, "ArrowRight", "t = 0   alpha_bar_t = 0.9999")
            timings.append(ms)
            src2, ms = _step(output, page, "End", "t = 999   alpha_bar_t = 4.036e-05")
            timings.append(ms)
            assert len({src0, src1, src2}) == 3, "the picture did not change with the slider"
            readout = output.locator(".widget-readout").first
            sync_api.expect(readout).to_have_text("999")
            # Park at a telling frame for the screenshot: t = 222 (frames 0, 111, 222, ...).
            _step(output, page, "Home", "x_0 = data")
            for expect in ("t = 0 ", "t = 111 ", "t = 222 "):
                timings.append(_step(output, page, "ArrowRight", expect)[1])
        _screenshot(page, tmp_path / "slider.png")
        if os.environ.get("DDPM_TEACH_SLIDER_SCREENSHOT"):  # regenerate docs/img/slider.png
            shutil.copy(tmp_path / "slider.png", os.environ["DDPM_TEACH_SLIDER_SCREENSHOT"])

        # The links live in the browser: with the kernel shut down the slider still works.
        for kernel in json.loads(_get(f"{lab}/api/kernels")):
            req = urllib.request.Request(f"{lab}/api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(req, timeout=10).close()
        assert json.loads(_get(f"{lab}/api/kernels")) == []
        output = outputs.nth(0)
        src3, ms = _step(output, page, "End", "t = 999 ")
        timings.append(ms)
        src4, ms = _step(output, page, "ArrowLeft", "t = 888 ")
        timings.append(ms)
        assert src3 != src4, "without a kernel the picture did not change"
        steps_ms = sorted(round(t, 1) for t in timings)
        print(f"slider step, keydown to new caption and decoded image (ms): {steps_ms}")


# JavaScript over the open notebook's model (not the DOM, which JupyterLab may virtualise).
CODE_OUTPUTS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const found = [];
    for (let k = 0; k < cells.length; k++) {
        const cell = cells.get(k);
        if (cell.type !== 'code') continue;
        const outputs = [];
        for (let i = 0; i < cell.outputs.length; i++) outputs.push(cell.outputs.get(i).toJSON());
        found.push({count: cell.executionCount, outputs});
    }
    return found;
}"""


def _widget_ids(cells: list[dict]) -> set[str]:
    """The model ids of the widgets that code cells show, from nbformat-like cells."""
    return {
        out["data"][WIDGET_VIEW]["model_id"]
        for cell in cells
        for out in cell.get("outputs", [])
        if WIDGET_VIEW in out.get("data", {})
    }


def _errors(cells: list[dict]) -> list[str]:
    """The "ename: evalue" of every error output in ``cells`` (as from ``CODE_OUTPUTS``)."""
    return [
        f"{out['ename']}: {out['evalue']}"
        for cell in cells
        for out in cell["outputs"]
        if out["output_type"] == "error"
    ]


def test_chapter_01_slider_in_jupyterlab(chapter_lab: str, tmp_path: Path) -> None:
    saved = _widget_ids(json.loads(CHAPTER_01.read_text())["cells"])
    assert saved, "the committed chapter 01 should hold its sliders' outputs"
    with _open_notebook(chapter_lab, CHAPTER_01.name) as page:
        outputs = page.locator(".jp-OutputArea-output:has(.ddpm-caption)")
        # The saved outputs point at the saved widget models (whose state is in the file too);
        # clear them so that the sliders moved below are the ones this run makes.
        assert _widget_ids(page.evaluate(CODE_OUTPUTS)) == saved
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        sync_api.expect(outputs).to_have_count(0)
        page.evaluate(
            """() => {
                window.__run = null;
                window.jupyterapp.commands.execute('notebook:run-all-cells').then(
                    ok => { window.__run = {ok}; }, e => { window.__run = {ok: false, e: `${e}`}; });
            }"""
        )

        def wait(condition: str, timeout_s: float) -> None:
            """Wait for a JS ``condition``; fail at once, with the errors, if the run stops."""
            page.wait_for_function(
                f"() => ({condition}) || window.__run?.ok === false",
                timeout=timeout_s * 1000,
                polling=250,
            )
            run = page.evaluate("window.__run")
            if run is not None and not run["ok"]:
                pytest.fail(f"chapter 01 failed: {run} {_errors(page.evaluate(CODE_OUTPUTS))}")

        # The setup cell reports the budget: the kernel read DDPM_TEACH_BUDGET from the server.
        smoke = page.locator(".jp-OutputArea-output", has_text="budget 'smoke'")
        # (textContent, not innerText: cells scrolled away are not laid out, and have no innerText)
        wait("document.querySelector('.jp-Notebook').textContent.includes(\"budget 'smoke'\")", 90)
        sync_api.expect(smoke).to_have_count(1)
        # The first slider is the 16 digits along the chain, opening on the clean data.
        wait("document.querySelectorAll('.ddpm-caption').length >= 2", 120)
        sync_api.expect(outputs).to_have_count(2)
        fresh = _widget_ids(page.evaluate(CODE_OUTPUTS))
        assert len(fresh) >= 2 and not fresh & saved, f"sliders not from this run: {fresh}"
        output = outputs.nth(0)
        sync_api.expect(output).to_contain_text("The forward chain on 16 digits")
        sync_api.expect(output.locator(".widget-slider")).to_be_visible()
        sync_api.expect(output.locator(".ddpm-caption")).to_have_text("x_0 = data (no noise)")
        src0 = output.locator("img.ddpm-frame").first.get_attribute("src")
        src1, _ = _step(output, page, "ArrowRight", "t = 0   alpha_bar_t = 0.9999")
        src2, _ = _step(output, page, "End", "t = 999   alpha_bar_t = 4.036e-05")
        assert len({src0, src1, src2}) == 3, "the picture did not change with the slider"
        sync_api.expect(output.locator(".widget-readout").first).to_have_text("999")
        # Park on t = 200 (frames every 25 steps up to 475): noisy digits, still readable.
        _step(output, page, "Home", "x_0 = data")
        for t in range(0, 201, 25):
            _step(output, page, "ArrowRight", f"t = {t} ")

        # The rest of the chapter runs to the end without an error.
        wait("window.__run !== null", 150)
        cells = page.evaluate(CODE_OUTPUTS)
        assert _errors(cells) == []
        assert all(cell["count"] is not None for cell in cells), "a code cell did not run"
        sync_api.expect(output.locator(".ddpm-caption")).to_contain_text("t = 200 ")
        output.scroll_into_view_if_needed()
        _screenshot(page, tmp_path / "chapter01.png")
        assert (tmp_path / "chapter01.png").stat().st_size > 10_000
