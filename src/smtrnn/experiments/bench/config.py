"""What ``smtrnn bench`` measures: lengths, cells, sizes, repeats, device (``BenchConfig``), the quick
preset, and the settings derived from them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from smtrnn.methods import SMTConfig


@dataclass
class BenchConfig:
    lengths: tuple = (64, 256, 1024, 4096)
    cells: tuple = ("tanh", "gru", "lstm", "transformer")
    batch: int = 32  # TrainConfig's default
    memory_size: int = 64  # ModelConfig's default; every other size is ModelConfig's default too
    vocab: int = 256  # byte-level data
    warmup: int = 1
    repeats: int = 5
    decoder_positions: int = 0  # smt-sampled: memories per sequence sent to the decoder; 0: SMTConfig's
    # default, or 8 where that default decodes every window
    window: int = 256  # smt-windowed: the teacher's context Tc (docs/method.md section 3, windowed mode); a crop is Tc + future - 1 tokens
    contexts: tuple = (64, 256, 1024, 4096, 8192, 16384)  # inference: context lengths
    inference_repeats: int = 3  # re-encodings timed per context for the teacher without a cache
    matmul_size: int = 4096
    optimisation_length: int = 1024  # sequence length of the before/after measurements
    encode_context: int = 4096  # context of the teacher fused-path before/after
    device: str = "cpu"
    threads: int = 0  # 0: PyTorch's default
    compile: bool = False  # also time smt_loss under torch.compile (minutes of warm-up on CPU)
    autocast: bool = False  # also time the SMT step under bf16 autocast (CUDA only; docs/cuda/benchmarks.md)
    seed: int = 0


def quick_config(**overrides) -> BenchConfig:
    """Lengths 64..1024 and contexts to 8k: a few minutes on two cores."""
    quick = BenchConfig(
        lengths=(64, 256, 1024),
        cells=("tanh", "gru", "transformer"),
        repeats=3,
        contexts=(64, 256, 1024, 4096, 8192),
        matmul_size=2048,
        optimisation_length=512,
        encode_context=2048,
    )
    return replace(quick, **overrides)


def sampled_positions(config: BenchConfig) -> int:
    return config.decoder_positions or SMTConfig().decoder_positions or 8
