"""The studies as data and their one runner and one writer: every preset round-trips through JSON and
builds valid configs; budgets and warm-ups follow one rule; the smoke studies run through the command
line into rows, figures and pages; a re-run trains nothing; --report-only loads no checkpoint and
writes the same page; prose outside the generated blocks survives; the library imports no study."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import smtrnn
import smtrnn.experiments.runner as runner_module
from conftest import assert_user_error
from smtrnn import checkpoint, experiments
from smtrnn.cli import main
from smtrnn.config import RunConfig, get_field, with_task_settings
from smtrnn.errors import UserError
from smtrnn.experiments.compare import breaks_at
from smtrnn.experiments.pages import header, render
from smtrnn.experiments.runner import SMT_SCHEDULES, configs, run_config, run_study, smoke
from smtrnn.experiments.spec import BPTT_ON_GRID, Budget, Point, Study, Variant
from smtrnn.methods import planned_steps
from smtrnn.rundir import config_digest, config_fields

PNG = b"\x89PNG\r\n\x1a\n"
LIBRARY = Path(smtrnn.__file__).parent


DOCS = Path(__file__).resolve().parents[1] / "docs"
# the committed pages that a study writes and keeps rows in (the benchmarks' pages have no runs; the
# decoder-positions page is a list from before the studies' JSON and keeps none)
PAGE_STUDIES = {
    "demo",
    "horizon",
    "kv-recipe",
    "kv-step",
    "length",
    "realdata",
    "results",
    "teacher",
    "teacher-long",
    "teacher-width",
}


def every_preset():
    return [(name, preset) for name in experiments.EXPERIMENTS for preset in experiments.module(name).PRESETS]


def without_time(rows: list[dict]) -> list[dict]:
    """Rows less their wall time, the one field two identical runs may differ in."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


def test_the_library_imports_no_study():
    """Only the command line (the layer above both) may import smtrnn.experiments."""
    for path in LIBRARY.rglob("*.py"):
        if "experiments" in path.relative_to(LIBRARY).parts or path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in getattr(node, "names", [])]
            module = getattr(node, "module", None) or ""
            imported = [module, *(f"{module}.{name}" for name in names)] if module else names
            assert not any(name.startswith("smtrnn.experiments") for name in imported), path


@pytest.mark.parametrize("name, preset", every_preset())
def test_every_preset_round_trips_and_builds_valid_configs(name, preset):
    study = experiments.study(name, preset)
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    assert len(set(study.points)) == len(study.points) and len(study.seeds) >= 1
    for config, _ in configs(study).values():
        config.validate()  # every option it sets is read by its method and cell


def test_every_method_gets_the_same_steps_and_the_warm_ups_fit():
    study = experiments.study("compare", "cpu")
    for length, budget in study.budgets.items():
        runs = {v: run_config(study, Point(v, "retrieval", "gru", length), 0) for v in ("bptt", "tbptt", "smt+dmt")}
        smt = runs["smt+dmt"]
        assert smt.dmt_train.steps == budget.dmt_steps and smt.train.steps == budget.steps - budget.dmt_steps
        for config in runs.values():  # the same model, but BPTT's memory is continuous (its own setting)
            assert replace(config.model, memory_levels=smt.model.memory_levels) == smt.model
            assert config.model.memory_levels == (5 if config is smt else 0) and planned_steps(config) == budget.steps
        assert smt.train.warmup <= smt.train.steps // 10 and smt.dmt_train.warmup <= budget.dmt_steps // 10
        for value in (smt.smt.dyn_warmup, smt.smt.teacher_delay, smt.smt.horizon_grow):
            assert value <= (budget.steps - budget.dmt_steps) // 2
    long = run_config(study, Point("bptt-10x", "retrieval", "tanh", 64), 0)
    assert long.method == "bptt" and long.train.steps == 10 * study.budget(64).steps
    # a variant may spend more of the same steps in DMT: they come out of SMT's share, schedules and all
    budget = study.budget(64)
    study.variants.append(Variant("dmt-heavy", "twice the DMT share", dmt_steps=2 * budget.dmt_steps))
    study.variants.append(Variant("bptt-heavy", "BPTT reads no DMT share", {"method": "bptt"}, dmt_steps=100))
    heavy = run_config(study, Point("dmt-heavy", "retrieval", "gru", 64), 0)
    usual = run_config(study, Point("smt+dmt", "retrieval", "gru", 64), 0)
    assert heavy.dmt_train.steps == 2 * budget.dmt_steps and planned_steps(heavy) == budget.steps
    share = (budget.steps - 2 * budget.dmt_steps) // 2
    schedules = [(get_field(heavy, dotted), get_field(usual, dotted)) for dotted in SMT_SCHEDULES]
    assert all(mine <= min(theirs, share) for mine, theirs in schedules)
    assert any(mine < theirs for mine, theirs in schedules)  # at least one schedule is cut to the shorter SMT
    bptt = run_config(study, Point("bptt-heavy", "retrieval", "gru", 64), 0)
    assert bptt.train.steps == budget.steps and planned_steps(bptt) == budget.steps
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    small = smoke(study, steps=6, dmt_steps=2)
    for config, _ in configs(small).values():  # the smoke preset caps the share inside its few steps
        assert config.train.steps >= 1 and planned_steps(config) == small.budget(config.length, config.task).steps
    study.variants.append(Variant("all-dmt", "no SMT left", dmt_steps=budget.steps))
    with pytest.raises(UserError, match="dmt_steps must be between 1 and"):
        run_config(study, Point("all-dmt", "retrieval", "gru", 64), 0)
    assert long.smt == RunConfig().smt  # what BPTT does not read stays at the defaults


