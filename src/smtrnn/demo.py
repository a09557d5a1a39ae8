"""The demo: the same non-gated tanh RNN trained with BPTT and with SMT->DMT (the library's default
recipe) on needle retrieval at a length where BPTT fails, three seeds each, both with the same number
of optimiser steps: what the RNN alone reaches, the wall time, and the gradient depth of a step."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from smtrnn.horizon_study import recipe
from smtrnn.report import machine, wall_time
from smtrnn.sweep import sweep

TASK, LENGTH, CELL, SEEDS = "retrieval", 64, "tanh", (0, 1, 2)


def demo_configs(quick: bool = False) -> dict:
    """{(method, seed): RunConfig} (``quick``: a seconds-long smoke version, not the result)."""
    configs = {}
    for seed in SEEDS if not quick else SEEDS[:1]:
        smt = recipe(CELL, LENGTH if not quick else 16, seed)
        if quick:
            smt.train = replace(smt.train, steps=20, warmup=2)
            smt.dmt_train = replace(smt.dmt_train, steps=5, warmup=1, batch_size=16)
            smt.smt = replace(smt.smt, dyn_warmup=5, horizon_grow=10, teacher_delay=min(smt.smt.teacher_delay, 5))
            smt.eval_batches = 1
        # BPTT: the same cell, readout, data stream and total number of optimiser steps
        bptt = copy.deepcopy(smt)
        bptt.method, bptt.train.steps = "bptt", smt.train.steps + smt.dmt_train.steps
        configs[("smt+dmt", seed)] = smt
        configs[("bptt", seed)] = bptt
    return configs


def demo(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True, jobs: int = 2) -> dict:
    configs = demo_configs(quick)
    points = [
        (key, config, Path(out_dir) / f"{key[0].replace('+', '-')}-seed{key[1]}") for key, config in configs.items()
    ]
    describe = lambda key, outcome: (
        f"demo: {key[0]} seed {key[1]}: accuracy {outcome.get('accuracy', float('nan')):.3f}"
    )
    done = sweep(
        points,
        jobs=jobs,
        threads_per_job=max(1, torch.get_num_threads() // jobs),
        progress=progress,
        name="demo",
        describe=describe,
    )
    rows = []
    for (method, seed), config in configs.items():
        result = done["outcomes"][(method, seed)]
        rows.append(
            {
                "method": method,
                "cell": config.model.cell,
                "seed": seed,
                "accuracy": result.get("accuracy"),
                "seconds": result.get("seconds"),
                "sequential_depth": result.get("sequential_depth"),
                "forward_depth": result.get("forward_depth"),
                "steps": result.get("steps"),
                "teacher_accuracy": result.get("teacher_accuracy"),
                "note": result.get("diverged"),
            }
        )
    first = next(iter(configs.values()))
    return {
        "task": first.task,
        "length": first.length,
        "chance": 1 / 8,
        "rows": rows,
        "wall_seconds": done["wall_seconds"],
        "trained": done["trained"],
        "reused": done["reused"],
        "jobs": jobs,
    }


def format_report(result: dict, command: str) -> str:
    """The demo's markdown page: the table, and how and where it was measured."""
    import datetime

    return "\n".join(
        [
            "# Demo: BPTT against SMT->DMT, same tanh RNN, three seeds",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine()}  ",
            f"Date: {datetime.date.today().isoformat()}  ",
            wall_time(result, result["rows"]) + f", {result['jobs']} run(s) at a time",
            "",
            format_table(result),
            "",
            "Accuracy is that of the RNN alone, rolled out from its own initial memory over the whole held-out",
            "sequence (no teacher). Gradient depth: cell applications in series on the gradient path of one",
            "training step (SMT: its horizon K; BPTT: T). Forward depth: cell applications in series in one",
            "step's forward pass, per phase. Seconds: training time of the run (one thread per run).",
            "",
        ]
    )


def format_table(result: dict) -> str:
    lines = [
        f"task {result['task']}, length {result['length']}, chance accuracy {result['chance']:.3f}",
        "",
        "| method  | cell | seed | RNN-alone accuracy | teacher accuracy | wall s | steps | gradient depth | forward depth |",
        "|---------|------|------|--------------------|------------------|--------|-------|----------------|---------------|",
    ]
    number = lambda value, form: "-" if value is None else format(value, form)
    for row in sorted(result["rows"], key=lambda row: (row["method"] != "bptt", row["seed"])):
        forward = ", ".join(f"{k} {v}" for k, v in (row["forward_depth"] or {}).items())
        lines.append(
            f"| {row['method']:<7} | {row['cell']} | {row['seed']} | {number(row['accuracy'], '.3f')} | "
            f"{number(row['teacher_accuracy'], '.3f')} | {number(row['seconds'], '.0f')} | {row['steps']} | "
            f"{row['sequential_depth']} | {forward} |"
        )
    return "\n".join(lines)
