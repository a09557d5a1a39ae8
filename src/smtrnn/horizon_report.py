"""Render the horizon study (horizon_study.run_study): docs/horizon.md and its figures.

Numbers come from the rows only; the prose says what each table is and what to look for, and the
findings that quote numbers are computed from the same rows when the page is written."""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

from smtrnn.report import duration, groups, mean, table

FIGURES = {"probe": "horizon-probe.png", "error": "horizon-error.png", "scale": "horizon-scale.png"}


def _seeds(rows: list[dict], key: str = "accuracy") -> str:
    return " / ".join("div." if row[key] is None else f"{row[key]:.3f}" for row in rows)


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _probe_at(row: dict, lag: int):
    for entry in row.get("probe") or []:
        if entry["lag"] == lag:
            return entry["rollout"]
    return None


def _variant_table(rows: list[dict], descriptions: dict, lag: int) -> list[str]:
    if len({row["variant"] for row in rows}) < 2:
        return []  # nothing to compare the recipe with
    lines = []
    for (name,), group in groups(rows, "variant").items():
        accuracies = [row["accuracy"] for row in group]
        top = [row["stability"]["moduli"][0] for row in group if row.get("stability")]
        lines.append(
            [
                f"`{name}`",
                descriptions[name],
                _seeds(group),
                _fmt(mean(accuracies)),
                _fmt(min((a for a in accuracies if a is not None), default=None)),
                _fmt(mean(_probe_at(row, lag) for row in group)),
                _fmt(mean(top)),
                _fmt(mean(row["drift"] for row in group), 2),
                str(group[0]["sequential_depth"]),
                _fmt(mean(row["seconds"] for row in group), 0),
            ]
        )
    return table(
        [
            "variant",
            "what changes",
            "RNN alone, per seed",
            "mean",
            "worst",
            f"probe at lag {lag}",
            "top eigenvalue modulus",
            "drift",
            "gradient depth",
            "s per run",
        ],
        lines,
    )


def _per_seed_table(rows: list[dict]) -> list[str]:
    """Every run of the ladder on its own: where a failing seed loses the needle, and why."""
    lines = []
    for row in rows:
        if not row.get("stability"):
            continue
        stability, curve = row["stability"], row["error_curve"]
        lines.append(
            [
                f"`{row['variant']}`",
                str(row["seed"]),
                _fmt(row["accuracy"]),
                " / ".join(_fmt(_probe_at(row, lag), 2) for lag in (8, 32)),
                " / ".join(_fmt(value) for value in stability["moduli"]),
                " / ".join(_fmt(value, 2) for value in stability["needle_share"]),
                " / ".join(_fmt(curve[t - 1], 3) for t in (8, 32, len(curve))),
            ]
        )
    return table(
        [
            "variant",
            "seed",
            "RNN alone",
            "probe at lag 8 / 32",
            "top 3 eigenvalue moduli",
            "their share in the needle subspace",
            "rollout error at t = 8 / 32 / T",
        ],
        lines,
    )


def _scale_table(rows: list[dict]) -> list[str]:
    lines = []
    for (cell, length), group in groups(rows, "cell", "length").items():
        by = {name: [row for row in group if row["variant"] == name] for name in ("recipe", "bptt", "bptt-4x")}
        if not by["recipe"]:
            continue
        recipe, bptt = by["recipe"], by["bptt"]
        accuracies = [row["accuracy"] for row in recipe]
        lines.append(
            [
                cell,
                str(length),
                _seeds(recipe),
                _fmt(mean(accuracies)),
                _fmt(min((a for a in accuracies if a is not None), default=None)),
                _fmt(mean(row["teacher_accuracy"] for row in recipe)),
                _seeds(bptt) if bptt else "–",
                _fmt(mean(row["accuracy"] for row in by["bptt-4x"])),
                f"{recipe[0]['sequential_depth']} / {bptt[0]['sequential_depth'] if bptt else '–'}",
                f"{_fmt(mean(row['seconds'] for row in recipe), 0)} / "
                f"{_fmt(mean(row['seconds'] for row in bptt), 0) if bptt else '–'}",
            ]
        )
    return table(
        [
            "cell",
            "T",
            "SMT->DMT, per seed",
            "mean",
            "worst",
            "teacher",
            "BPTT, per seed",
            "BPTT 4x steps (mean)",
            "gradient depth SMT / BPTT",
            "s per run SMT / BPTT",
        ],
        lines,
    )