def test_the_real_data_study_races_the_tasks_settings_beside_the_shared_recipe():
    """smt+dmt is what `smtrnn train --task T` gets (the real data's settings, DMT over whole crops);
    smt+dmt-shared and the MNIST screens are the shared recipe with their own changes; horizon16 the
    settings before they dropped DMT's pull, with the default horizon and 150 DMT steps; rollout256 that
    with the plan's shorter rollout, wide-dmt300 with another split as well; dmt150 to dmt600 the
    settings with the pull and another split."""
    from smtrnn.tasks import TASKS
    from smtrnn.tasks.streams import REAL_DATA_SETTINGS

    assert all(TASKS[name].settings == REAL_DATA_SETTINGS for name in ("mnist", "quickdraw", "brown"))
    assert TASKS["tinystories"].settings == {}  # not measured: the shared recipe
    study = experiments.study("realdata", "cpu")
    run = lambda variant, task="mnist": run_config(
        study, Point(variant, task, "mlp", 799 if task != "brown" else 271), 0
    )
    for task in ("mnist", "brown"):
        taken, shared = run("smt+dmt", task), run("smt+dmt-shared", task)
        assert taken.dmt.c_dyn == 0.0 and REAL_DATA_SETTINGS["dmt.c_dyn"] == 0.0
        assert all(get_field(taken, dotted) == value for dotted, value in REAL_DATA_SETTINGS.items())
        assert [
            dotted for dotted in REAL_DATA_SETTINGS if get_field(shared, dotted) != get_field(taken, dotted)
        ] == list(REAL_DATA_SETTINGS)
    assert run("smt+dmt-rotary").model.teacher_width == RunConfig().model.teacher_width  # a screen takes no setting
    # smt+dmt rolls DMT out over whole crops, as `smtrnn train` does, with SMT's horizon of 64; its earlier
    # rows: 150 DMT steps (smt+dmt-dmt150), before that horizon 16 (smt+dmt-horizon16), and before that the
    # plan's 256-token rollouts (Brown 128)
    for task, rollout in (("mnist", 256), ("brown", 128)):
        taken, whole, short = (
            run("smt+dmt-dmt150", task),
            run("smt+dmt-horizon16", task),
            run("smt+dmt-rollout256", task),
        )
        assert (taken.smt.horizon, whole.smt.horizon, RunConfig().smt.horizon) == (64, 16, 16)
        assert replace(whole, smt=taken.smt).to_dict() == taken.to_dict()
        assert (whole.dmt.rollout, short.dmt.rollout) == (0, rollout)
        assert replace(short, dmt=whole.dmt).to_dict() == whole.to_dict()
    assert run("smt+dmt-deep").smt == run("smt+dmt-horizon16").smt  # the screens on horizon 16 keep it
    assert run("smt+dmt-rollout512").smt == run("smt+dmt-horizon16").smt
    split = run("smt+dmt-wide-dmt300")
    assert (split.train.steps, split.dmt_train.steps) == (450, 300) and planned_steps(split) == 750
    short = run("smt+dmt-rollout256")
    same = replace(split, train=short.train, dmt_train=short.dmt_train, smt=short.smt)
    assert same.to_dict() == short.to_dict()  # only the split (and its schedules) differ
    # the settings spend 600 of the 750 steps in DMT, without the pull; dmt150 (the budget's share) and
    # dmt300 (the settings before), dmt450 and dmt600 the same runs with the pull and another split
    taken = run("smt+dmt")
    assert (taken.train.steps, taken.dmt_train.steps, taken.dmt.c_dyn) == (150, 600, 0.0)
    for variant, steps in (
        ("smt+dmt-dmt150", 150),
        ("smt+dmt-dmt300", 300),
        ("smt+dmt-dmt450", 450),
        ("smt+dmt-dmt600", 600),
    ):
        other = run(variant)
        assert (other.train.steps, other.dmt_train.steps) == (750 - steps, steps) and planned_steps(other) == 750
        assert other.dmt.c_dyn == 0.1
        same = replace(other, train=taken.train, dmt_train=taken.dmt_train, smt=taken.smt, dmt=taken.dmt)
        assert same.to_dict() == taken.to_dict()
        assert replace(other.dmt, c_dyn=0.0) == taken.dmt  # the pull alone
    control = run("tbptt-64")
    assert (control.method, control.bptt.truncate, control.train.steps) == ("tbptt", 64, 750)
    # the race runs 3 seeds on every dataset (Quick, Draw!'s other rows one)
    race = {p.variant: p.seeds for p in study.points if p.task == "quickdraw" and p.seeds}
    assert race == {variant: (0, 1, 2) for variant in ("smt+dmt", "bptt-continuous", "tbptt-64")}


def test_a_studys_runs_take_their_tasks_settings_under_the_studys_own_choices(monkeypatch):
    from smtrnn.tasks import TASKS
    from smtrnn.tasks.synthetic import Parity

    class Settled(Parity):
        settings = {"model.future": 2, "smt.c_unif": 0.5}

    monkeypatch.setitem(TASKS, "settled", Settled)
    base = RunConfig(length=16)
    base.smt.c_unif = 0.25  # the study's base chose this one: it stays
    variants = [Variant("smt", "SMT", {"method": "smt"}), Variant("tf-4", "Tf 4", {"method": "smt", "model.future": 4})]
    variants.append(Variant("bptt", "BPTT", {"method": "bptt"}))
    variants.append(Variant("bptt-grid", "BPTT on the grid", BPTT_ON_GRID))
    points = [Point(name, "settled", "tanh", 16) for name in ("smt", "tf-4", "bptt", "bptt-grid")]
    study = Study("settled", "cpu", base, variants, points, [0], {16: Budget(10)})
    run = lambda name: run_config(study, Point(name, "settled", "tanh", 16), 0)
    assert (run("smt").model.future, run("smt").smt.c_unif) == (2, 0.25)
    assert run("tf-4").model.future == 4  # the variant's override wins
    assert run("bptt").model.future == RunConfig().model.future  # BPTT reads no future window
    levels = lambda name: run(name).model.memory_levels
    assert (levels("smt"), levels("bptt"), levels("bptt-grid")) == (5, 0, 5)  # BPTT's own setting, unless chosen
    study.task_settings = False  # a study of factors against the shared recipe
    assert run("smt").model.future == RunConfig().model.future
    assert levels("bptt") == 0  # a method's own settings are not the task's: they stay
    study.variants.append(Variant("as-users-get-it", "SMT, the task's settings", {"method": "smt"}, task_settings=True))
    assert run("as-users-get-it").model.future == 2  # a variant may race what a user's run gets beside the recipe
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    study.task_settings = True
    study.variants.append(Variant("recipe", "SMT, the shared recipe", {"method": "smt"}, task_settings=False))
    assert run("recipe").model.future == RunConfig().model.future  # and the other way round


