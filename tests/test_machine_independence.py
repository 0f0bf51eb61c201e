"""The series is true on any reader's machine: every notebook that times anything passes strict nbval as it would
on a machine four times faster and on one four times slower than the one running the test.

No assert may compare a live measurement with one made on another machine. To prove it, nbval runs those
notebooks in a subprocess whose kernels import tests/clock_scaling/sitecustomize.py first: it makes every clock
the kernel reads (time.perf_counter, monotonic, time, their _ns twins, and so timeit's default timer,
torch.utils.benchmark's and kvlib.measure.timing's) run KVLIB_CLOCK_SCALE times as fast. A check that compares a
live measurement with another from the same run (the cached step beats the uncached one, a ratio measured now
exceeds a stated bound) survives any scaling; one that compares a live time with a committed number fails at one
end, and so does a live number printed in a cell whose output nbval compares.

The notebooks are chosen by their code (anything that imports a clock, `timeit`, `torch.utils.benchmark` or
`kvlib.measure.timing`/`kvlib.measure.bench`), so a new timing notebook is covered without editing this file.
It costs two nbval runs of those notebooks (about 2 minutes on a 2-core CPU). Run it alone with
`pytest -m machine_independence`; leave it out with `-m "not machine_independence"`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.machine_independence

ROOT = Path(__file__).resolve().parent.parent
CLOCKS = Path(__file__).resolve().parent / "clock_scaling"  # its sitecustomize.py scales the kernel's clocks
FACTORS = {"4x faster machine": 0.25, "4x slower machine": 4.0}

TIMES_SOMETHING = re.compile(
    r"^\s*(import|from)\s[^\n#]*\b(time|timeit)\b"  # import time / import os, time / from time import ...
    r"|\btime\.(perf_counter|monotonic|time|process_time)"
    r"|\btimeit\b|torch\.utils\.benchmark|^\s*%%?time"
    r"|kvlib\.measure\.(timing|bench)\b"
    r"|^\s*from\s+kvlib\.measure\s+import\s[^\n#]*\b(timing|bench)\b",
    re.MULTILINE,
)


def timing_notebooks() -> list[Path]:
    """Every notebook of the series whose code times something (see TIMES_SOMETHING)."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if TIMES_SOMETHING.search(code):
            found.append(path)
    return found


def scaled_env(factor: float, log: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KVLIB_WRITE_FIGURES"}  # never write figures/
    env.update(KVLIB_CLOCK_SCALE=str(factor), KVLIB_CLOCK_SCALE_LOG=str(log), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(CLOCKS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("KVLIB_CLOCK_SCALE_ANY_PROCESS", None)
    return env


def failures(junit: Path) -> list[str]:
    """'notebook, cell: the failing line' for every failed or errored nbval item (from pytest's JUnit XML)."""
    ansi = re.compile(r"\x1b\[[0-9;]*m|#x1B\[[0-9;]*m")
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            text = ansi.sub("", (bad.text or "") + "\n" + (bad.get("message") or ""))
            arrow = re.search(r"^-+> *\d* (.+)$", text, re.MULTILINE)  # IPython marks the failing line
            why = arrow.group(1).strip() if arrow else next(
                (ln.strip() for ln in reversed(text.splitlines()) if "Error" in ln), "")
            out.append(f"{case.get('classname')}, {case.get('name')}: {why[:200]}")
    return out


def test_the_notebooks_that_time_something_are_found():
    names = [p.name[:2] for p in timing_notebooks()]
    assert {"03", "05", "06"} <= set(names)  # they time decoding live
    assert not {"01", "02", "04"} & set(names)  # they count positions, FLOPs and bytes: nothing to scale


def test_the_kernel_clocks_are_scaled(tmp_path):
    """The mechanism itself, in a plain process: a 0.1 s sleep reads as 0.4 s on every clock the notebooks use."""
    code = """
import json, time, timeit
import torch.utils.benchmark as benchmark
from kvlib.measure import timing
read = {}
for name, clock in (("perf_counter", time.perf_counter), ("monotonic", time.monotonic), ("time", time.time),
                    ("default_timer", timeit.default_timer)):
    t = clock(); time.sleep(0.1); read[name] = clock() - t
read["kvlib.measure.timing.measure"] = timing.measure(lambda: time.sleep(0.1), "cpu", repeats=1, warmup=0)[0]
read["torch.utils.benchmark"] = benchmark.Timer("time.sleep(0.1)", setup="import time").timeit(1).mean
print(json.dumps(read))
"""
    env = scaled_env(4.0, tmp_path / "log")
    env["KVLIB_CLOCK_SCALE_ANY_PROCESS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(0.35 < seconds < 0.8 for seconds in read.values()), read  # 0.1 s real reads as ~0.4 s
    assert (tmp_path / "log").read_text().split()[1] == "4"


@pytest.mark.parametrize("machine", FACTORS)
def test_timing_notebooks_pass_strict_nbval_on_a_faster_and_a_slower_machine(machine, tmp_path):
    notebooks = timing_notebooks()
    log, junit = tmp_path / "kernels.log", tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}",
           *[str(p.relative_to(ROOT)) for p in notebooks]]
    out = subprocess.run(cmd, cwd=ROOT, env=scaled_env(FACTORS[machine], log), capture_output=True, text=True,
                         timeout=1800)
    failed = failures(junit) if junit.exists() else [out.stdout[-3000:] + out.stderr[-3000:]]
    assert out.returncode == 0 and not failed, (
        f"on a {machine} (every clock x{FACTORS[machine]:g}) these cells fail:\n" + "\n".join(failed))
    kernels = log.read_text().splitlines() if log.exists() else []
    assert len(kernels) == len(notebooks), f"{len(kernels)} scaled kernels for {len(notebooks)} notebooks"
