"""Does sampling decoder positions hurt learning? (docs/decoder_positions.md) SMT with the decoder on
every memory of every sequence against the decoder on a few sampled memories per sequence: the same
task, model, steps and seeds."""

from __future__ import annotations

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import Blocks, fmt, groups, header, mean, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import Budget, Point, Study, Variant

TITLE = "Decoder positions: sampled windows against every window"
VARIANTS = [
    Variant("all", "the decoder on every memory of every sequence", {"smt.decoder_positions": 0}),
    Variant("16", "16 memories per sequence (the default)", {"smt.decoder_positions": 16}),
    Variant("4", "4 memories per sequence", {"smt.decoder_positions": 4}),
]


def cpu() -> Study:
    """Stack at T=64, SMT alone for 300 steps (about 10 minutes on 2 cores)."""
    points = [Point(variant.name, "stack", "tanh", 64) for variant in VARIANTS]
    base = RunConfig(method="smt")
    return Study("decoder-positions", "cpu", base, VARIANTS, points, [0, 1, 2], {64: Budget(300)})


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu(), points=2)}


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    lines = []
    for (variant, task, length), group in groups(result["rows"], "variant", "task", "length").items():
        lines.append(
            [
                task,
                str(length),
                variant,
                fmt(mean(row["teacher_accuracy"] for row in group)),
                fmt(mean(row["one_step_accuracy"] for row in group)),
                fmt(mean(row["accuracy"] for row in group)),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["task", "T", "decoder positions", "teacher accuracy", "one-step accuracy", "RNN-alone accuracy"]
    return [("header", header(result, TITLE, command)), ("table", table(titles + ["s per run"], lines))]
