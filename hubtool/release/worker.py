"""One release stage in its own process, for a concurrent release on one machine.

The parent (`StageProcess`) hands the child its job (config, plan, inputs, work dir, cache) as a pickle
on stdin, so nothing is re-planned and no token is written to disk; the child (`python -m
hubtool.release.worker`) runs the stage through the same Session and stage store as a sequential
release (the same locks, records and cache) and returns its summary on its stdout, while its progress
and library output reach the parent's stderr one line at a time, each naming the stage.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Callable

from hubtool.errors import HubtoolError, Interrupted, StageError

STOP_WAIT_S = 60.0  # how long a stopped stage gets to remove its unfinished output before it is killed


class StageProcess:
    """Parent side: a child process running one stage (see schedule.Job)."""

    def __init__(self, name: str, job: dict[str, Any], *, emit: Callable[[str], None], cleanup: Callable[[], None]) -> None:
        self.name, self._emit, self._cleanup = name, emit, cleanup
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # its own session: a Ctrl-C in the terminal reaches the parent, which stops each child once (stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "hubtool.release.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        self._result = b""
        self._threads = [threading.Thread(target=self._lines, args=(self.proc.stderr,), daemon=True),
                         threading.Thread(target=self._read_result, args=(self.proc.stdout,), daemon=True)]
        for t in self._threads:
            t.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(pickle.dumps({**job, "parent_pid": os.getpid()}))
            self.proc.stdin.close()
        except BrokenPipeError:  # died at start: finish() says why
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _lines(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.strip():
                self._emit(line if self.name in line else f"[{self.name}] {line}")

    def _read_result(self, stream: IO[bytes]) -> None:
        self._result = stream.read()

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        for t in self._threads:  # every line it wrote is shown before it counts as done
            t.join(timeout=10)
        return rc

    def finish(self) -> dict[str, Any]:
        """The child's summary ({"ran": [...], "peak_rss": bytes}), or its error raised here."""
        try:
            result = pickle.loads(self._result) if self._result else None
        except (pickle.UnpicklingError, EOFError, ValueError):
            result = None
        if isinstance(result, dict) and "error" in result:
            import hubtool.errors as errors

            cls = getattr(errors, str(result.get("type")), HubtoolError)
            if not (isinstance(cls, type) and issubclass(cls, HubtoolError)):
                cls = HubtoolError
            raise cls(result["error"], exit_code=int(result["exit_code"]))
        if self.proc.returncode != 0 or not isinstance(result, dict):
            self._cleanup()
            how = f"signal {-self.proc.returncode}" if self.proc.returncode < 0 else f"exit status {self.proc.returncode}"
            raise StageError(f"{self.name}: its process ended with {how} and no result; finished stages are cached, re-run to resume")
        return result

    def stop(self) -> None:
        """SIGTERM (the child's stage store removes its unfinished output), SIGKILL if it does not end in time;
        then whatever it left unfinished is removed here."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        self._cleanup()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: a SIGTERM when the parent dies, even by SIGKILL, so no stage keeps running orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent was already gone
        os.kill(os.getpid(), signal.SIGTERM)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> int:
    """Child side: run the stage named in the job on stdin, write its summary (or error) to stdout."""
    job = pickle.loads(sys.stdin.buffer.read())
    result_fd = os.dup(1)  # the result channel; fd 1 then carries library chatter to stderr (or nowhere)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _die_with_parent(job["parent_pid"])
    from hubtool import progress
    from hubtool.release.run import Session

    progress.set_quiet(True)  # plain lines: the parent prefixes each with the stage
    code = 0
    session = None
    try:
        with progress.quiet_libraries(job["verbose"]), progress.stdout_to_stderr():
            session = Session(job["cfg"], job["plan"], job["inputs"], work_dir=job["work_dir"], cache=job["cache"],
                              endpoint=job["endpoint"], token=job["token"])
            try:
                session.run_stage(job["plan"].stage(job["stage"]), index=job["index"])
            finally:
                session.save()
        result: dict[str, Any] = {"ran": session.store.ran, "peak_rss": _peak_rss()}
    except HubtoolError as exc:
        result, code = {"error": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__}, exc.exit_code
    except Interrupted as exc:
        result, code = {"error": f"{job['stage']}: stopped by {signal.Signals(exc.signum).name}", "exit_code": 128 + exc.signum,
                        "type": "StageError"}, 128 + exc.signum
    except KeyboardInterrupt:
        result, code = {"error": f"{job['stage']}: interrupted", "exit_code": 130, "type": "StageError"}, 130
    except Exception as exc:  # noqa: BLE001 - the parent shows it as the stage's one-line error
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        result, code = {"error": f"{job['stage']}: failed ({type(exc).__name__}: {first})", "exit_code": 1, "type": "StageError"}, 1
    with os.fdopen(result_fd, "wb") as f:
        f.write(pickle.dumps(result))
    return code


def _peak_rss() -> int:
    """This process's peak resident bytes plus that of the largest process it waited on (converter, GPTQ worker)."""
    import resource

    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024


if __name__ == "__main__":
    sys.exit(main())
