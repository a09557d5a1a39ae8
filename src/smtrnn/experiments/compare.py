"""The synthetic grid (docs/results.md): SMT->DMT against BPTT on the task families across lengths and
cells, every method with the same model and the same number of optimiser steps; BPTT also with ten
times the steps (about SMT->DMT's wall time) where the page compares wall time."""

from __future__ import annotations

from pathlib import Path

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import (
    STYLE,
    Blocks,
    figure,
    fmt,
    groups,
    header,
    mean,
    save,
    spread,
    table,
)
from smtrnn.experiments.runner import smoke
from smtrnn.experiments.spec import ROW_KEYS, Budget, Point, Study, Variant

TITLE = "SMT->DMT against BPTT: synthetic tasks across lengths"
THRESHOLD = 0.9  # "solved": this fraction of the way from chance to 1
TEACHER_AT_CHANCE = 0.1  # a teacher below this fraction of the way from chance to 1 learned nothing
VARIANTS = [
    Variant("bptt", "BPTT", {"method": "bptt"}),
    Variant("tbptt", "truncated BPTT", {"method": "tbptt"}),
    Variant("smt", "SMT alone", {"method": "smt"}),
    Variant("smt+dmt", "SMT then DMT"),
    # an SMT step with the horizon costs about ten BPTT steps at T <= 64: the equal-wall-time baseline
    Variant("bptt-10x", "BPTT with ten times the steps", {"method": "bptt"}, steps=10),
    # DMT's pull towards the teacher: the long DMT (LONG_DMT) had it at 0.1 until the screen of these
    # rows (the earlier smt+dmt rows of stack, modular and copy) against smt+dmt without it
    Variant("smt+dmt-pull", "SMT then DMT, DMT's pull towards the teacher at 0.1", {"dmt.c_dyn": 0.1}),
]
TASKS = {
    "retrieval": {"values": 8},
    "copy": {"values": 8, "reverse": False},
    "stack": {"symbols": 4, "capacity": 10},
    "kv": {"pairs": 4, "key_vocab": 16, "value_vocab": 16},
    "modular": {"modulus": 7},
    "parity": {},
}
# every length gets the library's defaults, 2,000 SMT + 300 DMT steps (BPTT the same 2,300): the budget
# with which the teacher learns retrieval at T=64 to 512 and stack at T=64 (docs/length.md,
# docs/teacher.md), so that each SMT point is `smtrnn train --task TASK --length T` with no other option
BUDGETS = {256: Budget(2300, 300)}  # a point takes the entry of the next length >= its own
# copy beyond T=16: its teacher needs about 5,000 steps to hold a string of 31 symbols and DMT about 4,000
# to bring the RNN alone to it (docs/results.md, "What was tried where a rung fails": the RNN alone 0.885 /
# 0.937 / 0.858 after 5,000 + 2,300); BPTT takes the same steps, and ten times them beside it
# parity and modular: their own DMT steps (parity's 2,000: its DMT finds the flip within about 1,000 of
# them, with SMT on 16 tokens; modular's 4,000: the rollout's inference of the map still rises at 2,000,
# the MLP cell's RNN alone 0.888 after 2,000 and 0.919 after 4,000 at T=64, 3 seeds); BPTT takes the same
# 4,000 and 6,000 steps
TASK_BUDGETS = {
    "copy": {16: Budget(2300, 300), 256: Budget(9000, 4000)},
    "parity": {256: Budget(4000, 2000)},
    "modular": {256: Budget(6000, 4000)},
    # key-value's own (tasks/recall.py): 8,900 SMT + 4,000 DMT steps, every length trained at 16 (so each
    # run at T=64 and 256 is its T=16 run's training, evaluated at T: the runner trains it once)
    "kv": {256: Budget(12900, 4000)},
}
# the families run at T=256 too: all but retrieval, whose long lengths are the length page's (T=64 to 1,024)
LONG = ("copy", "stack", "parity", "kv", "modular")
TEN_X = ("copy", "stack", "parity")  # BPTT with ten times the steps at T=64: where BPTT was ahead there
# the pull's screen: every length of stack, copy at T=16 and 64 (an hour a run at 64); modular's ran with
# its memory of 64, before its memory of 256 (docs/results.md quotes it), and is not rerun
PULL_SCREEN: dict[str, dict[str, tuple[int, ...]]] = {
    "smt+dmt-pull": {"stack": (16, 64, 256), "copy": (16, 64)},
}
# the other cells with the recipe the tanh cell takes, SMT->DMT and BPTT, where a run is minutes: the GRU
# and MLP cells where BPTT is ahead of the tanh cell at T=64 (stack, parity), and where one tanh step
# cannot follow the teacher (key-value's lookup, modular's sum at T=64): do gates or a deeper step take
# it? And parity at T=256, where the tanh cell's BPTT fails: do gates or depth give BPTT the length?
# Stack at T=256 too (an SMT->DMT run 13-14 min, two on two cores): where both tanh methods just pass.
# Copy at T=16 (minutes) so that every family has the three cells, and at T=64, where the tanh cell's BPTT
# is at chance (an SMT->DMT run about 2 h, three on two cores): do gates or depth give BPTT copy's length?
# Key-value at T=256 (an SMT->DMT run about 10 min): neither method solves it at T=16 with any cell, and
# the long length says whether the lead SMT->DMT keeps at T=64 (0.31 against at most 0.24) holds there.
# Retrieval's cells are on the length page. The rest of the cells' grid is `full`.
CELL_SCREEN: dict[str, dict[str, tuple[int, ...]]] = {
    cell: {"copy": (16, 64), "stack": (64, 256), "parity": (64, 256), "kv": (16, 64, 256), "modular": (64,)}
    for cell in ("gru", "mlp")
}


