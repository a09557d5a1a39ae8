"""The teacher at a long length (docs/teacher-long.md). On stack at T=256 SMT->DMT's RNN alone ends
within 0.01 of its teacher, and the teacher is still learning when SMT ends (docs/results.md): the
rung there is how fast the teacher learns. The teacher trains alone with the task's own settings (what
a user's run gets), scored on held-out sequences every 250 steps beside BPTT's RNN, with 4 encoder layers
instead of 2 (the factor that led single-seed screens of depth, heads and width), which is then
tried in SMT->DMT."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.compare import TASKS, ages_table
from smtrnn.experiments.pages import STYLE, Blocks, figure, groups, header, save
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import ROW_KEYS, Budget, Point, Study, Variant
from smtrnn.experiments.teacher import factor_table, mean_curve, rnn_table
from smtrnn.train import TrainConfig

TITLE = "The teacher at a long length: stack at T=256"
EVERY = 250  # optimiser steps between held-out scores (a score at T=256 costs about two training steps)
TEACHER = {"method": "teacher"}
VARIANTS = [
    Variant("teacher", "the teacher alone, the task's settings", TEACHER, group="main"),
    Variant("bptt", "BPTT, tanh RNN, the same steps and model", {"method": "bptt"}, group="main"),
    Variant("encoder-4", "4 encoder layers (2)", {**TEACHER, "model.teacher_layers": 4}, group="factors"),
]
# does the faster teacher give a better RNN alone? SMT->DMT as the grid runs it (docs/results.md: the
# same 2,000 SMT + 300 DMT steps, the RNN also tested at 2T, 4T and 8T), the defaults against the winner
# (DMT's gradient crossing one cell step, its full pull and rate: the study ran before stack's DMT took
# its own window, pull and rate)
DMT_THEN = {"dmt.truncate": 1, "dmt.c_dyn": 1.0, "dmt_train.lr": 1e-3}
RNN = {"method": "smt+dmt", "length_generalisation": True, "train.eval_every": 0, **DMT_THEN}
VARIANTS += [
    Variant("smt+dmt", "SMT->DMT, the task's settings", RNN, group="rnn"),
    Variant("smt+dmt-encoder-4", "SMT->DMT, 4 encoder layers", {**RNN, "model.teacher_layers": 4}, group="rnn"),
]
RNN_VARIANTS = {variant.name for variant in VARIANTS if variant.group == "rnn"}
BUDGETS = {256: Budget(2300, 300)}  # the grid's budget at T=256: 2,300 steps for every method


def cpu() -> Study:
    """Stack at T=256, three seeds: the teacher alone with 2 and 4 encoder layers, BPTT, SMT->DMT with
    each (15 runs, about 3 h of single-thread training, 1.5 h on 2 cores)."""
    # the likeliest winner first (4 layers led the screens at step 1,500: 0.923 against 0.883), so that
    # its SMT->DMT runs start early; the SMT->DMT defaults are the grid's runs (the same configs)
    names = ["teacher", "encoder-4", "smt+dmt-encoder-4", "bptt", "smt+dmt"]
    return Study(
        "teacher-long",
        "cpu",
        RunConfig(train=TrainConfig(eval_every=EVERY)),
        VARIANTS,
        [Point(name, "stack", "tanh", 256) for name in names],
        [0, 1, 2],
        BUDGETS,
        tasks={"stack": TASKS["stack"]},
        measurements=["curve", "ages"],
        row_keys=[*ROW_KEYS, "generalisation", "diagnostics"],
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu().narrowed(variant=["teacher", "bptt", "smt+dmt"]))}


# ------------------------------------------------------------------------------------------------
# the page


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    descriptions = {variant["name"]: variant["description"] for variant in result["study"]["variants"]}
    image = [f"![held-out accuracy against optimiser steps]({link}/teacher-long-curves.png)", ""] if link else []
    teachers = [row for row in rows if row["variant"] not in RNN_VARIANTS]
    page = [("header", header(result, TITLE, command)), ("factors", factor_table(teachers, descriptions) + image)]
    bptt = [row for row in rows if row["variant"] == "bptt"]
    rnn = [row for row in rows if row["variant"] in RNN_VARIANTS]
    if rnn:
        page.append(("rnn-alone", rnn_table(rnn, descriptions, bptt)))
    page.append(("ages", ages_table(rows, ("variant",))))
    return page


def figures(result: dict, folder: Path) -> list[Path]:
    """teacher-long-curves.png: held-out accuracy against steps, the teacher with each factor and BPTT."""
    runs = [row for row in result["rows"] if row["variant"] not in RNN_VARIANTS]
    if not runs:
        return []
    drawn, axes = figure(1, 1, 6.0, 4.0)
    axis = axes.flat[0]
    for (name,), group in groups(runs, "variant").items():
        curve = mean_curve(group)
        style = "-" if name in ("teacher", "bptt") else "--"
        color = STYLE.get("smt" if name == "teacher" else name, ("o", None))[1]
        axis.plot([s for s, _ in curve], [v for _, v in curve], style, color=color, label=name)
    axis.set(title="stack, T=256", xlabel="optimiser step", ylabel="held-out accuracy (mean of seeds)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return [save(drawn, folder / "teacher-long-curves.png")]
