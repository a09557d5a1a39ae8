"""Supervised Memory Training: a time-parallel loss with an O(1) gradient path (docs/method.md section 3).

One call applies the cell ONCE, to all (m*_t, x_{t+1}) pairs of the batch together: no loop over
time, and no gradient path through more than one cell application.

Two modes (docs/method.md section 3): all-prefix (``context = 0``), every memory of every sequence; and windowed
(``context = Tc``) for crops of a long stream. The encoder is causal, so one pass over the first Tc
tokens of a crop gives the memory of each of their prefixes: the encoder, the dynamics and the readout
see x_1..x_Tc only, while the decoder's true futures come from the rest of the crop (a crop of length
Tc + Tf - 1 gives every memory m*_0..m*_Tc a full window of Tf targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smtrnn.methods.common import masked_cross_entropy, memory_spread, relative_memory_error, uniformity
from smtrnn.tasks.base import IGNORE


@dataclass
class SMTConfig:
    c_pred: float = 1.0  # predictive-state loss of the teacher decoder
    c_dyn: float = 1.0  # one-step memory transition loss
    c_unif: float = 0.01  # uniformity (anti-collapse) loss
    c_readout: float = 1.0  # the RNN's readout on detached memories
    gamma: float = 1.0  # weight gamma^k of the k-th future prediction
    decoder_positions: int = 16  # memories per sequence sent to the decoder; 0 = all
    detach_target: bool = False  # stop the dynamics gradient reaching the label m*_{t+1}
    dyn_warmup: int = 300  # ramp c_dyn linearly from 0 over this many steps: the teacher learns first
    # for this many steps the dynamics and horizon terms train the cell only: their pull on the teacher
    # (towards memories easy to carry forward) would otherwise stop it learning long lookups (T >= 256)
    teacher_delay: int = 500
    # False: the dynamics terms never move the teacher, whatever the step (copy: a teacher that must hold
    # a whole string loses it to memories one step can follow once the pull arrives, docs/results.md)
    teacher_pull: bool = True
    uniformity_samples: int = 512  # memory tokens the uniformity loss compares (a random subset)
    context: int = 0  # Tc: windowed mode, the encoder sees the first Tc tokens of a crop; 0 = all-prefix
    # horizon (K > 1): roll the cell K steps from teacher memories and supervise every step (see horizon_loss)
    horizon: int = 16  # K: cell applications in series on the horizon's gradient path; 1 = one-step term only
    horizon_starts: int = 8  # S: start positions per sequence (the first one is the empty prefix, m*_0)
    # uniform: the other starts anywhere; changes: drawn in proportion to how much the teacher's memory
    # changed on arriving there (plus its mean change), so that rollouts start right after a stored write
    horizon_starts_at: str = "uniform"
    horizon_grow: int = 1000  # grow K linearly from 1 to ``horizon`` over this many steps; 0 = K from the start
    c_horizon: float = 1.0  # weight of the horizon term (it follows c_dyn's warm-up ramp)
    horizon_decay: float = 1.0  # weight decay**(k-1) of the k-th rolled step's error (1: all steps alike)
    horizon_detach: bool = True  # labels m*_{s+k} detached: the horizon trains the cell only
    horizon_burnin: int = 0  # free-running cell steps (no gradient, no loss) before the K supervised ones
    # the readout's one-step term f(m*_t, x_{t+1}) -> y_{t+1} also trains the cell (one application: the
    # gradient path stays O(1)): the labels, not only the memory's squared error, shape the dynamics
    readout_grad: bool = False
    # weight of the readout's term on the horizon's rolled memories: the labels train the cell through
    # up to K applications from a teacher memory (the gradient path stays K; 0 = off)
    c_horizon_readout: float = 0.0
    # a memory on a grid: the dynamics and horizon errors of the cell's rounded memory (straight-through,
    # blind within half a level) or of its update before rounding (a margin to the grid cell's edge);
    # the horizon's rollouts carry the rounded memory either way
    grid_error: str = "rounded"  # rounded | update
    # a length curriculum: SMT's sequences grow linearly from a quarter of T to T over this many steps
    # (0: the whole length from the start); a teacher finds a lookup among fewer tokens first, and keeps
    # it as they grow (windowed SMT's crops keep their length)
    length_grow: int = 1000
    # the curriculum's first length: a quarter of T, but at most this many tokens (0: a quarter of T
    # however long T is); up to T=512 the cap does not bind
    length_start: int = 128
    # SMT's sequences are never longer than this many tokens (0: T), the curriculum's included; DMT and
    # the evaluation still see T. For a task whose teacher can compute its memory over a short prefix
    # but not a long one (parity counts 16 bits, not 64): DMT carries the RNN of that teacher to T
    max_length: int = 0


def future_windows(x: torch.Tensor, y: torch.Tensor, future: int):
    """For every memory index t = 0..T: inputs x_{t+1}..x_{t+F} [B, T+1, F] and targets
    y_t..y_{t+F} [B, T+1, F+1] (F = future - 1), padded with -1 targets past the end."""
    steps = future - 1
    inputs = F.pad(x, (0, steps), value=0).unfold(1, steps, 1) if steps else x.new_zeros(x.shape[0], x.shape[1] + 1, 0)
    targets = F.pad(y, (1, steps), value=IGNORE).unfold(1, steps + 1, 1)
    return inputs[:, : x.shape[1] + 1], targets


def choose_positions(targets: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` memory indices per sequence, drawn among those with a label in their window."""
    useful = (targets != IGNORE).any(-1).float()
    useful = torch.where(useful.sum(-1, keepdim=True) > 0, useful, torch.ones_like(useful))
    return torch.multinomial(useful, count, replacement=useful.shape[1] < count)