def test_the_grids_smt_points_are_smtrnn_train_with_no_other_option():
    """docs/results.md's SMT->DMT points are `smtrnn train --task TASK --length T --seed S` (and --cell,
    the grid's task options), scored at 2T-8T too, with --steps and --dmt-steps where the task has a
    budget of its own (copy beyond T=16; parity's and modular's are their own settings', 2,000 + 2,000 and
    2,000 + 4,000); BPTT trains the same steps, or ten times them."""
    study = experiments.study("compare", "cpu")
    for point in study.points:
        config, budget = run_config(study, point, 1), study.budget(point.length, point.task)
        if point.variant == "smt+dmt":
            expected = RunConfig(task=point.task, length=point.length, seed=1, length_generalisation=True)
            expected.task_options, expected.model.cell = study.tasks[point.task], point.cell
            if budget != Budget(2300, 300):
                expected.train.steps, expected.dmt_train.steps = budget.steps - budget.dmt_steps, budget.dmt_steps
            with_task_settings(expected, given=set())
            assert config.to_dict() == expected.to_dict(), point
        else:
            assert planned_steps(config) == budget.steps * (10 if point.variant == "bptt-10x" else 1)
        if point.variant == "smt+dmt-pull":  # smt+dmt's runs, DMT's pull at 0.1 rather than none
            taken = run_config(study, replace(point, variant="smt+dmt"), 1)
            assert (taken.dmt.c_dyn, config.dmt.c_dyn) == (0.0, 0.1)
            assert replace(config, dmt=replace(config.dmt, c_dyn=taken.dmt.c_dyn)).to_dict() == taken.to_dict()
    others = {(point.cell, point.task, point.length, point.variant) for point in study.points if point.cell != "tanh"}
    assert others == {
        (cell, task, length, variant)
        for cell, task, length in [
            (c, t, 64) for c in ("gru", "mlp") for t in ("copy", "stack", "parity", "kv", "modular")
        ]
        + [
            (c, t, length)
            for c in ("gru", "mlp")
            for t, length in (("kv", 16), ("kv", 256), ("parity", 256), ("stack", 256), ("copy", 16))
        ]
        for variant in ("bptt", "smt+dmt")
    }
    assert study.budget(64, "copy") == Budget(9000, 4000) and study.budget(16, "copy") == Budget(2300, 300)
    assert study.budget(64, "stack") == Budget(2300, 300) and study.budget(16, "parity") == Budget(4000, 2000)
    # one long DMT, without the pull, for every family that has one (copy, stack, modular, parity, the real data)
    for task in ("copy", "stack", "modular", "parity", "mnist"):
        config = RunConfig(task=task, length=64)
        with_task_settings(config)
        assert (config.dmt.truncate, config.dmt.c_dyn, config.dmt_train.lr) == (64, 0.0, 2e-3), task
    modular = RunConfig(task="modular", length=64)
    with_task_settings(modular)
    assert modular.model.memory_size == 256  # modular's own memory, for every cell and method
    assert (modular.train.steps, modular.dmt_train.steps) == (2000, 4000)  # the grid's modular budget is its default
    assert study.budget(64, "modular") == study.budget(16, "modular") == Budget(6000, 4000)
    parity = RunConfig(task="parity", length=64)
    with_task_settings(parity)
    assert (parity.train.steps, parity.dmt_train.steps) == (2000, 2000)  # the grid's budget is parity's default


def test_the_length_studys_defaults_points_are_smtrnn_train_with_no_other_option():
    """docs/length.md's `defaults` rows are `smtrnn train --task retrieval --length L --seed S` (and --cell)."""
    study = experiments.study("length", "cpu")
    points = [point for point in study.points if point.variant == "defaults"]
    assert {point.length for point in points} == {64, 128, 256, 512, 1024}
    for point in points:
        for seed in point.seeds or study.seeds:
            config = run_config(study, point, seed)
            expected = RunConfig(task="retrieval", length=point.length, seed=seed)
            expected.model.cell = point.cell
            assert config.to_dict() == expected.to_dict(), (point, seed)


def test_customise_narrows_points_and_replaces_budgets():
    study = experiments.customise(experiments.study("compare", "cpu"), {"task": ["copy"], "length": [16]}, steps=100)
    assert {(point.task, point.length) for point in study.points} == {("copy", 16)}
    assert study.budget(16) == Budget(100, round(100 * 300 / 2300))
    assert study.budget(64, "copy") == Budget(100, round(100 * 4000 / 9000))  # a task's own budgets too
    with pytest.raises(smtrnn.errors.UserError, match="no point"):
        experiments.customise(experiments.study("compare", "cpu"), {"task": ["mqar"]})


@pytest.mark.parametrize(
    "teacher, readout, one_step, alone, expected",
    [
        (1.0, 1.0, 1.0, 0.95, "solved"),  # 0.94 of the way from chance 0.2 to 1
        (0.5, 0.5, 0.5, 0.45, "the teacher"),
        (1.0, 0.4, 0.4, 0.4, "the readout"),
        (0.8, 0.8, 0.2, 0.2, "one step"),
        (1.0, 1.0, 1.0, 0.2, "the rollout"),
        (1.0, 1.0, None, 0.2, "–"),  # BPTT rows have no rungs
    ],
)
def test_breaks_at_names_the_rung_that_loses_most(teacher, readout, one_step, alone, expected):
    row = {"chance": 0.2, "teacher_accuracy": teacher, "readout_accuracy": readout, "one_step_accuracy": one_step}
    assert breaks_at([dict(row, accuracy=alone - 0.01), dict(row, accuracy=alone + 0.01)]) == expected


