"""The SMT teacher: a causal Transformer encoder that writes the memory of every prefix in one pass,
and a decoder that predicts the future from a memory alone (docs/method.md section 2).

encode(x[B, T]) -> memories[B, T+1, M]: memories[:, t] has seen exactly x_1..x_t, and
memories[:, 0] is the memory of the empty prefix (the encoding of a start token), m*_0.
decode(memory[N, M], future[N, F]) -> logits[N, F+1, C]: logits[:, k] predicts y_{t+k} from m*_t
and the true inputs x_{t+1}..x_{t+k} (teacher forcing); nothing else reaches the decoder.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smtrnn.cells import project_memory


@dataclass
class TeacherConfig:
    """The teacher's shape; its defaults live in ModelConfig (models.py), which builds this by name."""

    width: int  # Transformer model width
    layers: int  # encoder layers (the decoder has decoder_layers)
    decoder_layers: int
    heads: int
    future: int  # Tf: the decoder predicts y_t .. y_{t+Tf-1} from m*_t
    # encoder position codes: none (order only from the causal mask) | sinusoid (absolute, added to the
    # input) | rotary (queries and keys rotated by their position: scores depend on the distance only)
    # | alibi (a score penalty growing with the distance, one slope per head)
    positions: str


def _frequencies(width: int, device, dtype) -> torch.Tensor:
    """10000^(-2i/width) for i < width/2: the angular speeds of sinusoidal and rotary position codes."""
    return torch.exp(torch.arange(0, width, 2, device=device, dtype=dtype) * (-math.log(10000.0) / width))


