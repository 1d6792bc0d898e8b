"""``serving.batcher.Batcher`` in-process against fake graphs: merging, splitting back, the queue bound,
deadlines, cancellation, the adaptive delay, inline vs worker-thread runs, failures and metrics.

Fast and deterministic: the fake graphs record every run, and the adaptive delay is observed through the
``asyncio.sleep`` calls the batcher makes, not through wall-clock timing (but for one scenario, the last
test, whose fake graph takes 0.2 s a run: about a second).

    .venv/bin/pytest -x -q tests/serving/test_batcher.py
"""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving import batcher as batcher_module
from serving.batcher import Batcher
from serving.errors import DeadlineExceeded, ResourceExhausted


class Graph:
    """Doubles ``input`` into ``y`` and adds one into ``z``; records (method, batch size, thread, feeds)."""
    triton_name = "fake"

    def __init__(self, batch1_ms=None, fail=False, gate=None):
        if batch1_ms is not None:
            self.batch1_ms = batch1_ms
        self.fail, self.gate, self.runs = fail, gate, []

    def _run(self, how, outputs, feeds):
        if self.gate is not None:
            self.gate.wait(10)  # hold the worker thread until the test has queued what it wants
        self.runs.append((how, len(feeds["input"]), threading.current_thread().name, feeds))
        if self.fail:
            raise RuntimeError("onnxruntime exploded")
        x = feeds["input"]
        return [{"y": x * 2, "z": x + 1}[o] for o in outputs]

    def run(self, outputs, feeds):
        return self._run("run", outputs, feeds)

    def run_small(self, outputs, feeds):
        return self._run("run_small", outputs, feeds)


class Child:
    def __init__(self):
        self.values = []

    def set(self, v):
        self.values.append(v)

    def observe(self, v):
        self.values.append(v)

    def inc(self):
        self.values.append(1)


class Family:
    def __init__(self):
        self.children = {}

    def labels(self, *names):
        return self.children.setdefault(names if len(names) > 1 else names[0], Child())


class Metrics:
    """The prometheus families the batcher uses, as recorders."""

    def __init__(self):
        self.queue_depth, self.batch_size, self.dropped, self.queue_time = Family(), Family(), Family(), Family()


def rows(k, n=1):
    return {"input": np.full((n, 2), k, np.float32)}


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 5))  # a batcher that hangs fails in seconds


def test_a_lone_request_gets_its_outputs_and_the_batcher_reports_its_depth():
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8)
        b.start()
        assert b.depth() == 0
        out = await b.submit(rows(3, 2), ["z", "y"], 2, None)
        await b.stop()
        return out

    out = run(scenario)
    assert list(out) == ["z", "y"]
    assert out["y"].tolist() == [[6, 6]] * 2 and out["z"].tolist() == [[4, 4]] * 2
    assert [r[:2] for r in g.runs] == [("run", 2)]


def test_queued_jobs_merge_and_each_gets_its_own_rows_and_outputs():
    """Jobs queued together run as one batch (one run of the union of their outputs), split back in order."""
    g = Graph()
    feeds = [rows(k, n) for k, n in ((1, 1), (2, 2), (3, 1))]

    async def scenario():
        b = Batcher(g, max_batch=8)
        futs = [asyncio.ensure_future(b.submit(f, outs, len(f["input"]), None))
                for f, outs in zip(feeds, (["y"], ["z"], ["y", "z"]), strict=True)]
        await asyncio.sleep(0)  # all three are queued before the batcher starts
        assert b.depth() == 3
        b.start()
        got = await asyncio.gather(*futs)
        await b.stop()
        return got

    a, b_, c = run(scenario)
    assert [r[:2] for r in g.runs] == [("run", 4)]
    assert list(a) == ["y"] and a["y"].tolist() == [[2, 2]]
    assert list(b_) == ["z"] and b_["z"].tolist() == [[3, 3]] * 2
    assert list(c) == ["y", "z"] and c["y"].tolist() == [[6, 6]] and c["z"].tolist() == [[4, 4]]


