"""The server: one ``Server`` object holds the gRPC server (domain API + KServe v2), health, reflection,
metrics and REST, and runs their life: ``start()`` (listen, load the models, SERVING), ``wait()``, ``stop()``
(drain, shut down). The ``serve`` command (serving/cli.py) builds one from its flags:

    serve --repository exported --port 8500 [--metrics-port 8501] [--host 0.0.0.0] [--http-port 8000]

Health is NOT_SERVING while models load and again while shutting down. SIGTERM / SIGINT: health goes
NOT_SERVING, every call received before the signal is answered, later ones get UNAVAILABLE, none is cancelled
(``drain``); exit 0 as soon as that is done, within --grace.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from glassbox.manifest import MAX_QUEUE_DELAY_US

from ._generated.glassbox.v1 import glassbox_pb2, glassbox_pb2_grpc
from ._generated.inference import grpc_service_pb2, grpc_service_pb2_grpc
from .cache import parse_cache_config
from .control import MODES, ModelControl
from .domain import GlassboxServicer
from .errors import BadOption, PortUnavailable, RepositoryMissing
from .handlers import add_service
from .metrics import Metrics
from .policy import parse_policy
from .ports import check_port, in_use
from .repository import Repository
from .rest import RestServer
from .runtime import Runtime
from .v2 import InferenceServicer

log = logging.getLogger("glassbox.serving")
SERVICES = (glassbox_pb2.DESCRIPTOR.services_by_name["Glassbox"].full_name,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerOptions:
    """Every setting of a server; the ``serve`` flags take their defaults from here."""
    repository: str = "exported"
    host: str = "127.0.0.1"
    port: int = 8500
    metrics_port: int = 8501
    max_batch: int | None = None
    max_delay_us: int = MAX_QUEUE_DELAY_US
    max_queue: int = 256
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    instances: int = 0
    instance_kind: str = "process"
    device: str = "auto"
    max_message_mb: int = 64
    max_connection_age_ms: int = 0
    grace: float = 10.0
    tls_cert: str | None = None
    tls_key: str | None = None
    http_port: int = 0
    http_host: str = "127.0.0.1"
    model_control_mode: str = "poll"
    repository_poll_secs: float = 2.0
    load_model: tuple[str, ...] = ()
    version_policy: str | None = None
    cache_config: str | None = None

    def check(self) -> None:
        """Raise a ``StartupError`` for settings no server can start with."""
        if not Path(self.repository).is_dir():
            raise RepositoryMissing(f"model repository {self.repository} does not exist "
                                    "(run train-all or export first)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BadOption("--tls-cert and --tls-key go together")
        if self.model_control_mode not in MODES:
            raise BadOption(f"--model-control-mode {self.model_control_mode!r}: one of {', '.join(MODES)}")
        if self.load_model and self.model_control_mode != "explicit":
            raise BadOption("--load-model needs --model-control-mode explicit (the other modes load every model)")
        if self.version_policy is not None:
            parse_policy(self.version_policy)
        if self.cache_config is not None:
            try:
                parse_cache_config(self.cache_config)
            except ValueError as e:  # the cache's own error names the flag
                raise BadOption(str(e)) from None


def server_version() -> str:
    try:
        return version("glassbox")
    except PackageNotFoundError:
        return "dev"


class Server:
    """One server process. ``supervisor``: this process is one worker of ``serve --workers``
    (``workers.ParentLink``): the port is shared with the other workers, and health turns SERVING only when
    the parent says every worker has loaded."""

    def __init__(self, options: ServerOptions, *, supervisor=None):
        options.check()
        self.options, self.supervisor = options, supervisor
        self.metrics = Metrics()
        self.runtime = Runtime(self.metrics, max_batch=options.max_batch, max_delay_s=options.max_delay_us / 1e6,
                               max_queue=options.max_queue, cache_config=options.cache_config)
        policy = parse_policy(options.version_policy) if options.version_policy else None
        self.control = ModelControl(
            Repository(options.repository, policy=policy), self.runtime, mode=options.model_control_mode,
            poll_secs=options.repository_poll_secs, load_models=options.load_model, metrics=self.metrics,
            session_options={"device": options.device, "intra_op_threads": options.intra_op_threads,
                             "inter_op_threads": options.inter_op_threads, "instances": options.instances,
                             "instance_kind": options.instance_kind})
        self.runtime.control = self.control
        self.runtime.held = supervisor is not None
        self.stopping = asyncio.Event()  # set by a signal, by ``request_stop`` or by the parent going away
        self.port: int | None = None     # the bound gRPC port (``--port 0`` picks one)
        self.rest: RestServer | None = None
        self._signalled: float | None = None
        self._grpc, self._health = self._build_grpc()

    def _build_grpc(self):
        limit = self.options.max_message_mb * 1024 * 1024
        channel_options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
                           ("grpc.so_reuseport", int(self.supervisor is not None))]
        if self.options.max_connection_age_ms:  # clients re-resolve and rebalance (gRPC proposal A9)
            channel_options += [("grpc.max_connection_age_ms", self.options.max_connection_age_ms),
                                ("grpc.max_connection_age_grace_ms", int(self.options.grace * 1000))]
        server = grpc.aio.server(options=channel_options)
        runtime = self.runtime
        add_service(server, glassbox_pb2_grpc.add_GlassboxServicer_to_server, GlassboxServicer(runtime), runtime)
        add_service(server, grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                    InferenceServicer(runtime, server_version()), runtime)
        health_servicer = health.aio.HealthServicer()
        add_service(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer, runtime)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server, health_servicer

    def request_stop(self) -> None:
        """Begin the shutdown (what SIGTERM / SIGINT do): ``wait`` returns, ``stop`` drains."""
        if not self.stopping.is_set():
            self._signalled = time.monotonic()
            self.stopping.set()

    def handle_signals(self) -> None:
        """SIGTERM / SIGINT call ``request_stop`` (set before listening, so a signal while loading is graceful)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass

    async def start(self) -> bool:
        """Listen (health NOT_SERVING), load the models, then SERVING. False when stopped while loading."""
        self._listen()
        if self.supervisor is not None:
            await self.supervisor.open(self.request_stop)
        await self._set_health(NOT_SERVING)
        self._start_metrics()  # before gRPC starts: a port in use ends here, with nothing to stop
        await self._grpc.start()
        log.info("listening on %s:%d (health NOT_SERVING while loading)", self.options.host, self.port)
        try:
            await self._start_rest()
            if not await self._load():
                return False
        except BaseException:
            await self._grpc.stop(0)
            if self.rest:
                await self.rest.stop()
            raise
        if self.supervisor is None or await self.supervisor.all_loaded(self.stopping):
            self.runtime.held = False
            await self._set_health(SERVING)
            log.info("serving %d model versions on %s:%d (model control: %s)",
                     sum(m.ready for m in self.runtime.repo.all()), self.options.host, self.port,
                     self.options.model_control_mode)
        return True

    def _listen(self) -> None:
        o = self.options
        if self.supervisor is None:  # a worker's port is shared with the others: the parent has checked it
            check_port(o.host, o.port, "--port")
        address = f"{o.host}:{o.port}"
        try:
            if o.tls_cert:
                creds = grpc.ssl_server_credentials([(Path(o.tls_key).read_bytes(), Path(o.tls_cert).read_bytes())])
                self.port = self._grpc.add_secure_port(address, creds)
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError:
            raise PortUnavailable(f"--port {o.port}: cannot listen on {address} (the port is in use or the "
                                  "address is not local)") from None

    def _start_metrics(self) -> None:
        o = self.options
        if not o.metrics_port:
            return
        try:
            self.metrics.serve_http(o.metrics_port, o.host)
        except OSError as e:
            raise PortUnavailable(f"--metrics-port {o.metrics_port}: cannot listen on {o.host}:{o.metrics_port} "
                                  f"({in_use(e)}; 0 disables metrics)") from None
        log.info("metrics on http://%s:%d/metrics", o.host, o.metrics_port)

    async def _start_rest(self) -> None:
        """KServe v2 REST (serving/rest.py): the same Runtime, on this event loop."""
        o = self.options
        if not o.http_port:
            return
        rest = RestServer(self.runtime, server_version(), max_body=o.max_message_mb * 1024 * 1024, grace=o.grace)
        try:
            self.rest = await rest.start(o.http_host, o.http_port, tls_cert=o.tls_cert, tls_key=o.tls_key,
                                         reuse_port=self.supervisor is not None)
        except OSError as e:
            raise PortUnavailable(f"--http-port {o.http_port}: cannot listen on {o.http_host}:{o.http_port} "
                                  f"({in_use(e)})") from None
        log.info("KServe v2 REST on %s://%s:%d/v2", self.rest.scheme, o.http_host, self.rest.port)

    async def _load(self) -> bool:
        """The first load (sessions are built off the event loop: health checks are answered meanwhile), then the
        repository polling of --model-control-mode poll; False if stopped first."""
        if self.supervisor is not None:
            self.control.broadcast = self.supervisor.control
            self.supervisor.on_control = self.control.apply
        load = asyncio.ensure_future(self.control.start())
        stopped = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not load.done():  # stopped while loading: nothing was accepted, so nothing to answer
            load.cancel()
            log.info("stopped while loading models")
            return False
        load.result()
        repo = self.control.repo
        if not repo.all() and not repo.names_on_disk():
            if self.options.model_control_mode == "none":
                raise RepositoryMissing(f"model repository {repo.root} holds no <model>/<version>/ directories")
            log.warning("model repository %s holds no models yet: %s", repo.root,
                        "polling it" if self.options.model_control_mode == "poll" else "load them through the API")
        self.runtime.repo = repo
        for m in repo.all():
            log.info("%-20s v%-3d %-10s %s", m.name, m.version, m.manifest.get("task", "?"),
                     f"ready on {m.provider}" if m.ready else f"NOT SERVED ({m.state}): {m.error}")
        self.control.start_polling()
        return True

    async def wait(self) -> None:
        """Until a signal, ``request_stop`` or the parent going away."""
        await self.stopping.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, answer every call received, refuse later ones, shut everything down."""
        grace = self.options.grace if grace is None else grace
        self.request_stop()
        log.info("shutting down: NOT_SERVING, answering the calls received, then refusing new ones (grace %.0fs)",
                 grace)
        await self._set_health(NOT_SERVING)
        self.runtime.draining = True
        rest_stopped = asyncio.ensure_future(self.rest.stop()) if self.rest else None  # drains beside gRPC
        together = self.supervisor.closed if self.supervisor else None
        await drain(self._grpc, self.runtime, grace, self._signalled, together=together)
        if rest_stopped:
            await rest_stopped
        await self.control.close()
        await self.runtime.close()
        log.info("stopped")

    async def _set_health(self, status) -> None:
        for name in ("", *SERVICES):
            await self._health.set(name, status)


async def serve(options: ServerOptions, *, supervisor=None) -> int:
    """Serve until SIGTERM / SIGINT; the exit code."""
    server = Server(options, supervisor=supervisor)
    server.handle_signals()
    if await server.start():
        await server.wait()
    await server.stop()
    return 0


QUIET_S = 0.05    # no call reached the servicers for this long, over QUIET_TICKS wake-ups of the event loop
QUIET_TICKS = 5   # (a process the OS starved sees time pass with no chance to take calls): gRPC's queue is empty
MAX_HOLD_S = 1.0  # the longest drain waits for that, within the grace period


async def drain(server, runtime: Runtime, grace: float, since: float | None = None, together=None) -> None:
    """Stop ``server`` without losing a call it has accepted.

    ``server.stop(grace)`` lets the calls the servicers are running finish, but gRPC core *cancels* the calls
    that have arrived and still wait in its queue for a servicer (grpc/grpc#41785: the client gets CANCELLED;
    grpc.aio asks core for one call per method at a time, so under load that queue is rarely empty). And as
    long as calls are answered, clients send more. So while draining, calls still reach the servicers and
    are served, but every reply waits (``Runtime.hold``); once no call has arrived for ``QUIET_S`` (each
    client then waits for a reply: the queue is empty; at most ``MAX_HOLD_S``), gRPC is stopped - clients
    are told to go away, later calls get UNAVAILABLE, there is nothing queued to cancel - and only then do
    the replies go. All within ``grace`` seconds of ``since`` (the signal).

    ``together`` (the workers of ``serve --workers``; ``workers.ParentLink.closed``): the replies wait until
    every worker's gRPC has stopped taking calls (at most ``MAX_HOLD_S`` more). A client answered by a worker
    that stopped first would send its next call to one still draining, through the shared port, and that call
    could be queued in its gRPC core just as it stops: cancelled.
    """
    since = time.monotonic() if since is None else since
    runtime.draining = True
    hold_until = since + min(MAX_HOLD_S, grace / 2)
    quiet, seen = 0, -1
    while quiet < QUIET_TICKS and time.monotonic() < hold_until:
        await asyncio.sleep(QUIET_S / QUIET_TICKS)
        quiet, seen = (quiet + 1 if runtime.arrivals == seen else 0), runtime.arrivals
    stopping = asyncio.ensure_future(server.stop(max(0.0, grace - (time.monotonic() - since))))
    await asyncio.sleep(0)  # stop's first step shuts gRPC core down (no new calls) before it first waits
    if together is not None:
        left = grace - (time.monotonic() - since)
        try:
            await asyncio.wait_for(together(), timeout=max(0.0, min(MAX_HOLD_S, left / 2)))
        except asyncio.TimeoutError:
            log.warning("the other workers had not stopped taking calls %.0f ms after the signal: replying anyway",
                        1e3 * (time.monotonic() - since))
    runtime.closed.set()  # the held replies go
    log.info("gRPC stopped %.0f ms after the signal; %d calls had arrived meanwhile%s",
             1e3 * (time.monotonic() - since), runtime.arrivals, "" if quiet >= QUIET_TICKS else ", and still came")
    await stopping