def labelled_rows(labelled: torch.Tensor, *tensors: torch.Tensor):
    """``tensors`` [N, ...] cut to the rows where ``labelled`` [N] holds, when that drops at least a
    quarter of them. Exact: an unlabelled row adds nothing to a masked loss or accuracy, so only the
    work changes (most of the decoder's and readout's on sparse-label tasks). Keeps one row if none is
    labelled, so the loss keeps its zero-valued gradient path."""
    count = int(labelled.sum())  # a host sync on GPU: the cut has a data-dependent size
    if count > 0.75 * labelled.numel():
        return tensors
    keep = labelled.nonzero().squeeze(-1) if count else labelled.new_zeros(1, dtype=torch.long)
    return tuple(tensor[keep] for tensor in tensors)


def predictive_loss(teacher, memories, x, y, config: SMTConfig):
    """Cross-entropy of the decoder's predictions of y_t..y_{t+Tf-1} from m*_t alone. ``memories``
    may cover only the first prefixes of x (windowed mode): their futures still come from all of x."""
    inputs, targets = (window[:, : memories.shape[1]] for window in future_windows(x, y, teacher.config.future))
    if config.decoder_positions and config.decoder_positions < memories.shape[1]:
        index = choose_positions(targets, config.decoder_positions)
        pick = lambda tensor: tensor.gather(
            1, index.view(*index.shape, *[1] * (tensor.dim() - 2)).expand(-1, -1, *tensor.shape[2:])
        )
        memories, inputs, targets = pick(memories), pick(inputs), pick(targets)
    memories, inputs, targets = (tensor.flatten(0, 1) for tensor in (memories, inputs, targets))  # Tf=1: no inputs
    memories, inputs, targets = labelled_rows((targets != IGNORE).any(-1), memories, inputs, targets)
    logits = teacher.decode(memories, inputs)
    weights = config.gamma ** torch.arange(targets.shape[-1], device=x.device, dtype=torch.float32)
    loss, _ = masked_cross_entropy(logits, targets, weights.expand_as(targets))
    first = targets[:, 0]  # accuracy of y_t from m*_t alone (no second cross-entropy just for a metric)
    correct = (logits[:, 0].argmax(-1) == first) & (first != IGNORE)
    return loss, correct.sum().float() / (first != IGNORE).sum().clamp(min=1)


