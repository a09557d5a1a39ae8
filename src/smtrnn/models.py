"""The networks of one run: the RNN that is the product, and the teacher that SMT trains with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from smtrnn.cells import CELLS
from smtrnn.errors import UserError
from smtrnn.rnn import RNN
from smtrnn.teacher import POSITIONS, Teacher, TeacherConfig


@dataclass
class ModelConfig:
    cell: str = "tanh"  # the RNN's cell
    memory_size: int = 64  # M, the size of the RNN's memory (and of the teacher's)
    embed_dim: int = 32  # token embedding width of the cell (the transformer cell's is M / memory tokens)
    memory_tokens: int = 4  # transformer cell: the memory is this many tokens of M / K each
    cell_layers: int = 2  # transformer cell: layers
    cell_heads: int = 2  # transformer cell: attention heads
    mlp_layers: int = 1  # mlp cell: hidden layers of its update MLP (GELU after each)
    readout_hidden: int = 128  # hidden width of the readout MLP (memory -> logits)
    teacher_width: int = 64  # Transformer width of the teacher's encoder and decoder
    teacher_layers: int = 2  # teacher encoder layers
    teacher_decoder_layers: int = 1  # teacher decoder layers
    teacher_heads: int = 4  # teacher attention heads
    future: int = 16  # Tf: the decoder predicts y_t .. y_{t+Tf-1} from the memory m*_t alone
    # none: the encoder knows order only from its causal mask, so its memories depend on the prefix, not on
    # the absolute time; an RNN (time-invariant) follows them far more easily (docs/horizon.md)
    teacher_positions: str = "none"  # none | sinusoid | rotary | alibi
    # a memory on a grid: every memory the teacher writes, and every memory the cell writes while
    # training, is rounded to this many values per unit (straight-through); 0 = continuous; the lstm
    # cell, whose c is unbounded, is always continuous; bptt and tbptt train with 0 unless given
    memory_levels: int = 5
    round_at_run_time: bool = True  # on a grid, the trained cell also rounds when it runs alone

    def grid_levels(self) -> int:
        """The levels of the memory grid this model has: ``memory_levels``, 0 for the lstm cell."""
        return 0 if self.cell == "lstm" else self.memory_levels

    def validate(self, teacher: bool = True):
        """Refuse sizes the networks cannot be built with (``teacher``: also the teacher's settings)."""
        if self.cell not in CELLS:
            raise UserError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        names = ("memory_size", "embed_dim", "readout_hidden") + (
            ("teacher_width", "teacher_layers", "future") if teacher else ()
        )
        for name in names:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if teacher and self.teacher_positions not in POSITIONS:
            raise UserError(f"teacher positions must be one of {', '.join(POSITIONS)}, got {self.teacher_positions!r}")
        if self.memory_levels == 1 or self.memory_levels < 0:
            raise UserError(f"memory levels must be 0 (continuous) or at least 2, got {self.memory_levels}")
        if teacher and self.teacher_width % self.teacher_heads:
            raise UserError(
                f"teacher width {self.teacher_width} is not divisible by teacher heads {self.teacher_heads}"
            )


# the fields only the teacher reads (a method without a teacher refuses them), and the cell options that
# only some cells read (the others refuse them): {field: cells that read it}
TEACHER_FIELDS = (
    "teacher_width",
    "teacher_layers",
    "teacher_decoder_layers",
    "teacher_heads",
    "future",
    "teacher_positions",
)
CELL_OPTIONS = {
    "embed_dim": ("tanh", "gru", "lstm", "mlp"),
    "memory_tokens": ("transformer",),
    "cell_layers": ("transformer",),
    "cell_heads": ("transformer",),
    "mlp_layers": ("mlp",),
}


def cell_options(config: ModelConfig) -> dict:
    """The keyword arguments of ``config.cell``'s constructor besides vocabulary and memory size."""
    names = {
        "memory_tokens": "memory_tokens",
        "cell_layers": "layers",
        "cell_heads": "heads",
        "embed_dim": "embed_dim",
        "mlp_layers": "layers",
    }
    return {names[name]: getattr(config, name) for name, cells in CELL_OPTIONS.items() if config.cell in cells}


def build_rnn(config: ModelConfig, vocab_size: int, num_classes: int) -> RNN:
    """The RNN (cell + readout) that ``config`` describes."""
    return RNN(
        config.cell,
        vocab_size,
        num_classes,
        config.memory_size,
        config.readout_hidden,
        config.grid_levels(),
        config.round_at_run_time,
        **cell_options(config),
    )


# a model of a few thousand parameters for smoke presets and tests (checks machinery, never a result)
TINY_SIZES = dict(
    memory_size=8, embed_dim=4, readout_hidden=8, teacher_width=8, teacher_layers=1, teacher_heads=2, future=2
)
TINY_TRANSFORMER_CELL = dict(memory_tokens=2, cell_layers=1)  # replaces embed_dim for the transformer cell


def tiny_model(cell: str = "tanh", **overrides) -> ModelConfig:
    """A tiny ModelConfig for ``cell``: only the options that cell reads are set away from the defaults."""
    sizes = dict(TINY_SIZES)
    if cell == "transformer":
        del sizes["embed_dim"]
        sizes.update(TINY_TRANSFORMER_CELL)
    return ModelConfig(cell=cell, **{**sizes, **overrides})


class Models(nn.Module):
    """``rnn`` (cell + readout) and ``teacher``; methods read what they need from here."""

    def __init__(self, config: ModelConfig, vocab_size: int, num_classes: int):
        super().__init__()
        config.validate()
        self.config = config
        self.rnn = build_rnn(config, vocab_size, num_classes)
        cell = self.rnn.cell
        teacher_config = TeacherConfig(
            width=config.teacher_width,
            layers=config.teacher_layers,
            decoder_layers=config.teacher_decoder_layers,
            heads=config.teacher_heads,
            future=config.future,
            positions=config.teacher_positions,
        )
        self.teacher = Teacher(
            vocab_size, num_classes, config.memory_size, cell.memory_space, cell.memory_tokens, teacher_config
        )
        self.teacher.levels = config.grid_levels()

    @torch.no_grad()
    def hand_off_initial_memory(self) -> None:
        """Set the RNN's initial memory to the teacher's memory of the empty prefix, m*_0.

        SMT also regresses m_0 onto m*_0, but a single vector moved by AdamW travels at most about
        one learning rate per step, too slow to follow a teacher that is still learning; copying it
        when SMT ends makes the RNN start exactly where the teacher's memories begin."""
        device = self.rnn.cell.initial.device
        empty = torch.zeros(1, 0, dtype=torch.long, device=device)
        self.rnn.cell.initial.copy_(self.teacher.encode(empty)[0, 0])

    def describe(self) -> dict:
        count = lambda module: sum(p.numel() for p in module.parameters())
        return {"rnn_parameters": count(self.rnn), "teacher_parameters": count(self.teacher), **asdict(self.config)}
