"""``serve``: the model repository over gRPC (the Glassbox domain API and KServe v2), health, reflection,
metrics and, with --http-port, KServe v2 REST.

    serve --repository exported --port 8500 --metrics-port 8501
    serve --workers 2 --http-port 8000          # two processes on one port, REST beside gRPC

Flags in, a ``ServerOptions`` out (serving/server.py, where the defaults live); a ``StartupError`` from below
becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import asyncio
import logging
import sys

import click

from .errors import StartupError
from .memory import limit_arenas
from .server import ServerOptions, serve

D = ServerOptions()  # the defaults, defined once


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--repository", default=D.repository, type=click.Path(),
              help="Model repository written by export / train-all.")
@click.option("--host", default=D.host, help="Interface to bind; 0.0.0.0 to accept remote clients.")
@click.option("--port", default=D.port, type=click.IntRange(0, 65535), help="gRPC port (0: pick a free one).")
@click.option("--metrics-port", default=D.metrics_port, type=click.IntRange(0, 65535),
              help="Prometheus metrics HTTP port (0 disables).")
@click.option("--max-batch", default=D.max_batch, type=click.IntRange(1),
              help="Largest merged batch per session.run [default: the manifest's max_batch_size]; a single "
                   "request above it (the manifest allows it) runs alone.")
@click.option("--max-delay-us", default=D.max_delay_us, type=click.IntRange(0, 1_000_000),
              help="Under concurrent load, wait up to this long for more requests before running a partial batch; "
                   "a lone request on an idle server never waits (0: never wait; requests arriving during a run "
                   "form the next batch).")
@click.option("--max-queue", default=D.max_queue, type=click.IntRange(1),
              help="Requests allowed to wait per graph; beyond it calls get RESOURCE_EXHAUSTED.")
@click.option("--instances", default=D.instances, type=click.IntRange(0),
              help="Execution instances per graph: batches of one graph that may run at once, each on its own "
                   "thread or process (--instance-kind; Triton's instance_group count). 0: the graph's config.pbtxt "
                   "instance_group, else one per CPU up to 4 for process instances, 1 for threads. On CPU, N "
                   "instances share the cores (intra-op threads: CPUs / N unless given).")
@click.option("--instance-kind", default=D.instance_kind, type=click.Choice(["process", "thread"]),
              help="What an execution instance of a CPU graph is. process (default): a process of its own with its "
                   "own session (serving/instances.py), so that onnxruntime never waits for the GIL the event loop "
                   "holds; with --instances 0 and no instance_group, one one-thread process per CPU (up to 4). "
                   "thread: a worker thread of the server (one process, one copy of each graph; GPU graphs always).")
@click.option("--intra-op-threads", default=D.intra_op_threads, type=click.IntRange(0),
              help="onnxruntime threads per operator (0: auto - with several instances the CPUs shared out among them; "
                   "with one, onnxruntime's default, one per core, and for graphs that run batch-1 in under 1 ms a "
                   "second, one-thread session for the few-image batches, where pool hand-offs cost more than they "
                   "save).")
@click.option("--inter-op-threads", default=D.inter_op_threads, type=click.IntRange(0),
              help="onnxruntime threads across operators (0: default).")
@click.option("--device", type=click.Choice(["auto", "cpu"]), default=D.device,
              help="auto: CUDA provider when available, else CPU.")
@click.option("--max-message-mb", default=D.max_message_mb, type=click.IntRange(1, 2047),
              help="gRPC message size limit, both directions.")
@click.option("--max-connection-age-ms", default=D.max_connection_age_ms, type=click.IntRange(0),
              help="Close each client connection after this long (gracefully, within --grace) so that clients "
                   "re-resolve their target and spread over new replicas; behind a Kubernetes Service, kube-proxy "
                   "balances connections, not calls (0: never).")
@click.option("--grace", default=D.grace, type=click.FloatRange(0),
              help="Seconds to finish accepted calls on SIGTERM/SIGINT.")
@click.option("--http-port", default=D.http_port, type=click.IntRange(0, 65535),
              help="KServe v2 REST port (HTTP/JSON and binary tensors, as Triton's): the same models and batchers "
                   "as gRPC; request bodies up to --max-message-mb (0 disables).")
@click.option("--http-host", default=D.http_host, help="Interface for --http-port; 0.0.0.0 to accept remote clients.")
@click.option("--tls-cert", default=D.tls_cert, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate chain for TLS.")
@click.option("--tls-key", default=D.tls_key, type=click.Path(exists=True, dir_okay=False),
              help="PEM private key for TLS.")
@click.option("--model-control-mode", default=D.model_control_mode, type=click.Choice(["none", "poll", "explicit"]),
              help="poll: new versions exported into the repository are loaded and served without a restart, "
                   "deleted ones retired (every --repository-poll-secs); explicit: models load and unload only "
                   "through the repository API (RepositoryModelLoad/Unload, POST /v2/repository/models/M/load), "
                   "--load-model at start; none: what is there at start, for good.")
@click.option("--repository-poll-secs", default=D.repository_poll_secs, type=click.FloatRange(0.05),
              help="How often poll mode looks at the repository.")
@click.option("--load-model", multiple=True, default=D.load_model,
              help="explicit mode: a model to load at start (repeatable; '*' for every model).")
@click.option("--version-policy", default=D.version_policy,
              help="Which versions of every model to serve, over each model's config.pbtxt: latest:N, all, or "
                   "specific:V[,V...] [default: the model's config.pbtxt, else latest:2].")
@click.option("--cache-config", default=D.cache_config,
              help="Response cache, as Triton's: local,size=BYTES (LRU within the budget); used for the models whose "
                   "config.pbtxt has response_cache { enable: true } [default: no cache].")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Log verbosity.")
@click.option("--workers", default=1, type=click.IntRange(1),
              help="Server processes sharing --port (and --http-port) with SO_REUSEPORT, each with its own "
                   "onnxruntime sessions, under a supervising parent: health SERVING once every one has loaded, "
                   "SIGTERM drains them all, --metrics-port sums over them. The kernel spreads connections, not "
                   "calls: clients need several (GlassboxClient(channels=K)).")
@click.option("--worker-fd", default=None, type=int, hidden=True)  # a worker of --workers: its line to the parent
@click.option("--worker-index", default=0, type=int, hidden=True)
def main(log_level, workers, worker_fd, worker_index, **flags):
    """Serve the model repository over gRPC: the Glassbox domain API and the KServe v2 protocol."""
    who = f"[worker {worker_index}]" if worker_fd is not None else ""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s")
    options = ServerOptions(**flags)
    limit_arenas()  # before the sessions' and batchers' threads start (serving/memory.py says why)
    try:
        if worker_fd is not None:
            from .workers import ParentLink
            sys.exit(asyncio.run(serve(options, supervisor=ParentLink(worker_fd))))
        if workers > 1:
            from .workers import WorkerPool
            sys.exit(asyncio.run(WorkerPool(workers, options, log_level).run()))
        sys.exit(asyncio.run(serve(options)))
    except StartupError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
