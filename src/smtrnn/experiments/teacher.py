"""The teacher study (docs/teacher.md): how fast does the teacher learn a task, set beside BPTT's RNN on the
same task, length and optimiser steps? The teacher trains alone (``--method teacher``: its predictive and
uniformity terms); both are scored on held-out sequences every 50 steps. On copy, stack and parity at
T=16 and 64 the defaults run against BPTT; on parity and stack at T=16, where the teacher is behind, the
factors that might make it faster are changed one at a time."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.compare import TASKS
from smtrnn.experiments.pages import MISSING, STYLE, Blocks, figure, fmt, groups, header, mean, per_seed, save, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import BPTT_ON_GRID, ROW_KEYS, Budget, Point, Study, Variant
from smtrnn.tasks.synthetic import LABEL_TERMS
from smtrnn.train import TrainConfig

TITLE = "The teacher study: how fast the teacher learns, beside BPTT"
EVERY = 50  # optimiser steps between held-out scores
LABELS = LABEL_TERMS  # the readout trains the cell in SMT's step, horizon and DMT
VARIANTS = [
    Variant("teacher", "the teacher alone, the library's defaults", {"method": "teacher"}, group="main"),
    # BPTT on SMT's memory grid: the same model as SMT's RNN (BPTT's own default is a continuous memory)
    Variant("bptt", "BPTT, tanh RNN, the same steps, on the memory grid", BPTT_ON_GRID, group="main"),
    # the grid is there for SMT's rollouts: BPTT with a plain RNN's memory (its default), to race the
    # teacher against BPTT at its best as well as against the same model
    Variant(
        "bptt-continuous",
        "BPTT, tanh RNN, a continuous memory (no grid; BPTT's default)",
        {"method": "bptt"},
        group="main",
    ),
    # each task's own settings (what `smtrnn train --task T --method teacher` gets) raced beside BPTT at
    # its best: what the factors below found, now carried by the tasks, measured as a user meets it
    Variant(
        "teacher-settings",
        "the teacher alone, the task's own settings",
        {"method": "teacher"},
        group="main",
        task_settings=True,
    ),
    Variant(
        "sinusoid",
        "sinusoidal position codes in the encoder",
        {"method": "teacher", "model.teacher_positions": "sinusoid"},
        group="factors",
    ),
    Variant(
        "rotary",
        "rotary position codes in the encoder's attention (relative)",
        {"method": "teacher", "model.teacher_positions": "rotary"},
        group="factors",
    ),
    Variant(
        "alibi",
        "ALiBi: a penalty on attention scores growing with the distance (relative)",
        {"method": "teacher", "model.teacher_positions": "alibi"},
        group="factors",
    ),
    Variant("encoder-4", "4 encoder layers (2)", {"method": "teacher", "model.teacher_layers": 4}, group="factors"),
    Variant(
        "decoder-2", "2 decoder layers (1)", {"method": "teacher", "model.teacher_decoder_layers": 2}, group="factors"
    ),
    Variant("width-128", "width 128 (64)", {"method": "teacher", "model.teacher_width": 128}, group="factors"),
    Variant("heads-8", "8 heads (4)", {"method": "teacher", "model.teacher_heads": 8}, group="factors"),
    Variant("memory-256", "memory 256 (64)", {"method": "teacher", "model.memory_size": 256}, group="factors"),
    Variant(
        "continuous", "a continuous memory (no grid)", {"method": "teacher", "model.memory_levels": 0}, group="factors"
    ),
    Variant("future-4", "future window Tf 4 (16)", {"method": "teacher", "model.future": 4}, group="factors"),
    Variant("future-1", "future window Tf 1 (16)", {"method": "teacher", "model.future": 1}, group="follow-up"),
    Variant(
        "all-positions",
        "the decoder on every memory (16 per sequence)",
        {"method": "teacher", "smt.decoder_positions": 0},
        group="factors",
    ),
    Variant("lr-4e-3", "learning rate 4e-3 (2e-3)", {"method": "teacher", "train.lr": 4e-3}, group="factors"),
    Variant("lr-1e-3", "learning rate 1e-3 (2e-3)", {"method": "teacher", "train.lr": 1e-3}, group="factors"),
    Variant("uniformity-0", "no uniformity term (0.01)", {"method": "teacher", "smt.c_unif": 0.0}, group="factors"),
]
# does a teacher that learns faster give a better RNN alone? SMT->DMT with the same total steps as
# BPTT (a fifth of them in DMT), the defaults against each task's winning factor; the RNN tested at
# 2T, 4T and 8T too (parity's protocol: trained short, tested long)
RNN = {"method": "smt+dmt", "dmt_train.steps": 200, "length_generalisation": True}
RNN_STEPS = 0.8  # of the budget in SMT; DMT's 200 steps make up the rest at T=16 (at T=64: 1,600 + 200 of 2,000)
VARIANTS += [
    Variant("smt+dmt", "SMT->DMT, the library's defaults", RNN, RNN_STEPS, group="rnn"),
    Variant("smt+dmt-future-1", "SMT->DMT, future window Tf 1", {**RNN, "model.future": 1}, RNN_STEPS, group="rnn"),
    Variant(
        "smt+dmt-rotary",
        "SMT->DMT, rotary codes in the encoder",
        {**RNN, "model.teacher_positions": "rotary"},
        RNN_STEPS,
        group="rnn",
    ),
]
# copy's rung is the cell's step (tanh, T=16): the candidates that might let one cell step follow the
# teacher's transition, each with the same 1,000 steps as BPTT except "smt+dmt-longer" (twice them:
# is it only a matter of steps?)
COPY_STEP = [
    Variant(
        "smt+dmt-readout-grad",
        "SMT->DMT, the readout's one-step term trains the cell",
        {**RNN, "smt.readout_grad": True},
        RNN_STEPS,
        group="rnn",
    ),
    Variant(
        "smt+dmt-delay-100",
        "SMT->DMT, the cell pulls the teacher from step 100 (400)",
        {**RNN, "smt.teacher_delay": 100},
        RNN_STEPS,
        group="rnn",
    ),
    Variant(
        "smt+dmt-grid-update",
        "SMT->DMT, the cell's error before rounding (a margin)",
        {**RNN, "smt.grid_error": "update"},
        RNN_STEPS,
        group="rnn",
    ),
    Variant(
        "smt+dmt-memory-256", "SMT->DMT, memory 256 (64)", {**RNN, "model.memory_size": 256}, RNN_STEPS, group="rnn"
    ),
    Variant("smt+dmt-dmt-400", "SMT->DMT, 600 SMT + 400 DMT steps", {**RNN, "dmt_train.steps": 400}, 0.6, group="rnn"),
    Variant("smt+dmt-longer", "SMT->DMT, 1,800 SMT + 200 DMT steps (2x)", RNN, 1.8, group="rnn"),
    Variant(
        "smt+dmt-horizon-readout",
        "SMT->DMT, the readout on the horizon's rollouts trains the cell",
        {**RNN, "smt.c_horizon_readout": 1.0},
        RNN_STEPS,
        group="rnn",
    ),
    Variant(
        "smt+dmt-readout-grad-dmt",
        "SMT->DMT, the readout trains the cell in SMT's one step and on DMT's rollouts",
        {**RNN, "smt.readout_grad": True, "dmt.readout_grad": True},
        RNN_STEPS,
        group="rnn",
    ),
    Variant(
        "smt+dmt-labels-all",
        "SMT->DMT, the readout trains the cell in SMT's one step, its horizon and DMT",
        {**RNN, **LABELS},
        RNN_STEPS,
        group="rnn",
    ),
]
VARIANTS += COPY_STEP
# stack's setting (rotary codes) and copy's (the three label terms) together: one recipe for both?
VARIANTS += [
    Variant(
        "smt+dmt-labels-all-rotary",
        "SMT->DMT, the three label terms and rotary codes in the teacher's encoder",
        {**RNN, **LABELS, "model.teacher_positions": "rotary"},
        RNN_STEPS,
        group="rnn",
    )
]
RNN_POINTS = {
    "copy": ("smt+dmt",),  # the teacher is ahead of BPTT on the grid: does the RNN alone follow?
    "parity": ("smt+dmt", "smt+dmt-future-1"),
    "stack": ("smt+dmt", "smt+dmt-rotary"),
}
BUDGETS = {16: Budget(1000), 64: Budget(2000)}


def _base() -> RunConfig:
    return RunConfig(train=TrainConfig(eval_every=EVERY, log_every=EVERY))


POSITION_CODES = ("sinusoid", "rotary", "alibi")  # the encoder's order schemes, also tried on parity at T=64
FACTOR_TASKS = ("parity", "stack")  # where the teacher is behind BPTT at T=16 (on copy it is ahead)


def cpu() -> Study:
    """Every point three seeds (255 runs, 9 h 11 min of training summed, about 4.6 h on 2 cores): the
    defaults against BPTT (on the memory grid, and with a continuous memory) on copy, stack and parity
    at T=16 and 64; every factor on parity and stack at T=16, the two tasks where the teacher
    is behind BPTT there; the position codes on parity (where the encoder's lack of them is the
    suspect) at T=64 too; the winners at T=16 again at T=64; SMT->DMT with the defaults and with the
    winners at T=16 and 64, to see whether the RNN alone gains too; on copy at T=16 the GRU and MLP
    cells too, to see whether another cell follows the teacher's step; ten candidates for copy's cell
    step (tanh), the winner with the GRU and MLP cells, on stack and parity at T=16 and 64, on copy at
    T=64 and with rotary codes on stack."""
    points = [
        Point(name, task, "tanh", length)
        for task in ("copy", "stack", "parity")
        for length in (16, 64)
        for name in ("teacher", "bptt")
    ]
    points += [
        Point(variant.name, task, "tanh", 16)
        for task in FACTOR_TASKS
        for variant in VARIANTS
        if variant.group == "factors"
    ]
    points += [Point(name, "parity", "tanh", 64) for name in POSITION_CODES]
    # the factors that won at T=16, tried again where they matter: a short future on parity (the
    # decoder no longer has to count the future's bits), rotary codes on stack
    points += [Point("future-1", "parity", "tanh", 16)]
    points += [Point(name, "parity", "tanh", 64) for name in ("future-4", "future-1")]
    points += [Point("rotary", "stack", "tanh", 64)]
    points += [
        Point(name, task, "tanh", length) for length in (16, 64) for task, names in RNN_POINTS.items() for name in names
    ]
    # copy's RNN loses most at the cell's step (tanh, T=16): do the gated and the MLP cell follow? BPTT
    # with the same cell beside each
    points += [Point(name, "copy", cell, 16) for cell in ("gru", "mlp") for name in ("smt+dmt", "bptt")]
    points += [Point(variant.name, "copy", "tanh", 16) for variant in COPY_STEP]
    points += [Point("smt+dmt-labels-all", "copy", cell, 16) for cell in ("gru", "mlp")]  # the winner, other cells
    points += [Point("smt+dmt-labels-all", task, "tanh", 16) for task in ("stack", "parity")]  # and other tasks
    points += [Point("smt+dmt-labels-all", task, "tanh", 64) for task in ("copy", "stack", "parity")]  # longer
    points += [Point("smt+dmt-labels-all-rotary", "stack", "tanh", length) for length in (16, 64)]
    points += [
        Point("bptt-continuous", task, "tanh", length) for task in ("copy", "stack", "parity") for length in (16, 64)
    ]
    points += [
        Point("teacher-settings", task, "tanh", length) for task in ("copy", "stack", "parity") for length in (16, 64)
    ]
    tasks = {name: TASKS[name] for name in ("copy", "stack", "parity")}
    return Study(
        "teacher",
        "cpu",
        _base(),
        VARIANTS,
        points,
        [0, 1, 2],
        BUDGETS,
        tasks=tasks,
        measurements=["curve"],
        row_keys=[*ROW_KEYS, "generalisation"],
        task_settings=False,  # every factor against the one recipe all tasks share
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu().narrowed(task=["copy"], length=[16], variant=["teacher", "bptt"]))}


# ------------------------------------------------------------------------------------------------
# the page


def score(point: dict) -> float | None:
    """A curve point's held-out accuracy: the teacher's for teacher runs, the RNN's for BPTT."""
    return point["teacher_accuracy"] if point.get("teacher_accuracy") is not None else point["accuracy"]


