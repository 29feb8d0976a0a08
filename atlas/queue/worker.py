"""`atlas worker`: a procrastinate worker process that scores queued models on its device(s).

A worker listens to `atlas` and to the size queues of the models it can hold (its devices'
free memory, or `max_memory` per device; several devices with `--shard`), so a model too large
for it waits for a worker that can load it instead of failing with out-of-memory.

Every worker heartbeats; each checks for stalled jobs (running on a worker silent for
`ATLAS_STALLED_AFTER` seconds) every few seconds and retries them. With `until_empty` it exits
once no job is waiting or running. SIGTERM (or Ctrl-C) finishes the current model and exits; a
second one aborts it: the job goes back on the queue at once for another worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from atlas.errors import UsageError
from atlas.hub import client
from atlas.queue import QUEUE, ensure_queue_schema, is_atlas_queue, queues_for
from atlas.queue.app import make_app
from atlas.queue.tasks import WorkerEnv
from atlas.scoring import placement
from atlas.settings import Settings
from atlas.store import Store
from atlas.store import queue as queries

# Seconds between polls for new jobs (LISTEN/NOTIFY wakes workers sooner for new jobs).
POLL_SECONDS = 2.0
ABORT_EXIT = 143


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker process runs."""

    device: str | None = None
    until_empty: bool = False
    concurrency: int = 1
    keep_weights: bool = False
    max_memory: int | None = None  # bytes of weights each device may take (None: what is free)


def worker_device(requested: str | None) -> str | None:
    """The torch device(s) a worker scores on: `cuda:N`, `cpu`, a list such as
    `cuda:0,cuda:1` (one model split across them), or None (the scorer's best).

    The one place a worker's device is decided. torch and transformers are loaded here, before
    the first job is claimed, and a device this machine does not have is a UsageError rather
    than a job that fails.
    """
    import torch
    import transformers  # noqa: F401  (its import takes seconds: not inside the first job)

    if requested is None or requested in ("", "auto"):
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for name in placement.parse_devices(requested):
        if name.startswith("cuda"):
            index = name.partition(":")[2]
            wanted = int(index) if index.isdigit() else 0
            if wanted >= count:
                raise UsageError(f"--device {requested}: torch sees {count} CUDA device(s) here")
    return requested


def worker_capacity(device: str | None, max_memory: int | None = None) -> int:
    """The most parameters a worker on `device` (None: the best) can hold, in its dtype."""
    import torch

    from atlas.scoring.loading import pick_dtype

    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    devices = tuple("cuda:0" if d == "cuda" else d for d in placement.parse_devices(device))
    dtype = str(pick_dtype("auto", devices[0])).removeprefix("torch.")
    return placement.capacity(placement.free_memory(devices), dtype, max_memory)


def expand_devices(spec: str) -> list[str]:
    """`cuda:0,cuda:1` -> that list; `all` -> every CUDA device torch sees."""
    if spec.strip() == "all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError("--devices all: torch sees no CUDA device on this machine")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices:
        raise UsageError("--devices needs a list like cuda:0,cuda:1, or all")
    if len(set(devices)) != len(devices):
        raise UsageError(f"--devices lists a device twice: {spec}")
    return devices


def run_worker(
    store: Store,
    settings: Settings,
    options: WorkerOptions,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run one worker until stopped (or, with `until_empty`, until the queue is done).

    Returns the exit code: 0, or 143 when a second signal aborted the current job.
    """
    say = say or (lambda _m: None)
    ensure_queue_schema(store)
    _quiet_procrastinate()
    return asyncio.run(_Runner(store, settings, options, say).run())


class _Runner:
    def __init__(
        self, store: Store, settings: Settings, options: WorkerOptions, say: Callable[[str], None]
    ) -> None:
        self.store, self.settings, self.options = store, settings, options
        self.device = worker_device(options.device)
        self.capacity = worker_capacity(self.device, options.max_memory)
        self.queues = queues_for(self.capacity)
        self.stalled_after = settings.stalled_after
        # Worker rows are deleted only long after their jobs were retried: a slow worker that
        # was thought dead must still find its row (its job ids refer to it).
        self.forget_after = max(10 * self.stalled_after, 600.0)
        self.signals = 0
        self.tag = f"{self.device or 'auto'} ({socket.gethostname()}:{os.getpid()})"
        self.say = lambda message: say(f"{self.tag} {message}")
        self.env = WorkerEnv(
            store=store, settings=settings, device=self.device,
            keep_weights=options.keep_weights, say=self.say,
        )  # fmt: skip

    async def run(self) -> int:
        from procrastinate.worker import Worker

        app = make_app(self.store.url, self.settings)
        beat = max(min(10.0, self.stalled_after / 3), 0.2)
        async with app.open_async():
            self.app = app
            self.worker = Worker(
                app, queues=self.queues, name="atlas", concurrency=self.options.concurrency,
                wait=True, fetch_job_polling_interval=POLL_SECONDS,
                abort_job_polling_interval=POLL_SECONDS, install_signal_handlers=False,
                update_heartbeat_interval=beat, stalled_worker_timeout=self.forget_after,
                additional_context={"atlas": self.env},
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            mode = "until the queue is empty" if self.options.until_empty else "until stopped"
            held = placement.human_count(self.capacity)
            self.say(f"worker started on queue {QUEUE!r}, models up to {held} parameters, {mode}")
            watch = asyncio.create_task(self._watch())
            try:
                await self.worker.run()
            finally:
                watch.cancel()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        self.say("worker stopped")
        return 0

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        name = signal.Signals(sig).name
        if self.signals == 1:
            running = ", ".join(self.env.running.values()) or "the current model, if any"
            self.say(f"{name}: finishing {running}, then exiting (send it again to abort)")
            self.worker.stop()
        else:
            self.say(f"{name} again: aborting; the job goes back on the queue")
            asyncio.get_running_loop().create_task(self._abort())

    async def _abort(self) -> None:
        """Put running jobs back on the queue now, then leave without finishing them."""
        from procrastinate import utils

        for job_id, repo in list(self.env.running.items()):
            try:
                await self.app.job_manager.retry_job_by_id_async(job_id, retry_at=utils.utcnow())
                await asyncio.to_thread(_requeue_model, self.store, repo)
            except Exception as exc:  # the stalled-job check will catch it instead
                self.say(f"could not requeue job {job_id}: {exc}")
            if not self.options.keep_weights:
                client.remove_weights(self.settings.weights_dir, repo)
        if self.worker.worker_id is not None:
            with suppress(Exception):
                await self.app.job_manager.unregister_worker(self.worker.worker_id)
        sys.stderr.flush()
        os._exit(ABORT_EXIT)

    async def _watch(self) -> None:
        """Describe this worker, retry stalled jobs, and stop an `until_empty` worker when done."""
        self._described: int | None = None
        self._last_stall_check = 0.0
        failing = False
        while True:
            await asyncio.sleep(0.5)
            try:
                if await self._watch_once():
                    return
                failing = False
            except Exception as exc:  # the database may be back on the next round
                if not failing:
                    self.say(f"checking the queue failed: {client.short(exc)}")
                failing = True

    async def _watch_once(self) -> bool:
        worker_id = self.worker.worker_id
        if worker_id is not None and worker_id != self._described:
            info = {
                "device": self.device or "auto", "host": socket.gethostname(),
                "pid": os.getpid(), "concurrency": self.options.concurrency,
                "max_parameters": self.capacity, "started_at": time.time(),
            }  # fmt: skip
            await asyncio.to_thread(queries.describe_worker, self.store, worker_id, info)
            self._described = worker_id
        every = max(min(self.stalled_after / 3, 30.0), 0.5)
        if time.monotonic() - self._last_stall_check >= every:
            self._last_stall_check = time.monotonic()
            await self._retry_stalled()
        idle = self.options.until_empty and not self.env.running and not self.signals
        if idle and await self._outstanding() == 0:
            await self._retry_stalled()
            if await self._outstanding() == 0:
                self.say("the queue is empty")
                self.worker.stop()
                return True
        return False

    async def _outstanding(self) -> int:
        return await asyncio.to_thread(queries.outstanding, self.store, self.queues)

    async def _retry_stalled(self) -> None:
        try:
            stalled = await self.app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=self.stalled_after
            )
        except Exception as exc:
            self.say(f"checking for stalled jobs failed: {exc}")
            return
        for job in stalled:
            if not is_atlas_queue(job.queue):
                continue
            if job.worker_id is not None and job.worker_id == self.worker.worker_id:
                continue
            try:
                await self.app.job_manager.retry_job(job)
            except Exception:  # another worker retried it first
                continue
            model = job.task_kwargs.get("repo_id") or job.task_name
            self.say(f"job {job.id} ({model}) stalled on a silent worker: back on the queue")
        with suppress(Exception):
            await self.app.job_manager.prune_stalled_workers(self.forget_after)
            await asyncio.to_thread(queries.forget_workers, self.store)


def _requeue_model(store: Store, repo: str) -> None:
    row = store.model(repo)
    if row is not None and row.status == "scoring":
        store.set_status(repo, "queued")


def _quiet_procrastinate() -> None:
    """procrastinate logs through `logging`; atlas prints its own one-line messages."""
    debug = os.environ.get("ATLAS_DEBUG", "") not in ("", "0")
    logger = logging.getLogger("procrastinate")
    if not debug:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def run_workers(
    devices: Sequence[str],
    args: Sequence[str],
    database_url: str | None,
    say: Callable[[str], None] | None = None,
    *,
    quiet: bool = False,
) -> int:
    """Start one `atlas worker --device D` process per device; forward signals; wait for all.

    Returns the largest exit code of the workers.
    """
    say = say or (lambda _m: None)
    env = dict(os.environ)
    if database_url:
        env["ATLAS_DATABASE_URL"] = database_url  # not on the command line: it may hold a password
    root = ["--quiet"] if quiet else []
    commands = [
        [sys.executable, "-m", "atlas", *root, "worker", "--device", d, *args] for d in devices
    ]
    procs = [subprocess.Popen(command, env=env) for command in commands]
    say(f"started {len(procs)} worker process(es): {', '.join(devices)}")

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # SIGTERM is forwarded; a Ctrl-C already reaches every process of the terminal's group.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
    }
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max((abs(c) for c in codes), default=0)
