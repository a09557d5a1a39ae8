"""Key-value's lookup step: which kind of step can follow the teacher (docs/kv-step.md).

On key-value the teacher holds the pairs (0.99 at T=16) and the RNN's readout reads its memories, but
one cell step from them keeps about 0.31 with every cell tried (tanh, GRU, LSTM, MLP, Transformer;
docs/results.md): after the query the teacher's memory holds only the answer, so the step that reads
the query must find its pair among the stored ones. The study trains the grid's key-value runs
(SMT->DMT, what `smtrnn train --task kv` gets, and the teacher alone, whose memory no RNN pulls) and
fits readers to name the query's value from the teacher's memory before the query and the query key
(``smtrnn.probe.lookup_probe``): a linear reader and MLPs of 64 to 1,024 hidden units, which see memory
and query side by side as the tanh and MLP cells do, and a bilinear reader, a linear map of the memory
chosen by the query key, as a step whose transition the token picks would. The same readers read two
memories written by hand from the pairs (in order of position, or one slot per key) as references."""

from __future__ import annotations

from smtrnn.config import RunConfig
from smtrnn.experiments.compare import BUDGETS, TASKS
from smtrnn.experiments.pages import Blocks, fmt, groups, header, mean, table
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import ROW_KEYS, Point, Study, Variant
from smtrnn.probe import LOOKUP_HIDDEN

TITLE = "Key-value's lookup step: what reads the query's value from the teacher's memory"
VARIANTS = [
    Variant("smt+dmt", "SMT then DMT, the grid's run (`smtrnn train --task kv`)"),
    Variant("teacher", "the teacher alone (`--method teacher`): a memory no RNN pulls", {"method": "teacher"}),
    Variant("teacher-4x", "the teacher alone, four times the steps (9,200)", {"method": "teacher"}, steps=4),
    Variant("smt+dmt-4x", "SMT then DMT, four times the steps (8,900 SMT + 300 DMT)", steps=4),
]
# (variant, cell, length); the Transformer cell's memory is 4 tokens of 16, and the teacher's decoder
# attends over the same tokens (so can match the query's key against a stored one), as the cell's step does
POINTS = [
    ("smt+dmt", "tanh", 16),
    ("smt+dmt", "tanh", 64),
    ("teacher", "tanh", 16),
    ("teacher-4x", "tanh", 16),
    ("smt+dmt", "transformer", 16),
    ("smt+dmt-4x", "tanh", 16),
]
READERS = ("linear", *(f"mlp-{hidden}" for hidden in LOOKUP_HIDDEN), "bilinear")


def cpu() -> Study:
    """Key-value (the grid's options) at T=16 and 64 with SMT->DMT, at T=16 with the teacher alone (the
    grid's steps and four times them), SMT->DMT with four times them and with the Transformer cell at
    T=16; the grid's budget (2,300 steps); three seeds: 18 runs of 3-20 minutes each on one thread, and
    a probe of about a minute after each."""
    points = [Point(variant, "kv", cell, length) for variant, cell, length in POINTS]
    return Study(
        "kv-step",
        "cpu",
        RunConfig(),
        VARIANTS,
        points,
        [0, 1, 2],
        BUDGETS,
        tasks={"kv": TASKS["kv"]},
        measurements=["lookup"],
        row_keys=list(ROW_KEYS),
        task_settings=False,  # the study of what became key-value's settings: measured without them
    )


PRESETS = {"cpu": cpu, "smoke": lambda: smoke(cpu(), points=len(POINTS))}


# ------------------------------------------------------------------------------------------------
# the page


def _scores(rows: list[dict], memory: str, reader: str) -> str:
    values = [row["lookup"][memory][reader] for row in rows if row.get("lookup")]
    return fmt(mean(values)) if values else "–"


def rung_table(rows: list[dict]) -> list[str]:
    """Per length and variant (means of seeds): the teacher, a linear reader of its memory after the
    query, its decoder from the memory before the query with the query as the next input, the RNN's readout on one cell step from the memory before it, the RNN alone, and each reader
    of the memory before the query with the query key (the RNN's columns empty for the teacher alone)."""

    def rnn(group: list[dict], key: str) -> str:
        return "–" if all(row["method"] == "teacher" for row in group) else fmt(mean(row[key] for row in group))

    lines = []
    for (length, cell, variant), group in sorted(groups(rows, "length", "cell", "variant").items()):
        probed = [row["lookup"] for row in group if row.get("lookup")]
        after, decoder = (fmt(mean(p[k] for p in probed)) if probed else "–" for k in ("after query", "decoder before"))
        lines.append(
            [
                str(length),
                cell,
                f"`{variant}`",
                fmt(mean(row["teacher_accuracy"] for row in group)),
                after,
                decoder,
                " / ".join(
                    fmt(row["lookup"]["decoder before"])
                    for row in sorted(group, key=lambda r: r["seed"])
                    if row.get("lookup")
                ),
                *(rnn(group, key) for key in ("one_step_accuracy", "accuracy")),
                *(_scores(group, "teacher", reader) for reader in READERS),
            ]
        )
    titles = [
        "T",
        "cell",
        "run",
        "teacher",
        "linear, after the query",
        "decoder, before",
        "per seed",
        "one cell step",
        "RNN alone",
    ]
    return table(titles + [f"{reader}, before" for reader in READERS], lines)


def reference_table(rows: list[dict]) -> list[str]:
    """Per length: each reader of the two hand-written layouts (means over the runs; the sequences and
    the readers' seeds are the same in every run, so the runs differ only in the readers' fits)."""
    lines = []
    for (length,), group in sorted(groups(rows, "length").items()):
        for memory in ("by position", "by key"):
            lines.append([str(length), memory, *(_scores(group, memory, reader) for reader in READERS)])
    return table(["T", "memory written by hand", *READERS], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    return [
        ("header", header(result, TITLE, command)),
        ("rungs", rung_table(rows)),
        ("references", reference_table(rows)),
    ]
