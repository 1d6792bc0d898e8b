"""Dynamic batching per graph: concurrent requests merge into one ``session.run``, then split back.

The batcher coroutine takes every job queued (up to ``max_batch`` images), runs them as one batch
in a worker thread (onnxruntime releases the GIL), and meanwhile the event loop keeps accepting
requests, which form the next batch. With ``instances`` above 1 (Triton's instance_group count, from the
graph) up to that many batches run at once, each on a thread of its own (or a process of its own:
serving/instances.py); jobs are taken only when an instance is free, so arrivals during the runs still
merge. Batches expected to take under ``INLINE_MS`` run on the loop itself: for a graph like LeNet the
thread hand-off costs more than the run. ``max_delay`` optionally waits for more work, adaptively: only
under concurrent load (several requests queued, or the previous batch merged several), never for a lone
request, and counted from the oldest job's arrival (Triton's max_queue_delay). Jobs ask for any outputs
of the graph; the batch runs their union. The queue is bounded: a full queue refuses at once
(RESOURCE_EXHAUSTED). A job whose deadline has passed is dropped before compute
(DEADLINE_EXCEEDED); a cancelled call's job is skipped. Both are counted
(``glassbox_dropped_jobs_total{graph, reason="deadline"|"cancelled"}``).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import DeadlineExceeded, ResourceExhausted

log = logging.getLogger("glassbox.serving")


INLINE_MS = 0.2  # a batch expected to run faster than this (from the graph's batch-1 time) runs inline


@dataclass
class Job:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    n: int
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    queued_ns: int = 0      # time.perf_counter_ns() at submission (ModelStatistics' queue time)


class Batcher:
    def __init__(self, graph, *, max_batch: int, max_delay_s: float = 0.0, max_queue: int = 256, metrics=None):
        self.graph = graph
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self.queue: collections.deque[Job] = collections.deque()
        self.wake = asyncio.Event()
        # Triton's instance_group count: up to this many batches run at once, each on a thread of its own.
        self.instances = max(1, int(getattr(graph, "instances", 1)))
        self.executor = ThreadPoolExecutor(self.instances, thread_name_prefix=f"ort-{graph.triton_name}")
        self.free = asyncio.Semaphore(self.instances)  # instances not running a batch
        self.procs = getattr(graph, "procs", None)     # the instances as processes (serving/instances.py), or None
        self.running: set[asyncio.Task] = set()        # batches on the executor
        self.task: asyncio.Task | None = None
        self.last_jobs = 0  # requests merged into the previous batch
        # Batches this small run on the event loop itself: handing a few-microsecond run to the
        # worker thread and waking the loop afterwards costs more than the run (both timed by
        # benchmarks/batcher_inline.py; figures in the README).
        self.inline_images = int(INLINE_MS / max(getattr(graph, "batch1_ms", float("inf")), 1e-3))
        # The gauge's child is looked up once: ``labels()`` on every request costs a lock.
        self.gauge = metrics.queue_depth.labels(graph.triton_name) if metrics else None
        self.sizes = metrics.batch_size.labels(graph.triton_name) if metrics else None
        self.queue_times = metrics.queue_time.labels(graph.triton_name) if metrics else None
        self.stats = getattr(graph, "stats", None)  # serving/stats.py: what ModelStatistics reports
        self.dropped = {"deadline": 0, "cancelled": 0}  # jobs dropped before compute, by reason
        self.drop_counters = {r: metrics.dropped.labels(graph.triton_name, r) for r in self.dropped} if metrics else {}

    def start(self) -> None:
        if self.procs is not None:
            self.procs.watch()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for t in [self.task, *self.running]:
            if t is not None:
                t.cancel()
        self.executor.shutdown(wait=False)
        if self.procs is not None:
            await self.procs.stop()

    def depth(self) -> int:
        return len(self.queue)

    async def submit(self, feeds: dict[str, np.ndarray], outputs, n: int,
                     deadline: float | None) -> dict[str, np.ndarray]:
        if len(self.queue) >= self.max_queue:
            raise ResourceExhausted(f"{self.graph.triton_name}: request queue is full ({self.max_queue} waiting); "
                                    "retry later")
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(Job(feeds, tuple(outputs), n, fut, deadline, time.perf_counter_ns()))
        self.wake.set()
        if self.gauge is not None:
            self.gauge.set(len(self.queue))
        return await fut

    def _take(self) -> list[Job]:
        jobs, images, now = [], 0, time.monotonic()
        # max_batch caps merging, not a request: a job larger than it (valid per the manifest, above
        # the server's --max-batch) runs alone, so the head of the queue is always taken.
        while self.queue and (not jobs or images + self.queue[0].n <= self.max_batch):
            job = self.queue.popleft()
            if job.future.done():  # cancelled by the client: no work
                self._drop("cancelled")
                continue
            if job.deadline is not None and now > job.deadline:
                job.future.set_exception(DeadlineExceeded("deadline passed while queued; dropped before compute"))
                self._drop("deadline")
                continue
            jobs.append(job)
            images += job.n
        return jobs

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        if reason in self.drop_counters:
            self.drop_counters[reason].inc()

    async def _loop(self) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            # Jobs are taken only once an instance is free: while every instance runs, arrivals queue up
            # and form the next batch.
            await self.free.acquire()
            # Adaptive delay: a lone request on an idle server runs at once (no added latency);
            # under concurrent load (several queued, or the last batch merged several) wait for a fuller
            # batch until the oldest job has been queued max_delay, as Triton's max_queue_delay counts.
            # Under steady load the head has waited a whole run already, so the next batch starts at once
            # (counting from the instance turning free idled onnxruntime max_delay per batch).
            if self.max_delay_s and (len(self.queue) > 1 or self.last_jobs > 1) and \
                    sum(j.n for j in self.queue) < self.max_batch:
                left = self.max_delay_s - (time.perf_counter_ns() - self.queue[0].queued_ns) / 1e9
                if left > 0:
                    await asyncio.sleep(left)
            jobs = self._take()
            if self.gauge is not None:
                self.gauge.set(len(self.queue))
            if not jobs:
                self.free.release()
                continue
            # A lone call on an idle server (nothing merged now or last time, nothing queued behind it)
            lone = len(jobs) == 1 and self.last_jobs <= 1 and not self.queue
            self.last_jobs = len(jobs)
            try:
                outputs, feeds, t_in, n = self._merge(jobs)
                inline, t_run = n <= self.inline_images, time.perf_counter_ns()
                work = self._start(outputs, feeds, inline, lone)
            except Exception as e:  # noqa: BLE001 - a batch that cannot start fails alone; the loop serves on
                # (an exception here used to end this coroutine: every later call of the graph hung until its
                # deadline). Its jobs get the error (INTERNAL to the client, logged).
                self.free.release()
                self._fail(jobs, sum(j.n for j in jobs), e)
                continue
            run = self._run(jobs, outputs, work, n, t_in, t_run)
            if inline:
                await run
            else:
                task = asyncio.get_running_loop().create_task(run)
                self.running.add(task)
                task.add_done_callback(self.running.discard)

    def _merge(self, jobs: list[Job]) -> tuple:
        """(outputs, feeds, t_in, images) of one batch: the union of the jobs' outputs, their feeds concatenated."""
        t_in = time.perf_counter_ns()
        outputs = list(dict.fromkeys(o for j in jobs for o in j.outputs))
        names = jobs[0].feeds.keys()
        feeds = jobs[0].feeds if len(jobs) == 1 else {k: np.concatenate([j.feeds[k] for j in jobs]) for k in names}
        return outputs, feeds, t_in, sum(j.n for j in jobs)

    def _start(self, outputs, feeds, inline: bool, lone: bool = False) -> asyncio.Future:
        """The batch's run as a future: done already where it ran on the loop itself (``inline``: a tiny batch),
        else running on an instance's thread or process. Started here, by the loop, not by the task that awaits
        it: that task first runs after the replies woken before it, and onnxruntime would idle meanwhile."""
        loop = asyncio.get_running_loop()
        if not inline:
            # Process instances (serving/instances.py) under load. A ``lone`` call runs on the server's own
            # session instead: its intra-op threads use every core for the one batch, with no hand-off to another
            # process (resnet at concurrency 1: p50 2.8 ms against 3.7 ms on a one-thread instance process).
            work = self.procs.submit(outputs, feeds) if self.procs is not None and not lone else None
            # None: thread instances, or no process instance idle (one lost, being replaced): the server's session
            return work if work is not None else loop.run_in_executor(self.executor, self.graph.run, outputs, feeds)
        done = loop.create_future()
        try:
            done.set_result(self.graph.run_small(outputs, feeds))
        except Exception as e:  # noqa: BLE001 - handed to _run, which fails the batch's jobs with it
            done.set_exception(e)
        return done

    async def _run(self, jobs: list[Job], outputs, work: asyncio.Future, n: int, t_in: int, t_run: int) -> None:
        """Wait for one batch's run (an inline one is done: no suspension), free its instance, answer its jobs.
        The instance is freed first: the loop's wait for it is woken before the replies, so the next batch
        starts, and onnxruntime computes it while the loop answers this one."""
        try:
            results = await work
        except Exception as e:  # onnxruntime failure: every job of the batch gets it
            self.free.release()
            self._fail(jobs, n, e)
            return
        except BaseException:  # cancelled (stop): the instance is free all the same
            self.free.release()
            raise
        self.free.release()
        self._finish(jobs, outputs, results, n, t_in, t_run)

    def _fail(self, jobs: list[Job], n: int, e: Exception) -> None:
        log.error("%s: batch of %d failed", self.graph.triton_name, n, exc_info=e)
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(e)

    def _finish(self, jobs: list[Job], outputs, results, n: int, t_in: int, t_run: int) -> None:
        """Each job gets its rows of the outputs it asked for; the batch's figures are recorded."""
        t_out = time.perf_counter_ns()
        if self.sizes is not None:
            self.sizes.observe(n)
            for j in jobs:
                self.queue_times.observe((t_in - j.queued_ns) / 1e9)
        by_name = dict(zip(outputs, results, strict=True))
        start = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result({o: by_name[o][start:start + j.n] for o in j.outputs})
            start += j.n
        if self.stats is not None:
            self.stats.batch([t_in - j.queued_ns for j in jobs], n, t_run - t_in, t_out - t_run,
                             time.perf_counter_ns() - t_out)
