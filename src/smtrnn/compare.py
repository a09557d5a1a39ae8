"""``smtrnn compare``: a grid of runs, tasks x cells x methods x lengths x seeds (docs/method.md sections 6 and 9).

Each grid point is one RunConfig trained by ``smtrnn.run.run`` in its own directory
OUT/<task>/<cell>/<method>/T<length>/seed<seed>, so the grid is resumable point by point: a point
whose result.json exists (with the same config) is read back, not retrained, and an interrupted
point resumes from its last checkpoint. A run that diverges is a row with accuracy null, recorded
in its directory's diverged.json and not retried (delete that file to retry). The points run
through sweep.py, longest first, ``jobs`` at a time in spawned worker processes.

    grid = customise(preset("cpu"), cells=["tanh"])
    result = compare(grid, "runs/compare", jobs=2)   # {"rows": [...], "wall_seconds": ..., ...}
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from smtrnn import checkpoint
from smtrnn.cells import CELLS
from smtrnn.config import METHODS as RUN_METHODS
from smtrnn.config import RunConfig
from smtrnn.errors import UserError, check_choices
from smtrnn.methods import DMTConfig, SMTConfig
from smtrnn.models import ModelConfig, tiny_model
from smtrnn.sweep import outcome, planned_steps, sweep
from smtrnn.tasks import TASKS, make_task
from smtrnn.train import TrainConfig

# "bptt-10x": BPTT with ten times the point's step budget, about SMT->DMT's wall time at T <= 64 (an
# SMT step with the horizon costs ~10 BPTT steps there): the equal-wall-time baseline
LONG_BPTT = {"bptt-10x": 10}
METHODS = (*(method for method in RUN_METHODS if method != "dmt"), *LONG_BPTT)  # dmt alone needs --init
RESULT_KEYS = (
    "accuracy",
    "seconds",
    "steps",
    "chance",
    "teacher_accuracy",
    "readout_accuracy",  # the RNN's readout on the teacher's memories m*_t (SMT rows)
    "one_step_accuracy",  # the readout on one cell step from them, f(m*_{t-1}, x_t) (SMT rows)
    "loss",
    "sequential_depth",
)
DIAGNOSTICS = (
    "rnn_effective_rank",
    "teacher_effective_rank",
    "rnn_pairwise_distance",
    "teacher_pairwise_distance",
    "drift",
    "relative_drift",
)


@dataclass
class Budget:
    steps: int  # optimiser steps of every method at this length (smt+dmt: SMT and DMT together)
    dmt_steps: int  # of which smt+dmt spends this many in DMT


# The CPU grid's step budget by sequence length: the one place to tune it. A length between two
# entries takes the next longer entry's budget; a longer one takes the last entry's. T=64 is the
# default recipe's budget (1,200 SMT + 300 DMT steps, the demo's); T=16 is easy enough for a third of it;
# T=256 gets less than the recipe's 2,300 steps to keep the grid to about 3.3 hours on two cores
# (6 h 32 min of single-thread training summed over its 201 runs, as docs/results.md records it).
# Measured on one core, an SMT step with the horizon (K=16, S=8) takes ~0.1 s at T <= 64 and ~0.4 s
# at T=256, a BPTT step ~0.01 s and ~0.04 s.
CPU_BUDGETS = {
    16: Budget(steps=500, dmt_steps=100),
    64: Budget(steps=1500, dmt_steps=300),
    256: Budget(steps=1250, dmt_steps=250),
}


def cpu_budget(length: int) -> Budget:
    for limit in sorted(CPU_BUDGETS):
        if length <= limit:
            return CPU_BUDGETS[limit]
    return CPU_BUDGETS[max(CPU_BUDGETS)]


@dataclass(frozen=True)
class Point:
    task: str
    cell: str
    method: str
    length: int
    seed: int

    def directory(self, out: str | Path) -> Path:
        return Path(out) / self.task / self.cell / self.method / f"T{self.length}" / f"seed{self.seed}"


@dataclass
class Grid:
    """What to run, and how every point is configured. Defaults are the CPU grid's settings."""

    tasks: list[tuple[str, dict]]  # (registered task name, its options)
    cells: list[str]
    methods: list[str]
    lengths: list[int]
    seeds: list[int]
    model: ModelConfig = field(default_factory=ModelConfig)  # the library's defaults: the recipe
    budget: Callable[[int], Budget] = cpu_budget
    steps: int | None = None  # replaces the budget's total at every length
    dmt_steps: int | None = None  # replaces the budget's DMT share (default: the budget's fraction of steps)
    train: TrainConfig = field(default_factory=lambda: RunConfig().train)
    dmt_train: TrainConfig = field(default_factory=lambda: RunConfig().dmt_train)
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    eval_batches: int = 8
    generalisation: bool = True  # evaluate every run at 2T, 4T, 8T too
    # which (task, cell, method, length) combinations to run; None: the whole product
    include: Callable[[str, str, str, int], bool] | None = field(default=None, compare=False)

    def points(self) -> list[Point]:
        return [
            Point(task, cell, method, length, seed)
            for task, _ in self.tasks
            for cell in self.cells
            for method in self.methods
            for length in self.lengths
            for seed in self.seeds
            if self.include is None or self.include(task, cell, method, length)
        ]

    def budget_at(self, length: int) -> Budget:
        planned = self.budget(length)
        steps = planned.steps if self.steps is None else self.steps
        if self.dmt_steps is not None:
            return Budget(steps, self.dmt_steps)
        return Budget(steps, round(steps * planned.dmt_steps / planned.steps))

    def run_config(self, point: Point) -> RunConfig:
        """The point's RunConfig. Every method gets the same model and the same total number of
        optimiser steps; smt+dmt splits them between its two phases."""
        budget = self.budget_at(point.length)
        factor = LONG_BPTT.get(point.method, 1)
        if factor > 1:
            budget = Budget(budget.steps * factor, budget.dmt_steps)
        config = RunConfig(
            task=point.task,
            length=point.length,
            method="bptt" if factor > 1 else point.method,
            seed=point.seed,
            task_options=copy.deepcopy(dict(self.tasks)[point.task]),
            eval_batches=self.eval_batches,
            length_generalisation=self.generalisation,
            # the decoder's future window cannot be longer than the sequence
            model=replace(self.model, cell=point.cell, future=min(self.model.future, point.length)),
            smt=replace(self.smt),
            dmt=replace(self.dmt),
        )
        smt_steps = budget.steps - budget.dmt_steps if point.method == "smt+dmt" else budget.steps
        # warm-ups scale down with short budgets: at most a tenth of the phase (SMT's dynamics ramp, the
        # teacher's delay and the horizon's growth: half; at T=64 all three are the recipe's)
        config.train = replace(self.train, steps=smt_steps, warmup=min(self.train.warmup, smt_steps // 10))
        config.dmt_train = replace(
            self.dmt_train, steps=budget.dmt_steps, warmup=min(self.dmt_train.warmup, budget.dmt_steps // 10)
        )
        config.smt.dyn_warmup = min(self.smt.dyn_warmup, smt_steps // 2)
        config.smt.teacher_delay = min(self.smt.teacher_delay, smt_steps // 2)
        config.smt.horizon_grow = min(self.smt.horizon_grow, smt_steps // 2)
        return config

    def validate(self) -> None:
        check_choices("compare", "tasks", [name for name, _ in self.tasks], sorted(TASKS))
        check_choices("compare", "cells", self.cells, CELLS)
        check_choices("compare", "methods", self.methods, METHODS)
        check_choices("compare", "lengths", self.lengths)
        check_choices("compare", "seeds", self.seeds)
        for length in self.lengths:
            if length < 1:
                raise UserError(f"length must be positive, got {length}")
        for seed in self.seeds:
            if seed < 0:
                raise UserError(f"seeds must be non-negative, got {seed}")
        if not self.points():
            raise UserError("compare: the grid's filter leaves no point to run")
        for length in self.lengths:
            budget = self.budget_at(length)
            if budget.steps < 1 or not 0 <= budget.dmt_steps < budget.steps:
                raise UserError(
                    f"compare at length {length}: need steps >= 1 and 0 <= dmt steps < steps, "
                    f"got {budget.steps} steps and {budget.dmt_steps} dmt steps"
                )


def _cpu_points(task: str, cell: str, method: str, length: int) -> bool:
    """The CPU grid's points (about 3.3 hours on two cores; the whole product would take more than 12 hours):
    the tanh cell on every family at T=16 and 64, and on retrieval and parity at T=256; GRU, MLP and the
    Transformer cell on every family at T=16 (docs/horizon.md runs them on retrieval up to T=256); BPTT
    at ten times the steps (equal wall time) with the tanh cell at T=64 on retrieval, stack and parity."""
    if method == "bptt-10x":
        return cell == "tanh" and length == 64 and task in ("retrieval", "stack", "parity")
    if cell != "tanh":
        return length == 16
    return length < 256 or task in ("retrieval", "parity")


def cpu_grid() -> Grid:
    """The committed CPU grid: the five synthetic task families and parity (docs/method.md section 9), the
    library's default SMT->DMT recipe against BPTT with the same cell and optimiser steps, three lengths,
    three seeds, the points chosen by ``_cpu_points``. (Truncated BPTT is one --methods away.)"""
    return Grid(
        tasks=[
            ("retrieval", {"values": 8}),
            ("copy", {"values": 8, "reverse": False}),
            ("stack", {"symbols": 4, "capacity": 10}),
            ("kv", {"pairs": 4, "key_vocab": 16, "value_vocab": 16}),
            ("modular", {"modulus": 7}),
            ("parity", {}),
        ],
        cells=["tanh", "gru", "mlp", "transformer"],
        methods=["bptt", "smt+dmt", "bptt-10x"],
        lengths=[16, 64, 256],
        seeds=[0, 1, 2],
        include=_cpu_points,
    )


def full_grid() -> Grid:
    """Every family and length of the CPU grid with every method and cell (the Transformer cell up to T=64),
    and the recipe's full budget at T=256 (2,300 steps): more than 12 hours on two cores (an estimate
    from the CPU grid's times; not run for the committed page)."""
    budgets = {**CPU_BUDGETS, 256: Budget(steps=2300, dmt_steps=300)}
    grid = cpu_grid()
    return replace(
        grid,
        include=lambda task, cell, method, length: (method != "bptt-10x" and cell != "transformer") or length <= 64,
        budget=lambda length: budgets[min((key for key in budgets if key >= length), default=max(budgets))],
    )


def smoke_grid() -> Grid:
    """Seconds-long: a tiny model, a few steps, to check the machinery (not a result)."""
    return Grid(
        tasks=[("retrieval", {"values": 4}), ("parity", {})],
        cells=["tanh"],
        methods=["bptt", "smt+dmt"],
        lengths=[16],
        seeds=[0],
        model=tiny_model(),
        budget=lambda length: Budget(steps=6, dmt_steps=2),
        train=TrainConfig(batch_size=4, warmup=1, log_every=2),
        dmt_train=TrainConfig(batch_size=4, lr=1e-3, warmup=1, log_every=2),
        smt=SMTConfig(dyn_warmup=2, horizon=4, horizon_grow=2),
        eval_batches=1,
    )


PRESETS = {"cpu": cpu_grid, "full": full_grid, "smoke": smoke_grid}


def preset(name: str) -> Grid:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def customise(grid: Grid, tasks: list[str] | None = None, **overrides) -> Grid:
    """``grid`` with the given fields replaced (None: keep). ``tasks`` are names; a task of the
    preset keeps its options there, any other registered task runs with its defaults."""
    given = {name: value for name, value in overrides.items() if value is not None}
    if tasks is not None:
        known = dict(grid.tasks)
        given["tasks"] = [(name, copy.deepcopy(known.get(name, {}))) for name in tasks]
    return replace(grid, **given)


def row_from_result(config: RunConfig, result: dict, method: str | None = None) -> dict:
    """One results.json row from a run's outcome (see sweep.outcome; a key the result lacks is null).
    ``method``: the grid's name of the method when it differs from the config's (bptt-10x)."""
    diagnostics = result.get("diagnostics") or {}
    row = {
        "task": config.task,
        "cell": config.model.cell,
        "method": method or config.method,
        "length": config.length,
        "seed": config.seed,
    }
    row.update({key: result.get(key) for key in RESULT_KEYS})
    row.update({key: diagnostics.get(key) for key in DIAGNOSTICS})
    row.update(generalisation=result.get("generalisation"), note=result.get("diverged"))
    if "diverged" in result:
        row.update(
            steps=planned_steps(config),
            chance=getattr(make_task(config.task, **config.task_options), "chance_accuracy", None),
        )
    return row


def compare(
    grid: Grid,
    out: str | Path = "runs/compare",
    jobs: int = 1,
    threads_per_job: int = 1,
    progress: bool = True,
    train: bool = True,
) -> dict:
    """Run every point of ``grid`` not yet finished under ``out``; write and return its rows.
    With ``train=False`` nothing is trained: the rows are the points already finished.

    Returns {"rows", "planned", "task_options", "wall_seconds", "trained", "reused", "jobs",
    "threads_per_job"}; the rows, in grid order, are also written to OUT/results.json."""
    if jobs < 1 or threads_per_job < 1:
        raise UserError(f"jobs and threads per job must be positive, got {jobs} and {threads_per_job}")
    out = Path(out)
    grid.validate()
    configs = {point: grid.run_config(point) for point in grid.points()}
    planned = len(configs)
    if not train:
        configs = {point: config for point, config in configs.items() if outcome(config, point.directory(out))}

    def describe(point: Point, result: dict) -> str:
        row = row_from_result(configs[point], result, point.method)
        accuracy = "diverged" if row["accuracy"] is None else f"accuracy {row['accuracy']:.3f}"
        seconds = "" if row["seconds"] is None else f" in {row['seconds']:.0f} s"
        return f"{point.task} {point.cell} {point.method} T={point.length} seed {point.seed}: {accuracy}{seconds}"

    done = sweep(
        [(point, config, point.directory(out)) for point, config in configs.items()],
        jobs,
        threads_per_job,
        progress,
        "compare",
        describe,
    )
    ordered = [row_from_result(configs[point], done["outcomes"][point], point.method) for point in configs]
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(out / "results.json", ordered)
    return {
        "rows": ordered,
        "planned": planned,
        "task_options": dict(grid.tasks),
        "wall_seconds": done["wall_seconds"],
        "trained": done["trained"],
        "reused": done["reused"],
        "jobs": jobs,
        "threads_per_job": threads_per_job,
    }
