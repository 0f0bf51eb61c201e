"""Real-browser checks: JupyterLab opens every notebook cleanly, runs 02, 04 and 07, and their widgets respond.

nbval checks what the kernel computes; it never sees the front end. These tests catch what a student would meet
in JupyterLab: "Error displaying widget", a missing widget extension (widgets shown as plain text), error dialogs,
error cells, and a slider whose callback fails so the display never changes. They drive headless Chromium through
Playwright against a JupyterLab started on loopback (see browser_support.py) and skip, saying what is missing, where
Chromium or Playwright is not available. On failure a screenshot is saved under test-artifacts/.
Run only these: `.venv/bin/python -m pytest tests/test_browser.py -m browser -q`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

try:
    from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout, sync_playwright
except ImportError:  # the browser fixture skips, naming what is missing
    PlaywrightError = PlaywrightTimeout = sync_playwright = None

from browser_support import (
    ARTIFACTS, CHROMIUM, ERROR_TEXTS, REPO, WIDGET_MIME, JupyterLab, chromium_problem, launch_chromium,
)

pytestmark = pytest.mark.browser

# Another folder can stand in for notebooks/ (used to develop this harness before the notebooks existed).
NOTEBOOKS = Path(os.environ.get("KVLIB_BROWSER_NOTEBOOKS", REPO / "notebooks"))
RUN_TIMEOUT_S = 300  # one notebook's Run All: a hang guard; 02 and 04 take about a minute on an idle 2-core box

# The widget contract: (notebook, outer widget class, slider class, slider description, output HTML class).
INTERACTIVE = [
    pytest.param("02_attention_with_a_kv_cache.ipynb", "kvlib-stepthrough", "kvlib-step-slider", "step",
                 "kvlib-step-summary", id="02-step-through"),
    pytest.param("04_kv_cache_memory.ipynb", "kvlib-memory-calculator", "kvlib-seq-len-slider", "seq_len",
                 "kvlib-memory-total", id="04-memory-calculator"),
    pytest.param("07_paged_attention_and_serving.ipynb", "kvlib-block-stepper", "kvlib-block-step-slider", "step",
                 "kvlib-block-summary", id="07-block-tables"),
]

# Prompts of the open notebook's code cells: "[3]:" ran, "[*]:" queued or running, "[ ]:" not run.
PROMPTS_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt')]
                      .map(e => e.textContent.trim())"""
# How many widget outputs have rendered as widgets (live, or restored from the notebook's saved widget state).
RENDERED_WIDGETS_JS = """() => document.querySelectorAll(
    '.jp-NotebookPanel .jp-OutputArea-output > .jupyter-widgets,'
    + '.jp-NotebookPanel .jp-OutputArea-output.jupyter-widgets').length"""