def test_a_lone_job_runs_on_its_own_feeds_without_a_copy():
    g = Graph()
    f = rows(1, 3)

    async def scenario():
        b = Batcher(g, max_batch=8)
        b.start()
        await b.submit(f, ["y"], 3, None)
        await b.stop()

    run(scenario)
    assert g.runs[0][3] is f


async def start_with_queued(b, jobs, return_exceptions=False):
    """Queue jobs of ``(value, rows)`` before ``b`` starts, so its first take sees them all; their results."""
    futs = [asyncio.ensure_future(b.submit(rows(k, n), ["y"], n, None)) for k, n in jobs]
    await asyncio.sleep(0)
    b.start()
    return await asyncio.gather(*futs, return_exceptions=return_exceptions)


def run_queued(g, max_batch, jobs):
    """A batcher of ``max_batch`` on ``g`` that starts with ``jobs`` queued; their results."""
    async def scenario():
        b = Batcher(g, max_batch=max_batch)
        got = await start_with_queued(b, jobs)
        await b.stop()
        return got
    return run(scenario)


def test_merging_stops_at_max_batch_and_an_exact_fit_merges():
    g = Graph()

    got = run_queued(g, 4, ((1, 2), (2, 2), (3, 1)))
    assert [r[1] for r in g.runs] == [4, 1], "2 + 2 fill max_batch 4 exactly; the third waits for the next batch"
    assert [x["y"][:, 0].tolist() for x in got] == [[2, 2], [4, 4], [6]]


def test_a_job_above_max_batch_runs_alone():
    g = Graph()

    got = run_queued(g, 2, ((1, 1), (2, 5), (3, 1)))
    assert [r[1] for r in g.runs] == [1, 5, 1] and [len(x["y"]) for x in got] == [1, 5, 1]


def test_a_full_queue_refuses_at_once_and_the_gauge_follows_the_queue():
    g, m = Graph(), Metrics()

    async def scenario():
        b = Batcher(g, max_batch=8, max_queue=2, metrics=m)
        futs = [asyncio.ensure_future(b.submit(rows(k), ["y"], 1, None)) for k in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted) as e:
            await b.submit(rows(3), ["y"], 1, None)
        assert str(e.value) == "fake: request queue is full (2 waiting); retry later"
        b.start()
        await asyncio.gather(*futs)
        await b.stop()

    run(scenario)
    depth = m.queue_depth.children["fake"].values
    assert depth[:2] == [1, 2] and depth[-1] == 0, depth
    assert m.batch_size.children["fake"].values == [2]


def test_an_expired_job_is_dropped_before_compute_and_a_cancelled_one_skipped():
    g, m = Graph(), Metrics()

    async def scenario():
        b = Batcher(g, max_batch=8, metrics=m)
        expired = asyncio.ensure_future(b.submit(rows(1), ["y"], 1, time.monotonic() - 0.001))
        cancelled = asyncio.ensure_future(b.submit(rows(2), ["y"], 1, None))
        alive = asyncio.ensure_future(b.submit(rows(3), ["y"], 1, time.monotonic() + 60))
        await asyncio.sleep(0)
        cancelled.cancel()
        b.start()
        assert (await alive)["y"].tolist() == [[6, 6]]
        with pytest.raises(DeadlineExceeded, match="^deadline passed while queued; dropped before compute$"):
            await expired
        await b.stop()
        return cancelled.cancelled(), b.dropped

    cancelled, dropped = run(scenario)
    assert cancelled and dropped == {"deadline": 1, "cancelled": 1}
    assert [r[1] for r in g.runs] == [1] and g.runs[0][3]["input"][0, 0] == 3
    assert {k: c.values for k, c in m.dropped.children.items()} == {("fake", "deadline"): [1],
                                                                    ("fake", "cancelled"): [1]}
    (waited,) = m.queue_time.children["fake"].values  # the job that ran: its time in the queue, once
    assert 0 <= waited < 5


