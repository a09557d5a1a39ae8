"""The training-step benchmarks: SMT (all-prefix, decoder on sampled windows, windowed) against BPTT
through our own step loop and through PyTorch's fused kernel, each a whole optimiser step timed
round-robin, with its FLOPs, peak memory and sequential depth."""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch

from smtrnn.config import RunConfig
from smtrnn.experiments.bench.config import BenchConfig, sampled_positions
from smtrnn.experiments.bench.measure import count_flops, measure_later, set_peak, time_round_robin
from smtrnn.methods import BPTTConfig, SMTConfig, bptt_loss, depths, smt_loss
from smtrnn.methods.common import masked_cross_entropy
from smtrnn.models import ModelConfig, Models
from smtrnn.tasks.base import IGNORE

FUSED = ("tanh", "gru", "lstm")  # cells whose forward is nn.RNN / nn.GRU / nn.LSTM


def dense_batch(batch: int, length: int, vocab: int, generator: torch.Generator, device: str = "cpu") -> dict:
    """Byte-level language modelling on random bytes: every position labelled with the next token
    (the last has none). The densest labels: SMT's decoder has work at every window."""
    x = torch.randint(0, vocab, (batch, length + 1), generator=generator)
    y = x[:, 1:].clone()
    y[:, -1] = IGNORE
    return {"x": x[:, :-1].to(device), "y": y.to(device)}


def loop_bptt_loss(models, batch, _config=None):
    """BPTT through our own step loop (``cell.rollout``), whatever fused kernel the cell has."""
    rnn = models.rnn
    loss, accuracy = masked_cross_entropy(rnn.logits(rnn.cell.rollout(batch["x"])), batch["y"])
    return loss, {"accuracy": accuracy}


def training_methods(cell: str, config: BenchConfig) -> list[str]:
    names = ["smt", "smt-sampled", "smt-windowed"]
    names += ["smt-compiled"] if config.compile else []
    names += ["smt-bf16"] if config.autocast and config.device.startswith("cuda") else []
    return names + ["bptt"] + (["bptt-fused"] if cell in FUSED else [])


def windowed(config: BenchConfig, length: int) -> tuple[int, int]:
    """(context Tc, crop length) of windowed SMT on a stream of ``length`` tokens: the window is capped by
    the stream, and a crop holds Tc tokens for the encoder plus future - 1 more for the decoder's targets."""
    future = ModelConfig().future
    crop = min(length, config.window + future - 1)
    return max(1, crop - future + 1), crop  # a stream shorter than Tf: one memory, truncated targets


def sequential_depth(method: str, length: int, config: BenchConfig) -> int:
    """Cell applications in series on one training step's gradient path, as the method's phases count it
    (methods.depths): SMT's horizon K within the sequence (the window, for windowed SMT), BPTT's T."""
    run = RunConfig(length=length, method="smt" if method.startswith("smt") else "bptt")
    if method == "smt-windowed":
        run.smt.context, run.length = windowed(config, length)
    return depths(run)["sequential_depth"]


class TrainingStep:
    """One optimiser step of a method, as training runs it: loss, backward, clip to norm 1, AdamW."""

    def __init__(
        self, method: str, cell: str, config: BenchConfig, vocab: int | None = None, classes: int | None = None
    ):
        torch.manual_seed(config.seed)
        vocab = vocab or config.vocab
        model = ModelConfig(cell=cell, memory_size=config.memory_size)
        self.models = Models(model, vocab, classes or vocab).to(config.device)
        self.first_call_seconds: float | None = None  # includes torch.compile's warm-up
        smt = method.startswith("smt")
        self.loss_fn = smt_loss if smt else (bptt_loss if method == "bptt-fused" else loop_bptt_loss)
        sampled = method in ("smt-sampled", "smt-windowed")
        # the step as training runs it once the horizon has grown to K and the dynamics reach the teacher
        self.loss_config: Any = (
            SMTConfig(
                decoder_positions=sampled_positions(config) if sampled else 0,
                horizon_grow=0,
                teacher_delay=0,
                dyn_warmup=0,
            )
            if smt
            else BPTTConfig(truncate=0)
        )
        if method == "smt-compiled":
            self.loss_fn = torch.compile(smt_loss)
        self.autocast = torch.autocast("cuda", torch.bfloat16) if method == "smt-bf16" else nullcontext()
        self.parameters = list(self.models.parameters() if smt else self.models.rnn.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=1e-3)

    def __call__(self, batch: dict) -> None:
        start = time.perf_counter()
        with self.autocast:
            loss, _ = self.loss_fn(self.models, batch, self.loss_config)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - start


def training_rows(
    config: BenchConfig, peak_gflops: float | None = None, log=print, later: list | None = None
) -> list[dict]:
    """One row per (cell, length, method): time, throughput, FLOPs, memory, sequential depth."""
    rows, memory = [], []
    for cell in config.cells:
        steps = {method: TrainingStep(method, cell, config) for method in training_methods(cell, config)}
        for length in config.lengths:
            batch = dense_batch(
                config.batch, length, config.vocab, torch.Generator().manual_seed(config.seed + length), config.device
            )
            calls = {method: partial(step, batch) for method, step in steps.items()}
            context, crop = windowed(config, length)
            if "smt-windowed" in steps:  # a crop of the stream, the teacher seeing its first Tc tokens
                steps["smt-windowed"].loss_config.context = context
                calls["smt-windowed"] = partial(
                    steps["smt-windowed"], {key: value[:, :crop] for key, value in batch.items()}
                )
            # the first warm-up step counts the FLOPs (the compiled step, which does the same, warms up plain)
            flop_counts: dict[str, int] = {}
            for method, call in calls.items():
                if method == "smt-compiled":
                    call()  # its warm-up; the FLOPs are the plain step's
                else:
                    flop_counts[method] = count_flops(call)
            seconds = time_round_robin(calls, max(0, config.warmup - 1), config.repeats, config.device)
            for method, call in calls.items():
                flops = flop_counts["smt" if method == "smt-compiled" else method]
                row = {
                    "method": method,
                    "cell": cell,
                    "length": length,
                    "batch": config.batch,
                    "seconds_per_step": seconds[method],
                    # tokens whose memory transition the step trains (windowed: Tc per crop)
                    "tokens_per_second": config.batch
                    * (context if method == "smt-windowed" else length)
                    / seconds[method],
                    "peak_mb": None,
                    "sequential_depth": sequential_depth(method, length, config),
                    "gflop_per_step": flops / 1e9,
                    "achieved_gflops": flops / 1e9 / seconds[method],
                }
                if peak_gflops:
                    row["peak_fraction"] = row["achieved_gflops"] / peak_gflops
                if method == "smt-windowed":
                    row["context"] = context
                if method == "smt-compiled":
                    row["first_call_seconds"] = steps[method].first_call_seconds
                rows.append(row)
                memory.append(set_peak(row, call, config.device))
            log(f"train {cell:>11} T={length:<5} " + "  ".join(f"{m} {s:.3f}s" for m, s in seconds.items()))
    measure_later(memory, later)
    return rows