@pytest.fixture(scope="module")
def browser():
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    with sync_playwright() as playwright:
        try:
            chromium = launch_chromium(playwright)
        except PlaywrightError as exc:
            pytest.skip(f"chromium at {CHROMIUM} did not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(browser):
    with JupyterLab(NOTEBOOKS) as server:
        yield server


@pytest.fixture
def page(browser, lab):
    """A fresh browser tab that records console errors and uncaught front-end exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.console_errors, tab.uncaught = [], []
    tab.on("console", lambda msg: msg.type == "error" and tab.console_errors.append(msg.text))
    tab.on("pageerror", lambda exc: tab.uncaught.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
        lab.shutdown_kernels()


@contextlib.contextmanager
def evidence_on_failure(page, lab: JupyterLab, name: str):
    """On any failure inside the block: save a screenshot, print where it is, the console errors and server log."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"browser-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot saved: {shot}")
        except Exception as exc:  # a dead page must not hide the real failure
            print(f"no screenshot ({exc})")
        print("browser console errors:", *page.console_errors or ["(none)"], sep="\n  ")
        print("uncaught front-end exceptions:", *page.uncaught or ["(none)"], sep="\n  ")
        print("JupyterLab server log (tail):", lab.log_tail(), sep="\n")
        raise


def open_notebook(page, lab: JupyterLab, name: str) -> nbformat.NotebookNode:
    """Open `name` in a fresh JupyterLab workspace and wait for every cell and an idle kernel."""
    nb = nbformat.read(lab.root / name, as_version=4)
    page.goto(lab.url(f"/lab/tree/{name}?reset"))
    page.wait_for_function(
        "n => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length === n",
        arg=len(nb.cells), timeout=60_000)
    # The toolbar reads "idle" even before a kernel exists; first wait for the notebook's own kernel to attach.
    kernel = nb.metadata.get("kernelspec", {}).get("display_name", "Python 3 (ipykernel)")
    page.wait_for_function(
        "name => document.querySelector('.jp-NotebookPanel .jp-KernelName')?.textContent.trim() === name",
        arg=kernel, timeout=60_000)
    page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    return nb


def menu(page, menu_label: str, command: str) -> None:
    """Click a JupyterLab menu entry by its command id (ids are stable where labels get reworded)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{menu_label}$")).click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').click()


def log_console_text(page) -> str:
    """Open the notebook's log console (View menu) and return what it shows."""
    menu(page, "View", "logconsole:open")
    panel = page.locator(".jp-LogConsolePanel").first
    panel.wait_for()
    time.sleep(0.5)  # let it render messages that arrived before it opened
    return "\n".join(panel.inner_text().splitlines()[-40:])  # a traceback's last lines say what failed


def page_problems(page) -> list[str]:
    """Error dialogs and widget/output error texts currently on the page."""
    problems = [f"dialog: {text!r}" for text in page.locator(".jp-Dialog").all_inner_texts()]
    body = page.locator(".jp-NotebookPanel").first.inner_text()
    problems += [f"page shows {text!r}" for text in ERROR_TEXTS if text in body]
    return problems


def widget_outputs(nb: nbformat.NotebookNode) -> int:
    return sum(WIDGET_MIME in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


def run_all_and_save(page, lab: JupyterLab, name: str, nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Clear outputs, Run All Cells from the Run menu, wait until the kernel is done, save; return the saved file."""
    to_run = sum(1 for cell in nb.cells if cell.cell_type == "code" and cell.source.strip())
    menu(page, "Edit", "editmenu:clear-all")
    page.wait_for_function(f"() => ({PROMPTS_JS})().every(p => !/\\d/.test(p))")
    menu(page, "Run", "runmenu:run-all")
    deadline, quiet_since = time.monotonic() + RUN_TIMEOUT_S, None
    while True:
        prompts = page.evaluate(PROMPTS_JS)
        done = sum(bool(re.search(r"\d", p)) for p in prompts)
        if any("*" in p for p in prompts):
            quiet_since = None
        elif done >= to_run:
            break
        elif done:  # nothing queued yet not all ran: Run All stopped at an error; the saved file says which
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 5:
                break
        assert time.monotonic() < deadline, f"{name}: Run All not finished after {RUN_TIMEOUT_S} s ({done} cells ran)"
        time.sleep(0.25)
    page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]')
    saved_before = (lab.root / name).stat().st_mtime_ns
    menu(page, "File", "docmanager:save")
    return read_when_saved(lab.root / name, saved_before)


def read_when_saved(path: Path, saved_before: int, timeout_s: float = 30) -> nbformat.NotebookNode:
    """The notebook at `path` once the server has finished writing it after a save (its mtime was `saved_before`).

    Jupyter's "atomic" save copies the old file aside and then rewrites the path in place, so a new mtime can show a
    file that is still empty or half written: wait for a new mtime, then for a file that parses and stays unchanged.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        stat = path.stat()
        if stat.st_mtime_ns != saved_before and (stat.st_mtime_ns, stat.st_size) == last:
            try:
                return nbformat.read(path, as_version=4)
            except ValueError:  # json's and nbformat's not-JSON errors
                pass  # caught mid-write: look again
        assert time.monotonic() < deadline, f"{path.name}: JupyterLab did not finish saving the notebook"
        last = (stat.st_mtime_ns, stat.st_size)
        time.sleep(0.3)


def report_timing(name: str, nb: nbformat.NotebookNode) -> None:
    """Print the kernel's run time and the slowest cells (JupyterLab records timing in the saved cell metadata)."""
    seconds = []
    for i, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds.append(((end - start).total_seconds(), i))
    slowest = ", ".join(f"cell {i}: {t:.1f} s" for t, i in sorted(seconds, reverse=True)[:3])
    print(f"{name}: cells ran for {sum(t for t, _ in seconds):.1f} s in the kernel (slowest: {slowest})")


def test_notebooks_found():
    assert NOTEBOOKS.is_dir(), f"no notebooks folder at {NOTEBOOKS}"
    assert sorted(NOTEBOOKS.glob("*.ipynb")), f"no notebooks in {NOTEBOOKS}"


def test_notebooks_share_one_kernelspec():
    """JupyterLab shows the kernelspec's display name; a notebook saved with another one never reads as attached."""
    specs = {p.name: nbformat.read(p, as_version=4).metadata.get("kernelspec", {}) for p in NOTEBOOKS.glob("*.ipynb")}
    wrong = {name: spec for name, spec in specs.items()
             if (spec.get("name"), spec.get("display_name")) != ("python3", "Python 3 (ipykernel)")}
    assert wrong == {}, f"notebooks whose kernelspec is not python3 / 'Python 3 (ipykernel)': {wrong}"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_opens_cleanly(page, lab, name):
    """Every notebook opens without an error dialog, and its committed widget outputs render as widgets."""
    with evidence_on_failure(page, lab, f"open-{name}"):
        nb = open_notebook(page, lab, name)
        expected = widget_outputs(nb)
        # Widgets restore asynchronously; wait until each committed widget output has rendered or failed.
        with contextlib.suppress(PlaywrightTimeout):  # the assertions below say what is wrong
            page.wait_for_function(
                f"n => ({RENDERED_WIDGETS_JS})() >= n || {json.dumps(ERROR_TEXTS)}.some("
                "t => document.querySelector('.jp-NotebookPanel').innerText.includes(t))",
                arg=expected, timeout=20_000)
        assert page_problems(page) == [], f"{name} shows errors when opened"
        assert page.evaluate(RENDERED_WIDGETS_JS) == expected, (
            f"{name}: {expected} widget outputs committed, but not all render as widgets "
            "(missing widget extension or missing saved widget state?)")
        assert page.uncaught == [], f"{name}: JupyterLab's front end raised"


@pytest.mark.parametrize("name, outer, slider, description, output", INTERACTIVE)
def test_notebook_runs_and_slider_updates_output(page, lab, name, outer, slider, description, output):
    """Run All leaves no error cell; moving the widget's slider changes the text it displays."""
    if not (NOTEBOOKS / name).is_file():
        pytest.fail(f"{NOTEBOOKS / name} is missing; this test runs it in JupyterLab")
    with evidence_on_failure(page, lab, f"run-{name}"):
        nb = open_notebook(page, lab, name)
        started = time.monotonic()
        saved = run_all_and_save(page, lab, name, nb)
        print(f"{name}: Run All and save took {time.monotonic() - started:.1f} s in the browser")
        report_timing(name, saved)
        errors = [f"cell {i}: {out.ename}: {out.evalue}" for i, cell in enumerate(saved.cells)
                  if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
        assert errors == [], f"{name} raised when run in JupyterLab"
        not_run = [i for i, cell in enumerate(saved.cells)
                   if cell.cell_type == "code" and cell.source.strip() and cell.execution_count is None]
        assert not_run == [], f"{name}: Run All did not reach cells {not_run}"
        assert page_problems(page) == [], f"{name} shows errors after Run All"
        assert page.evaluate(RENDERED_WIDGETS_JS) == widget_outputs(saved), (
            f"{name}: after Run All not every widget output renders as a widget (missing widget extension?)")

        widget = page.locator(f".jp-NotebookPanel .{outer}").first
        assert widget.count() == 1, f"{name}: no widget with CSS class {outer!r} after Run All"
        slider_el, shown = widget.locator(f".{slider}"), widget.locator(f".{output}")
        assert slider_el.count() == 1, f"{name}: {outer!r} has {slider_el.count()} elements of class {slider!r}"
        assert shown.count() == 1, f"{name}: {outer!r} has {shown.count()} elements of class {output!r}"
        assert slider_el.locator(".widget-label").inner_text().strip() == description
        handle = slider_el.locator(".noUi-handle")
        before_value, before_text = handle.get_attribute("aria-valuenow"), shown.inner_text()
        at_max = float(before_value) >= float(handle.get_attribute("aria-valuemax"))
        handle.scroll_into_view_if_needed()
        handle.focus()
        page.keyboard.press("Home" if at_max else "End")  # noUiSlider's keyboard support: to the far end
        page.wait_for_function("([el, v]) => el.getAttribute('aria-valuenow') !== v",
                               arg=[handle.element_handle(), before_value])
        after_value = handle.get_attribute("aria-valuenow")
        # The new value goes to the kernel, the callback runs there, and the HTML widget's new value comes back.
        try:
            page.wait_for_function("([el, t]) => el.innerText !== t", arg=[shown.element_handle(), before_text])
            changed = True
        except PlaywrightTimeout:
            changed = False
        page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]')
        # Exceptions in widget callbacks never reach a cell; JupyterLab shows them in the log console.
        kernel_log = log_console_text(page)
        assert changed, (f"{name}: moving {slider!r} from {before_value} to {after_value} did not change "
                         f"{output!r} (still {before_text!r}); log console:\n{kernel_log}")
        assert shown.inner_text().strip(), f"{name}: {output!r} is empty after moving the slider"
        assert "Traceback" not in kernel_log, (
            f"{name}: the kernel logged an error while the slider moved:\n{kernel_log}")
        assert page_problems(page) == [], f"{name} shows errors after moving the slider"
        assert page.uncaught == [], f"{name}: JupyterLab's front end raised"


def test_read_when_saved_waits_for_the_whole_file(tmp_path):
    """A save caught between truncation and the last byte is read again, not parsed half written."""
    import threading
    path = tmp_path / "nb.ipynb"
    whole = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nbformat.write(whole, path)
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    path.write_text("")  # the server has truncated the file and not yet written it
    writer = threading.Timer(1.0, nbformat.write, args=(whole, path))
    writer.start()
    try:
        assert read_when_saved(path, before, timeout_s=10).cells[0].source == "1 + 1"
    finally:
        writer.join()
