"""Release stages in worker processes, for a concurrent release on one machine.

The parent (`WorkerPool`) hands a worker each stage's job (config, plan, inputs, work dir, cache) as a
pickle on its stdin, so nothing is re-planned and no token is written to disk; the worker (`python -m
hubtool.release.worker`) runs the stage through the same Session and stage store as a sequential
release (the same locks, records and cache) and answers with its summary on its stdout, while its
progress and library output reach the parent's stderr one line at a time, each naming the stage. A
worker runs one stage at a time and then takes the next, so the libraries load once per worker.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from typing import IO, Any, Callable

from hubtool.errors import HubtoolError, Interrupted, StageError

STOP_WAIT_S = 60.0  # how long a stopped stage gets to remove its unfinished output before it is killed


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next framed pickle from STREAM, or None at its end."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class StageWorker:
    """Parent side of one worker process: it runs the stages handed to it one at a time, so Python, torch and
    the engines load once per worker rather than once per stage."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self.current = ""  # the stage it runs now: the prefix of its output lines
        self._terminated = False  # SIGTERM sent (terminate)
        self.proc = subprocess.Popen([sys.executable, "-m", "hubtool.release.worker", str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     start_new_session=True)  # a terminal's Ctrl-C reaches the parent, which stops each worker once
        self._results: queue.Queue[Any] = queue.Queue()
        self._threads = [threading.Thread(target=self._lines, daemon=True), threading.Thread(target=self._read_results, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _lines(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.strip():
                    name = self.current
                    self._emit(line if not name or name in line else f"[{name}] {line}")

    def _read_results(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as stream:
            while (result := _receive(stream)) is not None:
                self._results.put(result)
        self._results.put(None)  # the worker is gone

    def submit(self, name: str, job: dict[str, Any]) -> None:
        self.current = name
        assert self.proc.stdin is not None
        try:
            _send(self.proc.stdin, job)
        except (BrokenPipeError, OSError):  # died already: the stage's poll() sees it
            self._results.put(None)

    def result(self) -> Any:
        """The current stage's result dict, None if the worker died, or ... (Ellipsis) while it still runs."""
        try:
            return self._results.get_nowait()
        except queue.Empty:
            return ...

    def terminate(self) -> None:
        """SIGTERM without waiting: stopping several workers, each cleans up at the same time as the others.
        Once only: a second SIGTERM would interrupt the clean-up the first one started."""
        if not self._terminated and self.proc.poll() is None:
            self._terminated = True
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (the worker's stage store removes the stage's unfinished output), SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            try:
                self.terminate()
                self.proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close()

    def close(self) -> None:
        """End of work: the worker exits when its stdin closes."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=5)


class StageRun:
    """One stage on a worker (schedule.Job): done when the worker reports back."""

    def __init__(self, pool: "WorkerPool", worker: StageWorker, name: str, cleanup: Callable[[], None]) -> None:
        self.pool, self.worker, self.name, self._cleanup = pool, worker, name, cleanup
        self._result: Any = ...
        self.peak_rss = 0  # the worker's resident size, sampled while this stage ran

    def poll(self) -> int | None:
        if self._result is ...:
            self._result = self.worker.result()
        if self._result is ...:
            from hubtool.release.schedule import tree_rss

            self.peak_rss = max(self.peak_rss, tree_rss(self.worker.pid))
            return None
        return 0

    def finish(self) -> dict[str, Any]:
        """The stage's summary ({"ran": [...]}), or its error raised here."""
        result = self._result
        if result is None:  # the worker died under it (out of memory, killed)
            self.pool.discard(self.worker)
            self._cleanup()
            rc = self.worker.proc.returncode
            how = f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
            raise StageError(f"{self.name}: its worker process ended ({how}) before the stage finished; finished stages are cached, "
                             "re-run to resume")
        self.pool.release(self.worker)
        if "error" in result:
            import hubtool.errors as errors

            cls = getattr(errors, str(result.get("type")), HubtoolError)
            if not (isinstance(cls, type) and issubclass(cls, HubtoolError)):
                cls = HubtoolError
            raise cls(result["error"], exit_code=int(result["exit_code"]))
        return {**result, "peak_rss": self.peak_rss}

    def terminate(self) -> None:
        self.worker.terminate()

    def stop(self) -> None:
        self.pool.discard(self.worker)
        self.worker.stop()
        self._cleanup()


class WorkerPool:
    """Worker processes for a concurrent release: an idle one takes the next stage, else a new one starts
    (the scheduler keeps at most `jobs` stages running, so there are at most `jobs` workers)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self.idle: list[StageWorker] = []
        self.busy: list[StageWorker] = []
        self.started = 0

    def launch(self, name: str, job: dict[str, Any], cleanup: Callable[[], None]) -> StageRun:
        worker = self.idle.pop() if self.idle else None
        if worker is None or worker.proc.poll() is not None:
            worker = StageWorker(self._emit)
            self.started += 1
        self.busy.append(worker)
        worker.submit(name, job)
        return StageRun(self, worker, name, cleanup)

    def release(self, worker: StageWorker) -> None:
        if worker in self.busy:
            self.busy.remove(worker)
            worker.current = ""
            self.idle.append(worker)

    def discard(self, worker: StageWorker) -> None:
        for group in (self.busy, self.idle):
            if worker in group:
                group.remove(worker)

    def close(self) -> None:
        """Every worker ends: idle ones when their stdin closes, any still busy by SIGTERM."""
        for worker in self.busy:
            worker.terminate()
        for worker in self.busy:
            worker.stop()
        for worker in self.idle:
            worker.close()
        self.idle, self.busy = [], []


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
    """Child side: run each stage job that arrives on stdin, answering each with its summary (or error) on stdout."""
    result_out = os.fdopen(os.dup(1), "wb")  # the result channel; fd 1 then carries library chatter to stderr (or nowhere)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid())
    from hubtool import progress

    progress.set_quiet(True)  # plain lines: the parent prefixes each with the stage
    verbose = None
    try:
        while (job := _receive(sys.stdin.buffer)) is not None:
            if verbose is None:
                verbose = job["verbose"]
                quiet = progress.quiet_libraries(verbose)
                quiet.__enter__()  # for the worker's life: libraries load quiet, as in a sequential release
            with progress.stdout_to_stderr():
                result = _run_job(job)
            _send(result_out, result)
            if result.get("interrupted"):
                return int(result["exit_code"])
    except KeyboardInterrupt:
        return 130
    return 0


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    from hubtool.machine import threads, use_threads
    from hubtool.release.run import Session

    if job.get("threads"):
        use_threads(job["threads"])  # this stage's share of the cores, for torch here and the engines it starts
    try:
        session = Session(job["cfg"], job["plan"], job["inputs"], work_dir=job["work_dir"], cache=job["cache"],
                          endpoint=job["endpoint"], token=job["token"])
        try:
            session.run_stage(job["plan"].stage(job["stage"]), index=job["index"])
        finally:
            session.save()
        return {"ran": session.store.ran, "threads": threads()}
    except HubtoolError as exc:
        return {"error": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__}
    except Interrupted as exc:
        return {"error": f"{job['stage']}: stopped by {signal.Signals(exc.signum).name}", "exit_code": 128 + exc.signum,
                "type": "StageError", "interrupted": True}
    except KeyboardInterrupt:
        return {"error": f"{job['stage']}: interrupted", "exit_code": 130, "type": "StageError", "interrupted": True}
    except Exception as exc:  # noqa: BLE001 - the parent shows it as the stage's one-line error
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"error": f"{job['stage']}: failed ({type(exc).__name__}: {first})", "exit_code": 1, "type": "StageError"}


if __name__ == "__main__":
    sys.exit(main())
