"""The teacher's width against the string it must hold (docs/teacher-width.md).

The teacher's memory m*_t is ``memory_head`` (a linear map) of the encoder's last hidden state at t,
then the memory space's squashing: whatever the memory size, m*_t has at most ``teacher_width`` degrees
of freedom. String copy asks the memory for the whole string, (T-1)//2 symbols: at T=64, 31 symbols
in a width of 64, the teacher learns it; at T=256, 127 symbols in 64, its first runs stayed at chance
(docs/results.md). Screens of one seed pointed at the width (the teacher alone at T=128, 2,500 steps:
0.19-0.29 on the training batches with 64 through all its steps, 0.90-0.96 from step 800 with 128;
held-out 0.240 against 0.945 at the end).
This study measures it: the teacher alone with copy's settings and a width of 64 against 128, at
T=64 and 128, three seeds, scored on held-out sequences every 250 steps; and at T=128, width 128 with
8 decoder positions per sequence instead of 16 (the same 512 tokens of decoder window as T=64's 16
windows of 32), what copy's settings now give there."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.compare import TASKS
from smtrnn.experiments.pages import Blocks, figure, fmt, groups, header, mean, save, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import ROW_KEYS, Budget, Point, Study, Variant
from smtrnn.experiments.teacher import first_step, mean_curve
from smtrnn.train import TrainConfig

TITLE = "The teacher's width and the string its memory holds (string copy)"
EVERY = 250  # optimiser steps between held-out scores
TEACHER = {"method": "teacher"}
# the width and the decoder positions are pinned: copy's own settings now follow the string
# (tasks.synthetic.whole_string_width / whole_string_positions, what this study found)
VARIANTS = [
    Variant(
        "teacher",
        "the teacher alone, copy's settings of T=64 (width 64, 16 decoder positions)",
        {**TEACHER, "model.teacher_width": 64, "smt.decoder_positions": 16},
    ),
    Variant("width-128", "width 128", {**TEACHER, "model.teacher_width": 128, "smt.decoder_positions": 16}),
    # copy's settings at T=128 since this study: 8 windows of 64 tokens per sequence, not 16
    Variant(
        "width-128-p8",
        "width 128, 8 decoder positions (copy's settings at T=128)",
        {**TEACHER, "model.teacher_width": 128, "smt.decoder_positions": 8},
    ),
]
LENGTHS = (64, 128)
ONLY_AT = {"width-128-p8": (128,)}  # at T=64 copy's settings are the `teacher` row's
BUDGETS = {128: Budget(2500, 0)}  # the teacher at T=64 needs 1,000-2,000 steps (docs/teacher.md)
LEVEL = 0.9  # the held-out accuracy whose first step the page reports


def cpu() -> Study:
    """Copy at T=64 and 128, widths 64 and 128, and at T=128 width 128 with 8 decoder positions; three
    seeds (15 runs, about 4.5 h of single-thread training: 6 / 12 / 16 / 33 min a run for T=64 and 128
    with each width)."""
    return Study(
        "teacher-width",
        "cpu",
        RunConfig(train=TrainConfig(eval_every=EVERY)),
        VARIANTS,
        [
            Point(variant.name, "copy", "tanh", length)
            for length in reversed(LENGTHS)
            for variant in VARIANTS
            if length in ONLY_AT.get(variant.name, LENGTHS)
        ],
        [0, 1, 2],
        BUDGETS,
        tasks={"copy": TASKS["copy"]},
        measurements=["curve"],
        row_keys=list(ROW_KEYS),
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu(), points=3)}


# ------------------------------------------------------------------------------------------------
# the page


def width_table(rows: list[dict], study: dict) -> list[str]:
    """Per length and variant: the string's symbols against the width, held-out accuracy of the first
    prediction from memory (mean of seeds) at steps 500 and 1,000 and at the end, each seed's final,
    and the first step at which the mean reaches LEVEL."""
    variants = {variant["name"]: variant for variant in study["variants"]}
    lines = []
    for (length, name), group in sorted(groups(rows, "length", "variant").items()):
        curve = mean_curve(group)
        at = lambda step: next((value for s, value in curve if s == step), None)
        width = variants[name]["overrides"].get("model.teacher_width", study["base"]["model"]["teacher_width"])
        finals = " / ".join(fmt(row["teacher_accuracy"]) for row in sorted(group, key=lambda row: row["seed"]))
        lines.append(
            [
                str(length),
                f"`{name}`",
                variants[name]["description"],
                f"{(length - 1) // 2} / {width}",
                fmt(at(500)),
                fmt(at(1000)),
                fmt(curve[-1][1] if curve else None),
                finals,
                str(first_step(curve, LEVEL) or "–"),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["T", "variant", "what changes", "symbols / width", "at step 500", "at step 1,000", "final"]
    return table(titles + ["final per seed", f"steps to {LEVEL}", "s per run"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    image = [f"![held-out accuracy against optimiser steps]({link}/teacher-width-curves.png)", ""] if link else []
    return [
        ("header", header(result, TITLE, command)),
        ("widths", width_table(result["rows"], result["study"]) + image),
    ]


def figures(result: dict, folder: Path) -> list[Path]:
    """teacher-width-curves.png: the teacher's held-out accuracy against steps, a panel per length."""
    by_length = groups(result["rows"], "length")
    if not by_length:
        return []
    drawn, axes = figure(1, len(by_length), 4.6, 3.6)
    for axis, ((length,), rows) in zip(axes.flat, sorted(by_length.items())):
        for (name,), group in groups(rows, "variant").items():
            curve = mean_curve(group)
            axis.plot([s for s, _ in curve], [v for _, v in curve], "-" if name == "teacher" else "--", label=name)
        axis.set(title=f"copy, T={length}", xlabel="optimiser step", ylabel="held-out accuracy (mean of seeds)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    return [save(drawn, folder / "teacher-width-curves.png")]