def _rows(rows: list[dict], name: str, cell: str = "tanh", length: int = 64) -> list[dict]:
    return [row for row in rows if row["variant"] == name and row["cell"] == cell and row["length"] == length]


def _finding(rows: list[dict], name: str, cell: str = "tanh", length: int = 64) -> list[float]:
    return [row["accuracy"] for row in _rows(rows, name, cell, length) if row["accuracy"] is not None]


def _summary(rows: list[dict]) -> list[str]:
    """The headline numbers, computed from the rows."""
    lines = []

    def say(name: str, cell: str, length: int, label: str) -> None:
        values = _finding(rows, name, cell, length)
        if values:
            lines.append(
                f"- {label} ({cell}, T={length}): mean {statistics.fmean(values):.3f}, worst seed {min(values):.3f}"
            )

    say("paper", "tanh", 64, "the paper's one-step loss")
    say("K8-sinusoid", "tanh", 64, "a fixed horizon K=8 with the position-coded teacher")
    say("recipe", "tanh", 64, "the default recipe")
    for length in (128, 256):
        for cell in ("tanh", "gru", "mlp"):
            say("recipe", cell, length, "the default recipe")
    for length in (64, 128, 256):
        say("bptt", "tanh", length, "BPTT, same steps")
    default = [row for row in _rows(rows, "recipe", "tanh", 128) if row["accuracy"] is not None]
    if default:
        lines.append(
            f"- `smtrnn train --task retrieval --length 128 --seed S --out DIR`, no other option, is "
            f"exactly the recipe's tanh T=128 point: {_seeds(default)} for seeds "
            f"{', '.join(str(row['seed']) for row in default)}, "
            f"{_fmt(mean(row['seconds'] for row in default), 0)} s per run on one thread"
        )
    return lines + [""]


def _top(row: dict):
    return row["stability"]["moduli"][0] if row.get("stability") else None


