"""One runner for every experiment: a list of points (key, RunConfig, directory) trained ``jobs`` at a
time, each in its own spawned process, resumable point by point.

A point whose directory holds result.json for the same config is read back, not retrained; an
interrupted point resumes from its last checkpoint; a run that diverges leaves diverged.json (its
message) and is not retried (delete that file to retry). ``compare``, ``realdata`` and the horizon
study are each a list of points plus a report over this runner.

    done = sweep([(key, config, Path("runs/x") / name), ...], jobs=2)
    done["outcomes"][key]   # the point's result.json, or {"diverged": note}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm import tqdm

from smtrnn import checkpoint
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.run import build, run, saved_config_matches
from smtrnn.train import Diverged

DIVERGED_FILE = "diverged.json"  # marks a finished point whose training diverged: {"note": message}

Point = tuple[Hashable, RunConfig, Path]


def planned_steps(config: RunConfig) -> int:
    return config.train.steps + (config.dmt_train.steps if config.method == "smt+dmt" else 0)


def estimated_work(config: RunConfig) -> int:
    """A rough cost of a run (optimiser steps x sequence length x horizon) to order and time a sweep by."""
    horizon = max(1, config.smt.horizon) if config.method.startswith("smt") else 1
    return max(1, planned_steps(config) * config.length * (1 + horizon // 4))


def train_point(config: RunConfig, directory: str, finish: Callable[[RunConfig, str], None] | None = None) -> None:
    """Train (or resume) one point, then ``finish(config, directory)`` (extra measurements, in the
    worker). A diverged run is finished too: its message goes to diverged.json."""
    try:
        run(config, directory, progress=False)
    except Diverged as error:
        checkpoint.write_json(Path(directory) / DIVERGED_FILE, {"note": f"diverged: {error}"})
        return
    if finish is not None:
        finish(config, directory)


def outcome(config: RunConfig, directory: Path) -> dict | None:
    """A finished point's result.json, {"diverged": note} for a diverged one, None when unfinished
    (or when the directory holds another config)."""
    if not saved_config_matches(config, directory):
        return None
    if (directory / "result.json").exists():
        return checkpoint.read_json(directory / "result.json")
    if (directory / DIVERGED_FILE).exists():
        return {"diverged": checkpoint.read_json(directory / DIVERGED_FILE).get("note", "diverged")}
    return None


def check(points: Iterable[Point]) -> None:
    """Every mistake before the first run starts, not hours into a sweep."""
    built = set()
    for _, config, directory in points:
        config.validate()
        signature = (config.task, repr(sorted(config.task_options.items())), config.model.cell, config.length)
        if signature not in built:  # task options, lengths and cell sizes
            build(config)
            built.add(signature)
        if saved_config_matches(config, directory) is False:
            raise UserError(f"{directory} holds a run with a different config; use another --out")


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _execute(work: list[Point], jobs: int, threads: int, finish=None):
    """Yield the keys of points as they finish: in this process for one job, else in spawned workers."""
    if jobs == 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for key, config, directory in work:
                train_point(config, str(directory), finish)
                yield key
        finally:
            torch.set_num_threads(previous)
        return
    # spawn: workers must not inherit this process's torch threads or locks (fork is unsafe with them)
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(threads,)
    )
    try:
        futures = {pool.submit(train_point, config, str(directory), finish): key for key, config, directory in work}
        for future in as_completed(futures):
            future.result()
            yield futures[future]
    finally:
        # on an error: drop the points not started; those running finish (and are kept for a re-run)
        pool.shutdown(wait=True, cancel_futures=True)


def sweep(
    points: list[Point],
    jobs: int = 1,
    threads_per_job: int = 1,
    progress: bool = True,
    name: str = "sweep",
    describe: Callable[[Hashable, dict], str] | None = None,
    finish: Callable[[RunConfig, str], None] | None = None,
) -> dict:
    """Train every point not yet finished, longest first. Returns {"outcomes": {key: outcome} in the
    points' order, "trained", "reused", "wall_seconds"}.

    ``describe(key, outcome)`` -> a line printed as each point finishes (with ``progress``);
    ``finish``: see train_point (a module-level function: workers receive it by reference)."""
    if jobs < 1 or threads_per_job < 1:
        raise UserError(f"jobs and threads per job must be positive, got {jobs} and {threads_per_job}")
    check(points)
    by_key = {key: (config, Path(directory)) for key, config, directory in points}
    if len(by_key) != len(points):
        raise ValueError("sweep: two points share a key")
    pending = sorted(
        (key for key in by_key if outcome(*by_key[key]) is None), key=lambda key: -estimated_work(by_key[key][0])
    )
    work = {key: estimated_work(by_key[key][0]) for key in pending}
    # the bar counts estimated work, not runs, so that its ETA weighs a long run above a short one
    bar = tqdm(
        total=sum(work.values()),
        disable=not (progress and pending),
        dynamic_ncols=True,
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    counter = lambda count: f"{name}: {count}/{len(pending)} runs ({len(by_key) - len(pending)} done before)"
    bar.set_description_str(counter(0))
    started = time.perf_counter()
    jobs_list = [(key, *by_key[key]) for key in pending]
    with bar, closing(_execute(jobs_list, jobs, threads_per_job, finish)) as finished:
        for count, key in enumerate(finished, 1):
            bar.update(work[key])
            bar.set_description_str(counter(count))
            if progress and describe is not None:
                bar.write(describe(key, outcome(*by_key[key]) or {}))
    return {
        "outcomes": {key: outcome(*by_key[key]) for key in by_key},
        "trained": len(pending),
        "reused": len(by_key) - len(pending),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
