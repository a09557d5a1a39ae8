"""The studies behind the pages in docs/, kept apart from the library (which imports nothing from here).

Each study is a module with ``PRESETS`` (name -> a Study: data, see spec.py), ``TITLE``, ``blocks``
(the page's generated tables) and optionally ``figures``; runner.py trains any of them and pages.py
writes any of them. ``smtrnn experiment NAME`` runs one:

    result = run_study(study("horizon", "cpu"), "runs/horizon", jobs=2)
    write(result, "smtrnn experiment horizon", markdown="docs/horizon.md", json_path="docs/horizon.json")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from smtrnn.errors import UserError, check_choices
from smtrnn.experiments.pages import write_outputs
from smtrnn.experiments.runner import run_study
from smtrnn.experiments.spec import Budget, Study

__all__ = ["EXPERIMENTS", "customise", "module", "run_study", "study", "write"]

# name -> module (under smtrnn.experiments) and what it is, for --help
EXPERIMENTS = {
    "demo": ("demo", "BPTT against SMT->DMT on needle retrieval at T=64, three seeds (make demo)"),
    "horizon": ("horizon", "what makes the RNN alone keep what its teacher stores (docs/horizon.md)"),
    "compare": ("compare", "the synthetic grid against BPTT (docs/results.md)"),
    "realdata": ("realdata", "MNIST, Quick, Draw! and Brown as byte streams (docs/realdata.md)"),
    "decoder-positions": ("decoder_positions", "sampled decoder windows against every window"),
    "length": ("length", "retrieval at T = 64 to 1,024 against BPTT (docs/length.md)"),
    "teacher": ("teacher", "how fast the teacher learns, beside BPTT (docs/teacher.md)"),
    "teacher-long": ("teacher_long", "what makes the teacher learn stack at T=256 (docs/teacher-long.md)"),
    "teacher-width": ("teacher_width", "the teacher's width against copy's string (docs/teacher-width.md)"),
    "kv-step": ("kv_step", "which step can read key-value's answer from the teacher's memory (docs/kv-step.md)"),
    "kv-recipe": ("kv_recipe", "key-value at equal steps: SMT->DMT on its own labels against BPTT (docs/kv-recipe.md)"),
}


def module(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"smtrnn.experiments.{EXPERIMENTS[name][0]}")


def study(name: str, preset: str = "cpu") -> Study:
    presets = module(name).PRESETS
    if preset not in presets:
        raise UserError(f"experiment {name} has no preset {preset!r}; choose one of {', '.join(presets)}")
    return presets[preset]()


def customise(
    chosen: Study, only: dict[str, list | None] | None = None, steps: int | None = None, dmt_steps: int | None = None
) -> Study:
    """``chosen`` narrowed to the points whose fields take the given values (``only``: e.g. {"task":
    ["copy"], "seed": [0]}), with every budget replaced by ``steps`` (DMT keeping its share unless
    ``dmt_steps`` is given)."""
    given: dict[str, list] = {}
    for name, values in (only or {}).items():
        if values is not None:
            check_choices(chosen.name, name + "s", values)
            given[name] = values
    if given:
        chosen = chosen.narrowed(**given)
    if steps is not None or dmt_steps is not None:

        def change(budget: Budget) -> Budget:
            total = budget.steps if steps is None else steps
            share = round(total * budget.dmt_steps / budget.steps) if dmt_steps is None else dmt_steps
            if total < 1 or not 0 <= share < total:
                raise UserError(f"{chosen.name}: need steps >= 1 and 0 <= dmt steps < steps, got {total} and {share}")
            return Budget(total, share)

        chosen.rebudgeted(change)
    return chosen


def write(
    name: str,
    result: dict,
    command: str,
    markdown: str | None = None,
    json_path: str | None = None,
    figures_dir: str | None = None,
) -> None:
    """The experiment's JSON, figures and page, each where asked."""
    chosen = module(name)
    write_outputs(result, command, chosen.blocks, getattr(chosen, "figures", None), markdown, json_path, figures_dir)