def test_the_teacher_page_races_the_mean_curves_and_tables_each_factor_group(monkeypatch):
    import smtrnn.experiments.teacher as teacher_study

    monkeypatch.setattr(teacher_study, "header", lambda *args: ["header"])

    def row(variant, task, seed, values):
        key = "accuracy" if variant.startswith("bptt") else "teacher_accuracy"
        curve = [{"step": 50 * (i + 1), key: value} for i, value in enumerate(values)]
        final = values[-1] if variant.startswith("bptt") else None  # the RNN's held-out accuracy at the end
        row = {"variant": variant, "task": task, "cell": "tanh", "length": 16, "seed": seed, "seconds": 10}
        return row | {"curve": curve, "accuracy": final}

    rows = [row("bptt", task, seed, [0.6, 1.0, 1.0]) for task in ("parity", "copy") for seed in (0, 1)]
    rows += [row("teacher", task, seed, [0.5, 0.7, 0.8 + 0.1 * seed]) for task in ("parity", "copy") for seed in (0, 1)]
    rows += [row("sinusoid", "parity", seed, [0.6, 1.0, 1.0]) for seed in (0, 1)]
    # BPTT with a continuous memory: a baseline beside BPTT (its own race columns), never a factor
    rows += [row("bptt-continuous", "parity", seed, [0.8, 0.82, 0.8]) for seed in (0, 1)]
    # the teacher with the task's own settings: raced against BPTT without the grid, never a factor
    rows += [row("teacher-settings", "parity", seed, [0.7, 0.75 + 0.1 * seed, 0.7]) for seed in (0, 1)]
    rungs = {"teacher_accuracy": 1.0, "readout_accuracy": 0.9, "one_step_accuracy": 0.8}
    rows += [
        {
            "variant": "smt+dmt",
            "task": "parity",
            "cell": "tanh",
            "length": 16,
            "seed": seed,
            "seconds": 10,
            "accuracy": 0.7 + 0.1 * seed,
        }
        | rungs
        | {"generalisation": {"2": {"rnn": 0.6}, "4": {"rnn": 0.5 + 0.1 * seed}, "8": {"rnn": None}}}
        for seed in (0, 1)
    ]
    # copy's cell-step candidates go to their own table, beside copy's defaults
    copy_rows = [dict(row, task="copy") for row in rows if row["variant"] == "smt+dmt"]
    rows += copy_rows + [dict(row, variant="smt+dmt-readout-grad", accuracy=0.9) for row in copy_rows]
    # a candidate tried on another task stays in the RNN-alone table
    parity_rows = [row for row in rows if row["variant"] == "smt+dmt" and row["task"] == "parity"]
    rows += [dict(row, variant="smt+dmt-readout-grad", accuracy=0.5) for row in parity_rows]
    variants = [{"name": name, "description": name} for name in ("teacher", "bptt", "sinusoid", "smt+dmt")]
    variants += [{"name": "smt+dmt-readout-grad", "description": "readout grad"}]
    result = {"rows": rows, "study": {"variants": variants}}
    named = dict(teacher_study.blocks(result, "cmd", None)[1:])
    copy_step = named.pop("copy-step")
    assert [line.split(" | ")[3] for line in copy_step[2:-1]] == ["`smt+dmt`", "`smt+dmt-readout-grad`"]
    assert "| 0.900 / 0.900 | 1.000 |" in copy_step[3]
    assert len(named["rnn-alone"]) == 6  # parity's and copy's defaults, parity's candidate, not copy's
    assert "| parity | tanh | 16 | `smt+dmt-readout-grad` | readout grad | 0.500 / 0.500 |" in named["rnn-alone"][4]
    named["rnn-alone"] = [line for line in named["rnn-alone"] if "| copy |" not in line]
    # the RNN alone has its own table, not a row among the teacher's factors
    assert named.pop("rnn-alone")[2] == (
        "| parity | tanh | 16 | `smt+dmt` | smt+dmt | 0.700 / 0.800 | 1.000 | 0.800 | 1.000 / 0.900 / 0.800 | 0.600 / 0.550 / – | 10 |"
    )
    # BPTT's mean reaches its final 1.0 at step 100; the teacher's mean (0.85 at best) never does
    # BPTT without the grid: final 0.8, first within 0.01 of it at step 50; the teacher at step 150
    assert "| parity | 16 | 1.000 | 100 | not in 150 | 0.850 | 0.850 | 0.800 | 50 | 150 |" in named["race"]
    assert "| copy | 16 | 1.000 | 100 | not in 150 | 0.850 | 0.850 | – | – | – |" in named["race"]
    # BPTT without the grid ends at 0.8 (first within 0.01 at step 50); the task's settings pass 0.79 at
    # step 100 (mean 0.8), end at 0.7; the shared recipe's teacher ends at 0.85; copy has no such run
    assert named.pop("race-settings")[2:] == ["| parity | 16 | 0.800 | 50 | 100 | 0.700 | 0.800 | 0.850 |", ""]
    assert set(named) == {"race", "factors-parity-16"}  # copy has no factor, so no factor table
    assert any(
        line.startswith("| `sinusoid` | sinusoid | – | – | 1.000 | 100 |") for line in named["factors-parity-16"]
    )


def test_render_keeps_prose_and_replaces_blocks():
    first = render([("a", ["one"]), ("b", ["two"])])
    edited = "# Title\n\nWritten by a person.\n\n" + first + "\nMore prose.\n"
    again = render([("a", ["ONE"]), ("b", ["TWO"]), ("c", ["three"])], edited)
    assert "Written by a person." in again and "More prose." in again
    assert "ONE" in again and "one" not in again and again.index("ONE") < again.index("TWO") < again.index("three")