def _grid(include) -> Study:
    cells, methods, lengths = ("tanh", "gru", "mlp", "transformer"), ("bptt", "smt+dmt", "bptt-10x"), (16, 64, 256)
    points = [
        Point(method, task, cell, length)
        for task in TASKS
        for cell in cells
        for method in methods
        for length in lengths
        if include(task, cell, method, length)
    ]
    points += [
        Point(variant, task, "tanh", length)
        for variant, tasks in PULL_SCREEN.items()
        for task, at in tasks.items()
        for length in at
    ]
    base = RunConfig(length_generalisation=True)
    return Study(
        "compare",
        "cpu",
        base,
        VARIANTS,
        points,
        [0, 1, 2],
        BUDGETS,
        tasks=TASKS,
        row_keys=[*ROW_KEYS, "diagnostics", "generalisation"],
        task_budgets=TASK_BUDGETS,
        measurements=["ages"],  # where a family's labels are held for a while (stack): accuracy by how long
    )


def cpu() -> Study:
    """The committed grid: the tanh cell on every family at T=16, 64 and 256 (retrieval's long lengths
    are the length page's); BPTT with ten times the steps beside it at T=64 on copy, stack and parity;
    the GRU and MLP cells where CELL_SCREEN says. Its runs sum to tens of hours of training on one
    thread each (the page's header gives the measured sum; an SMT->DMT run 5-20 min at T <= 64 but
    about 2 h on copy at T=64, the runs at T=256 13 min to several hours): many sittings on two cores,
    so `--keep-rows` adds runs to the committed page and an interrupted run resumes from its
    checkpoint."""

    def include(task: str, cell: str, method: str, length: int) -> bool:
        if cell != "tanh":
            return method in ("bptt", "smt+dmt") and length in CELL_SCREEN.get(cell, {}).get(task, ())
        if method == "bptt-10x":
            return length == 64 and task in TEN_X
        return length < 256 or task in LONG

    return _grid(include)


def full() -> Study:
    """Every family, length and cell (the Transformer cell up to T=64), BPTT with ten times the steps at
    T <= 64: days on two cores, estimated, not run."""
    study = _grid(lambda task, cell, method, length: (method != "bptt-10x" and cell != "transformer") or length <= 64)
    study.preset = "full"
    return study


PRESETS = {
    "cpu": cpu,
    "full": full,
    "smoke": lambda: smoke(
        cpu().narrowed(task=["retrieval", "parity"], length=[16], cell=["tanh"], variant=["bptt", "smt+dmt"]), points=4
    ),
}


# ------------------------------------------------------------------------------------------------
# the page


def progress(accuracy: float | None, chance: float | None) -> float | None:
    """How far ``accuracy`` is from chance (0) to perfect (1)."""
    if accuracy is None or chance is None or chance >= 1:
        return None
    return (accuracy - chance) / (1 - chance)


