"""The horizon study behind docs/horizon.md: what makes the RNN alone keep what its teacher stores.

Needle retrieval, every point three seeds or more, all run through sweep.py (resumable, parallel):

- ladder: from the paper's one-step loss to the default recipe, one change at a time (tanh, T=64);
- factors: the recipe with one factor changed (tanh, T=64; the ones that matter most also at T=128);
- scale: the recipe for the tanh, GRU and MLP cells at T=64, 128 and 256 (and the Transformer cell at
  T=64), each against BPTT with the same cell, the same number of optimiser steps and, at T <= 128 for
  tanh, BPTT with four times as many steps.

After training, each SMT point also measures where its rollout loses the needle (probe.py): linear
probes at lags after the needle, the rollout's relative error against t, and the largest Jacobian
eigenvalues of the cell in the subspace where the teacher stores the needle.

    study = preset("cpu")                     # or "smoke" for a seconds-long check of the machinery
    result = run_study(study, "runs/horizon", jobs=2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from smtrnn import checkpoint
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.models import TINY_SIZES, ModelConfig
from smtrnn.run import load_run
from smtrnn.sweep import outcome, sweep

DIAGNOSTICS_FILE = "needle.json"
PROBE_LAGS = (0, 1, 3, 8, 16, 32, 64)


@dataclass(frozen=True)
class Budget:
    smt_steps: int  # SMT steps (BPTT gets smt_steps + dmt_steps)
    dmt_steps: int
    grow: int  # steps over which the horizon grows to K


# the recipe's budget by length: T=64 is the demo's; T >= 128 is the library's default (2,000 + 300)
BUDGETS = {64: Budget(1200, 300, 600), 128: Budget(2000, 300, 1000), 256: Budget(2000, 300, 1000)}


def budget(length: int) -> Budget:
    return BUDGETS.get(length) or BUDGETS[min((key for key in BUDGETS if key >= length), default=max(BUDGETS))]


def recipe(cell: str, length: int, seed: int) -> RunConfig:
    """The default SMT->DMT recipe (the library's defaults) with the study's budget at ``length``."""
    plan = budget(length)
    config = RunConfig(task="retrieval", length=length, method="smt+dmt", seed=seed, model=ModelConfig(cell=cell))
    config.train = replace(config.train, steps=plan.smt_steps)
    config.dmt_train = replace(config.dmt_train, steps=plan.dmt_steps)
    config.smt.horizon_grow = plan.grow
    return config


def _set(**changes) -> Callable[[RunConfig], None]:
    """A change to a config: ``section__field=value`` (e.g. smt__horizon=8) or a top-level field."""

    def change(config: RunConfig) -> None:
        for key, value in changes.items():
            if "__" in key:
                section, name = key.split("__")
                setattr(getattr(config, section), name, value)
            else:
                setattr(config, key, value)

    return change


def _chain(*changes) -> Callable[[RunConfig], None]:
    def change(config: RunConfig) -> None:
        for one in changes:
            one(config)

    return change


def _bptt(factor: int = 1) -> Callable[[RunConfig], None]:
    def change(config: RunConfig) -> None:
        steps = factor * (config.train.steps + config.dmt_train.steps)
        config.method = "bptt"
        config.train = replace(config.train, steps=steps)

    return change


def _halve_smt(config: RunConfig) -> None:
    config.train.steps //= 2
    config.smt.horizon_grow //= 2


NO_DELAY = _set(smt__teacher_delay=0)
OLD_DMT = _set(dmt_train__batch_size=32)
PAPER = _chain(NO_DELAY, OLD_DMT, _set(smt__horizon=1, smt__horizon_grow=0, model__teacher_positions="sinusoid"))


def _smt_only(config: RunConfig) -> None:
    config.method = "smt"
    config.train.steps += config.dmt_train.steps  # DMT's steps go to SMT


@dataclass(frozen=True)
class Variant:
    name: str
    part: str  # ladder | factors | scale
    description: str
    change: Callable[[RunConfig], None] = field(default=lambda config: None, compare=False)


VARIANTS = [
    # the ladder: one change at a time, from the paper's loss to the recipe
    Variant("paper", "ladder", "one-step dynamics loss (K=1), sinusoidal positions, DMT batch 32", PAPER),
    Variant("K8-sinusoid", "ladder", "+ horizon K=8 from the start", _chain(PAPER, _set(smt__horizon=8))),
    Variant(
        "K8",
        "ladder",
        "+ teacher without position codes",
        _chain(NO_DELAY, OLD_DMT, _set(smt__horizon=8, smt__horizon_grow=0)),
    ),
    Variant("K16-grown", "ladder", "+ K=16, grown from 1 over the first half of SMT", _chain(NO_DELAY, OLD_DMT)),
    Variant("dmt-128", "ladder", "+ DMT batch 128", NO_DELAY),
    Variant("recipe", "ladder", "+ the dynamics reach the teacher only after 500 steps (the default recipe)"),
    # factors: the recipe with one thing changed
    Variant("K1", "factors", "K=1 (no horizon)", _set(smt__horizon=1, smt__horizon_grow=0)),
    Variant("K8-grown", "factors", "K=8, grown", _set(smt__horizon=8)),
    Variant("K16-fixed", "factors", "K=16 from the start", _set(smt__horizon_grow=0)),
    Variant("K32", "factors", "K=32, grown", _set(smt__horizon=32)),
    Variant("S2", "factors", "2 starts per sequence", _set(smt__horizon_starts=2)),
    Variant("S32", "factors", "32 starts per sequence", _set(smt__horizon_starts=32)),
    Variant("half-steps", "factors", "half the SMT steps (and growth)", _halve_smt),
    Variant("lr-4e-3", "factors", "SMT learning rate 4e-3", _set(train__lr=4e-3)),
    Variant("weight-0.3", "factors", "horizon weight 0.3", _set(smt__c_horizon=0.3)),
    Variant(
        "joint", "factors", "horizon labels not detached (gradient into the teacher)", _set(smt__horizon_detach=False)
    ),
    Variant("burn-in", "factors", "16 free-running steps before the K supervised ones", _set(smt__horizon_burnin=16)),
    Variant("sinusoid", "factors", "teacher with sinusoidal position codes", _set(model__teacher_positions="sinusoid")),
    Variant("no-delay", "factors", "the dynamics reach the teacher from the start", NO_DELAY),
    Variant("no-dmt", "factors", "SMT only, DMT's steps given to SMT", _smt_only),
    Variant("dmt-readout", "factors", "DMT trains the readout only (no memory pull)", _set(dmt__c_dyn=0.0)),
    Variant(
        "dmt-official",
        "factors",
        "DMT as the paper's code: lr 3e-5, c_dyn 10, every 16th step, batch 32",
        _set(dmt_train__lr=3e-5, dmt_train__batch_size=32, dmt__c_dyn=10.0, dmt__every=16, dmt__start="teacher"),
    ),
    # baselines for the scale part
    Variant("bptt", "scale", "BPTT, same cell and number of optimiser steps", _bptt(1)),
    Variant("bptt-4x", "scale", "BPTT with four times the optimiser steps", _bptt(4)),
]
BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass
class Study:
    """Which variants run where: (variant, cell, length) triples, each for every seed."""

    points: list[tuple[str, str, int]]
    seeds: list[int]
    adjust: Callable[[RunConfig], None] | None = None  # applied last (the smoke preset shrinks everything)

    def configs(self) -> dict[tuple, RunConfig]:
        configs = {}
        for name, cell, length in self.points:
            for seed in self.seeds:
                config = recipe(cell, length, seed)
                BY_NAME[name].change(config)
                if self.adjust is not None:
                    self.adjust(config)
                configs[(name, cell, length, seed)] = config
        return configs


def full_study() -> Study:
    """Every variant: the whole ladder and every factor at T=64, the scale part at T=64/128/256 for
    tanh, GRU and MLP (about 6 h on 2 cores)."""
    ladder = [(variant.name, "tanh", 64) for variant in VARIANTS if variant.part == "ladder"]
    factors = [
        (variant.name, "tanh", 64) for variant in VARIANTS if variant.part == "factors" and variant.name != "no-delay"
    ]
    longer = [("K8-grown", "tanh", 128), ("no-dmt", "tanh", 128), ("no-delay", "tanh", 256), ("K32", "tanh", 256)]
    scale = [
        (name, cell, length)
        for length in (64, 128, 256)
        for cell in ("tanh", "gru", "mlp")
        for name in ("recipe", "bptt")
    ] + [("recipe", "transformer", 64), ("bptt", "transformer", 64)]
    scale += [("bptt-4x", "tanh", length) for length in (64, 128)]
    points = list(dict.fromkeys(ladder + factors + longer + scale))  # the T=64 tanh recipe once
    return Study(points=points, seeds=[0, 1, 2])


def cpu_study() -> Study:
    """The committed study, about two hours on 2 cores: the ladder without its DMT-batch rung; the
    factors that decide most (no horizon and no DMT at T=64; no teacher delay and K=32 at T=256);
    the recipe for tanh, GRU and MLP at T=64 and 128, for tanh and GRU at T=256 and for the
    Transformer cell at T=64, each against BPTT."""
    ladder = [(name, "tanh", 64) for name in ("paper", "K8-sinusoid", "K8", "K16-grown", "recipe")]
    factors = [(name, "tanh", 64) for name in ("K1", "no-dmt")] + [(name, "tanh", 256) for name in ("no-delay", "K32")]
    scale = [
        (name, cell, length) for length in (64, 128) for cell in ("tanh", "gru", "mlp") for name in ("recipe", "bptt")
    ]
    scale += [(name, cell, 256) for cell in ("tanh", "gru") for name in ("recipe", "bptt")]
    scale += [("recipe", "transformer", 64), ("bptt", "transformer", 64), ("bptt-4x", "tanh", 64)]
    return Study(points=list(dict.fromkeys(ladder + factors + scale)), seeds=[0, 1, 2])


def _shrink(config: RunConfig) -> None:
    config.model = replace(config.model, **TINY_SIZES, memory_tokens=2, cell_layers=1)
    config.train = replace(config.train, steps=max(2, config.train.steps // 400), batch_size=4, warmup=1, log_every=1)
    config.dmt_train = replace(config.dmt_train, steps=2, batch_size=4, warmup=1, log_every=1)
    config.smt = replace(
        config.smt,
        dyn_warmup=1,
        teacher_delay=1,
        horizon=min(config.smt.horizon, 4),
        horizon_grow=1,
        horizon_burnin=min(config.smt.horizon_burnin, 2),
    )
    config.eval_batches = 1


def smoke_study() -> Study:
    """Seconds-long: tiny models, a few steps, two variants and the baseline (checks the machinery)."""
    return Study(
        points=[("paper", "tanh", 16), ("recipe", "tanh", 16), ("bptt", "tanh", 16)], seeds=[0], adjust=_shrink
    )


PRESETS = {"cpu": cpu_study, "full": full_study, "smoke": smoke_study}


def preset(name: str) -> Study:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def directory(out: str | Path, key: tuple) -> Path:
    name, cell, length, seed = key
    return Path(out) / name / cell / f"T{length}" / f"seed{seed}"


def measure_needle(config: RunConfig, run_dir: str) -> None:
    """Where the run's rollout loses the needle (probe.py), into needle.json beside its result."""
    from smtrnn.probe import needle_probe, needle_stability, rollout_error_curve

    if config.method == "bptt":
        return
    _, task, models = load_run(run_dir)
    lags = tuple(lag for lag in PROBE_LAGS if lag < config.length)
    size = 2048 if config.model.memory_size > 8 else 64  # the smoke preset: a handful of sequences
    report = {
        "probe": needle_probe(models, task, config.length, lags, train=size, test=size // 4),
        "error_curve": rollout_error_curve(models, task, config.length),
        "stability": needle_stability(models, task, config.length, count=16 if size > 64 else 2),
    }
    checkpoint.write_json(Path(run_dir) / DIAGNOSTICS_FILE, report)


def row(key: tuple, config: RunConfig, outcome: dict, run_dir: Path) -> dict:
    name, cell, length, seed = key
    entry = {
        "variant": name,
        "part": BY_NAME[name].part,
        "cell": cell,
        "length": length,
        "seed": seed,
        "method": config.method,
        "accuracy": outcome.get("accuracy"),
        "seconds": outcome.get("seconds"),
        "steps": outcome.get("steps"),
        "teacher_accuracy": outcome.get("teacher_accuracy"),
        "sequential_depth": outcome.get("sequential_depth"),
        "drift": outcome.get("drift"),
        "note": outcome.get("diverged"),
    }
    needle = run_dir / DIAGNOSTICS_FILE
    if config.method != "bptt" and "diverged" not in outcome:
        if not needle.exists():  # a run whose measurement was interrupted: measure it now
            measure_needle(config, str(run_dir))
        entry.update(checkpoint.read_json(needle))
    return entry


def run_study(
    study: Study, out: str | Path = "runs/horizon", jobs: int = 1, progress: bool = True, train: bool = True
) -> dict:
    """Train every point not yet finished (``jobs`` at a time) and return {"rows", "wall_seconds", ...}.
    With ``train=False`` nothing is trained: the rows are the points already finished in ``out``."""
    configs = study.configs()
    planned = len(configs)
    if not train:
        configs = {key: config for key, config in configs.items() if outcome(config, directory(out, key)) is not None}
    describe = lambda key, outcome: (
        "{} {} T={} seed {}: ".format(*key)
        + ("diverged" if "diverged" in outcome else f"accuracy {outcome['accuracy']:.3f}")
    )
    done = sweep(
        [(key, config, directory(out, key)) for key, config in configs.items()],
        jobs,
        1,
        progress,
        "horizon",
        describe,
        finish=measure_needle,
    )
    rows = [row(key, config, done["outcomes"][key], directory(out, key)) for key, config in configs.items()]
    return {
        "rows": rows,
        "planned": planned,
        "seeds": study.seeds,
        "wall_seconds": done["wall_seconds"],
        "trained": done["trained"],
        "reused": done["reused"],
        "jobs": jobs,
        "descriptions": {v.name: v.description for v in VARIANTS},
        "budgets": {str(length): vars(plan) for length, plan in BUDGETS.items()},
    }