def _lessons(rows: list[dict]) -> list[str]:
    """What the study shows, each point with the numbers it rests on (computed from the rows)."""
    lines = []
    paper, k8_sin, k8 = _rows(rows, "paper"), _rows(rows, "K8-sinusoid"), _rows(rows, "K8")
    if paper:
        lines.append(
            f"1. **One step is not enough.** With the paper's one-step loss the RNN alone reaches "
            f"{_seeds(paper)} (seeds {', '.join(str(row['seed']) for row in paper)}) although its teacher "
            f"stores the needle ({_fmt(mean(row['teacher_accuracy'] for row in paper))}): each step is "
            "fitted, but nothing penalises an error that grows over many steps, and the probe shows the "
            "needle gone from the RNN's own memory within a few steps."
        )
    if k8_sin and k8:
        failing = [row for row in k8_sin if row["accuracy"] is not None and row["accuracy"] < 0.5]
        text = (
            f"2. **A horizon, and a teacher without position codes.** A horizon of K=8 from the start with the "
            f"position-coded teacher gives {_seeds(k8_sin)}"
        )
        if failing:
            text += (
                f"; {'seeds' if len(failing) > 1 else 'seed'} {', '.join(str(row['seed']) for row in failing)} "
                f"{'lose' if len(failing) > 1 else 'loses'} the needle within a few steps of the RNN's own "
                f"rollout (probe {' / '.join(_fmt(_probe_at(row, 8), 2) for row in failing)} at lag 8)"
            )
        text += (
            f". Without position codes the same horizon gives {_seeds(k8)}: the teacher's memory no longer "
            "moves with t, so holding the needle is a fixed point the cell can learn instead of a moving "
            "target."
        )
        lines.append(text)
    grown, recipe, k1, no_dmt = (_rows(rows, name) for name in ("K16-grown", "recipe", "K1", "no-dmt"))
    if grown and recipe:
        lines.append(
            f"3. **Grow K, then DMT.** K=16 grown from 1 over the first half of SMT: {_seeds(grown)}; the "
            f"default recipe (the same, DMT batch 128, the dynamics reaching the teacher after 500 steps): "
            f"{_seeds(recipe)}."
            + (f" The recipe without its horizon (K=1): {_seeds(k1)}." if k1 else "")
            + (f" The recipe without DMT (its steps given to SMT): {_seeds(no_dmt)}." if no_dmt else "")
        )
    late, early = _rows(rows, "recipe", length=256), _rows(rows, "no-delay", length=256)
    if late and early:
        lines.append(
            f"4. **Let the teacher learn first (T=256).** When the dynamics losses pull the teacher from the "
            f"first step, its accuracy is {_seeds(early, 'teacher_accuracy')} and the RNN alone "
            f"{_seeds(early)}; with the dynamics reaching the teacher after 500 steps the teacher reaches "
            f"{_seeds(late, 'teacher_accuracy')} and the RNN alone {_seeds(late)}."
        )
    failing = [
        row
        for row in rows
        if row["variant"] == "recipe"
        and row["accuracy"] is not None
        and row["accuracy"] < 0.8
        and (row["teacher_accuracy"] or 0) >= 0.9
        and row.get("stability")
    ]
    if failing:
        described = "; ".join(
            f"{row['cell']} T={row['length']} seed {row['seed']}: {_fmt(row['accuracy'])}, probe "
            f"{_fmt(_probe_at(row, 8), 2)} / {_fmt(_probe_at(row, 32), 2)} / {_fmt(_probe_at(row, 64), 2)} at lag "
            f"8 / 32 / 64, top modulus {_fmt(_top(row))}"
            for row in failing
        )
        text = (
            "5. **Where the recipe still fails**, with a teacher that solves the task: " + described + ". "
            "These runs store the needle and lose it gradually: the probe falls with the lag."
        )
        tanh = [row for row in rows if row["cell"] == "tanh" and _top(row) is not None and row["accuracy"] is not None]
        good = [_top(row) for row in tanh if row["variant"] == "recipe" and row["accuracy"] >= 0.95]
        bad = [_top(row) for row in failing if row["cell"] == "tanh"]
        others = [
            row
            for row in tanh
            if row["variant"] != "recipe"
            and row["accuracy"] < 0.8
            and (row["teacher_accuracy"] or 0) >= 0.9
            and good
            and _top(row) >= min(good)
        ]
        moduli_mlp = [
            _top(row)
            for row in rows
            if row["cell"] == "mlp" and _top(row) is not None and (row["accuracy"] or 0) >= 0.95
        ]
        if good and bad:
            text += (
                f" Among the recipe's tanh runs the largest Jacobian eigenvalue modulus in the needle subspace "
                f"separates the two: {min(good):.3f}-{max(good):.3f} in every run that reaches 0.95 or more, "
                f"{min(bad):.3f}-{max(bad):.3f} in the failing ones. Below 1 "
                "the cell shrinks the stored value's direction a little at every step: too little for 16 "
                "(or 32) supervised steps to see, enough to erase it over the 100-250 steps between needle "
                "and query at T=256."
            )
            if others:
                text += (
                    " Not every failure fits: "
                    + "; ".join(
                        f"`{row['variant']}` T={row['length']} seed {row['seed']} reaches {_fmt(row['accuracy'])} with "
                        f"{_fmt(_top(row))}"
                        for row in others
                    )
                    + "."
                )
            if moduli_mlp:
                text += (
                    f" The measure is linear and taken on the teacher's trajectory, so it is a diagnostic, "
                    f"not a law: the MLP cell reaches 0.95 or more with {min(moduli_mlp):.3f}-"
                    f"{max(moduli_mlp):.3f}."
                )
        lines.append(
            text + " What we would try next: longer DMT (its on-policy targets pull a decayed memory "
            "back), horizon starts placed just after the stored value, more weight on the horizon's "
            "later steps."
        )
    return lines + [""] if lines else []


