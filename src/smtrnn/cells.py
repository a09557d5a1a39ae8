"""Recurrent cells behind one interface: memory_{t} = cell.step(memory_{t-1}, token_t).

Every cell owns its token embedding and its learned initial memory, declares its memory space
(``project`` maps any real vector into the set of memories the cell can output, so a teacher's
memory head can always produce a reachable label) and offers:

- ``step(memory, token)`` over any leading batch shape: SMT applies it once to all B*T pairs;
- ``output(memory)``: what the readout sees (the memory itself, or h of an LSTM's [h, c]);
- ``forward(tokens, memory=None) -> (outputs[B, T, output_size], last[B, M])``: the sequential
  path, fused with nn.RNN / nn.GRU / nn.LSTM where PyTorch has a kernel, equal to the step loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smtrnn.errors import UserError


def rms_normalize(memory: torch.Tensor, tokens: int, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise each of ``tokens`` equal chunks of the last dimension (no gain)."""
    shape = memory.shape
    chunks = memory.reshape(*shape[:-1], tokens, shape[-1] // tokens)
    chunks = chunks * torch.rsqrt(chunks.pow(2).mean(-1, keepdim=True) + eps)
    return chunks.reshape(shape)


def round_to_grid(values: torch.Tensor, levels: int) -> torch.Tensor:
    """Round every element of ``values`` (in [-1, 1]) to the nearest of ``levels`` evenly spaced values
    from -1 to 1 (finite scalar quantisation), with a straight-through gradient: the value is rounded,
    the gradient is that of the identity."""
    half = (levels - 1) / 2
    rounded = torch.round((values.clamp(-1, 1) + 1) * half) / half - 1
    return values + (rounded - values).detach()


def on_grid(memory: torch.Tensor, space: str, levels: int, tokens: int = 1) -> torch.Tensor:
    """A memory of ``space`` moved onto its grid of ``levels`` values per unit: tanh memories are rounded
    as they are; rms memories are bounded by tanh, rounded, then normalised again (the grid lies
    before the normalisation)."""
    if space == "tanh":
        return round_to_grid(memory, levels)
    if space == "rms":
        return rms_normalize(round_to_grid(torch.tanh(memory), levels), tokens)
    raise UserError(f"a memory on a grid needs a bounded memory space (tanh or rms), not {space!r}")


def project_memory(raw: torch.Tensor, space: str, tokens: int = 1, levels: int = 0) -> torch.Tensor:
    """Map unconstrained reals onto a memory space: what a cell of that space can output; with
    ``levels``, onto that space's grid (see ``on_grid``)."""
    if levels:
        bounded = torch.tanh(raw)
        if space == "tanh":
            return round_to_grid(bounded, levels)
        if space == "rms":
            return rms_normalize(round_to_grid(bounded, levels), tokens)
        return on_grid(raw, space, levels, tokens)  # refuses the unbounded spaces
    if space == "tanh":
        return torch.tanh(raw)
    if space == "rms":
        return rms_normalize(raw, tokens)
    if space == "lstm":  # [h, c]: h = o * tanh(c) lies in (-1, 1), c is unbounded
        h, c = raw.chunk(2, -1)
        return torch.cat([torch.tanh(h), c], -1)
    raise ValueError(f"unknown memory space {space!r}")


class Cell(nn.Module):
    """Base class: subclasses implement ``update`` (the map (memory, token) -> next memory) and set
    ``memory_space``; ``step`` is ``update`` followed, for a memory on a grid, by the rounding;
    ``forward`` loops over time."""

    memory_space = "real"
    memory_tokens = 1  # how many tokens the memory splits into (for the uniformity loss)
    levels = 0  # a memory on a grid of this many values per unit (0: continuous); see ``rounds``
    round_at_run_time = False  # round in eval mode too (otherwise only while training)

    def __init__(self, vocab_size: int, memory_size: int, embed_dim: int):
        super().__init__()
        if memory_size < 1:
            raise UserError(f"memory size must be positive, got {memory_size}")
        self.vocab_size, self.memory_size, self.embed_dim = vocab_size, memory_size, embed_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.initial = nn.Parameter(torch.zeros(memory_size))

    def reset_initial(self) -> None:
        """A random point of the memory space as the learned initial memory."""
        with torch.no_grad():
            self.initial.copy_(self.project(0.5 * torch.randn(self.memory_size)))

    def project(self, raw: torch.Tensor) -> torch.Tensor:
        """Map unconstrained reals onto the cell's memory space."""
        return project_memory(raw, self.memory_space, self.memory_tokens)

    def initial_memory(self, batch: int | tuple = ()) -> torch.Tensor:
        shape = (batch,) if isinstance(batch, int) else tuple(batch)
        return self.initial.expand(*shape, self.memory_size)

    def update(self, memory: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rounds(self) -> bool:
        """Whether ``step`` rounds its output onto the grid now: always while training (every memory the
        cell writes in SMT and DMT), at run time only when asked."""
        return bool(self.levels) and (self.training or self.round_at_run_time)

    def step(self, memory: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The next memory: ``update``, rounded onto the grid when ``rounds()``."""
        return self.step_with_update(memory, token)[0]

    def step_with_update(self, memory: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the next memory as ``step`` gives it, the update before any rounding): a loss on the second
        keeps a margin to the edge of the grid's cell, where one on the rounded value sees nothing."""
        update = self.update(memory, token)
        rounded = on_grid(update, self.memory_space, self.levels, self.memory_tokens) if self.rounds() else update
        return rounded, update

    @property
    def output_size(self) -> int:
        return self.output(torch.zeros(self.memory_size)).shape[-1]

    def output(self, memory: torch.Tensor) -> torch.Tensor:
        """The part of the memory that the readout reads."""
        return memory

    def rollout(self, tokens: torch.Tensor, memory: torch.Tensor | None = None):
        """Step-by-step reference: ``tokens[B, T]`` -> full memories after each token [B, T, M]."""
        memory = self.initial_memory(tokens.shape[0]) if memory is None else memory
        memories = []
        for t in range(tokens.shape[1]):
            memory = self.step(memory, tokens[:, t])
            memories.append(memory)
        return torch.stack(memories, 1)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None):
        """Sequential path: readout features after each token [B, T, output_size], last memory."""
        memories = self.rollout(tokens, memory)
        return self.output(memories), memories[:, -1]


def _flat(memory: torch.Tensor, embedded: torch.Tensor):
    """Broadcast memory and embedded token to one leading batch dimension."""
    lead = torch.broadcast_shapes(memory.shape[:-1], embedded.shape[:-1])
    memory = memory.expand(*lead, memory.shape[-1]).reshape(-1, memory.shape[-1])
    embedded = embedded.expand(*lead, embedded.shape[-1]).reshape(-1, embedded.shape[-1])
    return memory, embedded, lead


class _FusedCell(Cell):
    """A cell whose whole-sequence path is one PyTorch kernel ``self.rnn`` (nn.RNN or nn.GRU, one layer)
    holding the weights that ``step`` uses, and whose memory is that kernel's hidden state."""

    rnn: nn.RNNBase

    def forward(self, tokens, memory=None):
        if self.rounds():  # the kernel cannot round between steps
            return super().forward(tokens, memory)
        memory = self.initial_memory(tokens.shape[0]) if memory is None else memory
        memories, last = self.rnn(self.embed(tokens), memory.unsqueeze(0).contiguous())
        return memories, last[0]


class TanhCell(_FusedCell):
    """Elman cell: m' = tanh(W_ih e(x) + b_ih + W_hh m + b_hh); fused path nn.RNN."""

    memory_space = "tanh"

    def __init__(self, vocab_size: int, memory_size: int, embed_dim: int = 32):
        super().__init__(vocab_size, memory_size, embed_dim)
        self.rnn = nn.RNN(embed_dim, memory_size, nonlinearity="tanh", batch_first=True)
        self.reset_initial()

    def update(self, memory, token):
        memory, embedded, lead = _flat(memory, self.embed(token))
        r = self.rnn
        out = torch.tanh(
            F.linear(embedded, r.weight_ih_l0, r.bias_ih_l0) + F.linear(memory, r.weight_hh_l0, r.bias_hh_l0)
        )
        return out.reshape(*lead, self.memory_size)


class GRUCell(_FusedCell):
    """GRU in PyTorch's gate convention; fused path nn.GRU with the same weights."""

    memory_space = "tanh"

    def __init__(self, vocab_size: int, memory_size: int, embed_dim: int = 32):
        super().__init__(vocab_size, memory_size, embed_dim)
        self.rnn = nn.GRU(embed_dim, memory_size, batch_first=True)
        self.reset_initial()

    def update(self, memory, token):
        memory, embedded, lead = _flat(memory, self.embed(token))
        r = self.rnn
        gi = F.linear(embedded, r.weight_ih_l0, r.bias_ih_l0).chunk(3, -1)
        gh = F.linear(memory, r.weight_hh_l0, r.bias_hh_l0).chunk(3, -1)
        reset = torch.sigmoid(gi[0] + gh[0])
        update = torch.sigmoid(gi[1] + gh[1])
        candidate = torch.tanh(gi[2] + reset * gh[2])
        out = (1 - update) * candidate + update * memory
        return out.reshape(*lead, self.memory_size)


class LSTMCell(Cell):
    """LSTM whose memory is [h, c] (memory_size/2 each); fused path nn.LSTM."""

    memory_space = "lstm"

    def __init__(self, vocab_size: int, memory_size: int, embed_dim: int = 32):
        if memory_size % 2:
            raise UserError(f"lstm memory size must be even ([h, c]), got {memory_size}")
        super().__init__(vocab_size, memory_size, embed_dim)
        self.hidden = memory_size // 2
        self.rnn = nn.LSTM(embed_dim, self.hidden, batch_first=True)
        self.reset_initial()

    def update(self, memory, token):
        memory, embedded, lead = _flat(memory, self.embed(token))
        h, c = memory.split(self.hidden, -1)
        r = self.rnn
        gates = F.linear(embedded, r.weight_ih_l0, r.bias_ih_l0) + F.linear(h, r.weight_hh_l0, r.bias_hh_l0)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.cat([h, c], -1).reshape(*lead, self.memory_size)

    def forward(self, tokens, memory=None):
        memory = self.initial_memory(tokens.shape[0]) if memory is None else memory
        h0, c0 = memory.split(self.hidden, -1)
        hs, (h, c) = self.rnn(self.embed(tokens), (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        return hs, torch.cat([h[0], c[0]], -1)

    def output(self, memory):
        return memory[..., : self.hidden]


class MLPCell(Cell):
    """The paper's MLP backbone: m' = rms_norm(m + MLP([m, e(x)])), a residual MLP update."""

    memory_space = "rms"

    def __init__(
        self, vocab_size: int, memory_size: int, embed_dim: int = 32, hidden: int | None = None, layers: int = 1
    ):
        super().__init__(vocab_size, memory_size, embed_dim)
        hidden = hidden or 2 * memory_size
        deeper = [module for _ in range(layers - 1) for module in (nn.Linear(hidden, hidden), nn.GELU())]
        self.mlp = nn.Sequential(
            nn.Linear(memory_size + embed_dim, hidden), nn.GELU(), *deeper, nn.Linear(hidden, memory_size)
        )
        self.reset_initial()

    def update(self, memory, token):
        embedded = self.embed(token)
        lead = torch.broadcast_shapes(memory.shape[:-1], embedded.shape[:-1])
        memory = memory.expand(*lead, self.memory_size)
        update = self.mlp(torch.cat([memory, embedded.expand(*lead, self.embed_dim)], -1))
        return rms_normalize(memory + update, 1)


class TransformerCell(Cell):
    """K memory tokens plus the token embedding through a few bidirectional Transformer layers;
    the first K outputs, RMS-normalised per token, are the next memory (the official backbone)."""

    memory_space = "rms"

    def __init__(self, vocab_size: int, memory_size: int, memory_tokens: int = 4, layers: int = 2, heads: int = 2):
        if memory_size % memory_tokens:
            raise UserError(f"memory size {memory_size} is not divisible by memory tokens {memory_tokens}")
        width = memory_size // memory_tokens
        if width % heads:
            raise UserError(f"memory token width {width} is not divisible by heads {heads}")
        super().__init__(vocab_size, memory_size, width)
        self.memory_tokens, self.width = memory_tokens, width
        self.slots = nn.Parameter(0.02 * torch.randn(memory_tokens + 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.reset_initial()

    def update(self, memory, token):
        memory, embedded, lead = _flat(memory, self.embed(token))
        sequence = torch.cat([memory.reshape(-1, self.memory_tokens, self.width), embedded.unsqueeze(1)], 1)
        out = self.layers(sequence + self.slots)[:, : self.memory_tokens].reshape(-1, self.memory_size)
        return self.project(out).reshape(*lead, self.memory_size)


CELLS = {"tanh": TanhCell, "mlp": MLPCell, "gru": GRUCell, "lstm": LSTMCell, "transformer": TransformerCell}


def make_cell(name: str, vocab_size: int, memory_size: int, **options) -> Cell:
    if name not in CELLS:
        raise UserError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    return CELLS[name](vocab_size, memory_size, **options)
