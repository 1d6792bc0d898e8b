"""``serve --workers N``: N server processes on one port, under one supervising parent.

One Python process tops out near one core's worth of gRPC calls (grpc.aio and the servicers run on one
event loop), so several processes listen on the same port: each worker binds it with SO_REUSEPORT and the
kernel spreads the *connections* (not the calls) over the workers. A client needs several connections to
use several workers (``GlassboxClient(address, channels=K)``; several addresses work too).

Each worker is this CLI again (``python -m serving.server <the same options> --worker-fd FD``), loading its
own onnxruntime sessions; the parent loads nothing and only supervises, over one socket pair per worker:

    worker -> parent   "loaded"   its models are loaded (its health still NOT_SERVING)
    parent -> worker   "serve"    every worker has loaded: health SERVING, on all of them
    worker -> parent   "closed"   draining, its gRPC takes no more calls; its held replies wait
    parent -> worker   "release"  every worker's gRPC has stopped (or exited): the replies go
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
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from .metrics import serve_multiprocess, worker_gone
from .server import _in_use, check_port

log = logging.getLogger("glassbox.serving")
MARGIN_S = 5.0  # past --grace, a worker still running is killed


class Supervisor:
    """A worker's end of its line to the parent (``serve(supervisor=...)``)."""

    def __init__(self, fd: int):
        self.fd = fd
        self._writer = None
        self._go = asyncio.Event()
        self._release = asyncio.Event()

    async def open(self, stop: asyncio.Event) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self.fd))
        self._listening = asyncio.ensure_future(self._listen(reader, stop))

    async def _listen(self, reader, stop: asyncio.Event) -> None:
        try:
            while line := await reader.readline():
                if line.strip() == b"serve":
                    self._go.set()
                elif line.strip() == b"release":
                    self._release.set()
        except OSError:
            pass
        self._release.set()  # nobody left to wait for
        if not stop.is_set():
            log.warning("the supervising process has gone: shutting down")
            stop.set()

    async def all_loaded(self, stop: asyncio.Event) -> bool:
        """Tell the parent this worker has loaded; wait until every worker has (True) or for ``stop`` (False)."""
        try:
            self._writer.write(b"loaded\n")
            await self._writer.drain()
        except OSError:
            return False  # the parent is gone: _listen sets stop
        waits = [asyncio.ensure_future(self._go.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        return not stop.is_set()

    async def closed(self) -> None:
        """Tell the parent this worker's gRPC takes no more calls; wait until every worker's does (``drain``)."""
        try:
            self._writer.write(b"closed\n")
            await self._writer.drain()
        except OSError:
            return
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


def worker_command(options: dict, log_level: str, port: int, fd: int, index: int) -> list[str]:
    """This CLI with the same options, as one worker: the parent's port (a chosen one for --port 0), no
    metrics server of its own, the line to the parent on ``fd``."""
    args = [sys.executable, "-m", "serving.server", "--log-level", log_level, "--worker-fd", str(fd),
            "--worker-index", str(index)]
    for name, value in {**options, "port": port, "metrics_port": 0}.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def _pick_port(host: str) -> int:
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as s:
        s.bind(address)
        return s.getsockname()[1]


async def supervise(n: int, options: dict, log_level: str = "INFO") -> int:
    """Run ``n`` workers of ``serve`` with ``options`` (``main``'s) until SIGTERM / SIGINT; the exit code."""
    if not Path(options["repository"]).is_dir():
        raise FileNotFoundError(f"model repository {options['repository']} does not exist "
                                "(run train-all or export first)")
    if bool(options.get("tls_cert")) != bool(options.get("tls_key")):
        raise click.UsageError("--tls-cert and --tls-key go together")
    host = options["host"]
    try:
        port = options["port"] or _pick_port(host)
    except OSError as e:
        raise OSError(f"--port 0: cannot listen on {host} ({e.strerror or e})") from None
    check_port(host, port, "--port")  # once here: the workers share it (SO_REUSEPORT) and would not notice
    if options.get("http_port"):
        check_port(options["http_host"], options["http_port"], "--http-port")
    folder = tempfile.mkdtemp(prefix="glassbox-metrics-")
    try:
        metrics_port = options.get("metrics_port")
        if metrics_port:
            try:
                serve_multiprocess(folder, metrics_port, host)
            except OSError as e:
                raise OSError(f"--metrics-port {metrics_port}: cannot listen on {host}:{metrics_port} "
                              f"({_in_use(e)}; 0 disables metrics)") from None
            log.info("metrics of all %d workers on http://%s:%d/metrics", n, host, metrics_port)
        return await _run(n, options, log_level, port, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _run(n: int, options: dict, log_level: str, port: int, folder: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    package_root = str(Path(__file__).resolve().parents[1])  # the workers import this very package
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder,
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    workers: list[_Worker] = []
    for i in range(n):
        ours, theirs = socket.socketpair()
        with theirs:
            proc = await asyncio.create_subprocess_exec(
                *worker_command(options, log_level, port, theirs.fileno(), i), pass_fds=(theirs.fileno(),), env=env)
        workers.append(_Worker(i, proc, *await asyncio.open_unix_connection(sock=ours)))
    host = options["host"]
    log.info("%d workers on %s:%d (pids %s); health NOT_SERVING until every one has loaded", n, host, port,
             ", ".join(str(w.proc.pid) for w in workers))

    released = False

    def release_if_all_closed() -> None:
        nonlocal released
        if not released and all(x.closed for x in workers):
            released = True
            for x in workers:
                x.writer.write(b"release\n")

    async def listen(w: _Worker) -> None:
        try:
            while line := await w.reader.readline():
                if line.strip() == b"loaded":
                    w.loaded = True
                    if all(x.loaded for x in workers) and not stop.is_set():
                        for x in workers:
                            x.writer.write(b"serve\n")
                        log.info("all %d workers loaded: SERVING on %s:%d", n, host, port)
                elif line.strip() == b"closed":
                    w.closed = True
                    release_if_all_closed()
        except OSError:
            pass
        w.closed = True  # it has exited
        release_if_all_closed()

    listeners = [asyncio.ensure_future(listen(w)) for w in workers]
    exits = {asyncio.ensure_future(w.proc.wait()): w for w in workers}
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not stop.is_set():  # a worker ended on its own
        for w in (exits[t] for t in done if t in exits):
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
    grace = float(options.get("grace") or 0.0)
    running = sum(w.proc.returncode is None for w in workers)
    log.info("shutting down: SIGTERM to %d worker%s (each answers the calls it has, grace %.0fs)",
             running, "" if running == 1 else "s", grace)
    stopped.cancel()
    for w in workers:
        if w.proc.returncode is None:
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
        code = code or 1
    if late:
        await asyncio.wait(late)
    for w in workers:
        if w.proc.returncode == -signal.SIGTERM and not w.reported:
            # Python's own handler: the signal came before the worker's event loop took it over, or after
            # (still importing, or already done): it had accepted no call, or had answered them all.
            log.info("%s ended by the SIGTERM outside its serving loop", w.name)
        elif w.proc.returncode != 0 and not w.reported:
            log.error("%s %s while shutting down", w.name, w.ended())
            code = code or 1
        worker_gone(folder, w.proc.pid)
        w.writer.close()
    for t in listeners:
        t.cancel()
    if code == 0:
        log.info("all workers stopped")
    return code
