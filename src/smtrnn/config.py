"""The configuration of one run: ``RunConfig`` (task, method, model, training and method sections), its
JSON form (config.json of a run directory), and the one list of its options. Every field is a
command-line option (cli.py) whose name and help come from here; studies override fields by the same
dotted names (``"smt.horizon"``).

    config = RunConfig(task="retrieval", length=128, method="smt+dmt")
    RunConfig.from_dict(config.to_dict()) == config
    set_field(config, "smt.horizon", 8); option_name("smt.horizon") == "--smt-horizon"
"""

from __future__ import annotations

import ast
import copy
import inspect
import io
import math
import tokenize
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from functools import cache

import torch

from smtrnn.errors import UserError, type_mismatch
from smtrnn.methods import METHODS, BPTTConfig, DMTConfig, SMTConfig, phases, uses_teacher
from smtrnn.models import CELL_OPTIONS, TEACHER_FIELDS, ModelConfig
from smtrnn.train import TrainConfig


@dataclass
class RunConfig:
    task: str = "retrieval"  # what to learn
    length: int = 64  # sequence length T of training (for windowed SMT: the crop, context + future - 1)
    method: str = "smt+dmt"  # how to train (teacher: the teacher alone, to see how fast it learns a task)
    seed: int = 0  # model initialisation, data stream and evaluation stream
    device: str = "cpu"  # cpu, cuda or cuda:N
    init: str | None = None  # a run (or RUN/checkpoints/NAME) whose weights the run starts from (dmt: an SMT run)
    task_options: dict = field(default_factory=dict)  # the task's parameters (--task-option KEY=VALUE)
    eval_batches: int = 8  # held-out batches of 64 sequences in the final evaluation
    length_generalisation: bool = False  # also evaluate at 2T, 4T and 8T (into result.json)
    # every phase trains on sequences this many tokens long (0: T); the evaluation still sees T: train
    # short, run long (key-value: an RNN trained at 16 on a memory grid keeps its score at 256)
    train_length: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the main phase (smt, bptt, tbptt; dmt alone)
    # DMT after SMT: four times SMT's batch, so that the readout sees enough labels on the RNN's own memories
    dmt_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=128, lr=1e-3, warmup=20))
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)

    def trained_length(self) -> int:
        """T of the training sequences: ``train_length`` where set (train short, evaluate at T), else T."""
        return self.train_length or self.length

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.length < 1:
            raise UserError(f"length must be positive, got {self.length}")
        if not 0 <= self.train_length <= self.length:
            raise UserError(f"--train-length must be between 0 (T) and --length {self.length}, got {self.train_length}")
        if self.eval_batches < 1:
            raise UserError(f"eval batches must be positive, got {self.eval_batches}")
        if self.method == "dmt" and not self.init:
            raise UserError("method dmt fine-tunes an SMT run: give --init DIR")
        if self.method == "smt+dmt" and self.train.steps == 0:
            raise UserError(
                "--steps 0 with --method smt+dmt would run DMT from an untrained teacher; to fine-tune a "
                "trained SMT run, give --method dmt --init RUN"
            )
        check_device(self.device)
        check_finite(self)
        check_bounds(self)
        self.model.validate(teacher=uses_teacher(self))
        for section in (self.train, self.dmt_train):
            section.validate()
        if uses_teacher(self):
            self._validate_teacher()

    def _validate_teacher(self) -> None:
        trained = self.trained_length()
        if self.model.future > trained:
            what = (
                f"the training sequences (--train-length {trained})"
                if self.train_length
                else f"the sequence (--length {trained})"
            )
            raise UserError(f"--future {self.model.future} is longer than {what}")
        if self.smt.context and trained < self.smt.context + self.model.future - 1:
            raise UserError(
                f"smt context {self.smt.context} with future {self.model.future} needs crops of length >= "
                f"{self.smt.context + self.model.future - 1} (context + future - 1), got {trained}"
            )
        if self.smt.grid_error not in ("rounded", "update"):
            raise UserError(f"smt grid error must be rounded or update, got {self.smt.grid_error!r}")
        if self.smt.horizon_starts_at not in ("uniform", "changes"):
            raise UserError(f"smt horizon starts at must be uniform or changes, got {self.smt.horizon_starts_at!r}")
        if self.dmt.start not in ("initial", "teacher"):
            raise UserError(f"dmt start must be initial or teacher, got {self.dmt.start!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        if not isinstance(values, dict):
            raise UserError(f"a config is a JSON object of settings, got {type(values).__name__}")
        values = _without_retired(values)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}")
        kwargs = {}
        for key, value in values.items():
            if key in SECTION_TYPES:
                sub_type = SECTION_TYPES[key]
                sub_known = {f.name for f in fields(sub_type)}
                if not isinstance(value, dict) or set(value) - sub_known:
                    raise UserError(f"bad config section {key!r}: {value}")
                defaults = sub_type()
                for name, item in value.items():
                    _check_type(f"{key}.{name}", item, getattr(defaults, name))
                kwargs[key] = sub_type(**value)
            else:
                _check_type(key, value, getattr(cls(), key))
                kwargs[key] = value
        return cls(**kwargs)