def teacher_at_chance(row: dict) -> bool:
    """An SMT row whose teacher learned nothing and whose RNN did not solve the task: its RNN's accuracy
    says nothing about the method. A solved row counts whatever its teacher scores at T (parity's,
    trained on 16 tokens, is at chance at 256 under an RNN alone at 1.000)."""
    reached = progress(row.get("teacher_accuracy"), row.get("chance"))
    solved = progress(row.get("accuracy"), row.get("chance"))
    at_chance = reached is not None and reached < TEACHER_AT_CHANCE
    return row["method"].startswith("smt") and at_chance and not (solved is not None and solved >= THRESHOLD)


def counted(rows: list[dict]) -> list[dict]:
    """The rows that are method results: not diverged, teacher not at chance."""
    return [row for row in rows if row["accuracy"] is not None and not teacher_at_chance(row)]


def threshold_table(rows: list[dict]) -> list[str]:
    """Per task and cell, the longest length at which each variant's mean accuracy over seeds (counted
    rows only) is at least THRESHOLD of the way from chance to 1; '< T' when no tested length reaches it;
    and the lengths beyond a variant's longest run that another variant of the row ran, as not run (a
    missing run must not read as a failed one)."""
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    lines = []
    for (task, cell), group in groups(rows, "task", "cell").items():
        entries = []
        all_lengths = sorted({row["length"] for row in group})
        for variant in variants:
            solved, tested = [], []
            by_length = groups([row for row in group if row["variant"] == variant], "length")
            for (length,), at in sorted(by_length.items()):
                kept = counted(at)
                if not kept:
                    continue
                tested.append(length)
                reached = progress(mean(row["accuracy"] for row in kept), mean(row["chance"] for row in kept))
                if reached is not None and reached >= THRESHOLD:
                    solved.append(length)
            entry = "not run" if not tested else str(max(solved)) if solved else f"< {min(tested)}"
            ran = [length for (length,) in by_length]
            if beyond := [length for length in all_lengths if ran and length > max(ran)]:
                entry += f" ({' / '.join(map(str, beyond))} not run)"
            entries.append(entry)
        lengths = " / ".join(map(str, all_lengths))
        lines.append([task, cell, lengths, *entries])
    return table(["task", "cell", "lengths tested", *variants], lines)


def wall_time_table(rows: list[dict]) -> list[str]:
    """SMT->DMT against BPTT at equal steps and at (about) equal wall time, where the grid has bptt-10x."""
    lines = []
    for key in groups([row for row in rows if row["variant"] == "bptt-10x"], "task", "cell", "length"):
        at = [row for row in rows if (row["task"], row["cell"], row["length"]) == key]
        cells = []
        for variant in ("smt+dmt", "bptt", "bptt-10x"):
            group = [row for row in at if row["variant"] == variant]
            seconds = mean(row["seconds"] for row in group)
            cells.append(f"{spread([row['accuracy'] for row in group])} in {fmt(seconds, 0)} s" if group else "–")
        lines.append([*map(str, key), *cells])
    if not lines:
        return []
    return table(["task", "cell", "T", "smt+dmt", "bptt (same steps)", "bptt-10x (about the same time)"], lines)


RUNGS = (  # docs/method.md: where the accuracy is lost on the way from the task to the RNN alone
    ("teacher_accuracy", "teacher", "the teacher"),
    ("readout_accuracy", "readout on m*_t", "the readout"),
    ("one_step_accuracy", "one step", "one step"),
    ("accuracy", "RNN alone", "the rollout"),
)


def breaks_at(rows: list[dict]) -> str:
    """The rung that loses most of the way from chance to 1 (means over ``rows``): the teacher (it did
    not learn the task), the readout (it cannot read the teacher's memories), one step (the cell cannot
    compute the next memory from the teacher's), or the rollout (errors compound on the RNN's own
    memories); "solved" when the RNN alone reaches THRESHOLD."""
    chance = mean(row["chance"] for row in rows)
    reached = [progress(mean(row.get(key) for row in rows), chance) for key, *_ in RUNGS]
    if any(value is None for value in reached):
        return "–"
    values = [value for value in reached if value is not None]
    if values[-1] >= THRESHOLD:
        return "solved"
    losses = [1 - values[0], *(before - after for before, after in zip(values, values[1:]))]
    return RUNGS[max(range(len(losses)), key=losses.__getitem__)][2]