def test_the_longest_length_table_says_where_each_run_departs():
    from smtrnn.experiments.length import longest_table

    curve = [0.01 * t for t in range(1, 1025)]
    row = {"variant": "defaults", "seed": 0, "teacher_accuracy": 1.0, "accuracy": 0.2, "one_step_accuracy": 0.5}
    row |= {
        "probe": [{"lag": lag, "rollout": 1 - lag / 512} for lag in (1, 3, 256, 512)],
        "error_curve": curve,
        "seconds": 9,
    }
    lines = longest_table([row], {"defaults": "the library's defaults"})
    assert len(lines) == 4 and "| 1.00 / 0.99 / 0.50 | 0.320 / 5.120 / 10.240 |" in lines[2]
    assert longest_table([], {}) == []


def run_cli(name: str, out: Path, pages: Path, *extra: str) -> int:
    return main(
        ["experiment", name, "--preset", "smoke", "--quiet", "--out", str(out)]
        + ["--json", str(pages / f"{name}.json"), "--markdown", str(pages / f"{name}.md"), "--figures", str(pages)]
        + list(extra)
    )


@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_smoke_study_rows_page_and_report_only(name, tmp_path, monkeypatch):
    out, pages = tmp_path / "runs", tmp_path / "pages"
    assert run_cli(name, out, pages) == 0
    result = json.loads((pages / f"{name}.json").read_text())
    assert len(result["rows"]) == result["planned"] == len(configs(experiments.study(name, "smoke")))
    for row in result["rows"]:
        assert {"variant", "task", "cell", "length", "seed", "method", "accuracy", "note"} <= set(row)
        assert row["note"] is None and 0 <= row["accuracy"] <= 1
    page = (pages / f"{name}.md").read_text()
    for figure in pages.glob("*.png"):
        assert figure.read_bytes().startswith(PNG)
    # the page and JSON again, from the run directories alone: no training, no checkpoint loaded
    refuse = lambda *args, **kwargs: pytest.fail("--report-only loaded a checkpoint or trained")
    monkeypatch.setattr(checkpoint, "load_weights", refuse)
    monkeypatch.setattr(runner_module, "run", refuse)
    (pages / f"{name}.md").write_text("Prose a person wrote.\n\n" + page)
    assert run_cli(name, out, pages, "--report-only") == 0
    again = json.loads((pages / f"{name}.json").read_text())
    assert again["rows"] == result["rows"] and again["trained"] == 0
    rewritten = (pages / f"{name}.md").read_text()
    assert rewritten.startswith("Prose a person wrote.") and rewritten.count("<!-- generated: header -->") == 1


def test_smoke_needle_measurements_and_depths(tmp_path):
    result = run_study(experiments.study("horizon", "smoke"), tmp_path, progress=False)
    rows = {row["variant"]: row for row in result["rows"]}
    assert rows["bptt"]["sequential_depth"] == 16 and rows["paper"]["sequential_depth"] == 1
    assert rows["recipe"]["sequential_depth"] == 4  # the smoke study's K
    for name in ("paper", "recipe"):
        assert [entry["lag"] for entry in rows[name]["probe"]] == [0, 1, 3, 8]
        assert len(rows[name]["error_curve"]) == 16 and len(rows[name]["stability"]["moduli"]) == 3
    assert "probe" not in rows["bptt"]


def test_smoke_ages_measurement_splits_the_pops_by_how_long_they_were_held(tmp_path):
    result = run_study(experiments.study("teacher-long", "smoke"), tmp_path, progress=False)
    rows = {row["variant"]: row for row in result["rows"]}
    for row in rows.values():
        assert abs(sum(row["age_share"]) - 1) < 1e-6 and row["age_bins"][0] == [1, 4]
    assert "age_teacher" not in rows["bptt"] and "age_rnn" not in rows["teacher"]  # only what was trained
    assert len(rows["smt+dmt"]["age_rnn"]) == len(rows["smt+dmt"]["age_teacher"]) == len(rows["smt+dmt"]["age_bins"])


def small_study(**changes) -> Study:
    study = experiments.study("compare", "smoke").narrowed(task=["parity"])
    for key, value in changes.items():
        setattr(study, key, value)
    return study


def test_rerun_trains_nothing_and_two_jobs_give_the_rows_of_one(tmp_path, monkeypatch):
    first = run_study(small_study(), tmp_path / "one", progress=False)
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_study(small_study(), tmp_path / "one", progress=False)
    assert again["rows"] == first["rows"] and again["trained"] == 0
    monkeypatch.undo()
    parallel = run_study(small_study(), tmp_path / "two", jobs=2, progress=False)
    assert without_time(parallel["rows"]) == without_time(first["rows"])


def test_runs_that_train_alike_train_once_and_each_is_scored_at_its_own_length(tmp_path, monkeypatch):
    """Key-value trains on 16 tokens at every T: its runs at T=16 and 64 are one training (bitwise,
    tests/test_horizon.py), so the runner trains the shorter and the longer starts from its checkpoints."""
    study = smoke(experiments.study("compare", "cpu"))
    study.points = [Point(variant, "kv", "tanh", length) for variant in ("smt+dmt", "bptt") for length in (16, 64)]
    started = []
    real_run = runner_module.run

    def run(config, folder, **options):
        started.append((config.method, config.length, checkpoint.latest_checkpoint(Path(folder)) is not None))
        return real_run(config, folder, **options)

    monkeypatch.setattr(runner_module, "run", run)
    result = run_study(study, tmp_path, progress=False)
    # the T=16 runs train; the T=64 runs find their checkpoints there and only evaluate
    assert sorted(started) == [("bptt", 16, False), ("bptt", 64, True), ("smt+dmt", 16, False), ("smt+dmt", 64, True)]
    rows = {(row["method"], row["length"]): row for row in result["rows"]}
    for method, folder in (("smt+dmt", "smt+dmt"), ("bptt", "bptt")):
        assert (
            rows[method, 64]["trained_in"] == f"{folder}/kv/tanh/T16/seed0" and rows[method, 16]["trained_in"] is None
        )
        short, long = (tmp_path / folder / "kv" / "tanh" / f"T{length}" / "seed0" for length in (16, 64))
        weights = lambda run_dir: (checkpoint.latest_checkpoint(run_dir) / "model.safetensors").read_bytes()
        assert weights(long) == weights(short)
        assert checkpoint.read_json(long / "result.json")["length"] == 64  # scored at its own T
    ten_minutes = {**result, "rows": [{**row, "seconds": 600.0} for row in result["rows"]]}
    line = "\n".join(header(ten_minutes, "title", "command"))
    assert "2 of them trained once for several lengths" in line and "summed over them: 20 min 00 s;" in line
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert run_study(study, tmp_path, progress=False)["rows"] == result["rows"]


