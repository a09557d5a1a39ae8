"""One runner for every study: each (point, seed) becomes a RunConfig (variant overrides, budget and
warm-up scaling), runs are trained ``jobs`` at a time in spawned processes, resumable run by run, then
measured (experiments/measure.py) and read back as rows.

A run whose directory holds result.json for the same config is read back, not retrained; an
interrupted run resumes from its last checkpoint (SIGINT or SIGTERM to a study of several jobs reaches
each worker once: the runs under way save, no queued run starts); a run that diverges leaves diverged.json (its
message) and is not retried (delete that file to retry). Runs that train identically, the same config
trained on sequences of the same length (``train_length``: train at 16, run at 64 and 256), are trained
once: the shortest of them trains, and each of the others starts from a copy of its checkpoints and
only evaluates at its own T (trained_in.json names the run it took them from). Rows of an earlier invocation (its JSON) can
stand in for runs whose directories are gone: only where the config is the same (``config`` digest,
taken over the settings the JSON's ``config_fields`` lists, so that a setting added to RunConfig later,
left at its default, does not orphan them).

    result = run_study(study, "runs/horizon", jobs=2)   # {"study", "rows", "planned", "trained", ...}
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import time
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, suppress
from dataclasses import asdict, replace
from functools import partial
from multiprocessing import active_children, get_context
from pathlib import Path

import torch
from tqdm import tqdm

from smtrnn import checkpoint, interrupt, metrics
from smtrnn.config import (
    RunConfig,
    changed_fields,
    get_field,
    reset_unused,
    set_field,
    with_method_settings,
    with_task_settings,
)
from smtrnn.errors import UserError, WorkerDied
from smtrnn.experiments import measure
from smtrnn.experiments.spec import Budget, Point, Study
from smtrnn.methods import planned_steps
from smtrnn.models import TINY_SIZES, tiny_model
from smtrnn.run import build, run
from smtrnn.rundir import CONFIG_FILE, config_digest, config_fields, saved_config_matches
from smtrnn.train import Diverged

DIVERGED_FILE = "diverged.json"  # marks a finished run whose training diverged: {"note": message}
TRAINED_IN_FILE = "trained_in.json"  # a run that took its training from another's checkpoints: {"run": folder}
# at most half of SMT's steps: the dynamics warm-up, the teacher's delay, the horizon's and the length's growth
SMT_SCHEDULES = ("smt.dyn_warmup", "smt.teacher_delay", "smt.horizon_grow", "smt.length_grow")


def run_config(study: Study, point: Point, seed: int) -> RunConfig:
    """The RunConfig of one run: the base, the point's task, cell and length, the method's own settings
    and the task's (unless the study, or the variant, turns them off), the study's overrides for the task and the
    variant's, its share of the budget, and the warm-ups scaled to fit it:

    - every method trains the budget's steps (times the variant's ``steps``); smt+dmt spends the
      budget's ``dmt_steps`` of them in DMT (the variant's ``dmt_steps`` where it sets them);
    - the learning-rate warm-up of a phase is at most a tenth of its steps, SMT's schedules (the
      dynamics warm-up, the teacher's delay, the horizon's growth) at most half of the budget's SMT share (times the variant's ``steps``);
    - the decoder's future window is at most the sequence;
    - sections and settings the method does not read are left at their defaults."""
    variant = study.variant(point.variant)
    config = RunConfig.from_dict(copy.deepcopy(study.base.to_dict()))
    config.task, config.length, config.seed = point.task, point.length, seed
    config.task_options = copy.deepcopy(study.tasks.get(point.task, config.task_options))
    config.model.cell = point.cell
    overrides = {**study.task_overrides.get(point.task, {}), **variant.overrides}
    for dotted, value in overrides.items():
        set_field(config, dotted, copy.deepcopy(value))
    chosen = {*overrides, *changed_fields(study.base)}  # what the study chose is not the method's or task's
    with_method_settings(config, given=chosen)
    if study.task_settings if variant.task_settings is None else variant.task_settings:
        with_task_settings(config, given=chosen)
    budget = study.budget(point.length, point.task)
    if variant.dmt_steps is not None:
        if not 0 < variant.dmt_steps < budget.steps:
            raise UserError(
                f"variant {variant.name}: dmt_steps must be between 1 and {budget.steps - 1} "
                f"(the budget's steps at T={point.length}), got {variant.dmt_steps}"
            )
        budget = Budget(budget.steps, variant.dmt_steps)
    total = round(budget.steps * variant.steps)
    dmt_steps = budget.dmt_steps if config.method == "smt+dmt" else 0
    config.train.steps = total - dmt_steps
    config.train.warmup = min(config.train.warmup, config.train.steps // 10)
    config.dmt_train.steps = dmt_steps or config.dmt_train.steps
    config.dmt_train.warmup = min(config.dmt_train.warmup, dmt_steps // 10) if dmt_steps else config.dmt_train.warmup
    smt_share = round((budget.steps - budget.dmt_steps) * variant.steps)
    for dotted in SMT_SCHEDULES:
        set_field(config, dotted, min(get_field(config, dotted), smt_share // 2))
    config.model.future = min(config.model.future, config.length)
    reset_unused(config)
    return config


def directory(out: str | Path, point: Point, seed: int) -> Path:
    return Path(out) / point.variant / point.task / point.cell / f"T{point.length}" / f"seed{seed}"


def smoke(study: Study, points: int = 3, steps: int = 6, dmt_steps: int = 2) -> Study:
    """The one smoke version of a study: its first ``points`` points, one seed, a tiny model, a few steps
    (seconds; it checks the machinery, never a result)."""
    small = Study.from_dict(study.to_dict())
    small.preset, small.seeds = "smoke", small.seeds[:1]
    small.points = [replace(point, seeds=point.seeds[:1]) if point.seeds else point for point in small.points[:points]]
    small.rebudgeted(lambda budget: Budget(steps, dmt_steps if budget.dmt_steps else 0))
    base = small.base
    base.model = tiny_model(**{**asdict(base.model), **TINY_SIZES})
    every = lambda train: min(train.eval_every, 1)  # a study that scores during training does at every step
    base.train = replace(base.train, batch_size=4, log_every=1, eval_every=every(base.train))
    base.dmt_train = replace(base.dmt_train, batch_size=4, log_every=1, eval_every=every(base.dmt_train))
    base.smt = replace(base.smt, horizon=min(base.smt.horizon, 4), horizon_burnin=min(base.smt.horizon_burnin, 2))
    base.eval_batches = 1
    for variant in small.variants:
        variant.steps = min(variant.steps, 2.0)
        variant.dmt_steps = None if variant.dmt_steps is None else max(1, min(variant.dmt_steps, dmt_steps, steps - 1))
    return small


def configs(study: Study) -> dict[tuple, tuple[RunConfig, Point]]:
    """{(variant, task, cell, length, seed): (RunConfig, point)} for every run, in the study's order."""
    return {point.key(seed): (run_config(study, point, seed), point) for point, seed in study.keys()}