def test_a_batch_of_only_dropped_jobs_runs_nothing_and_the_batcher_goes_on():
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8)
        expired = asyncio.ensure_future(b.submit(rows(1), ["y"], 1, time.monotonic() - 1))
        await asyncio.sleep(0)
        b.start()
        with pytest.raises(DeadlineExceeded):
            await expired
        out = await b.submit(rows(4), ["y"], 1, None)
        await b.stop()
        return out

    assert run(scenario)["y"].tolist() == [[8, 8]]
    assert [r[1] for r in g.runs] == [1]


def test_a_failed_run_fails_every_job_of_the_batch_and_the_next_batch_runs():
    g = Graph(fail=True)

    async def scenario():
        b = Batcher(g, max_batch=8)
        errors = await start_with_queued(b, ((1, 1), (2, 1)), return_exceptions=True)
        g.fail = False
        out = await b.submit(rows(5), ["y"], 1, None)
        await b.stop()
        return errors, out

    errors, out = run(scenario)
    assert [str(e) for e in errors] == ["onnxruntime exploded"] * 2
    assert out["y"].tolist() == [[10, 10]]


def test_a_batch_that_cannot_start_fails_its_jobs_and_the_batcher_serves_on():
    """Feeds that do not concatenate (or an instance that cannot take the batch) fail that batch's jobs with
    the error; the next call is served (the loop used to die there, and every later call hung)."""
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8)
        bad = {"input": np.zeros((1, 3), np.float32)}  # two columns in the other job: no concatenation
        futs = [asyncio.ensure_future(b.submit(f, ["y"], 1, None)) for f in (rows(1), bad)]
        await asyncio.sleep(0)
        b.start()
        errors = await asyncio.gather(*futs, return_exceptions=True)
        out = await b.submit(rows(5), ["y"], 1, None)
        await b.stop()
        return errors, out

    errors, out = run(scenario)
    assert [type(e) for e in errors] == [ValueError, ValueError] and "concatenat" in str(errors[0])
    assert out["y"].tolist() == [[10, 10]] and [r[:2] for r in g.runs] == [("run", 1)]


def test_a_job_cancelled_while_its_batch_computes_gets_no_result_and_the_others_do():
    gate = threading.Event()
    g = Graph(gate=gate)

    async def scenario():
        b = Batcher(g, max_batch=8)
        first = asyncio.ensure_future(b.submit(rows(1), ["y"], 1, None))
        second = asyncio.ensure_future(b.submit(rows(2, 2), ["y"], 2, None))
        await asyncio.sleep(0)
        b.start()
        await asyncio.sleep(0.05)  # the batch of both is now in the worker thread, held by the gate
        first.cancel()
        gate.set()
        got = await second
        await b.stop()
        return got, first.cancelled()

    got, cancelled = run(scenario)
    assert cancelled and got["y"][:, 0].tolist() == [4, 4]
    assert [r[1] for r in g.runs] == [3]


def test_a_cancelled_job_that_failed_its_batch_gets_no_exception_set():
    gate = threading.Event()
    g = Graph(gate=gate, fail=True)

    async def scenario():
        b = Batcher(g, max_batch=8)
        first = asyncio.ensure_future(b.submit(rows(1), ["y"], 1, None))
        second = asyncio.ensure_future(b.submit(rows(2), ["y"], 1, None))
        await asyncio.sleep(0)
        b.start()
        await asyncio.sleep(0.05)
        first.cancel()
        gate.set()
        with pytest.raises(RuntimeError):
            await second
        await b.stop()
        return first.cancelled()

    assert run(scenario)


def test_small_batches_run_inline_larger_ones_in_the_worker_thread():
    """batch1_ms 0.05 ms: batches of up to int(0.2 / 0.05) = 4 images run on the loop (run_small)."""
    g = Graph(batch1_ms=0.05)

    async def scenario():
        b = Batcher(g, max_batch=16)
        assert b.inline_images == 4
        b.start()
        for n in (1, 4, 5):
            await b.submit(rows(1, n), ["y"], n, None)
        await b.stop()

    run(scenario)
    loop_thread = threading.current_thread().name
    assert [(how, n) for how, n, _, _ in g.runs] == [("run_small", 1), ("run_small", 4), ("run", 5)]
    assert g.runs[0][2] == loop_thread and g.runs[2][2].startswith("ort-fake")


