"""Where a served call's time goes, and the response cache's points, for ``benchmarks/serve_bench.py``.

    .venv/bin/python benchmarks/serve_bench.py --models resnet --cache     # rows with the breakdown, cache points

The breakdown of a measured point comes from the server itself: KServe v2 ModelStatistics (serving/stats.py)
read before and after the point, so it covers exactly the calls of that point:
- queue: from a request's submission to the start of its batch's run, per request;
- batch: images per onnxruntime run (inference_count / execution_count);
- ort/batch: the session run per batch (compute_infer over the batches, not charged per request);
- conv: what the server spends per request outside the queue and the run: request parsing, checks, batch
  merge and split, reply building (success time - queue - compute, per request);
- server CPU per call: user + system CPU of the server process tree over the point, divided by its calls;
- client: the load generator's share of the CPU both used (it runs on the same 2 cores).
"""
from __future__ import annotations

import asyncio
import resource
import time


def statistics(address: str, model: str) -> dict | None:
    """Cumulative ModelStatistics of ``model`` (every version added up); None where the server has none."""
    import grpc

    from serving._generated.inference import grpc_service_pb2 as pb
    from serving._generated.inference import grpc_service_pb2_grpc as pb_grpc
    with grpc.insecure_channel(address) as ch:
        try:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
        except grpc.RpcError:
            return None
    out = {"images": 0, "batches": 0, "queue": [0, 0], "input": [0, 0], "infer": [0, 0], "output": [0, 0],
           "success": [0, 0], "batch_infer": [0, 0]}
    for s in reply.model_stats:
        out["images"] += s.inference_count
        out["batches"] += s.execution_count
        i = s.inference_stats
        for key, d in (("queue", i.queue), ("input", i.compute_input), ("infer", i.compute_infer),
                       ("output", i.compute_output), ("success", i.success)):
            out[key][0] += d.count
            out[key][1] += d.ns
        for b in s.batch_stats:
            out["batch_infer"][0] += b.compute_infer.count
            out["batch_infer"][1] += b.compute_infer.ns
    return out


def _per(after: dict, before: dict, key: str) -> float:
    """Mean ms per count of ``key`` between two snapshots."""
    count = after[key][0] - before[key][0]
    return (after[key][1] - before[key][1]) / count / 1e6 if count else float("nan")


def breakdown(before: dict | None, after: dict | None, server_cpu_s: float, client_cpu_s: float, calls: float) -> str:
    """One line: queue, batch size, ort run per batch, conversion, server CPU per call, client CPU share."""
    share = client_cpu_s / max(server_cpu_s + client_cpu_s, 1e-9)
    cpu = f"server CPU {1e3 * server_cpu_s / max(calls, 1):.2f} ms/call, client {share:.0%} of CPU"
    if before is None or after is None:
        return f"   ({cpu}; no ModelStatistics)"
    batches = after["batches"] - before["batches"]
    size = (after["images"] - before["images"]) / batches if batches else float("nan")
    compute = sum(_per(after, before, k) for k in ("input", "infer", "output"))
    conv = _per(after, before, "success") - _per(after, before, "queue") - compute
    return (f"   queue {_per(after, before, 'queue'):.2f} ms, batch {size:.1f}, ort/batch "
            f"{_per(after, before, 'batch_infer'):.2f} ms, conv {conv:.2f} ms, {cpu}")


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cache_points(a, repo, name: str, shape, row, start_server, stop_server, drive, tree_cpu, rounds: int = 4) -> dict:
    """The cache's targets, side by side: a hit's and a miss's p50 at c=1 (cache on), and all-miss c=32
    throughput with the cache on against the cache off (same client, distinct inputs both times). Both
    servers run at once and are driven in turn, ``rounds`` times each in the order off-on, on-off, off-on, ...
    (a machine whose speed drifts favours neither), each point with its server's CPU per call; the medians
    of the rounds' ratios are reported."""
    got: dict = {}
    servers = {label: start_server(repo, *extra, *a.server_args.split())
               for label, extra in (("cache off", []), ("cache on", ["--cache-config", "local,size=268435456"]))}
    try:
        address = servers["cache on"][1]
        got["miss c=1"] = asyncio.run(drive(address, name, shape, 1, a.seconds, distinct=True))
        row(name, "cache on, all miss c=1", *got["miss c=1"])
        got["hit c=1"] = asyncio.run(drive(address, name, shape, 1, a.seconds))
        row(name, "cache on, all hit c=1", *got["hit c=1"])
        rates, cpus = [], []
        for k in range(rounds):
            point = {}
            for label in (("cache off", "cache on") if k % 2 == 0 else ("cache on", "cache off")):
                proc, address = servers[label]
                cpu0, t0 = tree_cpu(proc.pid), time.perf_counter()
                point[label] = asyncio.run(drive(address, name, shape, 32, a.seconds, a.channels, distinct=True))
                per_call = (tree_cpu(proc.pid) - cpu0) / (point[label][0] * (time.perf_counter() - t0))
                point[label, "cpu"] = per_call
                row(name, f"{label}, all miss c=32 ({k + 1})", *point[label],
                    extra=f"   server CPU {1e3 * per_call:.2f} ms/call")
            rates.append(point["cache on"][0] / point["cache off"][0])
            cpus.append(point["cache on", "cpu"] / point["cache off", "cpu"])
            got[k] = point
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    got["all-miss ratio"] = sorted(rates)[len(rates) // 2]
    print(f"{name}: hit p50 {got['hit c=1'][1]:.3f} ms vs miss p50 {got['miss c=1'][1]:.3f} ms "
          f"({got['miss c=1'][1] / got['hit c=1'][1]:.1f}x lower; target 3x); all-miss c=32 with the cache against "
          f"cache off, round by round: {', '.join(f'{r:.0%}' for r in rates)} (median {got['all-miss ratio']:.0%}, "
          f"target 95%); server CPU per call on/off: {', '.join(f'{r:.0%}' for r in cpus)}")
    return got