# ------------------------------------------------------------------------------------------------
# training


def outcome(config: RunConfig, folder: Path) -> dict | None:
    """A finished run's result.json, {"diverged": note} for a diverged one, None when unfinished (or
    when the directory holds another config)."""
    if not saved_config_matches(config, folder):
        return None
    if (folder / "result.json").exists():
        return checkpoint.read_json(folder / "result.json")
    if (folder / DIVERGED_FILE).exists():
        return {"diverged": checkpoint.read_json(folder / DIVERGED_FILE).get("note", "diverged")}
    return None


def train_run(config: RunConfig, folder: str, measurements: tuple[str, ...] = ()) -> None:
    """Train (or resume) one run, then take its measurements (in the worker). A diverged run is finished
    too: its message goes to diverged.json."""
    try:
        run(config, folder, progress=False)
    except Diverged as error:
        checkpoint.write_json(Path(folder) / DIVERGED_FILE, {"note": f"diverged: {error}"})
        return
    measure.take(config, Path(folder), measurements)


def training_key(config: RunConfig) -> str:
    """Runs with the same key train bitwise alike (tests/test_horizon.py): the same config trained on
    sequences of the same length, whatever T their evaluation sees."""
    trained = copy.deepcopy(config)
    trained.length, trained.train_length = config.trained_length(), 0
    return config_digest(trained)  # type: ignore[return-value]  # None only for an earlier version's fields