def markdown(result: dict, command: str, machine: str, figures_link: str | None = None) -> str:
    rows, descriptions = result["rows"], result["descriptions"]
    around = lambda part, length: [
        row
        for row in rows
        if row["length"] == length and row["cell"] == "tanh" and (row["part"] == part or row["variant"] == "recipe")
    ]
    figure = lambda key, text: [f"![{text}]({figures_link}/{FIGURES[key]})", ""] if figures_link else []
    budgets = ", ".join(
        f"T={length}: {plan['smt_steps']} SMT + {plan['dmt_steps']} DMT steps, K grown over {plan['grow']}"
        for length, plan in result["budgets"].items()
    )
    lines = [
        "# The horizon study: keeping what the teacher stores",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Compute: {duration(sum(row['seconds'] or 0 for row in rows))} summed over the {len(rows)} runs "
        f"(one thread each, {result['jobs']} at a time); seeds {', '.join(map(str, result['seeds']))}. "
        f"This invocation trained {result['trained']} of them in {duration(result['wall_seconds'])} and "
        "read the rest back from the run directories."
        + (
            f" **Only {len(rows)} of the {result['planned']} planned runs had finished when this page was "
            "written** (`--report-only`)."
            if result.get("planned", len(rows)) > len(rows)
            else ""
        ),
        "",
        "Task: needle retrieval (8 values, chance 0.125), the needle in the first half, the query at the last "
        "step. Every accuracy is the RNN alone, rolled out from its own initial memory over held-out "
        "sequences. Budgets: " + budgets + "; BPTT gets the same total number of optimiser steps.",
        "",
        "## Summary",
        "",
        *_summary(rows),
        "## What the study shows",
        "",
        *_lessons(rows),
        "## The recipe across cells and lengths, against BPTT",
        "",
        "Same cell, readout and memory size (64) for both methods. Gradient depth: cell applications in "
        "series on one training step's gradient path (SMT: the horizon K; BPTT: T).",
        "",
        *_scale_table([row for row in rows if row["part"] == "scale" or row["variant"] == "recipe"]),
        *figure("scale", "RNN-alone accuracy per seed, recipe against BPTT"),
        "## From the paper's loss to the recipe, one change at a time (tanh, T=64)",
        "",
        "Probe: a linear classifier reads the needle from the RNN's own rollout memory 32 steps after it was "
        "written (held-out sequences). Top eigenvalue modulus: the largest modulus among the eigenvalues of the "
        "cell's Jacobian on the teacher's trajectory after the needle, whose eigenvectors lie almost entirely "
        "in the subspace where the teacher stores the needle; above 1, a stored value's error grows at every "
        "step of the rollout. Drift: mean distance of the rollout from the teacher's memories.",
        "",
        *_variant_table(around("ladder", 64), descriptions, 32),
        "Every run of the ladder, seed by seed. The eigenvalues are those of the cell's Jacobian on the "
        "teacher's trajectory halfway between the last possible needle and the query, averaged over 16 "
        "sequences; the share is how much of each eigenvector lies in the span of the needle's class means "
        "(7 of 64 dimensions, so 0.11 for a random direction). Rollout error: ||m^_t - m*_t||^2 over the "
        "variance of the teacher's memories, for the RNN's own rollout from m_0.",
        "",
        *_per_seed_table(around("ladder", 64)),
        *figure("probe", "needle probe on the RNN's own rollout against lag"),
        *figure("error", "relative error of the RNN's own rollout against t"),
        "## Factors around the recipe (tanh, T=64)",
        "",
        *_variant_table(around("factors", 64), descriptions, 32),
        "## Longer sequences (tanh): the factors that matter most at T=128 and T=256",
        "",
        *_variant_table(around("factors", 128), descriptions, 64),
        *_variant_table(around("factors", 256), descriptions, 64),
        *(
            [
                "Every SMT run at T=256, seed by seed (as the ladder's table above).",
                "",
                *_per_seed_table([row for row in rows if row["length"] == 256]),
            ]
            if any(row["length"] == 256 and row.get("stability") for row in rows)
            else []
        ),
    ]
    return "\n".join(lines)


