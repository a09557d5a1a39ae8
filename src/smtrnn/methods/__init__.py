"""Training methods: each a pure loss function ``loss(models, batch, config, step) -> (loss, metrics)``
with its config dataclass, and the table of phases that says what every method is (table.py)."""

from smtrnn.methods.bptt import BPTTConfig, bptt_loss
from smtrnn.methods.dmt import DMTConfig, dmt_loss
from smtrnn.methods.smt import SMTConfig, smt_loss
from smtrnn.methods.table import METHOD_SETTINGS, METHODS, Phase, depths, phases, planned_steps, uses_teacher

__all__ = [
    "METHODS",
    "METHOD_SETTINGS",
    "BPTTConfig",
    "DMTConfig",
    "Phase",
    "SMTConfig",
    "bptt_loss",
    "depths",
    "dmt_loss",
    "phases",
    "planned_steps",
    "smt_loss",
    "uses_teacher",
]
