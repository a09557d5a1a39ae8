"""The horizon study (docs/horizon.md): what makes the RNN alone keep what its teacher stores, on needle
retrieval. The ladder goes from the paper's one-step loss to the library's defaults one change at a
time; the factors change one setting of the defaults; the scale part runs the defaults for several cells
and lengths against BPTT. Every SMT run is measured for where its rollout loses the needle (probe.py)."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import (
    Blocks,
    figure,
    fmt,
    groups,
    header,
    mean,
    per_seed,
    save,
    seeds_against_length,
    table,
)
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import Budget, Point, Study, Variant
from smtrnn.tasks.synthetic import LABEL_TERMS

TITLE = "The horizon study: keeping what the teacher stores"
# every rung before the last two: the memory is not on a grid, and the sequences have their full length
CONTINUOUS = {"model.memory_levels": 0, "smt.length_grow": 0}
_EARLY = {**CONTINUOUS, "smt.teacher_delay": 0, "dmt_train.batch_size": 32}  # the rungs before the delay
_PAPER = {**_EARLY, "smt.horizon": 1, "smt.horizon_grow": 0, "model.teacher_positions": "sinusoid"}
VARIANTS = [
    Variant(
        "paper", "one-step dynamics loss (K=1), sinusoidal positions, DMT batch 32, no grid", _PAPER, group="ladder"
    ),
    Variant("K8-sinusoid", "+ horizon K=8 from the start", {**_PAPER, "smt.horizon": 8}, group="ladder"),
    Variant(
        "K8", "+ teacher without position codes", {**_EARLY, "smt.horizon": 8, "smt.horizon_grow": 0}, group="ladder"
    ),
    Variant("K16-grown", "+ K=16, grown from 1 over the first half of SMT", _EARLY, group="ladder"),
    Variant("dmt-128", "+ DMT batch 128", {**CONTINUOUS, "smt.teacher_delay": 0}, group="ladder"),
    Variant("continuous", "+ the dynamics reach the teacher only after 500 steps", CONTINUOUS, group="ladder"),
    Variant(
        "grid", "+ a memory on a grid of 5 levels, rounded at run time too", {"smt.length_grow": 0}, group="ladder"
    ),
    Variant("recipe", "+ SMT's sequences grow from T/4 to T over 1,000 steps (the defaults)", group="ladder"),
    Variant("K1", "K=1 (no horizon)", {"smt.horizon": 1, "smt.horizon_grow": 0}, group="factors"),
    Variant("K8-grown", "K=8, grown", {"smt.horizon": 8}, group="factors"),
    Variant("K16-fixed", "K=16 from the start", {"smt.horizon_grow": 0}, group="factors"),
    Variant("K32", "K=32, grown", {"smt.horizon": 32}, group="factors"),
    Variant("S2", "2 starts per sequence", {"smt.horizon_starts": 2}, group="factors"),
    Variant("S32", "32 starts per sequence", {"smt.horizon_starts": 32}, group="factors"),
    Variant("half-steps", "half the steps", steps=0.5, group="factors"),
    Variant("lr-4e-3", "SMT learning rate 4e-3", {"train.lr": 4e-3}, group="factors"),
    Variant("weight-0.3", "horizon weight 0.3", {"smt.c_horizon": 0.3}, group="factors"),
    Variant(
        "joint",
        "horizon labels not detached (gradient into the teacher)",
        {"smt.horizon_detach": False},
        group="factors",
    ),
    Variant(
        "burn-in", "16 free-running steps before the K supervised ones", {"smt.horizon_burnin": 16}, group="factors"
    ),
    Variant(
        "sinusoid", "teacher with sinusoidal position codes", {"model.teacher_positions": "sinusoid"}, group="factors"
    ),
    Variant(
        "rotary",
        "teacher with rotary position codes (relative: no absolute time)",
        {"model.teacher_positions": "rotary"},
        group="factors",
    ),
    Variant(
        "alibi",
        "teacher with ALiBi attention biases (relative: no absolute time)",
        {"model.teacher_positions": "alibi"},
        group="factors",
    ),
    Variant(
        "labels-all",
        "the label terms of copy and stack: the readout trains the cell in SMT's step, its horizon and DMT",
        LABEL_TERMS,
        group="factors",
    ),
    Variant("no-delay", "the dynamics reach the teacher from the start", {"smt.teacher_delay": 0}, group="factors"),
    Variant("no-dmt", "SMT only, DMT's steps given to SMT", {"method": "smt"}, group="factors"),
    Variant("dmt-readout", "DMT trains the readout only (no memory pull)", {"dmt.c_dyn": 0.0}, group="factors"),
    Variant(
        "dmt-official",
        "DMT as the paper's code: lr 3e-5, c_dyn 10, every 16th step, batch 32",
        {"dmt_train.lr": 3e-5, "dmt_train.batch_size": 32, "dmt.c_dyn": 10.0, "dmt.every": 16, "dmt.start": "teacher"},
        group="factors",
    ),
    Variant(
        "bptt",
        "BPTT, same cell and number of optimiser steps, a continuous memory (its default)",
        {"method": "bptt"},
        group="scale",
    ),
    Variant("bptt-4x", "BPTT with four times the optimiser steps", {"method": "bptt"}, steps=4, group="scale"),
]
# T=64 is the demo's budget; T >= 128 the library's defaults (2,000 SMT + 300 DMT steps)
BUDGETS = {64: Budget(1500, 300), 128: Budget(2300, 300), 256: Budget(2300, 300)}


def _study(preset: str, points: list[tuple[str, str, int]]) -> Study:
    unique = list(dict.fromkeys(Point(name, "retrieval", cell, length) for name, cell, length in points))
    return Study(
        "horizon",
        preset,
        RunConfig(task="retrieval"),
        VARIANTS,
        unique,
        [0, 1, 2],
        BUDGETS,
        measurements=["needle", "unrounded"],
    )


def cpu() -> Study:
    """The committed study (51 runs at T=64): the ladder without its DMT-batch rung; no horizon, no DMT
    and the teacher's three position schemes; the recipe against BPTT for the tanh cell (BPTT also with
    four times the steps) and for the Transformer cell. The defaults for the other cells and lengths
    against BPTT (T = 64 to 1,024) are the length study's (docs/length.md)."""
    ladder = [
        (name, "tanh", 64) for name in ("paper", "K8-sinusoid", "K8", "K16-grown", "continuous", "grid", "recipe")
    ]
    factors = [(name, "tanh", 64) for name in ("K1", "no-dmt", "sinusoid", "rotary", "alibi", "labels-all")]
    scale = [("bptt", "tanh", 64), ("bptt-4x", "tanh", 64), ("recipe", "transformer", 64), ("bptt", "transformer", 64)]
    return _study("cpu", ladder + factors + scale)