def mean_curve(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, mean held-out accuracy over seeds) at the steps every run scored."""
    by_step: dict[int, list[float]] = {}
    for row in rows:
        for point in row.get("curve") or []:
            value = score(point)
            if value is not None:
                by_step.setdefault(point["step"], []).append(value)
    return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items()) if len(values) == len(rows)]


def first_step(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, value in curve if value >= level), None)


def race_table(rows: list[dict]) -> list[str]:
    """Per task and length: BPTT's final accuracy (mean of seeds), the steps each needs to reach it
    (within 0.01), and the teacher's final accuracy; the same race against BPTT with a continuous
    memory where the study has it."""
    lines = []
    for (task, length), group in groups(rows, "task", "length").items():
        teacher = mean_curve([row for row in group if row["variant"] == "teacher"])
        bptt = mean_curve([row for row in group if row["variant"] == "bptt"])
        plain = mean_curve([row for row in group if row["variant"] == "bptt-continuous"])
        if not teacher or not bptt:
            continue
        steps = lambda curve, baseline: first_step(curve, baseline[-1][1] - 0.01)
        race = lambda baseline: [
            fmt(baseline[-1][1]),
            str(steps(baseline, baseline) or "–"),
            str(steps(teacher, baseline) or f"not in {teacher[-1][0]}"),
        ]
        lines.append(
            [task, str(length), *race(bptt), fmt(teacher[-1][1]), fmt(max(value for _, value in teacher))]
            + (race(plain) if plain else [MISSING] * 3)
        )
    titles = ["task", "T", "BPTT final (mean)", "BPTT steps to it", "teacher steps to it", "teacher final"]
    titles += ["teacher best", "BPTT, no grid: final", "its steps to it", "teacher steps to it"]
    return table(titles, lines)


def settings_race_table(rows: list[dict]) -> list[str]:
    """Per task and length: the teacher with the task's own settings raced against BPTT at its best (a
    continuous memory): BPTT's final accuracy and the steps each needs to come within 0.01 of it, the
    teacher's final and best, and the shared recipe's teacher's final beside it."""
    lines = []
    for (task, length), group in groups(rows, "task", "length").items():
        curve = lambda name: mean_curve([row for row in group if row["variant"] == name])
        teacher, plain, shared = curve("teacher-settings"), curve("bptt-continuous"), curve("teacher")
        if not teacher or not plain:
            continue
        level = plain[-1][1] - 0.01
        lines.append(
            [
                task,
                str(length),
                fmt(plain[-1][1]),
                str(first_step(plain, level) or "–"),
                str(first_step(teacher, level) or f"not in {teacher[-1][0]}"),
                fmt(teacher[-1][1]),
                fmt(max(value for _, value in teacher)),
                fmt(shared[-1][1] if shared else None),
            ]
        )
    titles = ["task", "T", "BPTT, no grid: final (mean)", "its steps to it", "teacher, task's settings: steps to it"]
    return table(titles + ["its final", "its best", "teacher, shared recipe: final"], lines)