def _check_type(dotted: str, value, default) -> None:
    """A setting read from JSON has its default's type (an int where a float is wanted, and a string or
    nothing where the default is None, as for --init)."""
    if default is None:
        wanted = None if value is None or isinstance(value, str) else "a string or null"
    elif isinstance(default, bool | int | float):
        wanted = type_mismatch(value, default)
    else:
        wanted = None if isinstance(value, type(default)) else f"a JSON {type(default).__name__}"
    if wanted:
        raise UserError(f"config setting {dotted} must be {wanted}, got {value!r}")


# settings smtrnn no longer has, with the value that meant "off": a config.json written before they were
# removed still loads when it left them off
RETIRED = {"smt.input_noise": 0.0, "smt.horizon_noise": 0.0, "dmt.whiten": False}


def _without_retired(values: dict) -> dict:
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for dotted, off in RETIRED.items():
        section, name = dotted.split(".")
        if isinstance(values.get(section), dict) and name in values[section]:
            if values[section].pop(name) != off:
                raise UserError(
                    f"this config sets {dotted}, which smtrnn no longer has (it was only ever off by default)"
                )
    return values


# ------------------------------------------------------------------------------------------------
# the options: one list of sections, one name per field

# (section of RunConfig, its type, option prefix): every field becomes --prefix-field-name
SECTIONS: list[tuple[str, type, str]] = [
    ("model", ModelConfig, ""),
    ("train", TrainConfig, ""),
    ("smt", SMTConfig, "smt-"),
    ("dmt", DMTConfig, "dmt-"),
    ("dmt_train", TrainConfig, "dmt-"),
    ("bptt", BPTTConfig, "bptt-"),
]
SECTION_TYPES: dict[str, type] = {name: kind for name, kind, _ in SECTIONS}
# top-level fields that are options (task_options has its own --task-option KEY=VALUE)
TOP_LEVEL = [
    "task",
    "length",
    "method",
    "seed",
    "device",
    "init",
    "eval_batches",
    "length_generalisation",
    "train_length",
]


def option_name(dotted: str) -> str:
    """The command-line option of a field: "smt.horizon" -> "--smt-horizon", "length" -> "--length"."""
    section, _, name = dotted.rpartition(".")
    prefix = next((prefix for key, _, prefix in SECTIONS if key == section), "")
    return "--" + prefix + name.replace("_", "-")


def get_field(config: RunConfig, dotted: str):
    section, _, name = dotted.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def set_field(config: RunConfig, dotted: str, value) -> None:
    """Set "section.field" (or a top-level field) of ``config``; a UserError for a name it does not have."""
    section, _, name = dotted.rpartition(".")
    owner = getattr(config, section, None) if section else config
    if owner is None or section and section not in SECTION_TYPES or name not in {f.name for f in fields(owner)}:
        raise UserError(f"no config field {dotted!r}")
    setattr(owner, name, value)


@cache
def field_help(kind: type) -> dict[str, str]:
    """The comment written beside (or on the lines just above) each field of a dataclass: its help."""
    source = inspect.getsource(kind)
    beside: dict[int, str] = {}  # a comment after code on its line
    alone: dict[int, str] = {}  # a line that is only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (alone if token.line.strip().startswith("#") else beside)[token.start[0]] = text
    helps = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line, above = node.lineno, list[str]()
            while line - 1 - len(above) in alone:
                above.insert(0, alone[line - 1 - len(above)])
            helps[node.target.id] = beside.get(node.end_lineno or line) or " ".join(above)
    return helps


# ------------------------------------------------------------------------------------------------
# options the chosen method or cell does not read: refused, never silently ignored


def changed_fields(config: RunConfig) -> list[str]:
    """Dotted names of the section fields of ``config`` that differ from their defaults."""
    return [name for section in SECTION_TYPES for name in _changed(config, section)]


