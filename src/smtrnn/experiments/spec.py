"""A study as data: a base RunConfig, named variants (overrides by dotted field name, as on the command
line), the points to run, the seeds, a budget table and what to measure after training. It round-trips
through JSON, so the JSON a study writes says exactly what was run.

    study = Study(
        name="horizon", preset="cpu", base=RunConfig(task="retrieval"),
        variants=[Variant("recipe", "the defaults"), Variant("K1", "no horizon", {"smt.horizon": 1})],
        points=[Point("recipe", "retrieval", "tanh", 64), Point("K1", "retrieval", "tanh", 64)],
        seeds=[0, 1, 2], budgets={64: Budget(steps=1500, dmt_steps=300)},
    )
    Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.models import ModelConfig

# BPTT on SMT's memory grid (the same model as SMT's RNN): overrides of a variant; BPTT's own default is
# a continuous memory (methods.METHOD_SETTINGS)
BPTT_ON_GRID = {"method": "bptt", "model.memory_levels": ModelConfig().memory_levels}

# what a row keeps of a run's result.json (a key the result lacks is null); studies may ask for more
ROW_KEYS = (
    "accuracy",
    "loss",
    "bits_per_token",
    "chance",
    "teacher_accuracy",
    "readout_accuracy",  # the RNN's readout on the teacher's memories m*_t
    "one_step_accuracy",  # the readout on one cell step from them, f(m*_{t-1}, x_t)
    "drift",
    "seconds",
    "steps",
    "sequential_depth",
    "forward_depth",
)


@dataclass
class Budget:
    """The optimiser steps of every run at a length: all phases together, so that every method gets the
    same number; smt+dmt spends ``dmt_steps`` of them in DMT."""

    steps: int
    dmt_steps: int = 0


@dataclass
class Variant:
    """A named change to the base config: ``overrides`` by dotted field name ("smt.horizon": 8,
    "method": "bptt"), and ``steps``, a multiple of the budget (BPTT with ten times the steps: 10)."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    steps: float = 1.0
    group: str = ""  # the part of its page the variant belongs to (e.g. "ladder")
    # the task's own settings (Task.settings) for this variant's points: None follows the study's
    # ``task_settings``; True in a study of the one shared recipe races what a user's run gets beside it
    task_settings: bool | None = None
    # the budget's steps spent in DMT (smt+dmt only): None keeps the budget's share; the total is the same,
    # so a larger share takes its steps from SMT
    dmt_steps: int | None = None


@dataclass(frozen=True)
class Point:
    """One configuration of a study, run once per seed."""

    variant: str
    task: str
    cell: str
    length: int
    seeds: tuple[int, ...] | None = None  # its own seeds instead of the study's (e.g. one seed of a long run)

    def __post_init__(self):
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(self.seeds))  # from JSON: a list

    def key(self, seed: int) -> tuple:
        return (self.variant, self.task, self.cell, self.length, seed)


@dataclass
class Study:
    name: str  # the experiment's name (smtrnn experiment NAME)
    preset: str  # which of its presets this is
    base: RunConfig  # what every point starts from: the library's defaults unless the study says otherwise
    variants: list[Variant]
    points: list[Point]
    seeds: list[int]
    budgets: dict[int, Budget]  # by length: a point takes the entry of the next length >= its own
    tasks: dict[str, dict] = field(default_factory=dict)  # task options by task name (others: the task's defaults)
    task_overrides: dict[str, dict] = field(default_factory=dict)  # dotted overrides for the points of a task
    # a task's own budgets by length, in place of ``budgets`` for its points (a family whose teacher needs
    # more steps at some lengths than the others: copy at T=64, docs/results.md)
    task_budgets: dict[str, dict[int, Budget]] = field(default_factory=dict)
    # each point takes its task's own settings (Task.settings) under the overrides, as a user's run does;
    # a study of factors measured against the one recipe every task shares turns this off
    task_settings: bool = True
    measurements: list[str] = field(default_factory=list)  # measured after training (experiments/measure.py)
    row_keys: list[str] = field(default_factory=lambda: list(ROW_KEYS))
    threads_per_job: int = 1  # PyTorch threads of each run

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise UserError(f"{self.name}: no variant {name!r}; it has {', '.join(v.name for v in self.variants)}")

    def budget(self, length: int, task: str | None = None) -> Budget:
        """The budget of a point: its task's own table where the study has one, else ``budgets``; in it,
        the entry of the next length >= ``length`` (the longest entry beyond them)."""
        budgets = self.task_budgets.get(task, self.budgets) if task is not None else self.budgets
        longer = [limit for limit in budgets if limit >= length]
        return budgets[min(longer) if longer else max(budgets)]

    def rebudgeted(self, change) -> None:
        """Replace every Budget of the study, its tasks' included, with ``change(budget)``."""
        self.budgets = {length: change(budget) for length, budget in self.budgets.items()}
        self.task_budgets = {
            task: {length: change(budget) for length, budget in budgets.items()}
            for task, budgets in self.task_budgets.items()
        }

    def keys(self) -> list[tuple[Point, int]]:
        """Every (point, seed) of the study, in the order of its points."""
        return [(point, seed) for point in self.points for seed in (point.seeds or self.seeds)]

    def to_dict(self) -> dict:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values.update(
            base=self.base.to_dict(),
            variants=[asdict(variant) for variant in self.variants],
            points=[asdict(point) for point in self.points],
            budgets=_budgets_to_dict(self.budgets),
            task_budgets={task: _budgets_to_dict(budgets) for task, budgets in self.task_budgets.items()},
        )
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Study:
        values = dict(values)
        values.update(
            base=RunConfig.from_dict(values["base"]),
            variants=[Variant(**variant) for variant in values["variants"]],
            points=[Point(**point) for point in values["points"]],
            budgets=_budgets_from_dict(values["budgets"]),
            task_budgets={
                task: _budgets_from_dict(budgets) for task, budgets in values.get("task_budgets", {}).items()
            },
        )
        return cls(**values)

    def narrowed(self, **allowed: list | None) -> Study:
        """The study with only the points whose fields take the allowed values (None: any), e.g.
        ``narrowed(task=["copy"], length=[16])``; ``seed`` replaces the seeds."""
        seeds = allowed.pop("seed", None)
        points = [
            point
            for point in self.points
            if all(values is None or getattr(point, name) in values for name, values in allowed.items())
        ]
        if not points:
            raise UserError(f"{self.name}: no point of preset {self.preset} is left by that choice")
        copy = Study.from_dict(self.to_dict())
        if seeds is not None:
            points = [
                replace(point, seeds=tuple(s for s in point.seeds if s in seeds)) if point.seeds else point
                for point in points
            ]
            points = [point for point in points if point.seeds != ()]
        copy.points, copy.seeds = points, seeds if seeds is not None else copy.seeds
        return copy


def _budgets_to_dict(budgets: dict[int, Budget]) -> dict[str, dict]:
    return {str(length): asdict(budget) for length, budget in budgets.items()}


def _budgets_from_dict(values: dict[str, dict]) -> dict[int, Budget]:
    return {int(length): Budget(**budget) for length, budget in values.items()}
