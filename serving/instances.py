"""Execution instances as processes: ``serve --instance-kind process``, the default on CPU.

    serve --repository exported                           # per CPU graph, one one-thread process per CPU (up to 4)
    serve --repository exported --instance-kind thread    # the batches on threads of the server itself

With thread instances a batch runs on a worker thread of the server: onnxruntime releases the GIL
while it computes, but the thread needs the GIL to start the run and to hand the outputs back, and while the
event loop answers a burst of calls it holds the GIL for up to CPython's 5 ms switch interval. On 2 cores that
left onnxruntime idle a quarter of the time at concurrency 32 (``benchmarks/serve_ceiling.py``; README).

A process instance holds its own onnxruntime session in a process of its own (as Triton's Python backend runs
each instance in a stub process): the event loop sends it a batch over a socket (pickled arrays), returns to its
calls, and reads the outputs when the socket turns readable. Nothing of the server waits for a lock the process
holds. The processes run at a lower priority than the server (``NICE``), and several one-thread instances keep
to a CPU each. Processes are forked from a fork server that imported onnxruntime once (a fresh one starts in
milliseconds, never a fork of the server itself, whose gRPC and onnxruntime threads do not survive a fork).

One instance runs one batch at a time (the batcher asks only a free one). A process that dies is replaced; the
batch it was running fails (INTERNAL: run again in the server, what killed the process might kill the server),
and a batch sent to one found dead while idle runs on the server's own session, as do batches while no
instance is idle.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger("glassbox.serving")

# Where multiprocessing has no fork server (Windows), instances stay threads.
PROCESSES_POSSIBLE = "forkserver" in multiprocessing.get_all_start_methods()
START_TIMEOUT_S = 60.0  # a session that takes longer to build is taken for hung
NICE = 5  # instance processes run at nice +5 (measured against 0 and +10: README, "Measured")
_CTX = None


def _context():
    """The fork server context, its server preloaded with onnxruntime (started at the first process)."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["serving.loader"])
    return _CTX


def _worker(path: str, providers: list[str], threads: int, inter: int, cpu: int | None, conn: Connection) -> None:
    """A process instance: build the session, say ready (or why not), then run each batch received until EOF."""
    from .loader import _session
    # Below the server's priority: when the event loop wakes (a call arrived, a reply is due) it gets a core at
    # once instead of waiting out an instance's time slice; the instances compute in what the loop leaves.
    os.nice(NICE)
    if cpu is not None:  # a one-thread instance keeps to its core (and its cache); the event loop moves
        os.sched_setaffinity(0, {cpu})
    try:
        sess = _session(Path(path), providers, threads, inter)
    except Exception as e:  # noqa: BLE001 - the reason goes back to the loader, which refuses the version
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            outputs, feeds = conn.recv()
        except (EOFError, OSError):  # the server closed the socket (or exited): done
            return
        try:
            reply = ("ok", sess.run(outputs, feeds))
        except Exception as e:  # noqa: BLE001 - a failed run fails its batch, not the instance
            reply = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except OSError:  # the server is gone (killed mid-batch): nobody to answer
            return


