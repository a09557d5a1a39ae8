"""DAgger Memory Training: fine-tune the RNN on its own rolled-out memories (docs/method.md section 5).

The RNN runs on its own from m*_0 (or from a teacher memory m*_s), producing on-policy memories
m^_t; every k-th one is pulled towards the frozen teacher's m*_t. By default the memory is detached
before each supervised update, so each gradient still crosses one cell application: on-policy
states, expert labels, no BPTT. The readout learns on the detached rollout memories.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smtrnn.methods.common import first_prediction_logits, masked_cross_entropy, memory_spread, relative_memory_error
from smtrnn.tasks.base import IGNORE


@dataclass
class DMTConfig:
    c_dyn: float = 1.0  # pull of the rollout memory towards the teacher's
    c_readout: float = 1.0  # the readout on detached rollout memories
    every: int = 1  # k: supervise every k-th memory of the rollout
    rollout: int = 0  # Td: rollout length; 0 = the whole sequence
    start: str = "initial"  # "initial": from the RNN's m_0; "teacher": from m*_s at a random s
    truncate: int = 1  # gradient crosses at most this many cell applications
    # the readout's term on the rollout also trains the cell (through the same ``truncate`` steps): the
    # labels, not only the pull towards the teacher, shape what the cell does on its own memories
    readout_grad: bool = False
    # the readout also matches the frozen teacher's first prediction from m*_t (its next-token
    # distribution, soft labels: the KL divergence from it), weighted; 0 = off
    c_distill: float = 0.0


def dmt_loss(models, batch, config: DMTConfig, step: int = 0):
    teacher, cell = models.teacher, models.rnn.cell
    x, y = batch["x"], batch["y"]
    batch_size, length = x.shape
    steps = min(config.rollout or length, length)
    begin = int(torch.randint(0, length - steps + 1, ()).item()) if config.start == "teacher" else 0
    with torch.no_grad():
        # the pull is relative to the spread of all T memories; without it (c_dyn 0) only the prefixes the
        # rollout reaches are needed, and the causal encoder reads only their tokens (parity: a rollout
        # of 64 steps at T=256 encodes 64)
        reach = begin + steps if config.c_dyn == 0 else length
        expert = teacher.encode(x[:, :reach])  # [B, reach+1, M], frozen labels
        spread = memory_spread(expert[:, 1:])
    if config.start == "teacher":
        memory = expert[:, begin]
        dyn, terms = x.new_zeros((), dtype=torch.float32), 0  # no m_0 to pull towards m*_0
    else:
        memory = cell.initial_memory(batch_size)
        dyn, terms = relative_memory_error(cell.initial, expert[0, 0], spread), 1

    memories = []
    for offset in range(steps):
        t = begin + offset
        if offset % config.truncate == 0:
            memory = memory.detach()
        supervise = (offset + 1) % config.every == 0
        needs_grad = supervise or config.truncate > 1 or config.readout_grad
        with nullcontext() if needs_grad else torch.no_grad():
            # on a grid the rollout carries the rounded memory and the pull acts on the update before
            # rounding: the rounded value's straight-through gradient sees no error within half a level
            memory, update = cell.step_with_update(memory, x[:, t])
        if supervise:
            dyn = dyn + relative_memory_error(update, expert[:, t + 1], spread)
            terms += 1
        memories.append(memory if config.readout_grad else memory.detach())
    dyn = dyn / max(1, terms)  # the mean over the supervised memories (and m_0 when the rollout starts there)
    rollout = torch.stack(memories, 1)
    logits, labels = models.rnn.logits(rollout), y[:, begin : begin + steps]
    readout, accuracy = masked_cross_entropy(logits, labels)
    drift = (rollout.detach() - expert[:, begin + 1 : begin + steps + 1]).pow(2).sum(-1).sqrt().mean()
    loss = config.c_dyn * dyn + config.c_readout * readout
    logged = {"dyn": dyn.detach(), "readout": readout.detach(), "rollout_acc": accuracy, "drift": drift}
    if config.c_distill:
        distill = distillation(teacher, expert[:, begin : begin + steps + 1], logits, labels)
        loss = loss + config.c_distill * distill
        logged["distill"] = distill.detach()
    return loss, logged


def distillation(teacher, memories: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(teacher || RNN) per labelled position, averaged: the teacher's first decoder prediction from
    m*_t (memories [B, T+1, M], from the memory before the first token) against the RNN's logits
    [B, T, C] on its memory after the same token."""
    labelled = labels != IGNORE
    if not labelled.any():
        return logits.sum() * 0.0
    with torch.no_grad():
        target = first_prediction_logits(teacher, memories, labels).log_softmax(-1)
    return F.kl_div(logits[labelled].log_softmax(-1), target, log_target=True, reduction="batchmean")