def sinusoid(positions: int, width: int, device=None, start: int = 0) -> torch.Tensor:
    """Fixed sinusoidal position codes: defined for any length, so the teacher runs at 8T too.
    ``start``: the codes of positions start..start+positions-1 (one row per token when streaming)."""
    position = torch.arange(start, start + positions, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = _frequencies(width, device, torch.float32)
    table = torch.zeros(positions, width, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


POSITIONS = ("none", "sinusoid", "rotary", "alibi")
RELATIVE = ("rotary", "alibi")  # the schemes that act inside attention (the encoder's own forward)


def rotate(x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotary position codes on x[..., T, D] (D even): the pair (x_i, x_{i+D/2}) of position p turned by
    p * 10000^(-2i/D), positions start..start+T-1. A query and a key so turned have a dot product that
    depends on their distance only."""
    length, width = x.shape[-2], x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)  # angles at least in float32 (half precision drifts)
    angle = torch.arange(start, start + length, device=x.device, dtype=dtype).unsqueeze(1) * _frequencies(
        width, x.device, dtype
    )
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    first, second = x[..., : width // 2], x[..., width // 2 :]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], -1)


def alibi(heads: int, queries: int, keys: int, device=None, start: int = 0) -> torch.Tensor:
    """The ALiBi score bias [heads, queries, keys] for queries at positions start..start+queries-1 and
    keys at 0..keys-1: -slope_h * distance, slopes 2^(-8 (h+1) / heads); a key after its query gets -inf
    (the causal mask)."""
    slopes = torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, device=device, dtype=torch.float32) / heads)
    query = torch.arange(start, start + queries, device=device, dtype=torch.float32).unsqueeze(1)
    distance = query - torch.arange(keys, device=device, dtype=torch.float32)
    bias = -slopes[:, None, None] * distance
    return bias.masked_fill(distance < 0, float("-inf"))


def _stack(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _causal(length: int, device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


@contextmanager
def _without_fused_inference_path():
    """Under eval() + no_grad, nn.TransformerEncoderLayer takes a fused path that builds the whole
    T x T attention matrix for a mask: on CPU, 9x slower than the ordinary path and 0.7 GB at 4k
    tokens (quadratic memory), where the ordinary path runs SDPA's causal flash kernel."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@dataclass
class EncoderCache:
    """What ``Teacher.encode_step`` keeps between tokens: per encoder layer the attention keys and
    values of every position so far ([B, heads, capacity, head width], the first ``length`` used),
    and the previous token (the token shift)."""

    keys: list
    values: list
    previous: torch.Tensor
    length: int = 0

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Store one position's key and value; the used keys and values, capacity doubling when full."""
        if self.length == self.keys[layer].shape[2]:
            grow = lambda buffer: torch.cat([buffer, torch.empty_like(buffer)], 2)
            self.keys[layer], self.values[layer] = grow(self.keys[layer]), grow(self.values[layer])
        self.keys[layer][:, :, self.length] = key
        self.values[layer][:, :, self.length] = value
        return self.keys[layer][:, :, : self.length + 1], self.values[layer][:, :, : self.length + 1]

    def nbytes(self) -> int:
        """Bytes of the keys and values in use (what a context of ``length`` tokens costs to keep)."""
        used = lambda buffer: buffer[:, :, : self.length].numel() * buffer.element_size()
        return sum(used(k) + used(v) for k, v in zip(self.keys, self.values))


def _residuals(layer: nn.TransformerEncoderLayer, hidden: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """The rest of a norm-first layer once its attention heads are mixed [B, T, W]: output projection
    and feed-forward, each added to the stream."""
    hidden = hidden + layer.self_attn.out_proj(mixed)
    return hidden + layer.linear2(layer.activation(layer.linear1(layer.norm2(hidden))))


def _layer(layer: nn.TransformerEncoderLayer, hidden: torch.Tensor, positions: str) -> torch.Tensor:
    """One norm-first encoder layer on hidden[B, T, W] under the causal mask, with the relative position
    scheme ``positions`` inside its attention: the layer's own forward with rotated queries and keys
    (rotary) or a bias on the scores (alibi); with "none" the same arithmetic as that forward."""
    attention = layer.self_attn
    batch, length, width = hidden.shape
    heads = attention.num_heads
    split = lambda t: t.reshape(batch, length, heads, width // heads).transpose(1, 2)
    query, key, value = map(
        split, F.linear(layer.norm1(hidden), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    )
    if positions == "rotary":
        mixed = F.scaled_dot_product_attention(rotate(query), rotate(key), value, is_causal=True)
    elif positions == "alibi":
        bias = alibi(heads, length, length, hidden.device).to(hidden.dtype)
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    else:
        mixed = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    return _residuals(layer, hidden, mixed.transpose(1, 2).reshape(batch, length, width))


def _layer_step(
    layer: nn.TransformerEncoderLayer, hidden: torch.Tensor, cache: EncoderCache, index: int, positions: str
):
    """One norm-first encoder layer for the newest position only [B, 1, W], attending to the cache:
    the same arithmetic as ``_layer`` (and the layer's own forward) under the causal mask."""
    attention = layer.self_attn
    batch, width, heads = hidden.shape[0], hidden.shape[-1], attention.num_heads
    split = lambda t: t.reshape(batch, heads, 1, width // heads)
    query, key, value = map(
        split, F.linear(layer.norm1(hidden), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    )
    bias = None
    if positions == "rotary":
        query, key = rotate(query, cache.length), rotate(key, cache.length)
    elif positions == "alibi":
        bias = alibi(heads, 1, cache.length + 1, hidden.device, cache.length).to(hidden.dtype)
    keys, values = cache.append(index, key[:, :, 0], value[:, :, 0])
    mixed = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias)  # sees every position so far
    return _residuals(layer, hidden, mixed.reshape(batch, 1, width))


class Teacher(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        memory_size: int,
        memory_space: str,
        memory_tokens: int,
        config: TeacherConfig,
    ):
        super().__init__()
        self.config, self.memory_size = config, memory_size
        self.memory_space, self.memory_tokens = memory_space, memory_tokens
        self.levels = 0  # memories on a grid of this many values per unit (0: continuous)
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
        hidden = self.embed(tokens) + self.previous_embed(previous)
        if self.config.positions == "sinusoid":
            hidden = hidden + sinusoid(tokens.shape[1], self.config.width, x.device)
        if self.config.positions in RELATIVE:
            for layer in self.encoder.layers:
                hidden = _layer(layer, hidden, self.config.positions)
        else:
            with _without_fused_inference_path():
                hidden = self.encoder(hidden, mask=_causal(tokens.shape[1], x.device), is_causal=True)
        raw = self.memory_head(self.encoder_norm(hidden))
        return project_memory(raw, self.memory_space, self.memory_tokens, self.levels)

    def encode_step(
        self, token: torch.Tensor | None, cache: EncoderCache | None = None, batch: int = 1, capacity: int = 256
    ):
        """Incremental ``encode`` with a key-value cache: O(context) work per token instead of
        re-encoding the prefix. ``encode_step(None, batch=B)`` -> (m*_0 [B, M], cache); then
        ``encode_step(x_t, cache)`` -> (memories[:, t] of ``encode(x)`` [B, M], cache), the cache
        updated in place."""
        width = self.config.width
        if cache is None:
            device = self.embed.weight.device
            heads = self.encoder.layers[0].self_attn.num_heads
            empty = lambda: self.embed.weight.new_empty(batch, heads, capacity, width // heads)
            token = torch.full((batch,), self.start, dtype=torch.long, device=device)
            cache = EncoderCache([empty() for _ in self.encoder.layers], [empty() for _ in self.encoder.layers], token)
        elif token is None:
            raise ValueError("encode_step: a token is needed once the cache exists")
        hidden = self.embed(token) + self.previous_embed(cache.previous)
        if self.config.positions == "sinusoid":
            hidden = hidden + sinusoid(1, width, token.device, cache.length)
        hidden = hidden.unsqueeze(1)
        for index, layer in enumerate(self.encoder.layers):
            hidden = _layer_step(layer, hidden, cache, index, self.config.positions)
        cache.previous, cache.length = token, cache.length + 1
        raw = self.memory_head(self.encoder_norm(hidden[:, 0]))
        return project_memory(raw, self.memory_space, self.memory_tokens, self.levels), cache

    def decode(self, memory: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Logits [N, F+1, C] for y_t..y_{t+F} from memory[N, M] and inputs future[N, F]."""
        chunks = memory.reshape(memory.shape[0], self.memory_tokens, -1)
        sequence = torch.cat([self.memory_in(chunks), self.future_embed(future)], 1)
        length = sequence.shape[1]
        sequence = sequence + self.decoder_positions[:length]
        hidden = self.decoder(sequence, mask=_causal(length, memory.device), is_causal=True)
        return self.head(self.decoder_norm(hidden[:, self.memory_tokens - 1 :]))