class _Process:
    """One instance: its process and the server's end of its socket."""

    def __init__(self, path: Path, providers: list[str], threads: int, inter: int, cpu: int | None):
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.cpu = cpu
        self.proc = ctx.Process(target=_worker, args=(str(path), providers, threads, inter, cpu, child), daemon=True,
                                name=f"glassbox-instance-{path.stem}")
        self.proc.start()
        child.close()  # only the process holds that end now: its exit reads as EOF here
        if not self.conn.poll(START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"instance process for {path.name} did not start within {START_TIMEOUT_S:.0f} s")
        status, detail = self._recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"instance process for {path.name}: {detail}")
        self.future: asyncio.Future | None = None  # the batch it runs

    def _recv(self) -> tuple[str, object]:
        """(status, detail) from the process: ready, ok (outputs), error (why the run failed), or exited."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return "exited", f"instance process {self.proc.pid} exited (code {self.proc.exitcode})"

    def close(self) -> None:
        """Close the socket (the process, reading EOF, exits) and reap the process: blocking, up to 2 s."""
        self.conn.close()
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _close_all(processes: list[_Process]) -> None:
    for p in processes:  # every socket first: the processes exit side by side, then each is reaped
        p.conn.close()
    for p in processes:
        p.close()


class ProcessInstances:
    """The process instances of one graph: ``submit`` hands a batch to an idle one, from the event loop."""

    def __init__(self, path: Path, providers: list[str], count: int, threads: int, inter: int = 0):
        self.args = (path, providers, threads, inter)
        self.path = path
        self.idle: list[_Process] = []
        # One-thread instances, several: the i-th keeps to the i-th CPU this server may use (with serve --workers,
        # every worker's i-th instance shares that CPU: one instance per CPU per worker, as the default count).
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        pin = threads == 1 and count > 1 and len(allowed) > 1
        try:
            for i in range(count):
                self.idle.append(_Process(*self.args, allowed[i % len(allowed)] if pin else None))
        except Exception:
            self.close()
            raise
        self.closed = False

    def watch(self) -> None:
        """From the event loop, before the first batch: read every instance's socket from now on, so that one
        dying while idle is replaced at once, not when a batch next finds it gone."""
        for p in self.idle:
            self._watch(p)

    def _watch(self, p: _Process) -> None:
        asyncio.get_running_loop().add_reader(p.conn.fileno(), self._readable, p)

    def submit(self, outputs: list[str], feeds: dict) -> asyncio.Future | None:
        """Send the batch to an idle instance; its outputs (or error) arrive as the future's result. None where no
        instance can take it (none idle, or the one tried had died: it is replaced meanwhile)."""
        while self.idle:
            p = self.idle.pop()
            try:
                p.conn.send((list(outputs), feeds))
            except (OSError, ValueError) as e:
                self._lost(p, f"instance process {p.proc.pid} is gone ({e})")
                continue
            p.future = asyncio.get_running_loop().create_future()
            return p.future
        return None

    def _readable(self, p: _Process) -> None:
        status, detail = p._recv()
        future, p.future = p.future, None
        if future is None:  # nothing asked of it: its exit (EOF)
            return self._lost(p, detail)
        if status == "exited":  # died while running the batch: it fails (run again here, it might take the server)
            future.set_exception(RuntimeError(f"{detail} while running this batch"))
            return self._lost(p, detail)
        if status == "ok":
            future.set_result(detail)
        else:  # the run failed, the instance is fine
            future.set_exception(RuntimeError(detail))
        if self.closed:  # stopped while this batch ran
            self._end(p)
        else:
            self.idle.append(p)

    def _end(self, p: _Process) -> None:
        """Stop reading ``p`` and end it, on a thread: reaping a process blocks."""
        self._unwatch(p)
        asyncio.get_running_loop().run_in_executor(None, p.close)

    def _lost(self, p: _Process, why: str) -> None:
        log.error("%s: %s; starting another", self.path, why)
        if p in self.idle:
            self.idle.remove(p)
        self._end(p)
        if not self.closed:
            task = asyncio.get_running_loop().run_in_executor(None, _Process, *self.args, p.cpu)
            task.add_done_callback(self._replaced)

    def _replaced(self, task) -> None:
        if task.exception() is not None:
            log.error("%s: no instance process could replace the lost one: %s", self.path, task.exception())
        elif self.closed:
            asyncio.get_running_loop().run_in_executor(None, task.result().close)
        else:
            self._watch(task.result())
            self.idle.append(task.result())

    async def stop(self) -> None:
        """From the event loop: end every idle instance (an instance running a batch ends once it answers)."""
        self.closed = True  # first, on the loop: from here no callback puts an instance back in ``idle``
        for p in self.idle:
            self._unwatch(p)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """``stop`` where no event loop watches the instances (a version that failed to load): blocking."""
        self.closed = True
        idle, self.idle = self.idle, []
        _close_all(idle)

    @staticmethod
    def _unwatch(p: _Process) -> None:
        try:
            asyncio.get_running_loop().remove_reader(p.conn.fileno())
        except (RuntimeError, ValueError, OSError):  # no loop (a load that failed, in its thread), or closed
            pass