def test_earlier_rows_stand_in_for_lost_runs_only_where_the_config_is_the_same(tmp_path, monkeypatch):
    first = run_study(small_study(), tmp_path / "gone", progress=False)
    rows = copy.deepcopy(first["rows"])
    rows[0]["config"] = "0" * 16  # asked for something else: not carried, trained again
    again = run_study(small_study(), tmp_path / "new", progress=False, train=False, earlier=rows)
    assert again["carried"] == len(rows) - 1 and again["reused"] == 0
    assert again["rows"] == [{**row, "carried": True} for row in first["rows"][1:]]
    trained = []
    monkeypatch.setattr(runner_module, "train_run", lambda config, folder, measurements=(): trained.append(folder))
    run_study(small_study(), tmp_path / "new", progress=False, earlier=rows)
    key, (_, point) = next(iter(configs(small_study()).items()))
    assert trained == [str(runner_module.directory(tmp_path / "new", point, key[-1]))]


def _digest_without(config: RunConfig, section: str, name: str) -> str:
    """The digest a version of smtrnn without the setting section.name wrote for ``config``."""
    values = json.loads(json.dumps(config.to_dict()))
    values.pop("device")
    del values[section][name]
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def test_a_digest_as_of_fewer_settings_matches_the_one_that_version_wrote():
    config, fields = RunConfig(task="stack", length=16), config_fields()
    assert config_digest(config, fields) == config_digest(config)
    older = [name for name in fields if name != "smt.c_horizon_readout"]
    assert config_digest(config, older) == _digest_without(config, "smt", "c_horizon_readout")
    changed = replace(config, smt=replace(config.smt, c_horizon_readout=1.0))
    assert config_digest(changed, older) is None  # that version could not have asked for it
    values = json.loads(json.dumps(config.to_dict()))  # a retired setting, off, in the older version
    values.pop("device")
    values["dmt"]["whiten"] = False
    retired = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert config_digest(config, [*fields, "dmt.whiten"]) == retired


def test_earlier_rows_outlive_a_setting_added_since(tmp_path, monkeypatch):
    first = run_study(small_study(), tmp_path / "gone", progress=False)
    assert first["config_fields"] == config_fields()
    older = [name for name in config_fields() if name != "smt.c_horizon_readout"]
    rows = copy.deepcopy(first["rows"])
    for row, (config, _) in zip(rows, configs(small_study()).values(), strict=True):
        row["config"] = _digest_without(config, "smt", "c_horizon_readout")
    kept = run_study(small_study(), tmp_path / "new", progress=False, train=False, earlier=rows, earlier_fields=older)
    assert kept["rows"] == [{**row, "carried": True} for row in first["rows"]]  # with today's digests
    stale = run_study(small_study(), tmp_path / "new", progress=False, train=False, earlier=rows)
    assert stale["carried"] == 0  # read as today's digests, they ask for something else
    study = small_study(base=replace(small_study().base, smt=replace(small_study().base.smt, c_horizon_readout=1.0)))
    moved = run_study(study, tmp_path / "new", progress=False, train=False, earlier=rows, earlier_fields=older)
    assert [row["method"] for row in moved["rows"]] == ["bptt"]  # SMT's runs ask for more: only BPTT's is kept
    for row in rows:
        del row["config"]  # a row without a digest stands in for nothing, not even a config that has none
    assert (
        run_study(study, tmp_path / "new", progress=False, train=False, earlier=rows, earlier_fields=older)["carried"]
        == 0
    )


def test_report_only_never_shrinks_a_page_it_cannot_fill(tmp_path, capsys):
    """A mistyped --out finds no runs: the page and JSON of the runs it would have reported stay."""
    pages = tmp_path / "pages"
    assert run_cli("demo", tmp_path / "runs", pages) == 0
    before = {path.name: path.read_bytes() for path in pages.iterdir()}
    assert_user_error(run_cli("demo", tmp_path / "typo", pages, "--report-only"), capsys, "nothing written", "--out")
    assert {path.name: path.read_bytes() for path in pages.iterdir()} == before
    page_only = ["experiment", "demo", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "typo")]
    assert_user_error(main([*page_only, "--markdown", str(pages / "demo.md"), "--report-only"]), capsys, "found 0")
    assert {path.name: path.read_bytes() for path in pages.iterdir()} == before
    assert run_cli("demo", tmp_path / "typo", pages, "--report-only", "--keep-rows") == 0  # the JSON's own rows


@pytest.mark.parametrize("page", sorted(PAGE_STUDIES))
def test_every_row_of_a_committed_page_is_what_its_command_asks_for_today(page, tmp_path):
    """`--keep-rows` keeps a committed row only where today's config of its run is the one it was trained
    with: a default moved since would retrain it. So every row a page shows is what its command asks for
    now (retrain or drop the rows a changed default touches), and the README's `--keep-rows` commands
    train only the runs a page lacks."""
    written = json.loads((DOCS / f"{page}.json").read_text())
    assert written.get("config_fields"), f"docs/{page}.json does not say which settings its digests cover"
    study = experiments.study(written["study"]["name"], written["study"]["preset"])
    kept = run_study(
        study, tmp_path, progress=False, train=False, earlier=written["rows"], earlier_fields=written["config_fields"]
    )
    assert kept["carried"] == len(written["rows"]), f"docs/{page}.json: rows trained with another config"