def sequence_length(config: SMTConfig, length: int, step: int, shortest: int = 1) -> int:
    """The length of SMT's sequences at optimiser step ``step``: T (at most ``max_length``), or on the
    length curriculum a quarter of that (at most ``length_start``, at least ``shortest``) grown
    linearly to it over ``length_grow`` steps."""
    if config.max_length:
        length = min(length, max(shortest, config.max_length))
    if not config.length_grow or step >= config.length_grow:
        return length
    start = length // 4 if not config.length_start else min(length // 4, config.length_start)
    start = max(shortest, start)
    return min(length, start + (length - start) * step // config.length_grow)


def horizon_length(config: SMTConfig, step: int) -> int:
    """K at optimiser step ``step``: ``config.horizon``, or grown linearly from 1 over ``horizon_grow`` steps."""
    if config.horizon <= 1 or not config.horizon_grow:
        return max(1, config.horizon)
    return 1 + int((config.horizon - 1) * min(1.0, step / config.horizon_grow))


def horizon_starts(
    batch_size: int, length: int, steps: int, count: int, device, memories: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, S] start positions s in 0..T-K (memory m*_s, inputs x_{s+1}..x_{s+K}); the first of every
    sequence is 0, the empty prefix, where the RNN's own rollouts begin. Given the teacher's
    ``memories`` [B, T+1, M], the others are drawn with probability proportional to
    ||m*_s - m*_{s-1}||^2 plus its mean over the sequence: mostly right after a write, sometimes anywhere."""
    if memories is None:
        starts = torch.randint(0, length - steps + 1, (batch_size, count), device=device)
    else:
        change = F.pad((memories[:, 1:] - memories[:, :-1]).pow(2).sum(-1), (1, 0))[:, : length - steps + 1]
        weights = change + change.mean(-1, keepdim=True) + 1e-12
        starts = torch.multinomial(weights, count, replacement=True)
    starts[:, 0] = 0
    return starts


def rollout(
    cell, memories: torch.Tensor, x: torch.Tensor, starts: torch.Tensor, steps: int, burnin: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K-step rollouts of the cell from ``memories[b, s]`` for each start s in ``starts`` [B, S]: the cell
    reads x_{s+1}..x_{s+W+K} (0-based ``x[b, s..s+W+K-1]``), the first W (``burnin``) without a gradient.
    Returns the input positions [B, S, K] of the K supervised steps and the cell's memories and updates
    after each [B, S, K, M]. All B*S rollouts run as one batch: a loop over the K steps, never over T,
    and a gradient path of at most K cell applications."""
    batch_size, count = starts.shape
    size = memories.shape[-1]
    index = starts.unsqueeze(-1) + torch.arange(burnin + steps, device=starts.device)  # [B, S, W+K]
    tokens = x.gather(1, index.reshape(batch_size, -1)).reshape(batch_size, count, burnin + steps)
    memory = memories.gather(1, starts.unsqueeze(-1).expand(-1, -1, size))
    with torch.no_grad():  # burn-in: the RNN runs on its own, so the supervised steps start off the teacher's path
        for k in range(burnin):
            memory = cell.step(memory, tokens[..., k])
    rolled, updates = [], []
    for k in range(burnin, burnin + steps):
        memory, update = cell.step_with_update(memory, tokens[..., k])
        rolled.append(memory)
        updates.append(update)
    return index[..., burnin:], torch.stack(rolled, 2), torch.stack(updates, 2)


def rolled_error(
    compared: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, spread: torch.Tensor, decay: float = 1.0
) -> torch.Tensor:
    """Relative error of rolled memories (or updates) ``compared`` [B, S, K, M] against ``labels[b, i+1]``
    ([B, T+1, M], the empty prefix first) for each input position i of ``index`` [B, S, K], the k-th
    step weighted ``decay**(k-1)``."""
    batch_size, count, steps, size = compared.shape
    at = (index + 1).reshape(batch_size, -1, 1).expand(-1, -1, size)
    targets = labels.gather(1, at).reshape(batch_size, count, steps, size)
    total = compared.new_zeros(())
    for k in range(steps):
        total = total + decay**k * relative_memory_error(compared[:, :, k], targets[:, :, k], spread)
    return total / sum(decay**k for k in range(steps))


def rollout_error(
    cell,
    memories: torch.Tensor,
    x: torch.Tensor,
    starts: torch.Tensor,
    steps: int,
    spread: torch.Tensor,
    labels: torch.Tensor | None = None,
    decay: float = 1.0,
    burnin: int = 0,
    error_of: str = "rounded",
) -> torch.Tensor:
    """Relative memory error of K-step rollouts of the cell, averaged over starts and steps.

    From ``memories[b, s]`` for each start s in ``starts`` [B, S], the cell reads x_{s+1}..x_{s+K} (0-based
    ``x[b, s..s+K-1]``) and its k-th memory is compared with ``labels[b, s+k]`` (``labels`` defaults to
    ``memories``: [B, T+1, M], the empty prefix first), weighted ``decay**(k-1)``. With K = 1 and every
    start, this is the one-step dynamics term."""
    index, rolled, updates = rollout(cell, memories, x, starts, steps, burnin)
    compared = updates if error_of == "update" else rolled
    return rolled_error(compared, memories if labels is None else labels, index, spread, decay)


def rolled_readout(rnn, rolled: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    """Cross-entropy and accuracy of the readout on rolled memories [B, S, K, M] against the labels
    y [B, T] at their input positions ``index`` [B, S, K]: the labels train the cell through the
    rollout (at most K cell applications)."""
    labels = y.gather(1, index.reshape(y.shape[0], -1)).reshape(-1)
    memories, labels = labelled_rows(labels != IGNORE, rolled.reshape(-1, rolled.shape[-1]), labels)
    return masked_cross_entropy(rnn.logits(memories), labels)


def smt_loss(models, batch, config: SMTConfig, step: int = 0):
    teacher, rnn = models.teacher, models.rnn
    crop_x, crop_y = batch["x"], batch["y"]
    # windowed: everything but the decoder's futures stays within the first Tc tokens of the crop
    x, y = (crop_x[:, : config.context], crop_y[:, : config.context]) if config.context else (crop_x, crop_y)
    memories = teacher.encode(x)  # [B, T+1, M]: every prefix, the empty one first
    pred, teacher_accuracy = predictive_loss(teacher, memories, crop_x, crop_y, config)

    pulled = config.teacher_pull and step >= config.teacher_delay
    joint = memories if pulled else memories.detach()  # what the dynamics may move
    target = joint[:, 1:].detach() if config.detach_target else joint[:, 1:]
    source = joint[:, :-1]
    stepped, update = rnn.cell.step_with_update(source, x)  # the only cell application: all B*T pairs
    predicted = update if config.grid_error == "update" else stepped
    # the RNN starts from its own learned m_0, which must equal the teacher's empty memory m*_0
    spread = memory_spread(target)  # part of the label side: detached with it
    start = relative_memory_error(rnn.cell.initial, memories[0, 0].detach(), spread.detach())
    steps = x.shape[1]
    dyn = (relative_memory_error(predicted, target, spread) * steps + start) / (steps + 1)
    horizon = min(horizon_length(config, step), steps)
    burnin = min(config.horizon_burnin, steps - horizon)
    if horizon > 1 or burnin:  # K-step rollouts from (detached) teacher memories
        changes = memories.detach() if config.horizon_starts_at == "changes" else None
        starts = horizon_starts(x.shape[0], steps, burnin + horizon, config.horizon_starts, x.device, changes)
        labels = memories.detach() if config.horizon_detach else joint
        index, memories_k, updates_k = rollout(rnn.cell, memories.detach(), x, starts, horizon, burnin)
        compared = updates_k if config.grid_error == "update" else memories_k
        rolled = rolled_error(compared, labels, index, spread.detach(), config.horizon_decay)
        if config.c_horizon_readout:
            read_rolled, _ = rolled_readout(rnn, memories_k, y, index)
        else:
            read_rolled = dyn.new_zeros(())
    else:
        rolled = read_rolled = dyn.new_zeros(())

    unif = uniformity(memories[:, 1:], rnn.cell.memory_tokens, config.uniformity_samples)
    flat = lambda memory: memory.detach().reshape(-1, memory.shape[-1])
    step_rows = stepped.reshape(-1, stepped.shape[-1]) if config.readout_grad else flat(stepped)
    teacher_memories, step_memories, labels = labelled_rows(
        (y != IGNORE).reshape(-1), flat(memories[:, 1:]), step_rows, y.reshape(-1)
    )
    read_teacher, readout_accuracy = masked_cross_entropy(rnn.logits(teacher_memories), labels)
    read_step, one_step_accuracy = masked_cross_entropy(rnn.logits(step_memories), labels)
    readout = 0.5 * (read_teacher + read_step)

    ramp = min(1.0, (step + 1) / config.dyn_warmup) if config.dyn_warmup else 1.0
    loss = (
        config.c_pred * pred
        + ramp * (config.c_dyn * dyn + config.c_horizon * rolled + config.c_horizon_readout * read_rolled)
        + config.c_unif * unif
        + config.c_readout * readout
    )
    metrics = {
        "pred": pred,
        "dyn": dyn,
        "horizon": rolled,
        "horizon_readout": read_rolled,
        "unif": unif,
        "readout": readout,
        "teacher_acc": teacher_accuracy,
        "readout_acc": readout_accuracy,
        "one_step_acc": one_step_accuracy,
    }
    return loss, {name: value.detach() for name, value in metrics.items()}


def teacher_loss(models, batch, config: SMTConfig, step: int = 0):
    """The teacher alone: its predictive-state loss and the uniformity term, nothing of the RNN (the
    ``teacher`` method: how fast a teacher learns a task, to set beside BPTT's RNN)."""
    x = batch["x"][:, : config.context] if config.context else batch["x"]
    memories = models.teacher.encode(x)
    pred, accuracy = predictive_loss(models.teacher, memories, batch["x"], batch["y"], config)
    unif = uniformity(memories[:, 1:], models.rnn.cell.memory_tokens, config.uniformity_samples)
    loss = config.c_pred * pred + config.c_unif * unif
    return loss, {"pred": pred.detach(), "unif": unif.detach(), "teacher_acc": accuracy}
