"""The demo (``make demo``): the same non-gated tanh RNN trained with BPTT and with SMT->DMT (the library's
defaults) on needle retrieval at T=64, where BPTT fails, three seeds each and the same number of optimiser
steps: what the RNN alone reaches, the wall time, and the gradient depth of a step."""

from __future__ import annotations

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import Blocks, fmt, header, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import Budget, Point, Study, Variant

TITLE = "Demo: BPTT against SMT->DMT, same tanh RNN, three seeds"
METHODS = [
    Variant("bptt", "BPTT, the same cell, readout, data and number of optimiser steps", {"method": "bptt"}),
    Variant("smt+dmt", "SMT then DMT with the library's defaults"),
]


def cpu() -> Study:
    return Study(
        name="demo",
        preset="cpu",
        base=RunConfig(task="retrieval"),
        variants=METHODS,
        points=[Point(variant.name, "retrieval", "tanh", 64) for variant in METHODS],
        seeds=[0, 1, 2],
        budgets={64: Budget(steps=1500, dmt_steps=300)},  # 1,200 SMT + 300 DMT steps; BPTT 1,500
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu())}


def summary(rows: list[dict]) -> list[str]:
    """The table the demo prints: one line per run."""
    lines = []
    for row in sorted(rows, key=lambda row: (row["method"] != "bptt", row["seed"])):
        forward = ", ".join(f"{phase} {depth}" for phase, depth in sorted((row["forward_depth"] or {}).items()))
        lines.append(
            [
                row["variant"],
                row["cell"],
                str(row["seed"]),
                "diverged" if row["note"] else fmt(row["accuracy"]),
                fmt(row["teacher_accuracy"]),
                fmt(row["seconds"], 0),
                str(row["steps"]),
                str(row["sequential_depth"]),
                forward,
            ]
        )
    chance = next((row["chance"] for row in rows if row.get("chance")), None)
    length = rows[0]["length"] if rows else "–"
    return [
        f"task retrieval, length {length}, chance accuracy {fmt(chance)}",
        "",
        *table(
            [
                "method",
                "cell",
                "seed",
                "RNN-alone accuracy",
                "teacher accuracy",
                "train s",
                "steps",
                "gradient depth",
                "forward depth",
            ],
            lines,
        ),
    ]


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    return [
        ("header", header(result, TITLE, command)),
        ("table", summary(result["rows"])),
    ]