def shared_training(table: dict, finished: dict, pending: list) -> dict[tuple, tuple]:
    """{pending key: key of the run it takes its training from}: among runs with one training key, a
    finished run (not diverged) or else the pending one of the shortest T trains; the rest follow it."""
    by_training: dict[str, list] = {}
    for key, (config, _) in table.items():
        by_training.setdefault(training_key(config), []).append(key)
    followers = {}
    for keys in by_training.values():
        done = [key for key in keys if finished[key] is not None and "diverged" not in finished[key]]
        waiting = [key for key in keys if key in pending]
        if len(keys) < 2 or not waiting:
            continue
        leader = done[0] if done else min(waiting, key=lambda key: table[key][0].length)
        followers.update({key: leader for key in waiting if key != leader})
    return followers


def take_training(source: Path, folder: Path, name: str, config: RunConfig) -> None:
    """Make ``folder`` the run of ``config`` with the checkpoints and training log of ``source`` (``name``:
    its place in the study), whose training is this run's; the run then only evaluates (the evaluations
    logged during training are the source's, at its T). A folder that already holds a checkpoint keeps it."""
    if checkpoint.latest_checkpoint(folder) is not None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(folder / CONFIG_FILE, config.to_dict())  # the folder is this run's
    staging = folder / ".checkpoints.copy"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source / "checkpoints", staging)
    shutil.copyfile(source / metrics.FILE, folder / metrics.FILE)  # the training's log and its seconds
    checkpoint.write_json(folder / TRAINED_IN_FILE, {"run": name})
    staging.rename(folder / "checkpoints")  # last: a copy cut short leaves no checkpoint behind


def _check(table: dict, out: Path) -> None:
    """Every mistake before the first run starts, not hours into a sweep."""
    built = set()
    for key, (config, point) in table.items():
        config.validate()
        signature = (config.task, repr(sorted(config.task_options.items())), config.model.cell, config.length)
        if signature not in built:  # task options, lengths and cell sizes
            build(config)
            built.add(signature)
        if saved_config_matches(config, directory(out, point, key[-1])) is False:
            raise UserError(f"{directory(out, point, key[-1])} holds a run with a different config; use another --out")


