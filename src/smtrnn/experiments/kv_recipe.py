"""Key-value with the GRU at equal steps: SMT->DMT on the rollout's own labels against BPTT
(docs/kv-recipe.md).

The grid gives key-value 2,300 steps, and there neither method solves it at any length
(docs/results.md). The lookup study (docs/kv-step.md) found that a teacher no RNN pulls keeps the
query's answer readable one token ahead, and that DMT's labels through the rollout then take the
GRU's RNN past one cell step from the teacher's memories. This study sets that recipe beside BPTT with
the same 12,900 optimiser steps, three seeds: SMT without the pull towards the RNN
(``smt.teacher_pull``), 8,900 SMT steps, then 4,000 DMT steps whose gradient runs through 16 of the
RNN's own steps, at rate 2e-3, without a pull towards the teacher's memories, with the readout's labels
through the cell (``dmt.readout_grad``), at T = 16 and 64; at T=64 also with the teacher's decoder
predicting the rest of the sequence from every memory (Tf = T, so every memory the decoder reads is
asked for the query's answer, not only those of the last 16 steps); BPTT's own default, a continuous
memory, at T = 16, 64 and 256. The tanh cell's BPTT at T=16 is the control that a cell without gates
fails with the same steps. Three more variants train at T=16 and run at T = 64 and 256
(``train_length``): the recipe, BPTT, and BPTT on SMT's memory grid. What it found: trained at T,
BPTT is ahead at T=16 and 64, where the recipe stops at the teacher (its decoder one token ahead at
0.26-0.30 with either window), and near chance at T=256; trained at 16, the recipe's RNN keeps its
T=16 score (0.715) at 64 and 256 while its teacher does not, and so does BPTT's on the memory grid
(0.750), not BPTT's on a continuous memory; on the grid BPTT trained at T=256 learns it too (0.671).
The MLP cell's update one hidden layer deeper helps neither method at T=16 (SMT->DMT 0.277 against
0.387, BPTT 0.308 against 0.311). With a memory of 256 the tanh and MLP cells' RNNs are better after
SMT (tanh 0.374 against 0.286 on the mean, MLP 0.466 against 0.312), and DMT at key-value's rate (2e-3,
chosen on the GRU) takes it back (0.272, 0.224); BPTT with 256 units learns nothing with either cell.
The measurement ``after_smt`` scores each run's last SMT checkpoint, what DMT started from."""

from __future__ import annotations

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import Blocks, fmt, groups, header, mean, per_seed, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import ROW_KEYS, Budget, Point, Study, Variant

TITLE = "Key-value at equal steps: SMT->DMT on its own labels against BPTT"
OWN_LABELS = {
    "smt.teacher_pull": False,
    "dmt.truncate": 16,
    "dmt.c_dyn": 0.0,
    "dmt.readout_grad": True,
    "dmt_train.lr": 2e-3,
}
VARIANTS = [
    Variant(
        "smt+dmt-own",
        "SMT without the pull, then DMT on the rollout's own labels (16-step window, rate 2e-3, no pull)",
        OWN_LABELS,
    ),
    Variant(
        "smt+dmt-own-future",
        "the same, the teacher's decoder predicting the whole sequence from every memory (Tf = T)",
        {**OWN_LABELS, "model.future": 256},  # the runner clips Tf to the length
    ),
    Variant("bptt", "BPTT, its default (a continuous memory)", {"method": "bptt"}),
    Variant(
        "bptt-grid",
        "BPTT on SMT's memory grid (5 levels, rounded at run time), trained at T",
        {"method": "bptt", "model.memory_levels": 5},
    ),
    # trained at T=16 and run at T: bitwise the T=16 run's training (tests/test_horizon.py), scored at T
    Variant(
        "smt+dmt-own-at16",
        "`smt+dmt-own` trained on sequences of 16 tokens, run at T",
        {**OWN_LABELS, "train_length": 16},
    ),
    Variant("bptt-at16", "`bptt` trained on sequences of 16 tokens, run at T", {"method": "bptt", "train_length": 16}),
    Variant(
        "bptt-grid-at16",
        "BPTT on SMT's memory grid (5 levels, rounded at run time) trained on sequences of 16 tokens, run at T",
        {"method": "bptt", "model.memory_levels": 5, "train_length": 16},
    ),
    # the MLP cell's step one hidden layer deeper (its one-step lookup: 0.35 from the teacher's memories
    # before the query, results.md), with each method, on the grid, at T=16 (where training at 16 is the run)
    Variant(
        "smt+dmt-own-deep",
        "`smt+dmt-own`, the MLP cell's update with two hidden layers",
        {**OWN_LABELS, "model.mlp_layers": 2},
    ),
    Variant(
        "bptt-grid-deep",
        "`bptt-grid`, the MLP cell's update with two hidden layers",
        {"method": "bptt", "model.memory_levels": 5, "model.mlp_layers": 2},
    ),
    # a memory four times as large for the cells without gates (one step from the teacher's memories before
    # the query: 0.32-0.35 with 64 units), the teacher's width unchanged, each method on the grid at T=16
    Variant(
        "smt+dmt-own-m256",
        "`smt+dmt-own` with a memory of 256 units",
        {**OWN_LABELS, "model.memory_size": 256},
    ),
    Variant(
        "bptt-grid-m256",
        "`bptt-grid` with a memory of 256 units",
        {"method": "bptt", "model.memory_levels": 5, "model.memory_size": 256},
    ),
    # the MLP cell's update reads [m, e(x)] through one layer: with 256 memory units beside 32 of the
    # token's embedding the token is an eighth of its input (a third with 64); the embedding as wide as the memory
    Variant(
        "bptt-grid-m256-e256",
        "`bptt-grid-m256` with a token embedding of 256",
        {"method": "bptt", "model.memory_levels": 5, "model.memory_size": 256, "model.embed_dim": 256},
    ),
]
LENGTHS = (16, 64, 256)
BUDGETS = {max(LENGTHS): Budget(12900, 4000)}  # every length takes the entry at or above it: one budget
# (variant, cell, length)
POINTS = [
    # not at T=256: at T=64 the recipe is back at the grid's wall (the page), and T=256 costs 80 min a run
    *(("smt+dmt-own", "gru", length) for length in (16, 64)),
    ("smt+dmt-own-future", "gru", 64),
    *(("bptt", "gru", length) for length in LENGTHS),
    ("bptt", "tanh", 16),
    *((variant, "gru", length) for variant in ("smt+dmt-own-at16", "bptt-at16") for length in (64, 256)),
    *(("bptt-grid-at16", "gru", length) for length in LENGTHS),
    ("bptt-grid", "gru", 256),  # the grid without training short, where BPTT trained at T stays near chance
    # the MLP cell at T=16: key-value's settings (the grid's rows) beside the same with a deeper step
    *((variant, "mlp", 16) for variant in ("smt+dmt-own", "smt+dmt-own-deep", "bptt-grid-at16", "bptt-grid-deep")),
    # the cells without gates at T=16 with a memory of 256 beside key-value's settings (64 units)
    *((variant, "tanh", 16) for variant in ("smt+dmt-own", "bptt-grid-at16")),
    *((variant, cell, 16) for variant in ("smt+dmt-own-m256", "bptt-grid-m256") for cell in ("tanh", "mlp")),
    ("bptt-grid-m256-e256", "mlp", 16),
]
# a screen of one seed: its teacher no closer to the lookup than the recipe's (the page)
SEEDS = {"smt+dmt-own-future": (0,)}


