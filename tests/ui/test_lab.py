"""JupyterLab in real headless Chromium: mark the setup cell, build, restore from the snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.users import free_port

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOOLBAR_ITEM = ".jp-SnapKernel-status"


@dataclass
class Lab:
    url: str
    token: str
    root: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A real JupyterLab server on localhost with an untagged copy of the NumPy example."""
    root = tmp_path / "notebooks"
    root.mkdir()
    book = nbformat.read(REPO / "examples" / "numpy_setup.ipynb", as_version=4)
    for cell in book.cells:
        cell.metadata.pop("tags", None)
    nbformat.write(book, root / "numpy_setup.ipynb")
    port, token = free_port(), "ui-test-token"
    env = {
        **os.environ,
        "SNAPKERNEL_STORE": str(tmp_path / "store"),
        "SNAPKERNEL_AUTO_BUILD": "0",
        "SNAPKERNEL_SPARE_KERNELS": "0",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    command = [
        str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield Lab(url, token, root)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def toolbar_state(page: Page, state: str, timeout_s: float) -> None:
    page.wait_for_selector(f"{TOOLBAR_ITEM}[data-snapkernel-state='{state}']", timeout=timeout_s * 1000)
    page.locator(".jp-NotebookPanel-toolbar").first.screenshot(path=str(OUTPUT / f"toolbar-{state}.png"))


def wait_for_idle_kernel(page: Page) -> None:
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=120_000,
    )


def test_mark_build_restore_and_run_in_jupyterlab(lab: Lab) -> None:
    assert Path(CHROMIUM).exists(), "Chromium is missing: `make setup` installs Debian's chromium package"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{lab.url}/lab/tree/numpy_setup.ipynb?token={lab.token}")
        toolbar_state(page, "none", timeout_s=120)
        wait_for_idle_kernel(page)
        assert "build one" in page.locator(f"{TOOLBAR_ITEM} button").get_attribute("title")

        # Mark the second code cell (the notebook's third cell) with the command.
        page.locator(".jp-Notebook .jp-Cell").nth(2).click()
        page.evaluate("window.jupyterapp.commands.execute('snapkernel:mark-setup-cell')")
        tags = page.evaluate("window.jupyterapp.shell.currentWidget.content.activeCell.model.getMetadata('tags')")
        assert tags == ["snapshot"]

        page.click(f"{TOOLBAR_ITEM} button")
        toolbar_state(page, "building", timeout_s=30)
        toolbar_state(page, "ready", timeout_s=300)
        saved = json.loads((lab.root / "numpy_setup.ipynb").read_text())
        assert saved["cells"][2]["metadata"]["tags"] == ["snapshot"], "the build saved the marked notebook"
        assert "restart the kernel" in page.locator(f"{TOOLBAR_ITEM} button").get_attribute("title")

        page.click(f"{TOOLBAR_ITEM} button")  # restart the kernel from the snapshot
        page.wait_for_selector("text=Kernel restored from snapshot", timeout=120_000)
        wait_for_idle_kernel(page)
        page.screenshot(path=str(OUTPUT / "restored-notification.png"))

        # Run the last cell: it prints a value computed by the setup cells, which did not run here.
        last = page.locator(".jp-Notebook .jp-Cell").last
        last.click()
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
        output = last.locator(".jp-OutputArea-output")
        output.wait_for(timeout=60_000)
        assert output.inner_text().startswith("trace:")
        page.screenshot(path=str(OUTPUT / "restored-run.png"))

        # Edit a setup cell and save: the snapshot goes stale.
        page.evaluate(
            "(() => { const nb = window.jupyterapp.shell.currentWidget.content;"
            " nb.widgets[1].model.sharedModel.setSource(nb.widgets[1].model.sharedModel.getSource() + '\\nextra = 1');"
            " return window.jupyterapp.commands.execute('docmanager:save'); })()"
        )
        toolbar_state(page, "stale", timeout_s=30)

        # A setup cell that raises makes the rebuild fail.
        page.evaluate(
            "(() => { const nb = window.jupyterapp.shell.currentWidget.content;"
            " nb.widgets[1].model.sharedModel.setSource('raise RuntimeError(\"no data today\")');"
            " return window.jupyterapp.commands.execute('docmanager:save'); })()"
        )
        page.click(f"{TOOLBAR_ITEM} button")
        toolbar_state(page, "failed", timeout_s=120)
        assert "no data today" in page.locator(f"{TOOLBAR_ITEM} button").get_attribute("title")
        browser.close()
    assert sorted(path.name for path in OUTPUT.glob("toolbar-*.png")) == [
        "toolbar-building.png",
        "toolbar-failed.png",
        "toolbar-none.png",
        "toolbar-ready.png",
        "toolbar-stale.png",
    ]


# When the notebook's kernel started, as the server extension reports it (restored or cold).
START_TIME_JS = (
    "fetch('/snapkernel/api/kernels/' + window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id)"
    ".then(r => r.json()).then(j => j.started || 0)"
)


def start_time(page: Page) -> float:
    """When the current notebook's kernel started (seconds since the epoch)."""
    return float(page.evaluate(f"async () => await ({START_TIME_JS})"))


def test_setup_slider_moved_after_restart_and_run_all_changes_the_kernel_value(lab: Lab, tmp_path: Path) -> None:
    from jupyter_snapkernel.builder import build_snapshot
    from jupyter_snapkernel.paths import open_store
    from tests.kernel.conftest import write_notebook

    setup = "import ipywidgets as widgets\nslider = widgets.IntSlider(value=3, min=0, max=10)\ndisplay(slider)"
    notebook = write_notebook(lab.root / "widgets.ipynb", [setup], marked=0, after=["print('value', slider.value)"])
    build_snapshot(notebook, open_store(tmp_path / "store"))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{lab.url}/lab/tree/widgets.ipynb?token={lab.token}")
        page.wait_for_selector(f"{TOOLBAR_ITEM}[data-snapkernel-state='ready']", timeout=120_000)
        wait_for_idle_kernel(page)
        first_kernel_start = start_time(page)
        page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
        page.wait_for_function(f"async () => (await ({START_TIME_JS})) > {first_kernel_start}", timeout=120_000)
        wait_for_idle_kernel(page)

        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # Cells of this notebook only: JupyterLab may reopen the other test's notebook from its workspace.
        cells = page.locator(f"#{page.evaluate('window.jupyterapp.shell.currentWidget.id')} .jp-Cell")
        handle = cells.first.locator(".noUi-handle")
        handle.wait_for(timeout=60_000)  # the replayed setup output renders the slider from the restored kernel
        handle.focus()
        for _ in range(4):
            handle.press("ArrowRight")
        last = cells.last
        for _ in range(20):  # the frontend sends the new value; rerun the cell until the kernel has it
            last.click()
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
            wait_for_idle_kernel(page)
            if "value 7" in last.locator(".jp-OutputArea-output").inner_text():
                break
            time.sleep(0.1)
        page.screenshot(path=str(OUTPUT / "restored-widget.png"))
        assert last.locator(".jp-OutputArea-output").inner_text().strip() == "value 7"
        browser.close()