def factor_table(rows: list[dict], descriptions: dict) -> list[str]:
    bptt = mean_curve([row for row in rows if row["variant"] == "bptt"])
    target = bptt[-1][1] - 0.01 if bptt else 0.95
    lines = []
    factors = [row for row in rows if row["variant"] not in (*BASELINES, "teacher-settings")]
    for (name,), group in groups(factors, "variant").items():
        curve = mean_curve(group)
        at = lambda step: next((value for s, value in curve if s == step), None)
        lines.append(
            [
                f"`{name}`",
                descriptions[name],
                fmt(at(250)),
                fmt(at(500)),
                fmt(curve[-1][1] if curve else None),
                str(first_step(curve, target) or "–"),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["variant", "what changes", "at step 250", "at step 500", "final", f"steps to {fmt(target)}"]
    return table(titles + ["s per run"], lines)


RNN_VARIANTS = {variant.name for variant in VARIANTS if variant.group == "rnn"}
BASELINES = ("bptt", "bptt-continuous")  # what the teacher and the RNN alone are set beside
RUNGS = ("teacher_accuracy", "readout_accuracy", "one_step_accuracy")


def rnn_table(rows: list[dict], descriptions: dict, bptt: list[dict]) -> list[str]:
    """Per task, cell, length and SMT->DMT variant: the RNN alone per seed, BPTT's RNN with the same task,
    cell, length and total steps (mean of seeds, from ``bptt``: on the grid, and with a continuous
    memory where the study has it), the rungs (teacher, readout on its memories, one cell step), and
    the RNN alone at 2T, 4T and 8T (mean of seeds)."""
    by = ("task", "cell", "length")
    final = lambda name: {
        key: mean(row.get("accuracy") for row in group)
        for key, group in groups([row for row in bptt if row["variant"] == name], *by).items()
    }
    baseline, plain = final("bptt"), final("bptt-continuous")
    lines = []
    for (task, cell, length, name), group in groups(rows, *by, "variant").items():
        later = lambda factor: mean((row.get("generalisation") or {}).get(factor, {}).get("rnn") for row in group)
        lines.append(
            [
                task,
                cell,
                str(length),
                f"`{name}`",
                descriptions[name],
                per_seed(group),
                fmt(baseline.get((task, cell, length))),
                fmt(plain.get((task, cell, length))),
                " / ".join(fmt(mean(row.get(key) for row in group)) for key in RUNGS),
                " / ".join(fmt(later(factor)) for factor in ("2", "4", "8")),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["task", "cell", "T", "variant", "what changes", "RNN alone, per seed", "BPTT, same cell (mean)"]
    titles += ["BPTT, no grid (mean)"]
    return table(titles + ["teacher / readout / one step", "RNN alone at 2T / 4T / 8T", "s per run"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    descriptions = {variant["name"]: variant["description"] for variant in result["study"]["variants"]}
    image = [f"![held-out accuracy against optimiser steps]({link}/teacher-curves.png)", ""] if link else []
    rnn_rows = [row for row in rows if row["variant"] in RNN_VARIANTS]
    bptt = [row for row in rows if row["variant"] in BASELINES]
    rows = [row for row in rows if row["variant"] not in RNN_VARIANTS and row["cell"] == "tanh"]  # the race's cell
    page = [("header", header(result, TITLE, command)), ("race", race_table(rows) + image)]
    if any(row["variant"] == "teacher-settings" for row in rows):
        page.append(("race-settings", settings_race_table(rows)))
    page += [
        (f"factors-{task}-{length}", factor_table(group, descriptions))
        for (task, length), group in groups(rows, "task", "length").items()
        if any(row["variant"] not in ("teacher", "teacher-settings", *BASELINES) for row in group)
    ]
    candidates = {variant.name for variant in COPY_STEP}
    if rnn_rows:
        page.append(
            (
                "rnn-alone",
                rnn_table(
                    [r for r in rnn_rows if r["variant"] not in candidates or (r["task"], r["length"]) != ("copy", 16)],
                    descriptions,
                    bptt,
                ),
            )
        )
    # copy's cell-step candidates at T=16, beside the defaults they change (each cell that has one); a
    # candidate at another length stays in the table above
    copy_step = [row for row in rnn_rows if row["task"] == "copy" and row["length"] == 16]
    tried = {row["cell"] for row in copy_step if row["variant"] in candidates}
    copy_step = [row for row in copy_step if row["cell"] in tried and row["variant"] in {*candidates, "smt+dmt"}]
    copy_step.sort(key=lambda row: (row["cell"] != "tanh", row["cell"]))  # stable: the study's order per cell
    if any(row["variant"] in candidates for row in copy_step):
        page.append(("copy-step", rnn_table(copy_step, descriptions, bptt)))
    return page


def figures(result: dict, folder: Path) -> list[Path]:
    """teacher-curves.png: per task and length, held-out accuracy against steps, the teacher (the shared
    recipe and, where run, the task's own settings) and BPTT."""
    shown = ("teacher", "teacher-settings", *BASELINES)
    main = [row for row in result["rows"] if row["variant"] in shown and row["cell"] == "tanh"]
    panels = list(groups(main, "task", "length").items())
    if not panels:
        return []
    drawn, axes = figure(2, (len(panels) + 1) // 2, 3.6, 3.0)
    for axis, ((task, length), group) in zip(axes.flat, panels):
        for (name,), runs in groups(group, "variant").items():
            curve = mean_curve(runs)
            marker, color = STYLE.get("smt" if name.startswith("teacher") else name, ("o", "k"))
            style = {"bptt-continuous": ":", "teacher-settings": "--"}.get(name, "-")
            axis.plot([s for s, _ in curve], [v for _, v in curve], style, color=color, label=name)
        axis.set(title=f"{task}, T={length}", xlabel="optimiser step", ylim=(0, 1.02))
        axis.grid(True, alpha=0.3)
    axes.flat[0].set_ylabel("held-out accuracy (mean of seeds)")
    axes.flat[0].legend(fontsize=8)
    return [save(drawn, folder / "teacher-curves.png")]
