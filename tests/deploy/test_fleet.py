"""A fleet of three `serve` processes on one shared repository, each on its own loopback address, behind one
GlassboxClient (``ipv4:`` target, round_robin): the calls spread over all three; while a new version rolls out
(poll mode), one server is killed and restarted, and no call is lost: each is answered, or fails UNAVAILABLE.

    pytest tests/deploy/test_fleet.py -q -s        # benchmarks/fleet_bench.py measures the same, longer
"""
from __future__ import annotations

import re
import shutil
import signal
import time

import pytest

from serving.client import GlassboxClient
from tests.helpers.fleet import Fleet, Load, roll_out


@pytest.fixture()
def fleet(tmp_path, repository):
    shutil.copytree(repository / "lenet", tmp_path / "lenet")
    f = Fleet(tmp_path, 3, "--repository-poll-secs", "0.5", "--grace", "5")
    try:
        f.start_all()
        yield f
    finally:
        f.close()


def test_one_client_spreads_calls_over_the_fleet_and_loses_none_in_a_rollout(fleet):
    with Load(fleet.target, threads=6) as load:
        time.sleep(2)
        spread = fleet.served()
        version = roll_out(fleet.repository, "lenet")
        victim = fleet.hosts[1]
        code, back = fleet.restart(victim, signal.SIGKILL)
        while fleet.count(victim) == 0 and time.monotonic() - back < 20:  # the client finds it again
            time.sleep(0.05)
        rebalanced = time.monotonic() - back
        time.sleep(1)
    served = fleet.served()
    print(f"\nbefore the rollout {spread}; in all {served}; outcomes {load.by_outcome()}; "
          f"failed attempts {dict(load.refused)}; {victim} answered again {rebalanced:.2f} s after SERVING")
    assert code == -signal.SIGKILL
    total = sum(spread.values())
    assert total > 30 and min(spread.values()) >= total / 6, spread  # round_robin: each near a third
    assert set(load.by_outcome()) <= {"OK", "UNAVAILABLE"}, load.by_outcome()
    assert load.by_outcome()["OK"] > 0.95 * len(load.outcomes), load.by_outcome()
    assert set(load.refused) <= {"UNAVAILABLE"}, load.refused
    assert rebalanced < 20, "the restarted server got no call"
    queued = re.search(r'^glassbox_queue_seconds_count\{graph="lenet"\} (\S+)$', fleet.metrics(fleet.hosts[0]), re.M)
    assert queued and float(queued[1]) > 0, "no queue time recorded (the HPA's metric)"
    for host in fleet.hosts:  # every server, the restarted one too, serves the new version
        with GlassboxClient(f"{host}:{fleet.port}", timeout=10) as c:
            deadline = time.monotonic() + 20
            while c.get_model("lenet")["version"] != version and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.get_model("lenet")["version"] == version, host


def test_resolver_targets_are_one_address_and_list_their_backends():
    from serving.client import addresses, backends
    several = "ipv4:10.0.0.2:8500,10.0.0.3:8500"
    assert addresses(several) == [several]
    assert addresses(["dns:///glassbox-serve.ns.svc.cluster.local:8500", "h:1,h:2"]) == [
        "dns:///glassbox-serve.ns.svc.cluster.local:8500", "h:1", "h:2"]
    assert addresses("dns:8500,ipv4:8501") == ["dns:8500", "ipv4:8501"]  # hosts named dns and ipv4
    assert backends(several) == ["10.0.0.2:8500", "10.0.0.3:8500"]
    assert backends("ipv6:[::1]:8500,[::2]:8500") == ["[::1]:8500", "[::2]:8500"]
    assert backends("dns:///name:8500") == ["dns:///name:8500"] and backends("h:1") == ["h:1"]


def test_a_dns_target_reaches_the_server(server):
    port = server.rsplit(":", 1)[1]
    with GlassboxClient(f"dns:///localhost:{port}", timeout=10) as c:
        assert c._several and [m.name for m in c.list_models() if m.name == "lenet"] == ["lenet"]
