"""Render a ``compare.compare`` result: a markdown page (per task: accuracy by cell, method and length;
length generalisation; memory diagnostics) and one figure per task (accuracy against length)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from smtrnn import checkpoint
from smtrnn.errors import UserError

STYLE = {"bptt": ("^", "C2"), "tbptt": ("v", "C3"), "smt": ("s", "C1"), "smt+dmt": ("o", "C0"), "bptt-10x": ("D", "C4")}
THRESHOLD = 0.9  # "solved": this fraction of the way from chance to 1
TEACHER_AT_CHANCE = 0.1  # a teacher below this fraction of the way from chance to 1 learned nothing


def _progress(accuracy: float | None, chance: float | None) -> float | None:
    """How far ``accuracy`` is from chance (0) to perfect (1)."""
    if accuracy is None or chance is None or chance >= 1:
        return None
    return (accuracy - chance) / (1 - chance)


def teacher_at_chance(row: dict) -> bool:
    """An SMT row whose teacher learned nothing: its RNN's accuracy says nothing about the method."""
    progress = _progress(row.get("teacher_accuracy"), row.get("chance"))
    return row["method"].startswith("smt") and progress is not None and progress < TEACHER_AT_CHANCE


def counted(rows: list[dict]) -> list[dict]:
    """The rows that are method results: not diverged, teacher not at chance."""
    return [row for row in rows if row["accuracy"] is not None and not teacher_at_chance(row)]


def machine() -> str:
    """One line naming the processor, core count and PyTorch build of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_page(path: str | Path, render: Callable[[str | None], str], figures: str | Path | None = None) -> None:
    """Write the markdown ``render(link)`` to ``path`` atomically; ``link`` is the ``figures`` folder as seen
    from the page (None without figures). A path that cannot be written is a UserError."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        link = os.path.relpath(figures, target.parent) if figures else None
        checkpoint.write_atomic(target, render(link).encode())
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None


def wall_time(result: dict, rows: list[dict]) -> str:
    """The page's wall-time line: this invocation, runs trained and reused, runs missing, training summed."""
    missing = result.get("planned", len(rows)) - len(rows)
    return (
        f"Wall time: {duration(result['wall_seconds'])} for this invocation ({result['trained']} runs trained, "
        f"{result['reused']} reused from earlier invocations"
        + (f"; {len(rows)} of {result['planned']} runs finished, the others are missing below" if missing else "")
        + f"); training time of all runs summed: {duration(sum(row['seconds'] or 0.0 for row in rows))}"
    )


