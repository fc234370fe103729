"""``recon batch``'s engine: the Dask cluster, one task per study, and the loop that gathers results.

A study's record reaches the manifest as soon as its task ends. Workers that die are handled as
failures, never waited for: a study whose worker died ``LOST_LIMIT`` times fails (Dask's
``allowed-failures`` on a local cluster; an external scheduler applies its own setting), and a
cluster with no live worker for ``NO_WORKERS_S`` (or whose scheduler is gone) fails the studies
left, so the run ends, its lock is released and the exit status says so.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from apps.batch_manifest import entry, now, save_manifest
from apps.batch_studies import Study
from apps.batch_worker import PARTIAL, run_study

__all__ = ["dask_client", "execute", "POLL_S", "WORKER_CHECK_S", "NO_WORKERS_S", "LOST_LIMIT"]

POLL_S = 0.25  # how often the client looks for studies that workers have started
WORKER_CHECK_S = 2.0  # how often the client asks the scheduler how many workers are alive
NO_WORKERS_S = 60.0  # a cluster without a live worker this long fails the studies left and the run ends
LOST_LIMIT = 3  # a study whose worker died this many times fails (Dask's allowed-failures, local clusters)


@contextmanager
def dask_client(scheduler: str | None, workers: int | None, n_tasks: int):
    """A Dask client: on ``scheduler``, or on a LocalCluster (processes, one thread each) closed on exit."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as err:
            raise RuntimeError(f"--scheduler: cannot connect to {scheduler} ({err})") from err
    else:
        import dask

        n = workers or max(1, min(os.cpu_count() or 1, n_tasks))
        with dask.config.set({"distributed.scheduler.allowed-failures": LOST_LIMIT - 1}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=logging.ERROR,
                                   scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})  # no fixed port 8787
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _mark_running(out: Path, manifest: dict, waiting: set[str]) -> None:
    """Studies whose temporary folder exists have started: pending -> running."""
    try:
        started = {p.name.split("-")[0] for p in (out / PARTIAL).iterdir()} & waiting
    except OSError:
        return
    for key in started:
        manifest["studies"][key].update(state="running", started=now())
    waiting -= started
    if started:
        save_manifest(out, manifest)


def _failed(study: Study, chash: str, error: str) -> dict:
    return {"name": study.name, "kind": study.kind, "mode": study.mode, "state": "failed", "inputs": list(study.inputs),
            "config_hash": chash, "input_hash": study.input_hash, "error": error}


def _outcome(future, study: Study, chash: str) -> dict:
    """The task's record; an error of the engine itself (a worker that died) fails the study."""
    from dask.distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        return _failed(study, chash, f"the worker running it died {LOST_LIMIT} times (killed, out of memory, or a "
                                     f"crash in native code such as a full disk in libhdf5): {err}")
    except BaseException as err:  # cancelled futures, lost connections
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return _failed(study, chash, f"{type(err).__name__}: {err}")


class _Watchdog:
    """Notices a cluster that has no live worker (all died, or the scheduler is gone)."""

    def __init__(self, client) -> None:
        self.client, self.checked, self.alive_at = client, 0.0, time.monotonic()

    def lost(self) -> str | None:
        """Why the run cannot go on, or None; asks the scheduler at most every ``WORKER_CHECK_S``."""
        now = time.monotonic()
        if now - self.checked < WORKER_CHECK_S:
            return None
        self.checked = now
        try:
            workers = len(self.client.scheduler_info()["workers"])
        except Exception as err:  # the scheduler is gone: every engine error means the same here
            return f"lost the Dask scheduler ({type(err).__name__}: {err})"
        if workers:
            self.alive_at = now
            return None
        if now - self.alive_at > NO_WORKERS_S:
            return f"no live Dask worker for {NO_WORKERS_S:.0f} s (workers killed, out of memory or crashed)"
        return None


def _record(out: Path, manifest: dict, study: Study, record: dict, bar) -> None:
    manifest["studies"][study.key] = entry(record)
    save_manifest(out, manifest)
    bar.write(_line(study, record))
    bar.update()


def execute(args, out: Path, todo: list[Study], config: dict, hashes: dict[str, str], manifest: dict, bar) -> None:
    """Run ``todo`` on the cluster, updating the manifest per study as results arrive. When the cluster
    loses all its workers (``NO_WORKERS_S``) or its scheduler, the studies left fail with the reason."""
    from dask.distributed import as_completed

    with dask_client(args.scheduler, args.workers, len(todo)) as client:
        futures = {client.submit(run_study, s, config, hashes[s.kind], str(out),
                                 key=f"recon-batch-{s.key}-{uuid.uuid4().hex}", pure=False): s for s in todo}
        ac, waiting, watchdog = as_completed(futures), {s.key for s in todo}, _Watchdog(client)
        left = dict(futures)
        while left:
            if not ac.has_ready():
                if (reason := watchdog.lost()) is not None:
                    for future, study in left.items():
                        future.cancel()
                        _record(out, manifest, study, _failed(study, hashes[study.kind], reason), bar)
                    return
                _mark_running(out, manifest, waiting)
                time.sleep(POLL_S)
                continue
            for future in ac.next_batch(block=False):
                study = left.pop(future)
                waiting.discard(study.key)
                _record(out, manifest, study, _outcome(future, study, hashes[study.kind]), bar)


def _line(study: Study, record: dict) -> str:
    if record.get("state") != "done":
        return f"{study.name}: {record.get('state')}: {record.get('error')}"
    psnr = ", ".join(f"{m} {v['psnr']:.2f} dB" for m, v in record["metrics"].items() if "psnr" in v)
    return f"{study.name}: done, {record['slices']} slices, {record['seconds']:.1f} s" + (f", PSNR {psnr}" if psnr else "")
