"""What each method is: a list of phases, each carrying every fact about itself. Everything else asks
the phases (how many steps a run plans, its gradient depth, whether it has a teacher) instead of
re-deriving it from the method's name.

    for phase in phases(config):        # config: a RunConfig
        phase.name, phase.loss, phase.train.steps, phase.gradient_depth, phase.trains_teacher
    depths(config)                      # {"sequential_depth": 16, "forward_depth": {"smt": 16, "dmt": 64}}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtrnn.methods.bptt import BPTTConfig, bptt_loss
from smtrnn.methods.dmt import dmt_loss
from smtrnn.methods.smt import smt_loss, teacher_loss

if TYPE_CHECKING:
    from smtrnn.config import RunConfig

METHODS = ("smt", "dmt", "smt+dmt", "bptt", "tbptt", "teacher")
TBPTT_WINDOW = 16  # tbptt's gradient window when --bptt-truncate is 0
# settings a method trains with where its user chose nothing else (config.with_method_settings). BPTT's
# memory is continuous: the grid is SMT's device (labels a cell can reach exactly, a rollout that cannot
# drift by less than a level), and BPTT on it is weaker (copy T=16: 0.747 against 1.000 without it) and
# diverges on the images (docs/teacher.md, docs/realdata.md)
METHOD_SETTINGS: dict[str, dict[str, object]] = {
    "bptt": {"model.memory_levels": 0},
    "tbptt": {"model.memory_levels": 0},
}


@dataclass(frozen=True)
class Phase:
    """One phase of a method: the loss it minimises, with which sections of the RunConfig, over which
    networks, on which tokens, and how deep its computation runs."""

    name: str  # smt | dmt | bptt | tbptt | teacher: also the checkpoints' and metrics' phase name
    loss: Callable  # loss(models, batch, method_config, step=optimiser step) -> (loss, metrics)
    method_config: Any
    method_section: str  # the RunConfig section of its options: "smt", "dmt" or "bptt"
    train_section: str  # the RunConfig field holding its TrainConfig: "train" or "dmt_train"
    trains_teacher: bool  # the teacher learns in this phase (SMT)
    uses_teacher: bool  # the phase reads a teacher (SMT trains it, DMT reads a frozen one)
    crop: int  # tokens of each sampled sequence it trains on; 0 = all
    gradient_depth: int  # cell applications in series on one step's gradient path
    forward_depth: int  # cell applications in series in one step's forward pass
    also_reads: tuple[str, ...] = ()  # options of other sections it reads (dotted names)
    trains_rnn: bool = True  # the RNN learns in this phase (all but the teacher's own phase)

    def train(self, config: RunConfig):
        """Its TrainConfig (steps, batch, learning rate...)."""
        return getattr(config, self.train_section)

    def parameters(self, models) -> list:
        """What its optimiser moves: everything in SMT, the teacher alone in its own phase, the RNN otherwise."""
        if not self.trains_rnn:
            return list(models.teacher.parameters())
        return list(models.parameters() if self.trains_teacher else models.rnn.parameters())


def _smt(config: RunConfig) -> Phase:
    length = config.smt.context or config.trained_length()  # windowed: the encoder and the cell see the first Tc tokens
    horizon = min(max(1, config.smt.horizon), length)
    burnin = min(config.smt.horizon_burnin, length - horizon)
    return Phase("smt", smt_loss, config.smt, "smt", "train", True, True, 0, horizon, burnin + horizon)


def _dmt(config: RunConfig, train_section: str) -> Phase:
    # a windowed SMT teacher (context Tc) never encoded a prefix longer than Tc, so its memories further
    # into a crop would be untrained labels: DMT rolls out within the first Tc tokens of each crop
    crop = config.smt.context
    length = config.trained_length()
    rollout = min(config.dmt.rollout or crop or length, crop or length)
    depth = min(config.dmt.truncate, rollout)
    return Phase("dmt", dmt_loss, config.dmt, "dmt", train_section, False, True, crop, depth, rollout, ("smt.context",))


def _bptt(config: RunConfig, name: str, window: int) -> Phase:
    length = config.trained_length()
    depth = min(window, length) if window else length
    return Phase(name, bptt_loss, BPTTConfig(truncate=window), "bptt", "train", False, False, 0, depth, length)


def _teacher(config: RunConfig) -> Phase:
    # the teacher alone, on its predictive and uniformity terms: how fast it learns a task, beside BPTT
    return Phase("teacher", teacher_loss, config.smt, "smt", "train", True, True, 0, 0, 0, trains_rnn=False)


def phases(config: RunConfig) -> list[Phase]:
    """The phases of ``config.method``, in order: the one table of what each method is."""
    table = {
        "smt": lambda: [_smt(config)],
        "dmt": lambda: [_dmt(config, "train")],  # fine-tunes the SMT run named by --init
        "smt+dmt": lambda: [_smt(config), _dmt(config, "dmt_train")],
        "bptt": lambda: [_bptt(config, "bptt", config.bptt.truncate)],
        "tbptt": lambda: [_bptt(config, "tbptt", config.bptt.truncate or TBPTT_WINDOW)],
        "teacher": lambda: [_teacher(config)],
    }
    return table[config.method]()


def uses_teacher(config: RunConfig) -> bool:
    """Whether the run has a teacher: one it trains (SMT) or one it reads (DMT after --init)."""
    return any(phase.uses_teacher for phase in phases(config))


def planned_steps(config: RunConfig) -> int:
    """Optimiser steps of the whole run, every phase together."""
    return sum(phase.train(config).steps for phase in phases(config))


def depths(config: RunConfig) -> dict:
    """Cell applications in series in one training step: on the gradient path (the deepest phase) and
    in the forward pass of each phase."""
    plan = phases(config)
    return {
        "sequential_depth": max(phase.gradient_depth for phase in plan),
        "forward_depth": {phase.name: phase.forward_depth for phase in plan},
    }