def test_keep_rows_wants_the_json_it_keeps(tmp_path, capsys):
    argv = ["experiment", "compare", "--preset", "smoke", "--out", str(tmp_path), "--keep-rows", "--report-only"]
    assert_user_error(main(argv), capsys, "give --json")
    (tmp_path / "broken.json").write_text("[1, 2]")
    assert_user_error(main([*argv, "--json", str(tmp_path / "broken.json")]), capsys, "not a study's JSON")
    (tmp_path / "fields.json").write_text('{"rows": [], "config_fields": "seed"}')
    assert_user_error(main([*argv, "--json", str(tmp_path / "fields.json")]), capsys, "config_fields")


def test_a_diverged_run_is_a_row_and_is_not_retried(tmp_path, monkeypatch):
    study = small_study(variants=[*small_study().variants, Variant("hot", "lr 1e9", {"train.lr": 1e9})])
    study.points = [Point("hot", "parity", "tanh", 16)]
    result = run_study(study, tmp_path, progress=False)
    assert result["rows"][0]["note"].startswith("diverged") and result["rows"][0]["accuracy"] is None
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: pytest.fail("a diverged run was retried"))
    assert run_study(study, tmp_path, progress=False)["rows"] == result["rows"]


def test_a_directory_of_another_config_is_refused_before_training(tmp_path):
    run_study(small_study(), tmp_path, progress=False)
    changed = small_study(budgets={16: Budget(8, 2)}, task_budgets={})  # parity's own budget set aside
    with pytest.raises(smtrnn.errors.UserError, match="different config"):
        run_study(changed, tmp_path, progress=False)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["experiment", "nope"], "invalid choice"),
        (["experiment", "compare", "--preset", "huge"], "no preset 'huge'"),
        (["experiment", "compare", "--preset", "smoke", "--tasks", "copy"], "no point"),
        (["experiment", "compare", "--preset", "smoke", "--lengths", "a,b"], "comma-separated list of int"),
        (["experiment", "compare", "--preset", "smoke", "--jobs", "0"], "jobs must be positive"),
        (["experiment", "compare", "--preset", "smoke", "--steps", "5", "--dmt-steps", "5"], "dmt steps < steps"),
    ],
)
def test_experiment_mistakes_are_one_line_errors(argv, fragment, tmp_path, capsys):
    assert_user_error(main([*argv, "--out", str(tmp_path / "runs")]), capsys, fragment)


def test_the_threshold_table_leaves_out_a_teacher_at_chance_unless_its_rnn_solved_the_task():
    from smtrnn.experiments.compare import threshold_table

    def row(variant, length, accuracy, teacher=None):
        method = "bptt" if variant == "bptt" else "smt+dmt"
        return dict(
            task="parity",
            cell="tanh",
            variant=variant,
            method=method,
            length=length,
            chance=0.5,
            accuracy=accuracy,
            teacher_accuracy=teacher,
        )

    rows = [row("bptt", 16, 1.0), row("bptt", 64, 0.6), row("smt+dmt", 16, 1.0, 0.99)]
    rows += [row("smt+dmt", 64, 0.99, 0.52)]  # a teacher trained on 16 tokens, scored at T: its RNN counts
    rows += [row("smt+dmt", 256, 0.51, 0.50), row("smt+dmt", 256, 0.99, 0.5)]  # one failed run: not counted
    assert "| parity | tanh | 16 / 64 / 256 | 16 (256 not run) | 256 |" in threshold_table(rows)
    assert "| parity | tanh | 16 / 64 / 256 | 16 (256 not run) | 64 |" in threshold_table(rows[:-1])
    # a length only one variant ran is marked where the other stops, not read as the other's failure
    assert "| parity | tanh | 16 / 64 | 16 | 16 (64 not run) |" in threshold_table(rows[:3])
    # a variant run only at the longer length (BPTT with ten times the steps) has nothing beyond it
    assert "| parity | tanh | 16 / 64 | < 64 | 64 |" in threshold_table([row("bptt", 64, 0.6)] + rows[2:4])


def test_smoke_teacher_width_study_sets_each_width_beside_the_string(tmp_path):
    from smtrnn.experiments import teacher_width

    study = experiments.study("teacher-width", "cpu")
    assert [(point.variant, point.length) for point in study.points] == [
        ("teacher", 128),
        ("width-128", 128),
        ("width-128-p8", 128),  # copy's own settings at T=128, which this study made them
        ("teacher", 64),
        ("width-128", 64),
    ]
    assert (
        run_config(study, study.points[2], 0).smt.decoder_positions,
        run_config(study, study.points[0], 0).smt.decoder_positions,
    ) == (8, 16)
    result = run_study(experiments.study("teacher-width", "smoke"), tmp_path, progress=False)
    assert {row["variant"] for row in result["rows"]} == {"teacher", "width-128", "width-128-p8"}
    assert all(row["curve"] and row["teacher_accuracy"] is not None for row in result["rows"])
    lines = dict(teacher_width.blocks(result, "cmd", None))["widths"]
    widths = {line.split(" | ")[1]: line.split(" | ")[3] for line in lines[2:] if line.startswith("|")}
    assert widths == {"`teacher`": "63 / 64", "`width-128`": "63 / 128", "`width-128-p8`": "63 / 128"}
    assert [path.name for path in teacher_width.figures(result, tmp_path)] == ["teacher-width-curves.png"]


def test_smoke_kv_step_study_probes_every_run_with_a_teacher(tmp_path):
    from smtrnn.experiments import kv_step

    study = experiments.study("kv-step", "cpu")
    assert {(point.variant, point.cell, point.length) for point in study.points} == set(kv_step.POINTS)
    assert {run_config(study, point, 0).model.cell for point in study.points} == {"tanh", "transformer"}
    result = run_study(experiments.study("kv-step", "smoke"), tmp_path, progress=False)
    assert len(result["rows"]) == len(kv_step.POINTS)
    for row in result["rows"]:
        assert set(row["lookup"]) == {"teacher", "by position", "by key", "after query", "decoder before"}
        assert set(row["lookup"]["teacher"]) == set(kv_step.READERS)
    lines = dict(kv_step.blocks(result, "cmd", None))["rungs"]
    teacher_alone = [line for line in lines if "`teacher`" in line][0].split(" | ")
    assert teacher_alone[7:9] == ["–", "–"]  # no RNN trained: no one-step or RNN-alone score