def test_inline_threshold_edges():
    """No timing known: nothing inline; a graph faster than 1 us counts as 1 us (at most 200 images)."""
    assert Batcher(Graph(), max_batch=8).inline_images == 0
    assert Batcher(Graph(batch1_ms=1e-9), max_batch=8).inline_images == 200
    assert Batcher(Graph(batch1_ms=0.1), max_batch=8).inline_images == 2
    assert Batcher(Graph(batch1_ms=1.0), max_batch=8).inline_images == 0


class SleepSpy:
    """Stands in for the batcher module's ``asyncio``: records every sleep, otherwise the real thing."""

    def __init__(self):
        self.sleeps = []

    def __getattr__(self, name):
        return getattr(asyncio, name)

    async def sleep(self, s):
        self.sleeps.append(s)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps(monkeypatch):
    spy = SleepSpy()
    monkeypatch.setattr(batcher_module, "asyncio", spy)
    return spy.sleeps


def test_adaptive_delay_never_for_a_lone_request(sleeps):
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8, max_delay_s=0.5)
        b.start()
        for k in (1, 2):
            await b.submit(rows(k), ["y"], 1, None)
        await b.stop()

    run(scenario)
    assert sleeps == [] and [r[1] for r in g.runs] == [1, 1]


def test_adaptive_delay_under_load_waits_once_per_batch(sleeps):
    """Two queued: wait max_delay for more; after a merged batch a lone request waits too."""
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8, max_delay_s=0.5)
        await start_with_queued(b, ((1, 1), (2, 1)))
        assert b.last_jobs == 2
        await b.submit(rows(3), ["y"], 1, None)
        assert b.last_jobs == 1
        await b.submit(rows(4), ["y"], 1, None)  # the previous batch was a lone one again: no wait
        await b.stop()

    run(scenario)
    assert sleeps == [pytest.approx(0.5, abs=0.05)] * 2 and [r[1] for r in g.runs] == [2, 1, 1]


def test_adaptive_delay_counts_from_the_oldest_job_as_tritons_max_queue_delay(sleeps):
    """The wait ends max_delay after the oldest queued job arrived: jobs queued 0.3 s before the batcher
    looks wait only the 0.2 s left of 0.5; jobs that queued for longer while a batch ran (steady load) go at
    once, so onnxruntime never idles a full max_delay between batches."""
    g = Graph(gate=threading.Event())

    async def scenario():
        b = Batcher(g, max_batch=8, max_delay_s=0.5)
        first = [asyncio.ensure_future(b.submit(rows(k), ["y"], 1, None)) for k in (1, 2)]
        await asyncio.sleep(0.3)  # a real sleep: the spy stands in for the batcher module's asyncio only
        b.start()
        await asyncio.sleep(0.05)  # the first batch runs, held at the gate
        second = [asyncio.ensure_future(b.submit(rows(k), ["y"], 1, None)) for k in (3, 4)]
        await asyncio.sleep(0.6)   # queued behind it for longer than max_delay
        g.gate.set()
        await asyncio.gather(*first, *second)
        await b.stop()

    run(scenario)
    assert sleeps == [pytest.approx(0.2, abs=0.1)] and [r[1] for r in g.runs] == [2, 2]


def test_adaptive_delay_not_when_the_queue_already_fills_a_batch(sleeps):
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=4, max_delay_s=0.5)
        await start_with_queued(b, ((1, 2), (2, 2)))
        await b.stop()

    run(scenario)
    assert sleeps == [] and [r[1] for r in g.runs] == [4]


def test_adaptive_delay_off_by_default(sleeps):
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8)
        await start_with_queued(b, ((1, 1), (2, 1), (3, 1)))
        await b.stop()

    run(scenario)
    assert sleeps == []


def test_stop_cancels_the_loop_and_a_batcher_never_started_stops_too():
    async def scenario():
        b = Batcher(Graph(), max_batch=8)
        await b.stop()  # no task yet
        b.start()
        task = b.task
        await asyncio.sleep(0)
        await b.stop()
        await asyncio.sleep(0)
        return task.cancelled()

    assert run(scenario)