def cpu() -> Study:
    """The GRU's SMT->DMT at T = 16 and 64 (and with the whole sequence as the decoder's window at
    T=64, one seed), its BPTT at T = 16, 64 and 256, the tanh cell's BPTT at T=16, and trained at 16
    and run at T: SMT->DMT and BPTT at T = 64 and 256, BPTT on the memory grid at T = 16, 64 and 256,
    and BPTT on the grid trained at T=256; the MLP cell at T=16 with its update one hidden layer deeper
    beside the same without, and the tanh and MLP cells at T=16 with a memory of 256 beside key-value's
    settings (the MLP's BPTT also with an embedding of 256), each method on the grid; 12,900 steps
    (SMT->DMT: 8,900 + 4,000); three seeds: 76 runs, on one thread beside another about 30 minutes a run
    for SMT->DMT (70 with the whole window, 60 with the MLP cell's memory of 256) and 2 / 6 / 15 for BPTT
    at T = 16 / 64 / 256 (2-3 trained at 16)."""
    return Study(
        "kv-recipe",
        "cpu",
        RunConfig(task="kv"),
        VARIANTS,
        [Point(variant, "kv", cell, length, SEEDS.get(variant)) for variant, cell, length in POINTS],
        [0, 1, 2],
        BUDGETS,
        # the teacher's decoder naming the answer from the memory before the query (evaluate's rung)
        row_keys=[*ROW_KEYS, "teacher_step_accuracy"],
        task_settings=False,  # the study of what became key-value's settings: measured without them
        measurements=["after_smt"],  # what DMT started from: SMT's last checkpoint scored at T
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu(), points=len(POINTS))}


# ------------------------------------------------------------------------------------------------
# the page


RUNGS = ("teacher_accuracy", "teacher_step_accuracy", "readout_accuracy", "one_step_accuracy")


def race_table(rows: list[dict]) -> list[str]:
    """Per length, cell and variant: the RNN alone (mean and per seed), and for SMT->DMT the rungs (the
    teacher's first prediction, its decoder one token ahead, from the memory before the query, the
    readout on its memories, one cell step from them) and what DMT started from (the RNN alone per seed
    and one cell step at SMT's last checkpoint), with the seconds of a run."""

    def rung(group: list[dict], key: str) -> str:
        value = mean(row.get(key) for row in group)
        return "–" if value is None else fmt(value)

    def after_smt(ordered: list[dict]) -> str:
        return "–" if all(row.get("smt_accuracy") is None for row in ordered) else per_seed(ordered, "smt_accuracy")

    lines = []
    for (length, cell, variant), group in sorted(groups(rows, "length", "cell", "variant").items()):
        ordered = sorted(group, key=lambda row: row["seed"])
        lines.append(
            [
                str(length),
                cell,
                f"`{variant}`",
                fmt(mean(row["accuracy"] for row in group)),
                per_seed(ordered),
                *(rung(group, key) for key in RUNGS),
                after_smt(ordered),
                rung(group, "smt_one_step_accuracy"),
                str(ordered[0]["steps"]),
                fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    titles = ["T", "cell", "run", "RNN alone", "per seed", "teacher", "teacher, one token ahead", "readout"]
    after = ["after SMT: RNN alone", "after SMT: one cell step"]
    return table([*titles, "one cell step", *after, "steps", "s per run"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    return [("header", header(result, TITLE, command)), ("race", race_table(result["rows"]))]
