"""Run JupyterLab on loopback and drive it with headless Chromium, for tests/test_browser.py.

Playwright drives the system Chromium (Debian package `chromium`); nothing here downloads a browser. JupyterLab
serves a temporary copy of the notebooks with temporary Jupyter config/data/runtime dirs, so a test run writes
nothing into the repository (except figures the notebooks save on purpose) and finds no leftover user settings.
The widget front-end extension still loads, from the venv's share/jupyter/labextensions.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("KVLIB_CHROMIUM", "/usr/bin/chromium"))
# Without the networking flags Chromium keeps dialling Google services, which the closed network refuses.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Text the widget manager or JupyterLab puts on the page when a widget or an output cannot be shown.
ERROR_TEXTS = (
    "Error displaying widget", "Failed to load model class", "Failed to load view class",
    "Could not create a model", "Could not create a view",
)
# JupyterLab settings for this run: every cell stays in the DOM (no windowing), cells record their run time in
# the saved metadata, no news/update pop-ups.
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "recordTiming": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False, "fetchNews": "false"},
}


def chromium_problem() -> str | None:
    """Why headless Chromium cannot be driven here, or None when it can (checked without starting it)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the python package playwright is not installed: pip install playwright (no browser download needed)"
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"chromium not found at {CHROMIUM}: apt-get install chromium (or set KVLIB_CHROMIUM)"
    return None


def launch_chromium(playwright):
    """Start headless Chromium from CHROMIUM (Playwright gives it a fresh temporary profile)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving a temporary copy of `notebooks`; use as a context manager."""

    def __init__(self, notebooks: Path, startup_timeout: float = 90.0):
        self.source = Path(notebooks)
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(24)
        self.tmp = Path(tempfile.mkdtemp(prefix="kvlib-jupyterlab-"))
        self.root = self.tmp / "notebooks"
        self.log_path = self.tmp / "server.log"
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> "JupyterLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Copy the notebooks, write a private Jupyter config, start the server and wait until it answers."""
        shutil.copytree(self.source, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        config_dir, data_dir, runtime_dir = (self.tmp / d for d in ("config", "data", "runtime"))
        for name, settings in USER_SETTINGS.items():
            path = config_dir / "lab" / "user-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        server_config = {
            "ServerApp": {
                "ip": "127.0.0.1", "port": 0, "open_browser": False, "root_dir": str(self.root),
                "terminals_enabled": False, "allow_root": True,  # CI containers run as root
                # Safety net: a server orphaned by a killed test run exits on its own.
                "shutdown_no_activity_timeout": 900,
            },
            "MappingKernelManager": {"cull_idle_timeout": 600, "cull_interval": 60},
            "IdentityProvider": {"token": self.token},  # in a file, not argv, so `ps` does not show it
            "LabApp": {  # nothing that would reach for the network
                "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                "extension_manager": "readonly",
            },
        }
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(server_config))
        # No build check: otherwise every page load makes the server run node/yarn, seconds of CPU for nothing.
        (config_dir / "labconfig").mkdir()
        (config_dir / "labconfig" / "page_config.json").write_text(
            json.dumps({"buildCheck": False, "buildAvailable": False}))
        data_dir.mkdir()
        runtime_dir.mkdir()
        env = dict(os.environ)
        env.update(
            KVLIB_RANDOM_WEIGHTS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
            JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_DATA_DIR=str(data_dir),
            JUPYTER_RUNTIME_DIR=str(runtime_dir), IPYTHONDIR=str(self.tmp / "ipython"),
        )
        # The venv's share/jupyter (lab extensions, the python3 kernel) stays on the search path via sys.prefix.
        env.pop("JUPYTER_PATH", None)
        notebooks = sorted(str(p) for p in self.root.glob("*.ipynb"))
        if notebooks:
            # A fresh data dir trusts nothing, and JupyterLab shows an untrusted notebook's widget outputs as
            # plain text; sign the copies (as a reader who ran them would have) so committed widgets render.
            subprocess.run([sys.executable, "-m", "jupyter", "trust", *notebooks], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--no-browser"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so kernels can be stopped with it
            )
        deadline = time.monotonic() + self.startup_timeout
        info_file = runtime_dir / f"jpserver-{self.proc.pid}.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if info_file.is_file() and not self.base_url:
                try:
                    self.base_url = json.loads(info_file.read_text())["url"].rstrip("/")
                except (ValueError, KeyError):
                    pass  # written but not complete yet
            if self.base_url:
                try:
                    self.api("GET", "/api/status")
                    return
                except (urllib.error.URLError, ConnectionError):
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def url(self, path: str) -> str:
        """Browser URL for a server path; the token rides along so no login page appears."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def api(self, method: str, path: str):
        """Call the Jupyter REST API; returns the decoded JSON body (None when empty)."""
        req = urllib.request.Request(self.base_url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every session's kernel, so each test starts from a quiet server."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop the server and its kernels (SIGTERM, then SIGKILL to the process group) and delete the copy."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                self.shutdown_kernels()
            except Exception:
                pass  # the server may already be going; the signals below still stop everything
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            try:  # kernels live in the server's process group; stop any that outlived it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=15)
        shutil.rmtree(self.tmp, ignore_errors=True)
