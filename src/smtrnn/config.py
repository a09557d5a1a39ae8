"""The configuration of one run: ``RunConfig`` (task, method, model, training and method sections) and its
JSON form (config.json of a run directory). Every field is a command-line option (cli.py).

    config = RunConfig(task="retrieval", length=128, method="smt+dmt")
    RunConfig.from_dict(config.to_dict()) == config
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from smtrnn.errors import UserError
from smtrnn.methods import BPTTConfig, DMTConfig, SMTConfig
from smtrnn.models import ModelConfig
from smtrnn.train import TrainConfig

METHODS = ("smt", "dmt", "smt+dmt", "bptt", "tbptt")


def has_teacher(method: str) -> bool:
    """Whether ``method`` trains the teacher (BPTT's is built but never trained)."""
    return method not in ("bptt", "tbptt")


@dataclass
class RunConfig:
    task: str = "retrieval"
    length: int = 64
    method: str = "smt+dmt"
    seed: int = 0
    device: str = "cpu"
    init: str | None = None  # a run directory to start from (``dmt`` fine-tunes an SMT run)
    task_options: dict = field(default_factory=dict)
    eval_batches: int = 8
    length_generalisation: bool = False  # also evaluate at 2T, 4T and 8T (into result.json)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the main phase (smt, bptt, tbptt; dmt alone)
    # DMT: four times SMT's batch, so that the readout sees enough labels on the RNN's own memories
    dmt_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=128, lr=1e-3, warmup=20))
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)

    def validate(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.length < 1:
            raise UserError(f"length must be positive, got {self.length}")
        if self.method == "dmt" and not self.init:
            raise UserError("method dmt fine-tunes an SMT run: give --init DIR")
        if self.model.future > self.length:
            raise UserError(f"future length {self.model.future} is longer than the sequence ({self.length})")
        if self.smt.context < 0:
            raise UserError(f"smt context must be 0 (all prefixes) or positive, got {self.smt.context}")
        if self.smt.context and self.length < self.smt.context + self.model.future - 1:
            raise UserError(
                f"smt context {self.smt.context} with future {self.model.future} needs crops of length >= "
                f"{self.smt.context + self.model.future - 1} (context + future - 1), got {self.length}"
            )
        if self.dmt.every < 1 or self.dmt.truncate < 1:
            raise UserError("dmt every and truncate must be positive")
        if self.dmt.start not in ("initial", "teacher"):
            raise UserError(f"dmt start must be initial or teacher, got {self.dmt.start!r}")
        self.model.validate()
        self.train.validate()
        self.dmt_train.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        nested = SECTIONS
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}")
        kwargs = {}
        for key, value in values.items():
            if key in nested:
                sub_type = nested[key]
                sub_known = {f.name for f in fields(sub_type)}
                if not isinstance(value, dict) or set(value) - sub_known:
                    raise UserError(f"bad config section {key!r}: {value}")
                kwargs[key] = sub_type(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


# the nested sections of a RunConfig and their types (config.json stores each as a dict)
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "dmt_train": TrainConfig,
    "smt": SMTConfig,
    "dmt": DMTConfig,
    "bptt": BPTTConfig,
}