def groups(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``keys``, groups in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def mean(values) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def spread(values: list[float | None]) -> str:
    """'mean ± std' over seeds (std only with two or more), noting runs that diverged (None)."""
    present = [value for value in values if value is not None]
    failed = len(values) - len(present)
    if not present:
        return f"diverged ({failed})" if failed else "–"
    text = f"{statistics.fmean(present):.3f}"
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.3f}"
    return text + (f" ({failed} diverged)" if failed else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _accuracy_table(rows: list[dict], lengths: list[int]) -> list[str]:
    lines = []
    for (cell, method), group in groups(rows, "cell", "method").items():
        by_length = groups(group, "length")
        at = lambda length, key: [row[key] for row in by_length.get((length,), [])]

        def accuracy(length: int) -> str:
            group = by_length.get((length,), [])
            failed = sum(teacher_at_chance(row) for row in group)
            return spread([row["accuracy"] for row in group]) + (f" [teacher at chance: {failed}]" if failed else "")

        lines.append(
            [
                cell,
                method,
                *(accuracy(length) for length in lengths),
                " / ".join(number(mean(at(length, "teacher_accuracy"))) for length in lengths),
                " / ".join(number(mean(at(length, "seconds"))) for length in lengths),
            ]
        )
    per_length = " / ".join(str(length) for length in lengths)
    return table(
        [
            "cell",
            "method",
            *(f"T={length}" for length in lengths),
            f"teacher (T={per_length})",
            f"training s per run (T={per_length})",
        ],
        lines,
    )


def _generalisation_table(rows: list[dict]) -> list[str]:
    rows = [row for row in rows if row.get("generalisation")]
    if not rows:
        return []
    factors = sorted({factor for row in rows for factor in row["generalisation"]}, key=int)
    lines = []
    for (cell, method, length), group in groups(rows, "cell", "method", "length").items():
        cells = []
        for factor in factors:
            entries = [row["generalisation"].get(factor) for row in group]
            if all(entry is None for entry in entries):
                cells.append("n/a")  # the task refuses that length
                continue
            text = spread([entry["rnn"] for entry in entries if entry is not None])
            teacher = mean(entry["teacher"] for entry in entries if entry is not None)
            cells.append(text + ("" if teacher is None else f" (teacher {teacher:.3f})"))
        lines.append([cell, method, str(length), *cells])
    return [
        "Length generalisation: trained at T, tested at longer lengths; the RNN alone, mean ± std over "
        "seeds, the teacher's first prediction in brackets.",
        "",
        *table(["cell", "method", "trained T", *(f"{factor}T" for factor in factors)], lines),
    ]


def _diagnostics_table(rows: list[dict]) -> list[str]:
    columns = [
        ("rnn_effective_rank", "eff. rank RNN"),
        ("teacher_effective_rank", "eff. rank teacher"),
        ("rnn_pairwise_distance", "mean distance RNN"),
        ("teacher_pairwise_distance", "mean distance teacher"),
        ("drift", "drift"),
        ("relative_drift", "relative drift"),
    ]
    lines = [
        [cell, method, str(length), *(number(mean(row.get(key) for row in group)) for key, _ in columns)]
        for (cell, method, length), group in groups(rows, "cell", "method", "length").items()
    ]
    return [
        "Memory diagnostics at the trained length (means over seeds): effective rank of the memories "
        "m_1..m_T (a collapse shows as a small rank and distance), mean distance between two memories, "
        "and the drift ||m^_t - m*_t|| of the RNN's own rollout from the teacher's memories (also relative "
        "to the mean teacher memory norm). BPTT trains no teacher: RNN side only.",
        "",
        *table(["cell", "method", "T", *(title for _, title in columns)], lines),
    ]


def _task_section(task: str, rows: list[dict], options: dict, figures_link: str | None) -> list[str]:
    lengths = sorted({row["length"] for row in rows})
    settings = ", ".join(f"{key}={value}" for key, value in options.items())
    chance = mean(row["chance"] for row in rows)
    steps = ", ".join(
        f"T={length}: {max(row['steps'] for row in group)}"
        for (length,), group in sorted(groups([row for row in rows if row["method"] != "bptt-10x"], "length").items())
    )
    figure = [f"![{task}: accuracy against length]({figures_link}/{task}.png)", ""] if figures_link else []
    return [
        f"## {task}" + (f" ({settings})" if settings else ""),
        "",
        f"Chance accuracy {number(chance)}. Optimiser steps per run, every method: {steps}.",
        "",
        *_accuracy_table(rows, lengths),
        *figure,
        *_generalisation_table(rows),
        *_diagnostics_table(rows),
    ]


def threshold_table(rows: list[dict]) -> list[str]:
    """Per task and cell, the longest length at which each method's mean accuracy over seeds (counted
    rows only) is at least THRESHOLD of the way from chance to 1; '<T' when no tested length reaches it."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    lines = []
    for (task, cell), group in groups(rows, "task", "cell").items():
        lengths = sorted({row["length"] for row in group})
        entries = []
        for method in methods:
            solved, tested = [], []
            for (length,), at in sorted(groups([row for row in group if row["method"] == method], "length").items()):
                kept = counted(at)
                if not kept:
                    continue
                tested.append(length)
                if _progress(mean(row["accuracy"] for row in kept), mean(row["chance"] for row in kept)) >= THRESHOLD:
                    solved.append(length)
            entries.append("not run" if not tested else str(max(solved)) if solved else f"< {min(tested)}")
        lines.append([task, cell, " / ".join(map(str, lengths)), *entries])
    return table(["task", "cell", "lengths tested", *methods], lines)


def wall_time_table(rows: list[dict]) -> list[str]:
    """SMT->DMT against BPTT at equal steps and at (about) equal wall time, where the grid has bptt-10x."""
    long = groups([row for row in rows if row["method"] == "bptt-10x"], "task", "cell", "length")
    lines = []
    for key in long:
        at = {row["method"]: [] for row in rows}
        for row in rows:
            if (row["task"], row["cell"], row["length"]) == key:
                at[row["method"]].append(row)
        cells = []
        for method in ("smt+dmt", "bptt", "bptt-10x"):
            group = at.get(method, [])
            seconds = mean(row["seconds"] for row in group)
            cells.append(f"{spread([row['accuracy'] for row in group])} in {number(seconds)} s" if group else "–")
        lines.append([*map(str, key), *cells])
    if not lines:
        return []
    return [
        "Equal steps and equal wall time: the same points with BPTT given ten times the optimiser steps "
        "(mean accuracy ± std over seeds, mean training seconds per run on one thread).",
        "",
        *table(["task", "cell", "T", "smt+dmt", "bptt (same steps)", "bptt-10x (about the same time)"], lines),
    ]


RUNGS = (  # docs/method.md section 8: where the accuracy is lost on the way from the task to the RNN alone
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
    progress = [_progress(mean(row.get(key) for row in rows), chance) for key, *_ in RUNGS]
    if any(value is None for value in progress):
        return "–"
    if progress[-1] >= THRESHOLD:
        return "solved"
    losses = [1 - progress[0], *(before - after for before, after in zip(progress, progress[1:]))]
    return RUNGS[max(range(len(losses)), key=losses.__getitem__)][2]


def ladder_table(rows: list[dict]) -> list[str]:
    """Per task, cell and length, SMT->DMT's accuracy rung by rung (means over seeds) and where it breaks."""
    smt = [row for row in rows if row["method"] == "smt+dmt" and row["accuracy"] is not None]
    lines = [
        [
            task,
            cell,
            str(length),
            *(_accuracy(mean(row.get(key) for row in group)) for key, *_ in RUNGS),
            breaks_at(group),
        ]
        for (task, cell, length), group in sorted(groups(smt, "task", "cell", "length").items())
    ]
    if not lines:
        return []
    return [
        "Where SMT->DMT loses accuracy, rung by rung (docs/method.md section 8; held-out sequences, means over "
        "seeds): the teacher's first prediction from m*_t; the RNN's readout on the teacher's memories m*_t; "
        "the readout on one cell step from them, f(m*_{t-1}, x_t); the RNN alone. *Breaks at* names the rung "
        f"that loses the most of the way from chance to 1 (solved: the RNN alone reaches {THRESHOLD:.0%} of it).",
        "",
        *table(["task", "cell", "T", *(title for _, title, _ in RUNGS), "breaks at"], lines),
    ]


def summary(rows: list[dict]) -> list[str]:
    """The page's opening: the central table and the equal-time comparison."""
    excluded = [row for row in rows if teacher_at_chance(row)]
    return [
        "## Where each method works",
        "",
        f"The longest tested length at which the RNN alone reaches {THRESHOLD:.0%} of the way from chance to "
        "perfect accuracy (mean over seeds). SMT rows whose teacher stayed at chance (below "
        f"{TEACHER_AT_CHANCE:.0%} of the way) are not counted: there the budget did not let the teacher learn, "
        f"which says nothing about distilling it ({len(excluded)} such run(s) in this grid).",
        "",
        *threshold_table(rows),
        *wall_time_table(rows),
        *ladder_table(rows),
        "What a larger budget would add: the cpu preset runs the tanh cell on every family at T=16 and 64 "
        "but only retrieval and parity at T=256, the GRU, MLP and Transformer cells only at T=16 (docs/horizon.md has them on "
        "retrieval up to T=256), and T=256 with 1,250 steps instead of the recipe's 2,300. "
        "`smtrnn compare --preset full` runs the whole product at the recipe's budget (more than 12 hours on "
        "two cores, estimated). `make results-budget` (docs/results-budget.md) gives copy, stack and parity at T=16 four "
        "times the steps, to see whether the teacher, and the RNN after it, close the gap to BPTT.",
        "",
    ]


def markdown(result: dict, command: str, machine: str | None = None, figures_link: str | None = None) -> str:
    """The comparison page: how and where it was measured, then one section per task.
    ``figures_link``: the folder of ``figures()``'s PNGs as seen from the page (None: no images)."""
    rows = result["rows"]
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        "# SMT->DMT against BPTT: synthetic tasks across lengths",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine or 'not recorded'}; {result['jobs']} job(s) x {result['threads_per_job']} thread(s)  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        wall_time(result, rows),
        "",
        "Accuracy is that of the RNN alone, rolled out from its own initial memory over held-out sequences "
        f"(no teacher), mean ± std over seeds {', '.join(map(str, seeds))}. Within a task every method runs the "
        "same model and the same total number of optimiser steps (smt+dmt: SMT and DMT steps together). "
        "Teacher: the Transformer teacher's first prediction from its memory, the ceiling SMT distils from "
        "(– for BPTT, which trains none).",
        "",
        *summary(rows),
    ]
    for (task,), group in groups(rows, "task").items():
        lines += _task_section(task, group, result.get("task_options", {}).get(task, {}), figures_link)
    return "\n".join(lines)