def test_the_default_queue_bound_is_256():
    async def scenario():
        b = Batcher(Graph(), max_batch=8)
        futs = [asyncio.ensure_future(b.submit(rows(1), ["y"], 1, None)) for _ in range(256)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match=r"\(256 waiting\)"):
            await b.submit(rows(1), ["y"], 1, None)
        for f in futs:
            f.cancel()
        await b.stop()

    run(scenario)


def test_every_dropped_job_is_counted():
    async def scenario():
        b = Batcher(Graph(), max_batch=8)
        late = [asyncio.ensure_future(b.submit(rows(k), ["y"], 1, time.monotonic() - 1)) for k in (1, 2, 3)]
        await asyncio.sleep(0)
        b.start()
        await asyncio.gather(*late, return_exceptions=True)
        await b.stop()
        return b.dropped

    assert run(scenario) == {"deadline": 3, "cancelled": 0}


def test_dropped_jobs_at_the_head_do_not_cost_the_batch_another_wait(sleeps):
    """A cancelled and an expired job ahead of two live ones: one adaptive wait, one batch of the two."""
    g = Graph()

    async def scenario():
        b = Batcher(g, max_batch=8, max_delay_s=0.5)
        cancelled = asyncio.ensure_future(b.submit(rows(1), ["y"], 1, None))
        expired = asyncio.ensure_future(b.submit(rows(2), ["y"], 1, time.monotonic() - 1))
        live = [asyncio.ensure_future(b.submit(rows(k), ["y"], 1, None)) for k in (3, 4)]
        await asyncio.sleep(0)
        cancelled.cancel()
        b.start()
        await asyncio.gather(*live)
        await asyncio.gather(expired, return_exceptions=True)
        await b.stop()

    run(scenario)
    assert sleeps == [pytest.approx(0.5, abs=0.05)] and [r[1] for r in g.runs] == [2]


def test_a_failed_batch_is_logged_with_the_graph_and_size(caplog):
    g = Graph(fail=True)

    async def scenario():
        b = Batcher(g, max_batch=8)
        await start_with_queued(b, ((1, 1), (2, 1)), return_exceptions=True)
        await b.stop()

    with caplog.at_level("ERROR", logger="glassbox.serving"):
        run(scenario)
    assert [r.getMessage() for r in caplog.records] == ["fake: batch of 2 failed"]
    assert caplog.records[0].exc_info is not None


@pytest.mark.timeout(60)  # a batcher that spins (a job it can never take) fails here, not at the suite's limit
def test_batcher_drops_expired_and_cancelled_jobs_and_bounds_its_queue():
    from serving.batcher import Batcher
    from serving.errors import DeadlineExceeded, ResourceExhausted

    class SlowGraph:
        triton_name = "fake"
        calls = []

        def run(self, outputs, feeds):
            self.calls.append(len(feeds["input"]))
            time.sleep(0.2)
            return [feeds["input"] * 2]

    async def scenario():
        g = SlowGraph()
        b = Batcher(g, max_batch=8, max_queue=2)
        b.start()
        one = np.ones((1, 3), np.float32)
        first = asyncio.ensure_future(b.submit({"input": one}, ["y"], 1, None))
        await asyncio.sleep(0.05)  # the first batch is now computing
        expired = asyncio.ensure_future(b.submit({"input": one}, ["y"], 1, time.monotonic() + 0.01))
        cancelled = asyncio.ensure_future(b.submit({"input": one * 3}, ["y"], 1, None))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="full"):
            await b.submit({"input": one}, ["y"], 1, None)  # queue holds 2: refused at once
        cancelled.cancel()
        assert (await first)["y"][0, 0] == 2
        with pytest.raises(DeadlineExceeded):
            await expired
        assert b.dropped == {"deadline": 1, "cancelled": 1}, b.dropped  # each counted under its reason
        # Requests queued while a batch computes merge into the next run, each gets its own rows back.
        blocker = asyncio.ensure_future(b.submit({"input": one}, ["y"], 1, None))
        await asyncio.sleep(0.05)
        b.max_queue = 8
        parts = [b.submit({"input": np.full((k, 3), k, np.float32)}, ["y"], k, None) for k in (1, 2, 3)]
        results = await asyncio.gather(blocker, *parts)
        assert [r["y"].tolist() for r in results[1:]] == [[[2.0 * k] * 3] * k for k in (1, 2, 3)]
        # A job above max_batch (the server's --max-batch may sit below the manifest's) runs alone
        # instead of waiting forever at the head of the queue.
        big = b.submit({"input": np.ones((12, 3), np.float32)}, ["y"], 12, None)
        small = b.submit({"input": one}, ["y"], 1, None)
        got = await asyncio.wait_for(asyncio.gather(big, small), 5)
        assert [len(r["y"]) for r in got] == [12, 1]
        await b.stop()
        return g.calls

    calls = asyncio.run(scenario())
    assert calls == [1, 1, 6, 12, 1], \
        f"the expired and the cancelled job must not reach the model; queued jobs merge: {calls}"


