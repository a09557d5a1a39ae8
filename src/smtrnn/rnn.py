"""The recurrent network that SMT, DMT and BPTT all train: a cell plus a readout."""

from __future__ import annotations

import torch
from torch import nn

from smtrnn.cells import make_cell


class Readout(nn.Module):
    """g: memory features -> logits over the task's classes (a small MLP)."""

    def __init__(self, features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(features), nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class RNN(nn.Module):
    """m_t = cell.step(m_{t-1}, x_t), p(y_t | x_<=t) = softmax(readout(cell.output(m_t)))."""

    def __init__(
        self,
        cell_name: str,
        vocab_size: int,
        num_classes: int,
        memory_size: int,
        readout_hidden: int = 128,
        levels: int = 0,
        round_at_run_time: bool = False,
        **cell_options,
    ):
        super().__init__()
        self.cell = make_cell(cell_name, vocab_size, memory_size, **cell_options)
        self.cell.levels, self.cell.round_at_run_time = levels, round_at_run_time  # a memory on a grid (cells.py)
        self.readout = Readout(self.cell.output_size, num_classes, readout_hidden)

    def logits(self, memory: torch.Tensor) -> torch.Tensor:
        """Readout logits of full memories [..., M]."""
        return self.readout(self.cell.output(memory))

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None):
        """Run on its own (fused where possible): logits [B, T, C] and the last memory."""
        outputs, last = self.cell(tokens, memory)
        return self.readout(outputs), last