def figures(result: dict, folder: str | Path) -> list[Path]:
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global state

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    ladder = [row for row in rows if row["part"] == "ladder" and row["cell"] == "tanh" and row["length"] == 64]
    written = []
    if ladder and any(row.get("probe") for row in ladder):
        figure = Figure(figsize=(6.4, 4))
        axes = figure.add_subplot()
        for (name,), group in groups(ladder, "variant").items():
            lags = [entry["lag"] for entry in group[0]["probe"]]
            axes.plot(
                lags, [mean(row["probe"][i]["rollout"] for row in group) for i in range(len(lags))], "o-", label=name
            )
        axes.plot(
            lags,
            [mean(row["probe"][i]["teacher"] for row in ladder) for i in range(len(lags))],
            "k--",
            label="teacher memory (all variants)",
        )
        axes.axhline(0.125, color="grey", lw=0.8, ls=":", label="chance")
        axes.set(
            xlabel="steps after the needle",
            ylabel="probe accuracy on the RNN's own memory",
            title="Retrieval, tanh, T=64: is the needle still there? (mean of seeds)",
            ylim=(0, 1.05),
        )
        axes.legend(fontsize=8)
        written.append(_save(figure, folder / FIGURES["probe"]))
        figure = Figure(figsize=(6.4, 4))
        axes = figure.add_subplot()
        for (name,), group in groups(ladder, "variant").items():
            curves = [row["error_curve"] for row in group if row.get("error_curve")]
            steps = range(1, len(curves[0]) + 1)
            axes.plot(steps, [statistics.fmean(values) for values in zip(*curves)], label=name)
        axes.set(
            xlabel="t (steps of the RNN's own rollout from m_0)",
            ylabel="relative error vs teacher memory",
            yscale="log",
            title="Where the rollout departs (mean of seeds)",
        )
        axes.legend(fontsize=8)
        written.append(_save(figure, folder / FIGURES["error"]))
    scale = [row for row in rows if row["variant"] in ("recipe", "bptt") and row["accuracy"] is not None]
    cells = list(dict.fromkeys(row["cell"] for row in scale))
    if cells:
        figure = Figure(figsize=(3.2 * len(cells), 3.4))
        for index, cell in enumerate(cells):
            axes = figure.add_subplot(1, len(cells), index + 1)
            for name, marker in (("recipe", "o"), ("bptt", "^")):
                picked = [row for row in scale if row["cell"] == cell and row["variant"] == name]
                axes.scatter(
                    [row["length"] for row in picked],
                    [row["accuracy"] for row in picked],
                    marker=marker,
                    label="SMT->DMT" if name == "recipe" else "BPTT",
                    alpha=0.7,
                )
            axes.axhline(0.125, color="grey", lw=0.8, ls=":")
            axes.set(xscale="log", xlabel="T", title=cell, ylim=(0, 1.05))
            axes.set_xticks(
                sorted({row["length"] for row in scale}), [str(v) for v in sorted({row["length"] for row in scale})]
            )
            if index == 0:
                axes.set_ylabel("RNN-alone accuracy (each seed)")
                axes.legend(fontsize=8)
        figure.tight_layout()
        written.append(_save(figure, folder / FIGURES["scale"]))
    return written


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