def _changed(config: RunConfig, section: str) -> list[str]:
    """Dotted names of the fields of ``section`` that differ from their defaults."""
    default = getattr(RunConfig(), section)
    current = getattr(config, section)
    return [
        f"{section}.{item.name}"
        for item in fields(current)
        if getattr(current, item.name) != getattr(default, item.name)
    ]


def _unread(config: RunConfig, names: list[str]) -> list[tuple[str, str]]:
    """(dotted field, message) for each of ``names`` that this run never reads: a section of a method it
    does not run, a teacher setting without a teacher, a cell option of another cell."""
    plan = phases(config)
    sections = {phase.train_section for phase in plan} | {phase.method_section for phase in plan}
    read = {name for phase in plan for name in phase.also_reads}
    teacher = uses_teacher(config)
    found = []
    for dotted in names:
        section, _, name = dotted.rpartition(".")
        if section in ("smt", "dmt", "dmt_train", "bptt") and section not in sections and dotted not in read:
            found.append((dotted, f"{option_name(dotted)} is not read by --method {config.method}"))
        elif section == "model" and name in TEACHER_FIELDS and not teacher:
            found.append((dotted, f"{option_name(dotted)} sets the teacher, which --method {config.method} has not"))
        elif dotted in ("smt.length_grow", "smt.max_length") and config.smt.context:
            found.append((dotted, f"{option_name(dotted)} sets whole sequences, not the crops of windowed SMT"))
        elif dotted == "model.memory_levels" and config.model.cell == "lstm":
            found.append((dotted, f"{option_name(dotted)} is not read by the lstm cell (its c is unbounded)"))
        elif dotted == "model.round_at_run_time" and not config.model.grid_levels():
            found.append((dotted, f"{option_name(dotted)} needs a memory on a grid (--memory-levels 2 or more)"))
        elif section == "model" and name in CELL_OPTIONS and config.model.cell not in CELL_OPTIONS[name]:
            cells = CELL_OPTIONS[name]
            owner = f"{', '.join(cells[:-1])} and {cells[-1]} cells" if len(cells) > 1 else f"{cells[0]} cell"
            message = f"{option_name(dotted)} is read by the {owner}, not by --cell {config.model.cell}"
            found.append((dotted, message))
    return found


def unread_options(config: RunConfig, names: list[str]) -> list[str]:
    """The message of each option of ``names`` (dotted fields the user set) that this run never reads."""
    return [message for _, message in _unread(config, names)]


def with_task_settings(config: RunConfig, given: Collection[str] = ()) -> dict[str, object]:
    """Give ``config`` the settings its task trains best with (``Task.settings``), except those in
    ``given`` (dotted fields the user chose) and those the run does not read; return the ones set. A run
    that starts from another's weights (``init``) takes them too: the run it starts from took the same
    model settings, and a DMT fine-tune of copy trains the cell on the labels as smt+dmt does. A setting
    given as a function takes the run's length (copy's window, the whole string); a task's future window
    is cut to the sequence (copy's 32 tokens on a run of 16)."""
    from smtrnn.tasks import load_task_class

    settings = getattr(load_task_class(config.task), "settings", {})
    # a setting that follows the sequence's length is a function of it (copy's window: the whole string)
    settings = {dotted: value(config.length) if callable(value) else value for dotted, value in settings.items()}
    if "train_length" in settings and not _trains_short(config, settings["train_length"]):
        del settings["train_length"]  # a run no longer than it, or a task that cannot fit it: trained at T
    chosen = _take(config, settings, given)
    if "model.future" in chosen and config.model.future > config.trained_length():
        config.model.future = chosen["model.future"] = config.trained_length()
    return chosen


def _trains_short(config: RunConfig, length: object) -> bool:
    """Whether a task's ``train_length`` setting applies to this run: shorter than T, long enough for one
    example of the task (key-value with more pairs than 16 tokens hold trains at T)."""
    from smtrnn.tasks import make_task

    if not isinstance(length, int) or length >= config.length:
        return False
    task = make_task(config.task, **config.task_options)
    return length >= getattr(task, "min_length", 1)


def with_method_settings(config: RunConfig, given: Collection[str] = ()) -> dict[str, object]:
    """Give ``config`` the settings its method trains with (``methods.METHOD_SETTINGS``: BPTT's memory is
    continuous), except those in ``given`` and those the run does not read; return the ones set."""
    from smtrnn.methods import METHOD_SETTINGS

    return _take(config, METHOD_SETTINGS.get(config.method, {}), given)