class Recorder:
    """Stands in for serving.stats.Stats: what the batcher reports of each batch."""

    def __init__(self):
        self.batches = []

    def batch(self, queued_ns, n, input_ns, infer_ns, output_ns):
        self.batches.append((queued_ns, n, input_ns, infer_ns, output_ns))


class SlowGraph(Graph):
    """A graph whose every run takes 20 ms, with KServe statistics recorded (ModelStatistics)."""

    def __init__(self):
        super().__init__(batch1_ms=1000.0)  # never inline: the worker thread
        self.stats = Recorder()

    def run(self, outputs, feeds):
        time.sleep(0.02)
        return super().run(outputs, feeds)


def test_each_batch_reports_its_queue_input_infer_and_output_times():
    """Two queued jobs (3 images) merge into one batch: one report with both jobs' queue times, 3 images, and an
    infer time that holds the 20 ms run while the input and output times do not."""
    g = SlowGraph()

    async def scenario():
        b = Batcher(g, max_batch=8)
        await asyncio.sleep(0.03)  # the jobs below are queued well after the batcher was built
        got = await start_with_queued(b, ((1, 1), (2, 2)))
        await b.stop()
        return got

    t0 = time.perf_counter_ns()
    run(scenario)
    elapsed = time.perf_counter_ns() - t0
    [(queued, n, input_ns, infer_ns, output_ns)] = g.stats.batches
    assert len(queued) == 2 and n == 3
    assert all(0 <= q < elapsed for q in queued)
    assert 20e6 <= infer_ns < elapsed
    assert 0 <= input_ns < 20e6 and 0 <= output_ns < 20e6
    assert input_ns + infer_ns + output_ns < elapsed


class BarrierGraph(Graph):
    """Each run waits at a barrier of ``parties`` runs: it returns only if that many run at the same time."""

    def __init__(self, parties, timeout=2.0):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=timeout)

    def run(self, outputs, feeds):
        self.barrier.wait()  # BrokenBarrierError when fewer batches run at once
        return self._run("run", outputs, feeds)


@pytest.mark.parametrize("instances", [2, 3])
def test_instances_run_that_many_batches_at_once_and_no_more(instances):
    """With instance_group count N, N batches run on N threads at once (a barrier of N releases them); while
    they run, further arrivals wait in the queue and then merge into one batch."""
    g = BarrierGraph(instances)
    g.instances = instances

    async def scenario():
        b = Batcher(g, max_batch=1)  # one image a batch: each queued job is a batch of its own
        first = await start_with_queued(b, [(k, 1) for k in range(instances)])
        b.max_batch = 8
        g.barrier = threading.Barrier(1)  # from here on each run passes alone
        later = [asyncio.ensure_future(b.submit(rows(10 + k, 1), ["y"], 1, None)) for k in range(3)]
        got = await asyncio.gather(*later)
        await b.stop()
        return first, got

    first, later = run(scenario)
    assert [r[1] for r in g.runs[:instances]] == [1] * instances
    assert len({r[2] for r in g.runs[:instances]}) == instances  # each on its own thread
    assert [f["y"].tolist() for f in first] == [[[2 * k] * 2] for k in range(instances)]
    assert [f["y"].tolist() for f in later] == [[[2 * (10 + k)] * 2] for k in range(3)]
    assert [r[1] for r in g.runs[instances:]] == [3]  # queued together, merged into one batch


