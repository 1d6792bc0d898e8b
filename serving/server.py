"""``serve``: the model repository over gRPC (domain API + KServe v2), health, reflection, metrics.

    serve --repository exported --port 8500 [--metrics-port 8501] [--host 0.0.0.0]

Health is NOT_SERVING while models load and again while shutting down. SIGTERM / SIGINT: health
goes NOT_SERVING, new calls get UNAVAILABLE, accepted calls are answered, exit 0 within --grace.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
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
from .metrics import Metrics
from .repository import Repository
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
                stop: asyncio.Event | None = None) -> int:
    if not Path(repository).is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist (run train-all or export first)")
    metrics = Metrics()
    runtime = Runtime(metrics, max_batch=max_batch, max_delay_s=max_delay_us / 1e6, max_queue=max_queue)
    limit = max_message_mb * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit),
                                      ("grpc.so_reuseport", 0)])
    glassbox_pb2_grpc.add_GlassboxServicer_to_server(GlassboxServicer(runtime), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(runtime, _version()), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    try:
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise click.UsageError("--tls-cert and --tls-key go together")
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:
        raise OSError(f"cannot bind {address}: the port is in use or the address is not local") from None

    async def set_health(status):
        for name in ("", *SERVICES):
            await health_servicer.set(name, status)

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening, so a signal while loading is graceful too
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (in-process tests)
            pass
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("listening on %s:%d (health NOT_SERVING while loading)", host, bound)
    if metrics_port:
        metrics.serve_http(metrics_port, host)
        log.info("metrics on http://%s:%d/metrics", host, metrics_port)

    load = loop.run_in_executor(None, lambda: Repository(repository, device=device, intra_op_threads=intra_op_threads,
                                                         inter_op_threads=inter_op_threads))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():  # stopped while loading: nothing was accepted, so nothing to answer
        log.info("stopped while loading models")
        await server.stop(0)
        return 0
    stopped.cancel()
    try:
        repo = load.result()
    except Exception:
        await server.stop(0)
        raise
    runtime.attach(repo)
    for m in repo.all():
        log.info("%-20s v%-3d %-10s %s", m.name, m.version, m.manifest.get("task", "?"),
                 f"ready on {m.provider}" if m.ready else f"NOT SERVED: {m.error}")
    await set_health(health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %d model versions on %s:%d", sum(m.ready for m in repo.all()), host, bound)
    if ready is not None:
        ready.port = bound  # tests read the bound port when asked for port 0
        ready.set()

    await stop.wait()
    log.info("shutting down: NOT_SERVING, refusing new calls, answering accepted ones (grace %.0fs)", grace)
    runtime.draining = True
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace)
    for b in runtime.batchers.values():
        await b.stop()
    log.info("stopped")
    return 0


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
@click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate chain for TLS.")
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="PEM private key for TLS.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Log verbosity.")
def main(log_level, **options):
    """Serve the model repository over gRPC: the Glassbox domain API and the KServe v2 protocol."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(asyncio.run(serve(**options)))
    except (FileNotFoundError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
