"""Make this machine look KVLIB_CLOCK_SCALE times slower (factor > 1) or faster (factor < 1) to a Jupyter kernel.

Python imports `sitecustomize` at start-up from the first directory on its path that has one;
tests/test_machine_independence.py puts this directory first on PYTHONPATH for the nbval run it starts, and the
notebooks' kernels inherit it. In a kernel (a process started as `python -m ipykernel_launcher ...`, or any process
when KVLIB_CLOCK_SCALE_ANY_PROCESS=1) with KVLIB_CLOCK_SCALE set, every clock in `time` is replaced by one that
runs `factor` times as fast, measured from the moment it was replaced: perf_counter, monotonic, time,
process_time, thread_time, their _ns twins and clock_gettime(_ns). Replaced before anything else is imported, so
whatever binds a clock later binds the scaled one: timeit.default_timer, and through it torch.utils.benchmark;
kvlib.measure.timing's StepClock (CPU: time.perf_counter). A duration of d seconds then reads as factor·d.
CUDA events are not scaled (the test hides GPUs from the kernel). Each kernel that scales its clocks appends one
line to the file named by KVLIB_CLOCK_SCALE_LOG, so the test can check that the scaling really happened.
Any other sitecustomize on the path (a distribution's) is still run.
"""
import os
import sys
import time


def _scaled(real, factor: float, integer: bool):
    origins: dict = {}  # per argument tuple (clock_gettime's clock id): the real reading when first called

    def clock(*args):
        value = real(*args)
        origin = origins.setdefault(args, value)
        out = origin + (value - origin) * factor
        return int(out) if integer else out

    clock.__name__ = clock.__qualname__ = real.__name__
    clock.__doc__ = f"{real.__name__}, running {factor:g} times as fast (tests/clock_scaling/sitecustomize.py)"
    return clock


def _install(factor: float) -> None:
    names = ("perf_counter", "monotonic", "time", "process_time", "thread_time", "clock_gettime")
    for name in names:
        for suffix in ("", "_ns"):
            real = getattr(time, name + suffix, None)
            if real is not None:
                clock = _scaled(real, factor, integer=suffix == "_ns")
                if not (suffix or name == "clock_gettime"):
                    clock()  # start counting now
                setattr(time, name + suffix, clock)
    import timeit  # binds timeit.default_timer (torch.utils.benchmark's clock) to the scaled perf_counter

    assert timeit.default_timer is time.perf_counter


def _run_next_sitecustomize() -> None:
    """Execute the sitecustomize this one shadows, if the path has another."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _main() -> None:
    factor = os.environ.get("KVLIB_CLOCK_SCALE")
    argv = " ".join(getattr(sys, "orig_argv", sys.argv))
    if factor and ("ipykernel" in argv or os.environ.get("KVLIB_CLOCK_SCALE_ANY_PROCESS") == "1"):
        _install(float(factor))
        log = os.environ.get("KVLIB_CLOCK_SCALE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {float(factor):g}\n")


_main()
_run_next_sitecustomize()