def _take(config: RunConfig, settings: dict[str, object], given: Collection[str]) -> dict[str, object]:
    chosen = {}
    for dotted, value in settings.items():
        if dotted not in given and not _unread(config, [dotted]):
            set_field(config, dotted, copy.deepcopy(value))
            chosen[dotted] = value
    return chosen


def reset_unused(config: RunConfig) -> None:
    """Put every field this run never reads back to its default (a study shares one base config across
    methods and cells; each run keeps only what it reads, so its config.json says what mattered)."""
    default = RunConfig()
    for dotted, _ in _unread(config, changed_fields(config)):
        set_field(config, dotted, get_field(default, dotted))


def check_finite(config: RunConfig) -> None:
    """Every float of the config is a finite number (config.json holds no Infinity or NaN)."""
    for section, _, _ in SECTIONS:
        for item in fields(getattr(config, section)):
            value = getattr(getattr(config, section), item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{option_name(section + '.' + item.name)} must be a finite number, got {value}")


# every number of a section is at least 0 (a weight, a count, a step, a rate), these at least this; a
# bound that depends on another setting (heads dividing the width, context and future inside the
# length) is checked where the pair is read
MINIMUM = {
    **{f"model.{name}": 1 for name in ("memory_size", "embed_dim", "readout_hidden", "teacher_width")},
    **{f"model.{name}": 1 for name in ("teacher_layers", "future", "mlp_layers")},
    **{f"{section}.{name}": 1 for section in ("train", "dmt_train") for name in ("batch_size", "log_every")},
    **{f"{section}.checkpoint_every": 1 for section in ("train", "dmt_train")},
    "model.memory_tokens": 1,
    "model.cell_layers": 1,
    "model.cell_heads": 1,
    "model.teacher_heads": 1,
    "smt.horizon": 1,
    "smt.horizon_starts": 1,
    "smt.uniformity_samples": 2,
    "dmt.every": 1,
    "dmt.truncate": 1,
}
# fractions: the learning rate's floor is a share of its peak
MAXIMUM = {"train.min_lr_ratio": 1, "dmt_train.min_lr_ratio": 1}


def check_bounds(config: RunConfig) -> None:
    """Every number of the config's sections within its range (MINIMUM, MAXIMUM, else at least 0): a
    negative clip or weight decay, say, would train without a word (a negative clip turns every update
    into gradient ascent) or fail with a traceback hours into a run."""
    for section, _, _ in SECTIONS:
        for item in fields(getattr(config, section)):
            value, dotted = getattr(getattr(config, section), item.name), f"{section}.{item.name}"
            if isinstance(value, bool) or not isinstance(value, int | float) or item.name == "lr":
                continue  # a learning rate must be above 0, not at 0: TrainConfig.validate says so
            if value < (low := MINIMUM.get(dotted, 0)):
                raise UserError(f"{option_name(dotted)} must be at least {low}, got {value}")
            if dotted in MAXIMUM and value > MAXIMUM[dotted]:
                raise UserError(f"{option_name(dotted)} must be at most {MAXIMUM[dotted]}, got {value}")


def check_learning_rates(config: RunConfig) -> None:
    """A learning rate above 1 is almost surely a typo: AdamW moves every weight by about the learning
    rate at each step, whatever the gradient's scale, so the model is wrecked in a few steps. Checked on
    the command line only: a study may diverge a run on purpose."""
    for section in ("train", "dmt_train"):
        lr, default = getattr(config, section).lr, getattr(RunConfig(), section).lr
        if math.isfinite(lr) and lr > 1:  # not finite: check_finite's to refuse
            raise UserError(
                f"{option_name(section + '.lr')} {lr} is above 1, almost surely a typo: AdamW moves every "
                f"weight by about the learning rate at each step (default {default})"
            )


def check_device(device: str) -> None:
    """A one-line UserError unless this machine has ``device``: cpu, cuda, cuda:N (N below the number of
    GPUs) or mps; asked before anything is built or written."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "PyTorch sees no CUDA device here" if torch.version.cuda else "this PyTorch was built without CUDA"
            raise UserError(f"--device {device}: {why} ({torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: PyTorch sees no MPS device here")
    elif parsed.type != "cpu":
        raise UserError(f"--device {device}: smtrnn runs on cpu, cuda, cuda:N or mps")