class _KeyedTeacher:
    """A stand-in teacher whose memory of every prefix is key-value's pairs, one slot per key."""

    def __init__(self, task):
        self.task = task

    def encode(self, x):
        from smtrnn.probe import _layouts

        memory = _layouts(self.task, x)["by key"]
        return memory[:, None].expand(len(x), x.shape[1] + 1, memory.shape[-1])

    def decode(self, memory, future):
        """Reads the slot of the key that comes next: logits for the label before it and at it."""
        slots = memory.view(len(memory), self.task.key_vocab, self.task.value_vocab)
        read = slots[torch.arange(len(memory)), future[:, 0] - self.task.value_vocab]
        return torch.stack([torch.zeros_like(read), read], 1)


def test_the_lookup_probe_tells_a_keyed_memory_read_by_the_query_from_one_read_beside_it():
    """A memory with one slot per key is read exactly by a linear map the query chooses (bilinear), and
    not by a linear reader that sees memory and query side by side; the probe reads the memory before
    the query, and the hand-written layouts agree."""
    from types import SimpleNamespace

    from smtrnn.probe import lookup_probe
    from smtrnn.tasks import make_task

    task = make_task("kv", pairs=4, key_vocab=16, value_vocab=16)
    models = SimpleNamespace(teacher=_KeyedTeacher(task), eval=lambda: None)
    scores = lookup_probe(models, task, 16, train=16384, test=512, steps=400, hidden=(16,))
    assert scores["teacher"]["bilinear"] > 0.9 and scores["by key"]["bilinear"] > 0.9, scores
    assert scores["teacher"]["linear"] < 0.5 and scores["by key"]["linear"] < 0.5, scores
    assert set(scores["teacher"]) == {"linear", "mlp-16", "bilinear"} and scores["decoder before"] == 1.0


def test_kv_recipe_points_are_the_smtrnn_train_commands_its_page_names():
    """docs/kv-recipe.md's runs are `smtrnn train --task kv --length T --cell C --seed S` with the
    options the page gives (SMT->DMT: 8,900 + 4,000 steps, no pull, DMT on its own labels; BPTT 12,900)."""
    from smtrnn.cli import build_parser
    from smtrnn.experiments import kv_recipe
    from smtrnn.options import config_from_args, take_settings

    own = "--steps 8900 --smt-teacher-pull no --dmt-truncate 16 --dmt-c-dyn 0 --dmt-lr 2e-3"
    own += " --dmt-readout-grad yes --dmt-steps 4000"
    bptt = "--method bptt --steps 12900"
    # key-value's own settings are since what `smt+dmt-own-at16` and `bptt-grid-at16` measured: the other
    # points say where they leave them (trained at T, BPTT's continuous memory)
    commands = {
        "smt+dmt-own": own + " --train-length 0",
        "smt+dmt-own-future": own + " --future {T} --train-length 0",
        "bptt": bptt + " --memory-levels 0 --train-length 0",
        "smt+dmt-own-at16": own + " --train-length 16",
        "bptt-at16": bptt + " --memory-levels 0 --train-length 16",
        "bptt-grid-at16": bptt + " --memory-levels 5 --train-length 16",
        "bptt-grid": bptt + " --memory-levels 5 --train-length 0",
        "smt+dmt-own-deep": own + " --train-length 0 --mlp-layers 2",
        "bptt-grid-deep": bptt + " --memory-levels 5 --train-length 0 --mlp-layers 2",
        "smt+dmt-own-m256": own + " --train-length 0 --memory-size 256",
        "bptt-grid-m256": bptt + " --memory-levels 5 --train-length 0 --memory-size 256",
        "bptt-grid-m256-e256": bptt + " --memory-levels 5 --train-length 0 --memory-size 256 --embed-dim 256",
    }
    study = experiments.study("kv-recipe", "cpu")
    assert {(point.variant, point.cell, point.length) for point in study.points} == set(kv_recipe.POINTS)
    for point in study.points:
        line = f"train --out o --task kv --length {point.length} --cell {point.cell} --seed 2 {commands[point.variant].format(T=point.length)}"
        args = build_parser().parse_args(line.split())
        expected = config_from_args(args)
        take_settings(expected, args)
        assert run_config(study, point, 2).to_dict() == expected.to_dict(), point
        assert planned_steps(expected) == 12900


def test_smoke_kv_recipe_study_writes_its_race(tmp_path):
    from smtrnn.experiments import kv_recipe

    result = run_study(experiments.study("kv-recipe", "smoke"), tmp_path, progress=False)
    assert len(result["rows"]) == len(kv_recipe.POINTS)
    lines = dict(kv_recipe.blocks(result, "cmd", None))["race"]
    assert len([line for line in lines if line.startswith("| ")]) == 1 + len(kv_recipe.POINTS)
    bptt = [line.split(" | ") for line in lines if "`bptt`" in line]
    assert all(cells[5:11] == ["–"] * 6 for cells in bptt)  # no teacher: no rungs, no SMT phase
    # what DMT started from: SMT's last checkpoint, scored at the run's T as `smtrnn eval` scores it
    from smtrnn.run import evaluate_run, read_run

    row = next(row for row in result["rows"] if row["method"] == "smt+dmt" and row["length"] == 64)
    folder = runner_module.directory(tmp_path, Point(row["variant"], "kv", row["cell"], 64), 0)
    loaded = read_run(sorted(folder.glob("checkpoints/smt-*"))[-1])
    scores = evaluate_run(loaded.config, loaded.task, loaded.models)
    assert row["smt_accuracy"] == scores["accuracy"] and row["smt_one_step_accuracy"] == scores["one_step_accuracy"]
    assert all("smt_accuracy" not in row for row in result["rows"] if row["method"] == "bptt")