def full() -> Study:
    """Every variant at T=64, the scale part for tanh, GRU and MLP at T=64/128/256 (about 6 h on 2 cores)."""
    at64 = [(v.name, "tanh", 64) for v in VARIANTS if v.group in ("ladder", "factors") and v.name != "no-delay"]
    longer = [("K8-grown", "tanh", 128), ("no-dmt", "tanh", 128), ("no-delay", "tanh", 256), ("K32", "tanh", 256)]
    scale = [
        (name, cell, length)
        for length in (64, 128, 256)
        for cell in ("tanh", "gru", "mlp")
        for name in ("recipe", "bptt")
    ]
    scale += [("recipe", "transformer", 64), ("bptt", "transformer", 64)] + [("bptt-4x", "tanh", n) for n in (64, 128)]
    return _study("full", at64 + longer + scale)


PRESETS = {
    "cpu": cpu,
    "full": full,
    "smoke": lambda: smoke(_study("smoke", [("paper", "tanh", 16), ("recipe", "tanh", 16), ("bptt", "tanh", 16)])),
}


# ------------------------------------------------------------------------------------------------
# the page


def probe_at(row: dict, lag: int) -> float | None:
    return next((entry["rollout"] for entry in row.get("probe") or [] if entry["lag"] == lag), None)


