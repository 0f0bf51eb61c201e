"""vLLM as the serving bench's peer: found in a virtual environment of its own, driven in a subprocess.

vLLM is never a dependency of kvlib. `python -m kvlib.measure.bench.vllm_env DIR` builds a venv with vLLM's CPU
build; the bench finds it through `--vllm-venv DIR` or the environment variable KVLIB_VLLM_VENV, and says why when
it cannot (`find_vllm`). Each `VLLMPeer` runs engine_driver.py with that venv's Python on a checkpoint written by
`save_checkpoint` (model.to_hf().save_pretrained: the very weights kvlib runs), and talks to it one JSON line at a
time, so that turns interleave with kvlib's while the vLLM engine stays loaded. vLLM's logs go to a file.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from ...model.gpt2 import GPT2

VENV_ENV = "KVLIB_VLLM_VENV"
DRIVER = Path(__file__).with_name("engine_driver.py")
BUILD_HINT = "build one with `python -m kvlib.measure.bench.vllm_env DIR` (about 2 minutes, from PyPI)"


def find_vllm(venv: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(the venv's python, vLLM's version) where vLLM imports there, else (None, why not)."""
    venv = venv or os.environ.get(VENV_ENV)
    if not venv:
        return None, f"no vLLM environment named (--vllm-venv DIR or {VENV_ENV}=DIR); {BUILD_HINT}"
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return None, f"{python} does not exist; {BUILD_HINT}"
    try:
        run = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                             text=True, timeout=300, env=vllm_process_env())
    except subprocess.TimeoutExpired:
        return None, f"importing vllm with {python} took over 300 s"
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"vllm does not import with {python}: {last}"
    return python, run.stdout.strip()


def save_checkpoint(model: GPT2, directory: str | os.PathLike) -> Path:
    """Write `model` as a transformers GPT-2 checkpoint that vLLM loads (fp32 safetensors + config.json)."""
    directory = Path(directory)
    model.to_hf().save_pretrained(directory)
    return directory


def vllm_process_env(threads: int | None = None) -> dict:
    """The environment a vLLM subprocess runs in: no PYTHONPATH or VIRTUAL_ENV of ours, offline, one process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # set outside, so vLLM keeps torch at this many threads
    return env


class VLLMPeer:
    """One vLLM engine in a subprocess. with VLLMPeer(python, ckpt, enforce_eager=True, ...) as peer: peer.serve(...)"""

    def __init__(self, python: Path, model_dir: Path, *, enforce_eager: bool, threads: int, max_model_len: int,
                 kv_cache_memory_bytes: int | None = None, block_size: int | None = None,
                 max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None) -> None:
        args = [str(python), str(DRIVER), "--model", str(model_dir)] + (["--enforce-eager"] if enforce_eager else [])
        for flag, value in (("--max-model-len", max_model_len), ("--kv-cache-memory-bytes", kv_cache_memory_bytes),
                            ("--block-size", block_size),
                            ("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens)):
            if value is not None:
                args += [flag, str(value)]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kvlib-vllm-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=vllm_process_env(threads), bufsize=1)
        self.name = "vLLM eager" if enforce_eager else "vLLM default"

    def call(self, cmd: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.proc.poll()}); its log ends:\n{self.log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    def info(self) -> dict:
        return self.call({"cmd": "info"})

    def serve(self, requests, arrivals: list[float] | None = None) -> dict:
        return self.call({"cmd": "serve", "requests": [list(r) for r in requests], "arrivals": arrivals})

    def profile(self, requests) -> dict:
        return self.call({"cmd": "profile", "requests": [list(r) for r in requests]})

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> "VLLMPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
