"""The slider over t in a real JupyterLab, driven by Debian's chromium through Playwright.

What a unit test cannot see: that JupyterLab renders the output as a widget (not the PNG
fallback), that the slider moves the picture and caption, and that it keeps doing so with the
kernel gone, i.e. the links live in the browser. The test starts JupyterLab headless on
127.0.0.1 with a throwaway notebook, runs it, moves the slider with the keyboard and checks.

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
from pathlib import Path

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)  # about 30 s when healthy; a hung browser fails, not hangs

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


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab on a free local port, no token, isolated config; killed afterwards."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "slider.ipynb").write_text(json.dumps(_notebook([SETUP, POINTS, IMAGES])))
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
    log = (tmp_path / "lab.log").open("w")
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
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()}")
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
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1250})
            page.set_default_timeout(30_000)
            page.goto(f"{lab}/lab/tree/slider.ipynb")
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "window.jupyterapp.shell.currentWidget?.sessionContext !== undefined"
            )
            page.evaluate(
                """async () => {
                    const panel = window.jupyterapp.shell.currentWidget;
                    await panel.sessionContext.ready;
                    await window.jupyterapp.commands.execute('notebook:run-all-cells');
                }"""
            )
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
            page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
            page.wait_for_timeout(500)  # let the notebook reflow to the freed width
            page.screenshot(path=str(tmp_path / "slider.png"))
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
        finally:
            browser.close()