def ladder_table(rows: list[dict]) -> list[str]:
    """Per task, cell and length, SMT->DMT's accuracy rung by rung (means over seeds) and where it breaks."""
    smt = [row for row in rows if row["variant"] == "smt+dmt" and row["accuracy"] is not None]
    lines = [
        [task, cell, str(length), *(fmt(mean(row.get(key) for row in group)) for key, *_ in RUNGS), breaks_at(group)]
        for (task, cell, length), group in sorted(groups(smt, "task", "cell", "length").items())
    ]
    return table(["task", "cell", "T", *(title for _, title, _ in RUNGS), "breaks at"], lines) if lines else []


def accuracy_table(rows: list[dict]) -> list[str]:
    lengths = sorted({row["length"] for row in rows})
    lines = []
    for (cell, variant), group in groups(rows, "cell", "variant").items():
        by_length = groups(group, "length")
        at = lambda length, key: [row[key] for row in by_length.get((length,), [])]

        def accuracy(length: int) -> str:
            runs = by_length.get((length,), [])
            failed = sum(teacher_at_chance(row) for row in runs)
            return spread([row["accuracy"] for row in runs]) + (f" [teacher at chance: {failed}]" if failed else "")

        lines.append(
            [
                cell,
                variant,
                *(accuracy(length) for length in lengths),
                " / ".join(fmt(mean(at(length, "teacher_accuracy"))) for length in lengths),
                " / ".join(fmt(mean(at(length, "seconds")), 0) for length in lengths),
            ]
        )
    per_length = " / ".join(str(length) for length in lengths)
    return table(
        [
            "cell",
            "method",
            *(f"T={length}" for length in lengths),
            f"teacher (T={per_length})",
            f"train s (T={per_length})",
        ],
        lines,
    )


def generalisation_table(rows: list[dict]) -> list[str]:
    rows = [row for row in rows if row.get("generalisation")]
    if not rows:
        return []
    factors = sorted({factor for row in rows for factor in row["generalisation"]}, key=int)
    lines = []
    for (cell, variant, length), group in groups(rows, "cell", "variant", "length").items():
        cells = []
        for factor in factors:
            entries = [entry for row in group if (entry := row["generalisation"].get(factor)) is not None]
            if not entries:
                cells.append("–")  # the task refuses that length
                continue
            teacher = mean(entry["teacher"] for entry in entries)
            cells.append(
                spread([entry["rnn"] for entry in entries]) + ("" if teacher is None else f" (teacher {teacher:.3f})")
            )
        lines.append([cell, variant, str(length), *cells])
    return [
        "Trained at T, tested at longer lengths: the RNN alone, mean ± std over seeds; the teacher's first "
        "prediction in brackets.",
        "",
        *table(["cell", "method", "trained T", *(f"{factor}T" for factor in factors)], lines),
    ]


DIAGNOSTICS = (
    ("rnn_effective_rank", "eff. rank RNN"),
    ("teacher_effective_rank", "eff. rank teacher"),
    ("rnn_pairwise_distance", "mean distance RNN"),
    ("teacher_pairwise_distance", "mean distance teacher"),
    ("drift", "drift"),
    ("relative_drift", "relative drift"),
)


def diagnostics_table(rows: list[dict]) -> list[str]:
    value = lambda row, key: (row.get("diagnostics") or {}).get(key)
    lines = [
        [cell, variant, str(length), *(fmt(mean(value(row, key) for row in group), 3) for key, _ in DIAGNOSTICS)]
        for (cell, variant, length), group in groups(rows, "cell", "variant", "length").items()
    ]
    return table(["cell", "method", "T", *(title for _, title in DIAGNOSTICS)], lines)


def task_block(task: str, rows: list[dict], options: dict, link: str | None) -> list[str]:
    settings = ", ".join(f"{key}={value}" for key, value in options.items())
    steps = ", ".join(
        f"T={length}: {max(row['steps'] for row in group)}"
        for (length,), group in sorted(groups([row for row in rows if row["variant"] != "bptt-10x"], "length").items())
    )
    return [
        f"## {task}" + (f" ({settings})" if settings else ""),
        "",
        f"Chance accuracy {fmt(mean(row['chance'] for row in rows))}. Optimiser steps per run, every method: {steps}.",
        "",
        *accuracy_table(rows),
        *([f"![{task}: accuracy against length]({link}/{task}.png)", ""] if link else []),
        *generalisation_table(rows),
        "Memory diagnostics at the trained length (means over seeds): effective rank and mean pairwise distance "
        "of the memories m_1..m_T (a collapse shows as small values), and the drift ||m^_t - m*_t|| of the RNN's "
        "own rollout from the teacher's memories (also relative to the mean teacher memory norm).",
        "",
        *diagnostics_table(rows),
    ]


