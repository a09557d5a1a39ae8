"""Backpropagation through time, full or truncated (docs/method.md section 6): the baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smtrnn.methods.common import masked_cross_entropy


@dataclass
class BPTTConfig:
    truncate: int = 0  # 0: full BPTT; k: gradient windows of k steps, state carried detached


def bptt_loss(models, batch, config: BPTTConfig, step: int = 0):
    rnn = models.rnn
    x, y = batch["x"], batch["y"]
    if not config.truncate or config.truncate >= x.shape[1]:
        logits, _ = rnn(x)  # fused nn.RNN / nn.GRU / nn.LSTM where the cell has one
    else:
        memory, pieces = None, []
        for begin in range(0, x.shape[1], config.truncate):
            window_logits, memory = rnn(x[:, begin : begin + config.truncate], memory)
            memory = memory.detach()
            pieces.append(window_logits)
        logits = torch.cat(pieces, 1)
    loss, accuracy = masked_cross_entropy(logits, y)
    return loss, {"accuracy": accuracy}
