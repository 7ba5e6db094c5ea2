"""A GGUF served the way users serve it: llama-cpp-python's OpenAI-compatible server (its `server` extra) in
its own process on a free loopback port, asked `/v1/chat/completions` with the GGUF's own chat template
(`/v1/completions` for a model without one), greedy; stopped on every way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hubtool.errors import InputError, QuantizeError
from hubtool.machine import threads as engine_threads

START_TIMEOUT_S = 180.0  # a big GGUF on a loaded machine maps slowly
REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Reply:
    """One answer of the server: the text, `finish_reason` ("stop" / "length"), tokens; or the HTTP error."""

    text: str
    finish: str
    tokens: int = 0
    error: str = ""


SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")  # llama-cpp-python[server]


def check_server_installed() -> str:
    """Refuse, before any work, a release whose GGUF serve check could not start llama.cpp's server."""
    import importlib.util

    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"serve check: llama.cpp's server needs {', '.join(missing)}; pip install 'llama-cpp-python[server]' "
                         "(part of hubtool[gguf]), or set `serve: false` in release.yaml")
    return "llama-cpp-python's server installed"


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(model: Path, *, context: int, verbose: bool = False) -> Iterator[str]:
    """`python -m llama_cpp.server --model MODEL` on a free loopback port; yields its base URL once it answers.
    The process is stopped (SIGTERM, then SIGKILL) when the block ends, whatever ends it."""
    port, threads = free_port(), engine_threads()  # llama.cpp's threads: this stage's share of the cores
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(context), "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", str(verbose)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=None if verbose else log,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(proc, url, model, log)
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _last_line(log: Any) -> str:
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def _wait_ready(proc: subprocess.Popen, url: str, model: Path, log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QuantizeError(f"serve-check: {model.name}: llama.cpp's server did not start (exit status {proc.returncode}: "
                                f"{_last_line(log)}); check the file with `hubtool verify gguf`, or install llama-cpp-python[server]")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise QuantizeError(f"serve-check: {model.name}: llama.cpp's server did not answer within {START_TIMEOUT_S:.0f} s")


def ask(url: str, prompt: str, *, chat: bool, max_tokens: int) -> Reply:
    """One greedy request (temperature 0, no repeat penalty) to /v1/chat/completions, or /v1/completions."""
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 0, "stream": False}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    req = urllib.request.Request(f"{url}/v1/{'chat/completions' if chat else 'completions'}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            data = json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            parsed = json.loads(detail)
            detail = str(parsed.get("detail") or parsed.get("error", {}).get("message") or detail)
        return Reply("", "error", error=f"HTTP {exc.code}: {' '.join(detail.split())[:200]}")
    choice = data["choices"][0]
    text = choice["message"].get("content") or "" if chat else choice.get("text") or ""
    return Reply(str(text), str(choice.get("finish_reason") or ""), int((data.get("usage") or {}).get("completion_tokens") or 0))
