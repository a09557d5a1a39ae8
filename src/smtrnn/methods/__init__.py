"""Training methods: each a pure loss function ``loss(models, batch, config) -> (loss, metrics)``."""

from smtrnn.methods.bptt import BPTTConfig, bptt_loss
from smtrnn.methods.dmt import DMTConfig, dmt_loss
from smtrnn.methods.smt import SMTConfig, smt_loss

__all__ = ["BPTTConfig", "DMTConfig", "SMTConfig", "bptt_loss", "dmt_loss", "smt_loss"]
