"""The length study (docs/length.md): does the RNN alone keep what its teacher stores at T = 256, 512 and
1,024, and do the defaults that hold there still hold at T = 64 and 128? Needle retrieval with the
library's defaults against BPTT with the same steps (a continuous memory, BPTT's default, up to T=256;
on SMT's memory grid at every length), for the tanh and GRU cells (MLP up to 256), and at T=256 the
defaults beside the candidates that were tried against the slow leak of a stored value: the previous,
continuous memory; the grid without rounding at run time; horizon starts placed where the teacher's
memory changes; more weight on the horizon's later steps.
Every SMT run is measured for where its rollout loses the needle (probe.py)."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.horizon import per_seed_table, probe_at, top_modulus
from smtrnn.experiments.pages import Blocks, fmt, groups, header, mean, per_seed, seeds_against_length, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import BPTT_ON_GRID, Budget, Point, Study, Variant

TITLE = "The length study: a rollout that holds at T = 256, 512 and 1,024"
# the previous defaults: a continuous memory, every sequence at its full length from the first step
CONTINUOUS = {"model.memory_levels": 0, "smt.length_grow": 0}
VARIANTS = [
    Variant("defaults", "the library's defaults", group="main"),
    Variant(
        "bptt",
        "BPTT, the same cell and number of optimiser steps, a continuous memory (its default)",
        {"method": "bptt"},
        group="main",
    ),
    Variant(
        "bptt-grid", "BPTT as above, on SMT's memory grid (the same model as SMT's RNN)", BPTT_ON_GRID, group="main"
    ),
    Variant("no-curriculum", "the grid, every sequence at full length from the first step", {"smt.length_grow": 0}),
    Variant("grid-update", "SMT's errors on the update before rounding", {"smt.grid_error": "update"}),
    Variant("continuous", "a continuous memory at full length: the previous defaults", CONTINUOUS),
    Variant(
        "change-starts",
        "the previous defaults; horizon starts where the teacher's memory changes",
        {**CONTINUOUS, "smt.horizon_starts_at": "changes"},
    ),
    Variant(
        "later-steps",
        "the previous defaults; the k-th horizon step weighted 1.1^(k-1) (4.2x at k=16)",
        {**CONTINUOUS, "smt.horizon_decay": 1.1},
    ),
    Variant(
        "late-delay",
        "the dynamics reach the teacher after 1,000 steps (not 500), once its sequences have their full length",
        {"smt.teacher_delay": 1000},
    ),
]
# the library's defaults at every length: 2,000 SMT steps, then 300 of DMT
BUDGETS = {length: Budget(2300, 300) for length in (64, 128, 256, 512, 1024)}
CANDIDATES = ("no-curriculum", "grid-update", "continuous", "change-starts", "later-steps")  # at T=256


def cpu() -> Study:
    """About 21 h of training summed (one thread per run): the defaults against BPTT (on the grid and
    without) for tanh, GRU and MLP at T = 64, 128 and 256, against BPTT on the grid for tanh and GRU at
    T=512, tanh at T=1,024 (one seed); at T=256 the candidates beside the defaults (tanh), at T=512 the
    defaults without the length curriculum and at T=1,024 a later teacher delay (tanh, one seed each)."""
    main = [
        Point(name, "retrieval", cell, length)
        for length in (64, 128, 256)
        for cell in ("tanh", "gru", "mlp")
        for name in ("defaults", "bptt", "bptt-grid")
    ]
    # BPTT without the grid up to T=256 (at chance wherever the grid's BPTT is, T >= 64)
    main += [Point(name, "retrieval", cell, 512) for cell in ("tanh", "gru") for name in ("defaults", "bptt-grid")]
    main += [Point(name, "retrieval", "tanh", 1024, seeds=(0,)) for name in ("defaults", "bptt-grid")]
    candidates = [Point(name, "retrieval", "tanh", 256) for name in CANDIDATES]
    candidates += [Point("no-curriculum", "retrieval", "tanh", 512, seeds=(0,))]
    candidates += [Point("late-delay", "retrieval", "tanh", 1024, seeds=(0,))]
    measurements = ["needle", "unrounded"]
    return Study(
        "length",
        "cpu",
        RunConfig(task="retrieval"),
        VARIANTS,
        main + candidates,
        [0, 1, 2],
        BUDGETS,
        measurements=measurements,
    )


PRESETS = {
    "cpu": cpu,
    "smoke": lambda: smoke(
        Study(
            "length",
            "cpu",
            RunConfig(task="retrieval"),
            VARIANTS,
            [Point(v, "retrieval", "tanh", 16) for v in ("defaults", "bptt", "continuous")],
            [0],
            {16: Budget(6, 2)},
            measurements=["needle", "unrounded"],
        )
    ),
}


def main_table(rows: list[dict]) -> list[str]:
    lines = []
    for (cell, length), group in groups(rows, "cell", "length").items():
        smt = [row for row in group if row["variant"] == "defaults"]
        bptt = [row for row in group if row["variant"] == "bptt"]
        grid = [row for row in group if row["variant"] == "bptt-grid"]
        baseline = bptt or grid  # BPTT's depth and time: the grid changes neither
        if not smt:
            continue
        values = [row["accuracy"] for row in smt if row["accuracy"] is not None]
        lines.append(
            [
                cell,
                str(length),
                per_seed(smt),
                fmt(min(values, default=None)),
                fmt(mean(row.get("accuracy_unrounded") for row in smt)),
                fmt(mean(row["teacher_accuracy"] for row in smt)),
                per_seed(bptt) if bptt else "not run",
                per_seed(grid) if grid else "–",
                f"{smt[0]['sequential_depth']} / {baseline[0]['sequential_depth'] if baseline else '–'}",
                f"{fmt(mean(row['seconds'] for row in smt), 0)} / {fmt(mean(row['seconds'] for row in baseline), 0)}",
            ]
        )
    titles = ["cell", "T", "defaults: RNN alone, per seed", "worst", "not rounding at run time (mean)", "teacher"]
    titles += ["BPTT, per seed", "BPTT on the grid, per seed"]
    return table(titles + ["gradient depth SMT / BPTT", "train s per run SMT / BPTT"], lines)


def candidates_table(rows: list[dict], descriptions: dict) -> list[str]:
    lines = []
    for (name,), group in groups(rows, "variant").items():
        if name in ("bptt", "bptt-grid"):
            continue
        values = [row["accuracy"] for row in group if row["accuracy"] is not None]
        lines.append(
            [
                f"`{name}`",
                descriptions[name],
                per_seed(group),
                fmt(min(values, default=None)),
                fmt(mean(probe_at(row, 128) for row in group), 2),
                fmt(mean(top_modulus(row) for row in group)),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["variant", "what changes", "RNN alone, per seed", "worst", "probe at lag 128", "top eigenvalue modulus"]
    return table(titles + ["train s per run"], lines)


def longest_table(rows: list[dict], descriptions: dict) -> list[str]:
    """Every run at the longest length, one line each: whether the teacher learned, whether one cell step
    follows it, and where the rollout departs."""
    lines = []
    for row in rows:
        curve = row.get("error_curve") or []
        lines.append(
            [
                f"`{row['variant']}`",
                descriptions[row["variant"]],
                str(row["seed"]),
                fmt(row["teacher_accuracy"]),
                fmt(row["accuracy"]),
                fmt(row.get("one_step_accuracy")),
                " / ".join(fmt(probe_at(row, lag), 2) for lag in (1, 3, 256)),
                " / ".join(fmt(curve[min(t, len(curve)) - 1]) for t in (32, 512, len(curve))) if curve else "–",
                fmt(row["seconds"], 0),
            ]
        )
    if not lines:
        return []
    titles = ["variant", "what changes", "seed", "teacher", "RNN alone", "one step from teacher memories"]
    return table(titles + ["probe at lag 1 / 3 / 256", "rollout error at t = 32 / 512 / T", "train s"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    descriptions = {variant["name"]: variant["description"] for variant in result["study"]["variants"]}
    tanh256 = [row for row in rows if row["cell"] == "tanh" and row["length"] == 256]
    failing = [row for row in rows if row.get("stability") and (row["accuracy"] or 0) < 0.95]
    image = [f"![RNN-alone accuracy against T, each seed]({link}/length-scale.png)", ""] if link else []
    return [
        ("header", header(result, TITLE, command)),
        ("main", main_table(rows) + image),
        ("candidates", candidates_table(tanh256, descriptions)),
        ("longest", longest_table([r for r in rows if r["length"] == 1024 and r["method"] != "bptt"], descriptions)),
        ("failures", per_seed_table(failing, (32, 128, 256), (32, 128))),
        (
            "all-seeds",
            per_seed_table(
                [r for r in rows if r.get("stability") and r["variant"] == "defaults"], (32, 128, 256), (32, 128)
            ),
        ),
    ]


def figures(result: dict, folder: Path) -> list[Path]:
    variants = [("defaults", "SMT->DMT (defaults)", "o"), ("bptt", "BPTT", "^"), ("bptt-grid", "BPTT on the grid", "v")]
    path = seeds_against_length(result["rows"], variants, folder / "length-scale.png", chance=0.125)
    return [path] if path else []
