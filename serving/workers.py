"""``serve --workers N``: N server processes on one port, under one supervising parent.

One Python process tops out near one core's worth of gRPC calls (grpc.aio and the servicers run on one
event loop), so several processes listen on the same port: each worker binds it with SO_REUSEPORT and the
kernel spreads the *connections* (not the calls) over the workers. A client needs several connections to
use several workers (``GlassboxClient(address, channels=K)``; several addresses work too).

Each worker is this CLI again (``python -m serving.cli <the same options> --worker-fd FD``), loading its
own onnxruntime sessions; the parent loads nothing and only supervises, over one socket pair per worker:

    worker -> parent   "loaded"   its models are loaded (its health still NOT_SERVING)
    parent -> worker   "serve"    every worker has loaded: health SERVING, on all of them
    worker -> parent   "closed"   draining, its gRPC takes no more calls; its held replies wait
    parent -> worker   "release"  every worker's gRPC has stopped (or exited): the replies go
    worker -> parent   "control load|unload NAME"   a repository API call this worker took; the parent passes
                                  it on to every other worker, which does the same (all converge on it)
    end of file                   the other side is gone (a worker whose parent died shuts down, drained)

- Health: NOT_SERVING on every worker until all have loaded, and again on all once shutdown starts, so a
  health check says the same whichever worker the kernel hands it to (KServe v2 ServerReady too).
- SIGTERM / SIGINT to the parent is forwarded (as SIGTERM) to every worker; each drains as a lone server
  does (``server.drain``), and the replies it holds go only once every worker's gRPC has stopped taking calls
  (``closed`` / ``release``): a client answered earlier would send its next call, through the shared port,
  to a worker about to stop, which could cancel it. The parent exits 0 once all have exited 0; a worker still
  running at --grace + ``MARGIN_S`` is killed, and that, or a worker that fails, makes the exit non-zero.
- A worker that dies on its own (a crash, an out-of-memory kill) is logged with its pid and how it ended;
  the others are drained and stopped and the parent exits 1 (2 when a worker could not start: a bad
  option or repository, its error above). A worker that exits 0 was signalled directly (``kill`` on the
  process group, systemd's default): the others are stopped too, exit 0.
- Metrics: the parent sets PROMETHEUS_MULTIPROC_DIR to a fresh folder for the workers and serves
  --metrics-port itself, summed over the workers (``metrics.serve_multiprocess``); the folder is removed at
  exit.
- --http-port (KServe v2 REST) is shared by the workers the same way (aiohttp, reuse_port).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PortUnavailable
from .metrics import serve_multiprocess, worker_gone
from .ports import check_port, in_use, pick_port

log = logging.getLogger("glassbox.serving")
MARGIN_S = 5.0  # past --grace, a worker still running is killed


class ParentLink:
    """A worker's end of its line to the parent (``Server(supervisor=...)``)."""

    def __init__(self, fd: int):
        self.fd = fd
        self._writer = None
        self._go = asyncio.Event()
        self._release = asyncio.Event()
        self.on_control = None  # ``ModelControl.apply``: a load or unload another worker took

    async def open(self, on_gone) -> None:
        """Start listening to the parent; ``on_gone()`` is called if it goes away."""
        reader, self._writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self.fd))
        self._listening = asyncio.ensure_future(self._listen(reader, on_gone))

    async def _listen(self, reader, on_gone) -> None:
        try:
            while line := await reader.readline():
                if line.strip() == b"serve":
                    self._go.set()
                elif line.strip() == b"release":
                    self._release.set()
                elif line.startswith(b"control ") and self.on_control is not None:
                    _, op, name = line.decode().split(maxsplit=2)
                    asyncio.ensure_future(self.on_control(op, name.strip()))
        except OSError:
            pass
        self._release.set()  # nobody left to wait for
        log.warning("the supervising process has gone: shutting down")
        on_gone()

    async def say(self, word: bytes) -> bool:
        try:
            self._writer.write(word + b"\n")
            await self._writer.drain()
            return True
        except OSError:
            return False  # the parent is gone: _listen calls on_gone

    async def control(self, op: str, name: str) -> None:
        """A load or unload this worker took through the API: the parent tells every other worker."""
        await self.say(f"control {op} {name}".encode())

    async def all_loaded(self, stop: asyncio.Event) -> bool:
        """Tell the parent this worker has loaded; wait until every worker has (True) or for ``stop`` (False)."""
        if not await self.say(b"loaded"):
            return False
        waits = [asyncio.ensure_future(self._go.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        return not stop.is_set()

    async def closed(self) -> None:
        """Tell the parent this worker's gRPC takes no more calls; wait until every worker's does (``drain``)."""
        if await self.say(b"closed"):
            await self._release.wait()


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    loaded: bool = False
    closed: bool = False  # draining, its gRPC takes no more calls (or it has exited)
    reported: bool = False  # its end has been logged

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"

    def ended(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


def worker_command(options, log_level: str, fd: int, index: int) -> list[str]:
    """The ``serve`` CLI with the same options (a ``ServerOptions``), as one worker: the parent's port, no metrics
    server of its own, the line to the parent on ``fd``."""
    args = [sys.executable, "-m", "serving.cli", "--log-level", log_level, "--worker-fd", str(fd),
            "--worker-index", str(index)]
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        flag = f"--{field.name.replace('_', '-')}"
        if field.name == "metrics_port":
            value = 0
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None:
                args += [flag, str(v)]
    return args


class WorkerPool:
    """The parent of ``serve --workers N``: spawn the workers, listen to them, stop them all when one
    crashes or a signal comes, and decide the exit code."""

    def __init__(self, n: int, options, log_level: str = "INFO"):
        options.check()
        self.n, self.log_level = n, log_level
        self.options = dataclasses.replace(options, port=options.port or pick_port(options.host))
        self.workers: list[_Worker] = []
        self.stop = asyncio.Event()
        self._released = False

    async def run(self) -> int:
        """Run the workers until SIGTERM / SIGINT or one ends; the exit code."""
        o = self.options
        check_port(o.host, o.port, "--port")  # once here: the workers share it (SO_REUSEPORT) and would not notice
        if o.http_port:
            check_port(o.http_host, o.http_port, "--http-port")
        folder = tempfile.mkdtemp(prefix="glassbox-metrics-")
        try:
            self._serve_metrics(folder)
            await self._spawn(folder)
            return await self._supervise(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _serve_metrics(self, folder: str) -> None:
        o = self.options
        if not o.metrics_port:
            return
        try:
            serve_multiprocess(folder, o.metrics_port, o.host)
        except OSError as e:
            raise PortUnavailable(f"--metrics-port {o.metrics_port}: cannot listen on {o.host}:{o.metrics_port} "
                                  f"({in_use(e)}; 0 disables metrics)") from None
        log.info("metrics of all %d workers on http://%s:%d/metrics", self.n, o.host, o.metrics_port)

    async def _spawn(self, folder: str) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        package_root = str(Path(__file__).resolve().parents[1])  # the workers import this very package
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder,
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        for i in range(self.n):
            ours, theirs = socket.socketpair()
            with theirs:
                proc = await asyncio.create_subprocess_exec(
                    *worker_command(self.options, self.log_level, theirs.fileno(), i),
                    pass_fds=(theirs.fileno(),), env=env)
            self.workers.append(_Worker(i, proc, *await asyncio.open_unix_connection(sock=ours)))
        log.info("%d workers on %s:%d (pids %s); health NOT_SERVING until every one has loaded", self.n,
                 self.options.host, self.options.port, ", ".join(str(w.proc.pid) for w in self.workers))

    def _tell_all(self, word: bytes) -> None:
        for x in self.workers:
            x.writer.write(word + b"\n")

    def _release_if_all_closed(self) -> None:
        if not self._released and all(x.closed for x in self.workers):
            self._released = True
            self._tell_all(b"release")

    async def _listen(self, w: _Worker) -> None:
        try:
            while line := await w.reader.readline():
                if line.strip() == b"loaded":
                    w.loaded = True
                    if all(x.loaded for x in self.workers) and not self.stop.is_set():
                        self._tell_all(b"serve")
                        log.info("all %d workers loaded: SERVING on %s:%d", self.n, self.options.host,
                                 self.options.port)
                elif line.strip() == b"closed":
                    w.closed = True
                    self._release_if_all_closed()
                elif line.startswith(b"control "):  # model control: every worker converges on it
                    for x in self.workers:
                        if x is not w:
                            x.writer.write(line)
        except OSError:
            pass
        w.closed = True  # it has exited
        self._release_if_all_closed()

    async def _supervise(self, folder: str) -> int:
        listeners = [asyncio.ensure_future(self._listen(w)) for w in self.workers]
        exits = {asyncio.ensure_future(w.proc.wait()): w for w in self.workers}
        stopped = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        code = 0 if self.stop.is_set() else self._on_crash([exits[t] for t in done if t in exits])
        killed = await self._terminate(exits)
        failed = self._reap(folder)
        code = code or killed or failed
        for t in listeners:
            t.cancel()
        if code == 0:
            log.info("all workers stopped")
        return code

    def _on_crash(self, ended: list[_Worker]) -> int:
        """Workers ended on their own: log how, and the exit code that makes."""
        code = 0
        for w in ended:
            w.reported = True
            if w.proc.returncode == 0:
                log.warning("%s stopped (it was signalled directly); stopping the other workers", w.name)
            elif w.proc.returncode == 2 and not w.loaded:
                log.error("%s could not start (exit code 2, its error is above); stopping the other workers",
                          w.name)
                code = code or 2
            else:
                log.error("%s %s unexpectedly; stopping the other workers", w.name, w.ended())
                code = 1
        return code

    async def _terminate(self, exits: dict) -> int:
        """SIGTERM to every worker still running; kill those still running past the grace. 1 if any was."""
        grace = float(self.options.grace or 0.0)
        running = [w for w in self.workers if w.proc.returncode is None]
        log.info("shutting down: SIGTERM to %d worker%s (each answers the calls it has, grace %.0fs)",
                 len(running), "" if len(running) == 1 else "s", grace)
        for w in running:
            try:
                w.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, late = await asyncio.wait(list(exits), timeout=grace + MARGIN_S)
        for t in late:
            w = exits[t]
            log.error("%s still running %.0fs after the signal: killed", w.name, grace + MARGIN_S)
            w.proc.kill()
            w.reported = True
        if late:
            await asyncio.wait(late)
        return 1 if late else 0

    def _reap(self, folder: str) -> int:
        """Log how each worker ended that was not reported yet; 1 if one failed while shutting down."""
        code = 0
        for w in self.workers:
            if w.proc.returncode == -signal.SIGTERM and not w.reported:
                # Python's own handler: the signal came before the worker's event loop took it over, or after
                # (still importing, or already done): it had accepted no call, or had answered them all.
                log.info("%s ended by the SIGTERM outside its serving loop", w.name)
            elif w.proc.returncode != 0 and not w.reported:
                log.error("%s %s while shutting down", w.name, w.ended())
                code = 1
            worker_gone(folder, w.proc.pid)
            w.writer.close()
        return code
