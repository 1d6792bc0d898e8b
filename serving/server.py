"""``serve``: the model repository over gRPC (domain API + KServe v2), health, reflection, metrics.

    serve --repository exported --port 8500 [--metrics-port 8501] [--host 0.0.0.0] [--http-port 8000]

Health is NOT_SERVING while models load and again while shutting down. SIGTERM / SIGINT: health
goes NOT_SERVING, every call received before the signal is answered, later ones get UNAVAILABLE, none is
cancelled (``drain``); exit 0 as soon as that is done, within --grace.

``--workers N``: N processes share the port (SO_REUSEPORT), each with its own onnxruntime sessions, under a
supervising parent (serving/workers.py): one health state, one drain, metrics summed over the workers.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from glassbox.manifest import MAX_QUEUE_DELAY_US

from ._generated.glassbox.v1 import glassbox_pb2, glassbox_pb2_grpc
from ._generated.inference import grpc_service_pb2, grpc_service_pb2_grpc
from .domain import GlassboxServicer
from .handlers import add_service
from .metrics import Metrics
from .repository import Repository
from .rest import RestServer
from .runtime import Runtime
from .v2 import InferenceServicer

log = logging.getLogger("glassbox.serving")
SERVICES = (glassbox_pb2.DESCRIPTOR.services_by_name["Glassbox"].full_name,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)


def _version() -> str:
    try:
        return version("glassbox")
    except PackageNotFoundError:
        return "dev"


async def serve(repository: str, host: str = "127.0.0.1", port: int = 8500, *, metrics_port: int = 0,
                max_batch: int | None = None, max_delay_us: int = MAX_QUEUE_DELAY_US, max_queue: int = 256,
                intra_op_threads: int = 0, inter_op_threads: int = 0, device: str = "auto",
                max_message_mb: int = 64, grace: float = 10.0, tls_cert: str | None = None,
                tls_key: str | None = None, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, http_port: int = 0, http_host: str = "127.0.0.1",
                supervisor=None) -> int:
    """Serve until SIGTERM / SIGINT (or ``stop``). ``supervisor``: this process is one worker of
    ``serve --workers`` (a ``workers.Supervisor``): the port is shared with the other workers, and health turns
    SERVING only when the parent says every worker has loaded."""
    if not Path(repository).is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist (run train-all or export first)")
    metrics = Metrics()
    runtime = Runtime(metrics, max_batch=max_batch, max_delay_s=max_delay_us / 1e6, max_queue=max_queue)
    runtime.held = supervisor is not None
    limit = max_message_mb * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit),
                                      ("grpc.so_reuseport", int(supervisor is not None))])
    add_service(server, glassbox_pb2_grpc.add_GlassboxServicer_to_server, GlassboxServicer(runtime), runtime)
    add_service(server, grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceServicer(runtime, _version()), runtime)
    health_servicer = health.aio.HealthServicer()
    add_service(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer, runtime)  # Check waits too
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if supervisor is None:  # a worker's port is shared with the others: the parent has checked it
        check_port(host, port, "--port")
    try:
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise click.UsageError("--tls-cert and --tls-key go together")
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:
        raise OSError(f"--port {port}: cannot listen on {address} (the port is in use or the address is not "
                      "local)") from None

    async def set_health(status):
        for name in ("", *SERVICES):
            await health_servicer.set(name, status)

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if supervisor is not None:
        await supervisor.open(stop)  # the parent gone: stop
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening, so a signal while loading is graceful too
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (in-process tests)
            pass
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if metrics_port:  # before the gRPC server starts: a port in use ends here, with nothing to stop
        try:
            metrics.serve_http(metrics_port, host)
        except OSError as e:
            raise OSError(f"--metrics-port {metrics_port}: cannot listen on {host}:{metrics_port} "
                          f"({_in_use(e)}; 0 disables metrics)") from None
        log.info("metrics on http://%s:%d/metrics", host, metrics_port)
    await server.start()
    log.info("listening on %s:%d (health NOT_SERVING while loading)", host, bound)
    rest = None  # KServe v2 REST (serving/rest.py): the same Runtime, on this event loop
    if http_port:
        try:
            rest = await RestServer(runtime, _version(), max_body=limit, grace=grace).start(
                http_host, http_port, tls_cert=tls_cert, tls_key=tls_key, reuse_port=supervisor is not None)
        except OSError:
            await server.stop(0)
            raise
        log.info("KServe v2 REST on %s://%s:%d/v2", rest.scheme, http_host, rest.port)

    load = loop.run_in_executor(None, lambda: Repository(repository, device=device, intra_op_threads=intra_op_threads,
                                                         inter_op_threads=inter_op_threads))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():  # stopped while loading: nothing was accepted, so nothing to answer
        log.info("stopped while loading models")
        await drain(server, runtime, grace)
        if rest:
            await rest.stop()
        return 0
    stopped.cancel()
    try:
        repo = load.result()
    except Exception:
        await server.stop(0)
        if rest:
            await rest.stop()
        raise
    runtime.attach(repo)
    for m in repo.all():
        log.info("%-20s v%-3d %-10s %s", m.name, m.version, m.manifest.get("task", "?"),
                 f"ready on {m.provider}" if m.ready else f"NOT SERVED: {m.error}")
    if supervisor is None or await supervisor.all_loaded(stop):  # False: stopped while the others loaded
        runtime.held = False
        await set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %d model versions on %s:%d", sum(m.ready for m in repo.all()), host, bound)
        if ready is not None:
            ready.port = bound  # tests read the bound port when asked for port 0
            ready.set()

    await stop.wait()
    signalled = time.monotonic()
    log.info("shutting down: NOT_SERVING, answering the calls received, then refusing new ones (grace %.0fs)", grace)
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    runtime.draining = True
    rest_stopped = asyncio.ensure_future(rest.stop()) if rest else None  # drains beside gRPC
    await drain(server, runtime, grace, signalled, together=supervisor.closed if supervisor else None)
    if rest_stopped:
        await rest_stopped
    for b in runtime.batchers.values():
        await b.stop()
    log.info("stopped")
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

    ``together`` (the workers of ``serve --workers``; ``workers.Supervisor.closed``): the replies wait until
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


def _in_use(e: OSError) -> str:
    return "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))


def check_port(host: str, port: int, option: str) -> None:
    """One clear line naming ``option`` when ``host:port`` cannot be listened on (grpc logs a core error to
    stderr and says less; bound the way grpc binds: SO_REUSEADDR, so sockets in TIME_WAIT do not count)."""
    if not port:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"{option} {port}: cannot resolve host {host!r} ({e.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                raise OSError(f"{option} {port}: cannot listen on {host}:{port} ({_in_use(e)})") from None


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--repository", default="exported", type=click.Path(),
              help="Model repository written by export / train-all.")
@click.option("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 to accept remote clients.")
@click.option("--port", default=8500, type=click.IntRange(0, 65535), help="gRPC port (0: pick a free one).")
@click.option("--metrics-port", default=8501, type=click.IntRange(0, 65535),
              help="Prometheus metrics HTTP port (0 disables).")
@click.option("--max-batch", default=None, type=click.IntRange(1),
              help="Largest merged batch per session.run [default: the manifest's max_batch_size]; a single "
                   "request above it (the manifest allows it) runs alone.")
@click.option("--max-delay-us", default=MAX_QUEUE_DELAY_US, type=click.IntRange(0, 1_000_000),
              help="Under concurrent load, wait up to this long for more requests before running a partial batch; "
                   "a lone request on an idle server never waits (0: never wait; requests arriving during a run "
                   "form the next batch).")
@click.option("--max-queue", default=256, type=click.IntRange(1),
              help="Requests allowed to wait per graph; beyond it calls get RESOURCE_EXHAUSTED.")
@click.option("--intra-op-threads", default=0, type=click.IntRange(0),
              help="onnxruntime threads per operator (0: auto - onnxruntime's default, one per core, and for graphs "
                   "that run batch-1 in under 1 ms a second, one-thread session for the few-image batches, where "
                   "pool hand-offs cost more than they save).")
@click.option("--inter-op-threads", default=0, type=click.IntRange(0),
              help="onnxruntime threads across operators (0: default).")
@click.option("--device", type=click.Choice(["auto", "cpu"]), default="auto",
              help="auto: CUDA provider when available, else CPU.")
@click.option("--max-message-mb", default=64, type=click.IntRange(1, 2047),
              help="gRPC message size limit, both directions.")
@click.option("--grace", default=10.0, type=click.FloatRange(0),
              help="Seconds to finish accepted calls on SIGTERM/SIGINT.")
@click.option("--http-port", default=0, type=click.IntRange(0, 65535),
              help="KServe v2 REST port (HTTP/JSON and binary tensors, as Triton's): the same models and batchers "
                   "as gRPC; request bodies up to --max-message-mb (0 disables).")
@click.option("--http-host", default="127.0.0.1", help="Interface for --http-port; 0.0.0.0 to accept remote clients.")
@click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate chain for TLS.")
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="PEM private key for TLS.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Log verbosity.")
@click.option("--workers", default=1, type=click.IntRange(1),
              help="Server processes sharing --port (and --http-port) with SO_REUSEPORT, each with its own "
                   "onnxruntime sessions, under a supervising parent: health SERVING once every one has loaded, "
                   "SIGTERM drains them all, --metrics-port sums over them. The kernel spreads connections, not "
                   "calls: clients need several (GlassboxClient(channels=K)).")
@click.option("--worker-fd", default=None, type=int, hidden=True)  # a worker of --workers: its line to the parent
@click.option("--worker-index", default=0, type=int, hidden=True)
def main(log_level, workers, worker_fd, worker_index, **options):
    """Serve the model repository over gRPC: the Glassbox domain API and the KServe v2 protocol."""
    who = f"[worker {worker_index}]" if worker_fd is not None else ""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s")
    try:
        if worker_fd is not None:
            from .workers import Supervisor
            sys.exit(asyncio.run(serve(**options, supervisor=Supervisor(worker_fd))))
        if workers > 1:
            from .workers import supervise
            sys.exit(asyncio.run(supervise(workers, options, log_level)))
        sys.exit(asyncio.run(serve(**options)))
    except (FileNotFoundError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