def figures(rows: list[dict], folder: str | Path) -> list[Path]:
    """<folder>/<task>.png per task: accuracy against length (log2 axis), one subplot per cell, one
    line per method (mean over seeds, band from min to max), chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (task,), task_rows in groups(rows, "task").items():
        cells = groups(task_rows, "cell")
        figure, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), sharey=True, squeeze=False)
        for axis, ((cell,), cell_rows) in zip(axes[0], cells.items()):
            for (method,), method_rows in groups(cell_rows, "method").items():
                points = []
                for (length,), group in sorted(groups(method_rows, "length").items()):
                    accuracies = [row["accuracy"] for row in group if row["accuracy"] is not None]
                    if accuracies:  # a length where every seed diverged has no point
                        points.append((length, statistics.fmean(accuracies), min(accuracies), max(accuracies)))
                if not points:
                    continue
                lengths, means, lows, highs = zip(*points)
                marker, color = STYLE.get(method, ("x", "k"))
                axis.plot(lengths, means, marker=marker, color=color, label=method)
                axis.fill_between(lengths, lows, highs, color=color, alpha=0.2, linewidth=0)
            chance = mean(row["chance"] for row in cell_rows)
            if chance is not None:
                axis.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
            lengths = sorted({row["length"] for row in cell_rows})
            axis.set_xscale("log", base=2)
            axis.set_xticks(lengths, [str(length) for length in lengths])
            axis.set(title=f"{cell} cell", xlabel="sequence length T", ylim=(-0.02, 1.02))
            axis.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("accuracy, RNN alone")
        legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
        axes[0][0].legend(legend.values(), legend.keys(), fontsize=8)
        figure.suptitle(task)
        figure.tight_layout()
        path = folder / f"{task}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths
