"""`atlas worker` and `atlas queue status`: the scoring fleet on a Postgres atlas."""

from __future__ import annotations

import typer
from rich.table import Table

from atlas.cli.common import ctx_obj, out_console, print_json
from atlas.errors import UsageError
from atlas.queue import require_queue
from atlas.queue.worker import WorkerOptions, expand_devices, run_workers
from atlas.scoring.placement import human_count, parse_memory


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        ctx: typer.Context,
        device: str = typer.Option(
            None, "--device", help="Torch device to score on, e.g. cuda:0 (default: the best)."
        ),
        devices: str = typer.Option(
            None, "--devices", help="Start one worker process per device: cuda:0,cuda:1 or all."
        ),
        shard: bool = typer.Option(
            False, "--shard", help="With --devices: one worker splitting large models across them."
        ),
        max_memory: str = typer.Option(
            None, "--max-memory", help="Weights each device may take, e.g. 40GiB (default: free)."
        ),
        until_empty: bool = typer.Option(
            False, "--until-empty", help="Exit 0 once no job is waiting or running."
        ),
        concurrency: int = typer.Option(
            1, "--concurrency", min=1, help="Jobs run at once by this worker (1 for a GPU)."
        ),
        keep_weights: bool = typer.Option(
            False, "--keep-weights", help="Keep downloaded weights under ATLAS_HOME/weights."
        ),
    ) -> None:
        """Claim and score queued models (Postgres store); SIGTERM finishes the current model."""
        obj = ctx_obj(ctx)
        if device and devices:
            raise UsageError("give --device or --devices, not both")
        listed = expand_devices(devices) if devices else []
        if shard and len(listed) < 2:
            raise UsageError("--shard needs --devices with two or more devices, e.g. cuda:0,cuda:1")
        budget = parse_memory(max_memory) if max_memory is not None else None
        atlas = obj.atlas()
        require_queue(atlas.store)
        if listed and not shard:
            args = [*(["--until-empty"] if until_empty else []), "--concurrency", str(concurrency),
                    *(["--keep-weights"] if keep_weights else []),
                    *(["--max-memory", max_memory] if max_memory is not None else [])]  # fmt: skip
            code = run_workers(listed, args, obj.db_url, say=obj.info, quiet=obj.quiet)
        else:
            options = WorkerOptions(
                ",".join(listed) if shard else device, until_empty, concurrency, keep_weights,
                budget,
            )  # fmt: skip
            code = atlas.run_worker(options, say=obj.info)
        raise typer.Exit(code)

    group = typer.Typer(help="The scoring queue (Postgres stores).", no_args_is_help=True)
    app.add_typer(group, name="queue")

    @group.command("status")
    def status(
        ctx: typer.Context,
        json: bool = typer.Option(False, "--json", help="Print JSON."),
        limit: int = typer.Option(50, "--limit", "-n", min=0, help="Show at most N jobs."),
    ) -> None:
        """Jobs by state with models, attempts and last error; live workers and heartbeats."""
        info = ctx_obj(ctx).atlas().queue_status(limit=limit)
        if json:
            print_json(info.as_dict())
            return
        out_console.print(f"jobs: {info.line()}")
        table = Table("job", "state", "model", "queue", "text set", "attempts", "last error")
        for j in info.jobs:
            table.add_row(str(j["id"]), j["state"], j["model"] or j["task"], j["queue"],
                          j["textset"] or "", str(j["attempts"]),
                          j["last_error"] or "")  # fmt: skip
        if info.jobs:
            out_console.print(table)
        workers = Table("worker", "device", "holds", "host", "pid", "model", "heartbeat")
        for w in info.workers:
            age = f"{w['seconds_since_heartbeat']:.0f} s ago" + (" (silent)" if w["silent"] else "")
            holds = human_count(w["max_parameters"]) if w["max_parameters"] else ""
            workers.add_row(str(w["id"]), w["device"] or "", holds, w["host"] or "",
                            str(w["pid"] or ""), w["model"] or "idle", age)  # fmt: skip
        if info.workers:
            out_console.print(workers)