def test_the_next_batch_starts_before_the_last_one_is_answered():
    """A batch's run ending frees its instance first: the next batch (queued meanwhile) is handed to the
    instance before the finished batch's callers resume, so onnxruntime computes while the loop answers."""
    g = Graph(gate=threading.Event())
    order = []

    async def scenario():
        b = Batcher(g, max_batch=1)
        start = b._start

        def recorded(outputs, feeds, inline, lone=False):
            order.append(f"start {int(feeds['input'][0, 0])}")
            return start(outputs, feeds, inline, lone)
        b._start = recorded

        async def call(k):
            await b.submit(rows(k), ["y"], 1, None)
            order.append(f"answered {k}")
        b.start()
        first = asyncio.ensure_future(call(1))
        await asyncio.sleep(0.01)  # job 1 runs, held at the gate
        second = asyncio.ensure_future(call(2))
        await asyncio.sleep(0.01)  # job 2 queued behind it
        g.gate.set()
        await asyncio.gather(first, second)
        await b.stop()

    run(scenario)
    assert order == ["start 1", "start 2", "answered 1", "answered 2"]


def test_one_instance_never_runs_two_batches_at_once():
    """The default: a second batch starts only after the first returned (a barrier of 2 would break)."""
    g = BarrierGraph(2, timeout=0.5)
    g.instances = 1

    async def scenario():
        b = Batcher(g, max_batch=1)
        got = await start_with_queued(b, [(1, 1), (2, 1)], return_exceptions=True)
        await b.stop()
        return got

    got = run(scenario)
    assert all(isinstance(x, threading.BrokenBarrierError) for x in got), got


class Procs:
    """Process instances as the batcher sees them (serving/instances.py): ``submit`` computes as the graph would,
    recording the batch sizes it took; ``idle`` False: none can take a batch (a lost one being replaced)."""

    def __init__(self, graph):
        self.graph, self.sizes, self.idle = graph, [], True

    def watch(self):
        pass

    def submit(self, outputs, feeds):
        if not self.idle:
            return None
        self.sizes.append(len(feeds["input"]))
        fut = asyncio.get_running_loop().create_future()
        x = feeds["input"]
        fut.set_result([{"y": x * 2, "z": x + 1}[o] for o in outputs])
        return fut

    async def stop(self):
        self.stopped = True


def test_merged_batches_go_to_the_process_instances_and_a_lone_call_to_the_servers_session():
    """With process instances, a batch of merged calls goes to them; a lone call on an idle server runs on the
    server's own session (every core for one batch, no hand-off); with no instance idle, a merged batch runs on the
    server's session too, not lost. Stopping the batcher stops the instances. Catches a batcher that ignores its
    instances, sends a lone call through a one-thread process, or drops a batch no instance can take."""
    g = Graph()
    g.procs = Procs(g)

    async def scenario():
        b = Batcher(g, max_batch=8)
        lone = await start_with_queued(b, [(1, 1)])
        merged = await asyncio.gather(*[b.submit(rows(k), ["y"], 1, None) for k in (2, 3, 4)])
        g.procs.idle = False
        stranded = await asyncio.gather(*[b.submit(rows(k), ["y"], 1, None) for k in (5, 6)])
        await b.stop()
        return lone, merged, stranded
    lone, merged, stranded = run(scenario)
    assert [o["y"].tolist() for o in lone + merged + stranded] == [[[2 * k, 2 * k]] for k in range(1, 7)]
    assert g.procs.sizes == [3]  # the merged batch only
    assert [r[:2] for r in g.runs] == [("run", 1), ("run", 2)]  # the lone call, then the batch none could take
    assert g.procs.stopped