def _work(config: RunConfig) -> int:
    """A rough cost of a run (optimiser steps x length x horizon) to order a sweep and weigh its progress."""
    horizon = max(1, config.smt.horizon) if config.method.startswith("smt") else 1
    return max(1, planned_steps(config) * config.length * (1 + horizon // 4))


def _execute(work: list, jobs: int, threads: int, measurements: tuple[str, ...]) -> Generator:
    """Yield the keys of runs as they finish: in this process for one job, else in spawned workers."""
    if jobs == 1:
        task = partial(train_run, measurements=measurements)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for key, config, folder in work:
                task(config, str(folder))
                yield key
        finally:
            torch.set_num_threads(previous)
        return
    # spawn: workers must not inherit this process's torch threads or locks (fork is unsafe with them)
    context = get_context("spawn")
    stopping = context.Event()  # set: a worker starts no further run
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(threads, stopping)
    )
    worker_task = partial(_train_in_worker, measurements=measurements)
    futures = {pool.submit(worker_task, config, str(folder)): key for key, config, folder in work}
    left = set(futures)
    try:
        with interrupt.caught():
            while left:
                done, left = wait(left, timeout=0.2, return_when=FIRST_COMPLETED)
                if signum := interrupt.pending():
                    stopping.set()
                    _signal_workers(signum)  # each saves a checkpoint at the step it reached
                    # waited for here, inside caught(): a second signal meanwhile stops them at once (below)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise interrupt.Interrupted(
                        signum,
                        f"interrupted ({interrupt.name(signum)}): the runs under way saved a checkpoint; the same "
                        "command resumes the study",
                    )
                for future in done:
                    try:
                        future.result()
                    except BrokenProcessPool:  # the pool sent SIGTERM to the others: each saves, none starts
                        stopping.set()
                        raise WorkerDied(
                            "a worker of the study died in a run (killed from outside, most often by the system "
                            "for want of memory: fewer --jobs need less); the other runs under way saved a "
                            "checkpoint, and the same command resumes every run from its last checkpoint"
                        ) from None
                    yield futures[future]
    except KeyboardInterrupt:  # a second signal: the workers stop at once too, keeping their last checkpoint
        _signal_workers(signal.SIGTERM)
        raise
    finally:
        # on an error: drop the runs not started; those running finish (and are kept for a re-run)
        pool.shutdown(wait=True, cancel_futures=True)


_stopping = None  # in a study's worker: the study's event, set when it stops


def _start_worker(threads: int, stopping) -> None:
    """A worker of a study: its own process group, so that Ctrl-C at a terminal reaches only the study,
    which passes a signal on once to each worker (a run hit twice stops without saving); between runs
    the worker ignores both signals, so that one idle or measuring is not killed (a dead worker breaks
    the pool, which then terminates the runs under way before they save)."""
    global _stopping
    _stopping = stopping
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    for signum in interrupt.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # a run catches them while it trains (interrupt.caught)
    torch.set_num_threads(threads)


def _train_in_worker(config: RunConfig, folder: str, measurements: tuple[str, ...]) -> None:
    if _stopping is not None and _stopping.is_set():  # a run queued before the study stopped does not start
        return
    try:
        train_run(config, folder, measurements)
    except interrupt.Interrupted:  # a signal reached the run (from the study, or from a broken pool)
        if _stopping is not None:
            _stopping.set()  # so no queued run starts here or in another worker
        raise


def _signal_workers(signum: int) -> None:
    for worker in active_children():
        if worker.pid is not None:
            with suppress(ProcessLookupError):
                os.kill(worker.pid, signum)


