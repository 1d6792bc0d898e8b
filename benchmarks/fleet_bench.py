"""A fleet simulated on this machine: calls per server, failures by code and the time to rebalance.

    .venv/bin/python benchmarks/fleet_bench.py [--servers 3] [--threads 8] [--seconds 4] [--repository exported]

``--servers`` `serve` processes share one model repository, each on its own loopback address (127.0.0.2, ...)
and one port, as pods have their own addresses; one GlassboxClient over all of them (the target
``ipv4:127.0.0.2:P,127.0.0.3:P,...``, gRPC's round_robin) calls Classify (batch 1) from ``--threads`` threads
in a closed loop (tests/helpers/fleet.py). Three scenarios, each on a fresh fleet:

- steady: ``--seconds`` of load;
- rollout + SIGTERM: a new lenet version is published (poll mode loads it), then one server gets SIGTERM (the
  kubelet's stop: it drains) and is started again;
- rollout + SIGKILL: the same, but the server is killed (a crash: its calls in flight are cut).

Per scenario: calls answered per server (from each server's metrics, summed over restarts), calls per second,
calls failed by code (what the caller saw), attempts failed by code (the client retries an UNAVAILABLE one on
the next server) and the time to rebalance: from the restarted server's health SERVING to its first answered
call. Without ``--repository`` a random-weight lenet is exported into a temporary folder (needs torch; weights
do not change the compute).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.helpers.fleet import Fleet, Load, roll_out  # noqa: E402


def scenario(repo: Path, name: str, servers: int, threads: int, seconds: float, sig: int | None) -> dict:
    fleet = Fleet(repo, servers, "--repository-poll-secs", "0.5", "--grace", "5")
    try:
        fleet.start_all()
        with Load(fleet.target, threads=threads) as load:
            t0 = time.monotonic()
            time.sleep(seconds)
            rebalance = None
            if sig is not None:
                roll_out(repo, "lenet")
                victim = fleet.hosts[len(fleet.hosts) // 2]
                _, back = fleet.restart(victim, sig)
                while fleet.count(victim) == 0 and time.monotonic() - back < 30:
                    time.sleep(0.02)
                rebalance = time.monotonic() - back if fleet.count(victim) else float("inf")
                time.sleep(seconds / 2)
            wall = time.monotonic() - t0
        served = fleet.served()
    finally:
        fleet.close()
    outcomes = load.by_outcome()
    return {"scenario": name, "served": served, "calls/s": len(load.outcomes) / wall,
            "failed": {k: v for k, v in outcomes.items() if k != "OK"}, "attempts failed": dict(load.refused),
            "rebalance s": rebalance, "calls": len(load.outcomes)}


def table(rows: list[dict]) -> str:
    lines = ["| scenario | calls | calls/s | calls answered per server | calls failed, by code | "
             "attempts failed, by code (retried) | rebalance s |", "|---|---:|---:|---|---|---|---:|"]
    for r in rows:
        per = " / ".join(str(v) for v in r["served"].values())
        failed = ", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "none"
        attempts = ", ".join(f"{k} {v}" for k, v in r["attempts failed"].items()) or "none"
        rebalance = "-" if r["rebalance s"] is None else f"{r['rebalance s']:.2f}"
        lines.append(f"| {r['scenario']} | {r['calls']} | {r['calls/s']:.0f} | {per} | {failed} | {attempts} | "
                     f"{rebalance} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repository", type=Path, help="a repository with lenet (default: export a random-weight one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        if args.repository:
            shutil.copytree(args.repository / "lenet", source / "lenet")
        else:
            from serve_bench import export_models
            export_models(source, ["lenet"])
        rows = []
        scenarios = (("steady", None), ("rollout + SIGTERM", signal.SIGTERM), ("rollout + SIGKILL", signal.SIGKILL))
        for name, sig in scenarios:
            repo = Path(tmp) / name.replace(" ", "").replace("+", "-")
            shutil.copytree(source, repo)
            rows.append(scenario(repo, name, args.servers, args.threads, args.seconds, sig))
            print(f"{name}: done", flush=True)
    print(f"\n{args.servers} servers (127.0.0.2-{1 + args.servers}), one client (ipv4: target, round_robin), "
          f"{args.threads} threads, Classify batch 1, lenet; per server in address order\n")
    print(table(rows))


if __name__ == "__main__":
    main()
