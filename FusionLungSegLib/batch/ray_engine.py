"""The Ray engine: one Ray actor per worker (each loads the model once, ``num_cpus`` = its threads), on a
local Ray instance or a cluster joined with ``address``.  Workers read the volumes from the paths (shared
storage on a cluster); only paths and report rows travel through Ray.  An actor that dies is replaced and
its case is tried once more."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable

from .cases import Case
from .local import WorkerStartError, retry_or_fail
from .work import BatchSpec

__all__ = ["run_ray"]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'fusionlungseg[ray]'") from None
    return ray


def _actor_class(ray):
    class SegmentWorker:
        """A Ray actor holding one :class:`~FusionLungSegLib.batch.work.Worker`."""

        def __init__(self, spec: BatchSpec, threads: int | None):
            from FusionLungSegLib.batch.work import Worker

            self.worker = Worker(spec, threads)

        def ready(self) -> str:
            return f"{self.worker.name} (pid {os.getpid()})"

        def process(self, case: Case, attempt: int) -> dict:
            return self.worker.process(case, attempt)

    return ray.remote(SegmentWorker)


def run_ray(
    cases: Iterable[Case],
    spec: BatchSpec,
    on_row: Callable[[dict], None],
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
) -> None:
    """Segment ``cases`` on ``workers`` Ray actors of ``threads`` CPUs each; ``on_row(row)`` here as each
    case finishes.  ``address``: a running cluster (``ray start --head`` prints it; "auto" finds a local one);
    None starts a local Ray instance for this batch."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": workers * (threads or 1)}
        if not address:  # Ray runs its workers at nice 15: on a busy machine they would yield to everything
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        started = True
    actor_cls = _actor_class(ray).options(num_cpus=threads or 1, max_restarts=0, max_task_retries=0)
    queue = deque((c, 1) for c in cases)
    actors = []
    try:
        actors = _start(ray, actor_cls, spec, threads, max(1, min(workers, len(queue) or 1)))
        pending: dict = {}
        idle = list(actors)
        while queue or pending:
            while idle and queue:
                actor, job = idle.pop(), queue.popleft()
                pending[actor.process.remote(*job)] = (actor, job)
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, (case, attempt) = pending.pop(done[0])
            try:
                on_row(ray.get(done[0]))
                idle.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                retry_or_fail(queue, case, attempt, f"Ray actor died ({type(exc).__name__})", on_row)
                actors.remove(actor)
                replacement = _start(ray, actor_cls, spec, threads, 1)[0]
                actors.append(replacement)
                idle.append(replacement)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


def _start(ray, actor_cls, spec: BatchSpec, threads: int | None, n: int) -> list:
    """``n`` actors, loading their models side by side; raises :class:`WorkerStartError` if one cannot."""
    actors = [actor_cls.remote(spec, threads) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayActorError as exc:
        for a in actors:
            ray.kill(a)
        raise WorkerStartError(f"a Ray batch worker could not start: {exc}") from None
    return actors