def top_modulus(row: dict) -> float | None:
    return row["stability"]["moduli"][0] if row.get("stability") else None


def headline(rows: list[dict]) -> list[str]:
    """Mean and worst seed of the points the study is about."""
    lines = []
    for (variant, cell, length), group in groups(rows, "variant", "cell", "length").items():
        values = [row["accuracy"] for row in group if row["accuracy"] is not None]
        if variant in ("paper", "K8-sinusoid", "recipe", "bptt") and values:
            lines.append([f"`{variant}`", cell, str(length), fmt(mean(values)), fmt(min(values))])
    return table(["variant", "cell", "T", "RNN alone, mean", "worst seed"], lines)


def variant_table(rows: list[dict], descriptions: dict, lag: int) -> list[str]:
    if len({row["variant"] for row in rows}) < 2:
        return []  # nothing to compare the defaults with
    lines = []
    for (name,), group in groups(rows, "variant").items():
        values = [row["accuracy"] for row in group if row["accuracy"] is not None]
        lines.append(
            [
                f"`{name}`",
                descriptions[name],
                per_seed(group),
                fmt(mean(values)),
                fmt(min(values, default=None)),
                fmt(mean(probe_at(row, lag) for row in group)),
                fmt(mean(top_modulus(row) for row in group)),
                fmt(mean(row["drift"] for row in group), 2),
                str(group[0]["sequential_depth"]),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["variant", "what changes", "RNN alone, per seed", "mean", "worst", f"probe at lag {lag}"]
    return table(titles + ["top eigenvalue modulus", "drift", "gradient depth", "s per run"], lines)


def per_seed_table(
    rows: list[dict], lags: tuple[int, ...] = (8, 32, 64), times: tuple[int, ...] = (8, 32)
) -> list[str]:
    """Every SMT run on its own: where a failing seed loses the needle (probes at ``lags`` after it, the
    rollout's error at ``times`` and at T), and why (the Jacobian's largest moduli)."""
    lines = []
    for row in rows:
        if not row.get("stability"):
            continue
        stability, curve = row["stability"], row["error_curve"]
        lines.append(
            [
                f"`{row['variant']}`",
                row["cell"],
                str(row["length"]),
                str(row["seed"]),
                fmt(row["accuracy"]),
                " / ".join(fmt(probe_at(row, lag), 2) for lag in lags),
                " / ".join(fmt(value) for value in stability["moduli"]),
                " / ".join(fmt(value, 2) for value in stability["needle_share"]),
                " / ".join(fmt(curve[min(t, len(curve)) - 1], 3) for t in (*times, len(curve))),
            ]
        )
    probes, errors = " / ".join(map(str, lags)), " / ".join(map(str, times))
    titles = ["variant", "cell", "T", "seed", "RNN alone", f"probe at lag {probes}", "top 3 eigenvalue moduli"]
    return table(titles + ["their share in the needle subspace", f"rollout error at t = {errors} / T"], lines)


def scale_table(rows: list[dict]) -> list[str]:
    lines = []
    for (cell, length), group in groups(rows, "cell", "length").items():
        by = {name: [row for row in group if row["variant"] == name] for name in ("recipe", "bptt", "bptt-4x")}
        recipe, bptt = by["recipe"], by["bptt"]
        if not recipe:
            continue
        values = [row["accuracy"] for row in recipe if row["accuracy"] is not None]
        depth = lambda runs: str(runs[0]["sequential_depth"]) if runs else "–"
        lines.append(
            [
                cell,
                str(length),
                per_seed(recipe),
                fmt(mean(values)),
                fmt(min(values, default=None)),
                fmt(mean(row["teacher_accuracy"] for row in recipe)),
                per_seed(bptt) if bptt else "–",
                fmt(mean(row["accuracy"] for row in by["bptt-4x"])),
                f"{depth(recipe)} / {depth(bptt)}",
                f"{fmt(mean(row['seconds'] for row in recipe), 0)} / {fmt(mean(row['seconds'] for row in bptt), 0)}",
            ]
        )
    titles = ["cell", "T", "SMT->DMT, per seed", "mean", "worst", "teacher", "BPTT, per seed", "BPTT 4x steps (mean)"]
    return table(titles + ["gradient depth SMT / BPTT", "s per run SMT / BPTT"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    descriptions = {variant["name"]: variant["description"] for variant in result["study"]["variants"]}
    group = {variant["name"]: variant["group"] for variant in result["study"]["variants"]}
    around = lambda part, length: [
        row
        for row in rows
        if row["length"] == length
        and row["cell"] == "tanh"
        and (group[row["variant"]] == part or row["variant"] == "recipe")
    ]
    image = lambda name, text: [f"![{text}]({link}/{name})", ""] if link else []
    return [
        ("header", header(result, TITLE, command)),
        ("headline", headline(rows)),
        (
            "scale",
            scale_table([row for row in rows if group[row["variant"]] == "scale" or row["variant"] == "recipe"])
            + image("horizon-scale.png", "RNN-alone accuracy per seed, defaults against BPTT"),
        ),
        ("ladder", variant_table(around("ladder", 64), descriptions, 32)),
        (
            "ladder-seeds",
            per_seed_table(around("ladder", 64))
            + image("horizon-probe.png", "needle probe on the RNN's own rollout against lag")
            + image("horizon-error.png", "relative error of the RNN's own rollout against t"),
        ),
        ("factors-64", variant_table(around("factors", 64), descriptions, 32)),
        ("factors-256", variant_table(around("factors", 256), descriptions, 64)),
    ]


def figures(result: dict, folder: Path) -> list[Path]:
    rows = result["rows"]
    ladder_names = [variant["name"] for variant in result["study"]["variants"] if variant["group"] == "ladder"]
    ladder = [row for row in rows if row["variant"] in ladder_names and row["cell"] == "tanh" and row["length"] == 64]
    written = []
    if any(row.get("probe") for row in ladder):
        drawn, axes = figure(1, 1, 6.4, 4)
        for (name,), runs in groups(ladder, "variant").items():
            lags = [entry["lag"] for entry in runs[0]["probe"]]
            axes[0][0].plot(
                lags, [mean(row["probe"][i]["rollout"] for row in runs) for i in range(len(lags))], "o-", label=name
            )
        axes[0][0].plot(
            lags,
            [mean(row["probe"][i]["teacher"] for row in ladder) for i in range(len(lags))],
            "k--",
            label="teacher memory (all variants)",
        )
        axes[0][0].axhline(0.125, color="grey", lw=0.8, ls=":", label="chance")
        axes[0][0].set(
            xlabel="steps after the needle",
            ylabel="probe accuracy on the RNN's own memory",
            ylim=(0, 1.05),
            title="Retrieval, tanh, T=64: is the needle still there? (mean of seeds)",
        )
        axes[0][0].legend(fontsize=8)
        written.append(save(drawn, folder / "horizon-probe.png"))
        drawn, axes = figure(1, 1, 6.4, 4)
        for (name,), runs in groups(ladder, "variant").items():
            curves = [row["error_curve"] for row in runs if row.get("error_curve")]
            axes[0][0].plot(
                range(1, len(curves[0]) + 1), [sum(values) / len(values) for values in zip(*curves)], label=name
            )
        axes[0][0].set(
            xlabel="t (steps of the RNN's own rollout from m_0)",
            ylabel="relative error vs teacher memory",
            yscale="log",
            title="Where the rollout departs (mean of seeds)",
        )
        axes[0][0].legend(fontsize=8)
        written.append(save(drawn, folder / "horizon-error.png"))
    variants = [("recipe", "SMT->DMT", "o"), ("bptt", "BPTT", "^")]
    scale = seeds_against_length(rows, variants, folder / "horizon-scale.png", chance=0.125)
    written += [scale] if scale else []
    return written