def run_study(
    study: Study,
    out: str | Path,
    jobs: int = 1,
    progress: bool = True,
    train: bool = True,
    earlier: list[dict] | None = None,
    earlier_fields: list[str] | None = None,
) -> dict:
    """Train every run of ``study`` not yet finished under ``out`` (longest first, ``jobs`` at a time) and
    return {"study", "out", "rows", "planned", "trained", "reused", "carried", "wall_seconds", "jobs",
    "config_fields"}. With
    ``train=False`` nothing is trained or measured: the rows are the runs already finished (no checkpoint
    is loaded). ``earlier``: rows of an earlier invocation's JSON; a run not finished under ``out`` takes
    its earlier row when that row's config digest is this run's (it is then neither trained nor counted
    as reused, but ``carried``, and the row says ``"carried": true``); ``earlier_fields``: the settings
    that JSON's digests cover (its ``config_fields``; None for a JSON written before it had them: every
    setting of today's config)."""
    if jobs < 1:
        raise UserError(f"jobs must be positive, got {jobs}")
    out = Path(out)
    table = configs(study)
    if train:
        _check(table, out)
    folders = {key: directory(out, point, key[-1]) for key, (_, point) in table.items()}
    finished = {key: outcome(config, folders[key]) for key, (config, _) in table.items()}
    carried = _carried(table, finished, earlier or [], earlier_fields)
    pending = sorted(
        (key for key in table if finished[key] is None and key not in carried), key=lambda key: -_work(table[key][0])
    )
    started = time.perf_counter()
    if train and pending:
        followers = shared_training(table, finished, pending)
        # a follower only evaluates
        weights = {key: 1 if key in followers else _work(table[key][0]) for key in pending}
        bar = tqdm(
            total=sum(weights.values()),
            disable=not progress,
            dynamic_ncols=True,
            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
        )
        leaders = [key for key in pending if key not in followers]
        count = 0
        with bar:
            for wave in (leaders, [key for key in pending if key in followers]):
                work = []
                for key in wave:
                    source = followers.get(key)
                    led = finished[source] if source is not None else None
                    # a leader that diverged leaves nothing to take: the run trains (and diverges) itself
                    if source is not None and led is not None and "diverged" not in led:
                        take_training(
                            folders[source], folders[key], str(folders[source].relative_to(out)), table[key][0]
                        )
                    work.append((key, table[key][0], folders[key]))
                with closing(_execute(work, jobs, study.threads_per_job, tuple(study.measurements))) as done:
                    for key in done:
                        count += 1
                        bar.update(weights[key])
                        bar.set_description_str(f"{study.name}: {count}/{len(pending)} runs")
                        finished[key] = outcome(table[key][0], folders[key])
                        if progress:
                            bar.write(describe(key, finished[key] or {}))
    if train:  # runs finished by an earlier invocation that was stopped before measuring
        for key, result in finished.items():
            if result is not None and "diverged" not in result:
                measure.take(table[key][0], folders[key], tuple(study.measurements))
    rows = []
    for key, (config, _) in table.items():
        if (result := finished[key]) is not None:
            rows.append(row(study, key, config, result, folders[key]))
        elif key in carried:
            rows.append(carried[key])
    completed = sum(result is not None for result in finished.values())
    return {
        "study": study.to_dict(),
        "out": str(out),
        "rows": rows,
        "planned": len(table),
        "trained": len(pending) if train else 0,
        "reused": completed - (len(pending) if train else 0),
        "carried": len(carried),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "jobs": jobs,
        "config_fields": config_fields(),
    }


def _carried(table: dict, finished: dict, earlier: list[dict], fields: list[str] | None) -> dict[tuple, dict]:
    """{key: earlier row} for the runs not finished here whose earlier row was asked for the same config
    (as of ``fields``); the row then takes today's digest, so the JSON written next is all of one kind."""
    by_key = {(r["variant"], r["task"], r["cell"], r["length"], r["seed"]): r for r in earlier}
    carried = {}
    for key, (config, _) in table.items():
        found = by_key.get(key)
        if finished[key] is not None or found is None:
            continue
        digest = config_digest(config, fields)  # None: asks for a setting that JSON's version did not have
        if digest is not None and found.get("config") == digest:
            carried[key] = {**found, "config": config_digest(config), "carried": True}
    return carried


def describe(key: tuple, result: dict) -> str:
    variant, task, cell, length, seed = key
    score = "diverged" if "diverged" in result else f"accuracy {result.get('accuracy', float('nan')):.3f}"
    return f"{variant} {task} {cell} T={length} seed {seed}: {score}"


def row(study: Study, key: tuple, config: RunConfig, result: dict, folder: Path) -> dict:
    """One row of the study's JSON: the run's point and seed, its method, the study's keys of its
    result.json, and its measurements (null where a measurement is missing)."""
    variant, task, cell, length, seed = key
    entry = {"variant": variant, "task": task, "cell": cell, "length": length, "seed": seed, "method": config.method}
    entry["config"] = config_digest(config)
    entry.update({name: result.get(name) for name in study.row_keys})
    entry["steps"] = result.get("steps", planned_steps(config))
    entry.update(measure.read(folder, tuple(study.measurements)))
    entry["note"] = result.get("diverged")
    shared = folder / TRAINED_IN_FILE
    entry["trained_in"] = checkpoint.read_json(shared)["run"] if shared.exists() else None
    return entry
