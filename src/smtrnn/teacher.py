"""The SMT teacher: a causal Transformer encoder that writes the memory of every prefix in one pass,
and a decoder that predicts the future from a memory alone (SMT.md section 2).

encode(x[B, T]) -> memories[B, T+1, M]: memories[:, t] has seen exactly x_1..x_t, and
memories[:, 0] is the memory of the empty prefix (the encoding of a start token), m*_0.
decode(memory[N, M], future[N, F]) -> logits[N, F+1, C]: logits[:, k] predicts y_{t+k} from m*_t
and the true inputs x_{t+1}..x_{t+k} (teacher forcing); nothing else reaches the decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smtrnn.cells import project_memory


@dataclass
class TeacherConfig:
    width: int = 64  # Transformer model width
    layers: int = 2  # encoder layers (the decoder has decoder_layers)
    decoder_layers: int = 1
    heads: int = 4
    future: int = 4  # Tf: the decoder predicts y_t .. y_{t+Tf-1} from m*_t


def sinusoid(positions: int, width: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal position codes: defined for any length, so the teacher runs at 8T too."""
    position = torch.arange(positions, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(positions, width, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


def _stack(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _causal(length: int, device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class Teacher(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, memory_size: int, memory_space: str,
                 memory_tokens: int = 1, config: TeacherConfig | None = None):
        super().__init__()
        config = config or TeacherConfig()
        self.config, self.memory_size = config, memory_size
        self.memory_space, self.memory_tokens = memory_space, memory_tokens
        width = config.width
        self.start = vocab_size  # id of the start token whose encoding is m*_0
        self.embed = nn.Embedding(vocab_size + 1, width)
        # token shift: each position also sees the previous token's embedding (still causal), so a
        # single attention layer can find "the token after X", which retrieval-type tasks need
        self.previous_embed = nn.Embedding(vocab_size + 1, width)
        self.encoder = _stack(width, config.heads, config.layers)
        self.encoder_norm = nn.LayerNorm(width)
        self.memory_head = nn.Linear(width, memory_size)
        # decoder: memory tokens then the embedded future inputs, causal
        self.memory_in = nn.Linear(memory_size // memory_tokens, width)
        self.future_embed = nn.Embedding(vocab_size, width)
        self.decoder_positions = nn.Parameter(0.02 * torch.randn(memory_tokens + config.future, width))
        self.decoder = _stack(width, config.heads, config.decoder_layers)
        self.decoder_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Memories of every prefix of x[B, T], the empty one first: [B, T+1, M]."""
        tokens = F.pad(x, (1, 0), value=self.start)
        previous = F.pad(tokens[:, :-1], (1, 0), value=self.start)
        hidden = self.embed(tokens) + self.previous_embed(previous) + sinusoid(tokens.shape[1], self.config.width, x.device)
        hidden = self.encoder(hidden, mask=_causal(tokens.shape[1], x.device), is_causal=True)
        return project_memory(self.memory_head(self.encoder_norm(hidden)), self.memory_space, self.memory_tokens)

    def decode(self, memory: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Logits [N, F+1, C] for y_t..y_{t+F} from memory[N, M] and inputs future[N, F]."""
        chunks = memory.reshape(memory.shape[0], self.memory_tokens, -1)
        sequence = torch.cat([self.memory_in(chunks), self.future_embed(future)], 1)
        length = sequence.shape[1]
        sequence = sequence + self.decoder_positions[:length]
        hidden = self.decoder(sequence, mask=_causal(length, memory.device), is_causal=True)
        return self.head(self.decoder_norm(hidden[:, self.memory_tokens - 1:]))