def ages_table(rows: list[dict], by: tuple[str, ...]) -> list[str]:
    """Per group of ``by`` (e.g. length and variant) and network (the RNN alone, the teacher's first
    prediction), accuracy on the labels by how long each was held (the ``ages`` measurement; means of
    seeds), and the share of the labels in each bin; [] when no row has the measurement."""
    measured = [row for row in rows if row.get("age_bins")]
    if not measured:
        return []
    bins = [f"held {lo}-{hi}" if hi else f"held {lo}+" for lo, hi in measured[0]["age_bins"]]
    lines = []
    for key, group in sorted(groups(measured, *by).items()):
        shares = " / ".join(fmt(mean(row["age_share"][i] for row in group), 2) for i in range(len(bins)))
        for network in ("rnn", "teacher"):
            if all(row.get(f"age_{network}") for row in group):
                cells = [mean(row[f"age_{network}"][i] for row in group) for i in range(len(bins))]
                lines.append([*map(str, key), network, *(fmt(cell) for cell in cells), shares])
    return table([*by, "network", *bins, "share of the labels per bin"], lines)


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows, tasks = result["rows"], result["study"]["tasks"]
    excluded = sum(teacher_at_chance(row) for row in rows)
    page: Blocks = [
        ("header", header(result, TITLE, command)),
        ("threshold", [f"({excluded} SMT run(s) with a teacher at chance not counted.)", "", *threshold_table(rows)]),
        ("wall-time", wall_time_table(rows)),
        ("ladder", ladder_table(rows)),
    ]
    for (task,), group in groups(rows, "task").items():
        page.append((f"task-{task}", task_block(task, group, tasks.get(task, {}), link)))
        held = ages_table([row for row in group if row["variant"] != "bptt-10x"], ("cell", "length", "variant"))
        if held:
            page.append((f"ages-{task}", held))
    return page


def figures(result: dict, folder: Path) -> list[Path]:
    """<folder>/<task>.png per task: accuracy against length (log2 axis), one panel per cell, one line per
    method (mean over seeds, band from min to max), chance dashed."""
    paths = []
    for (task,), task_rows in groups(result["rows"], "task").items():
        cells = groups(task_rows, "cell")
        drawn, axes = figure(1, len(cells), 4.2, 3.6)
        for axis, ((cell,), cell_rows) in zip(axes[0], cells.items()):
            for (variant,), variant_rows in groups(cell_rows, "variant").items():
                points = []
                for (length,), group in sorted(groups(variant_rows, "length").items()):
                    values = [row["accuracy"] for row in group if row["accuracy"] is not None]
                    if values:
                        points.append((length, sum(values) / len(values), min(values), max(values)))
                if points:
                    lengths, means, lows, highs = zip(*points)
                    marker, color = STYLE.get(variant, ("x", "k"))
                    axis.plot(lengths, means, marker=marker, color=color, label=variant)
                    axis.fill_between(lengths, lows, highs, color=color, alpha=0.2, linewidth=0)
                    if len(points) == 1:  # a band of one length has no width: the seeds' range as a bar
                        axis.errorbar(
                            lengths, means, [[means[0] - lows[0]], [highs[0] - means[0]]], color=color, capsize=4
                        )
            chance = mean(row["chance"] for row in cell_rows)
            if chance is not None:
                axis.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
            ticks = sorted({row["length"] for row in cell_rows})
            axis.set_xscale("log", base=2)
            axis.set_xticks(ticks, [str(length) for length in ticks])
            axis.set(title=f"{cell} cell", xlabel="sequence length T", ylim=(-0.02, 1.02))
            axis.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("accuracy, RNN alone")
        axes[0][0].legend(fontsize=8)
        drawn.suptitle(task)
        paths.append(save(drawn, folder / f"{task}.png"))
    return paths
