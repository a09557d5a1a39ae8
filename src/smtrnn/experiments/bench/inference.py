"""The inference benchmarks: per-token latency and memory as the context grows, for the RNN
(O(1) state), the teacher with a key-value cache and the teacher re-encoding the whole prefix."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from smtrnn.experiments.bench.config import BenchConfig
from smtrnn.experiments.bench.measure import measure_later, set_peak, sync, time_round_robin
from smtrnn.models import ModelConfig, Models
from smtrnn.sampling import CachedTeacherStream, RNNStream, uncached_teacher_logits


def _token_window(times: list[float], context: int) -> float:
    """Median seconds of the tokens read with about ``context`` tokens of context (the last eighth)."""
    width = max(8, context // 8)
    return statistics.median(times[max(0, context - width) : context])


def _stream(stream, tokens: torch.Tensor, device: str, checkpoints=(), at_checkpoint=None) -> list[float]:
    """Feed ``tokens`` [1, N] one at a time to ``stream``; seconds per token. When ``c`` tokens have
    been read, for each c in checkpoints, ``at_checkpoint(c)`` runs first (untimed)."""
    times = []
    for index in range(tokens.shape[1]):
        if index in checkpoints and at_checkpoint is not None:
            at_checkpoint(index)
        sync(device)
        start = time.perf_counter()
        stream(tokens[:, index])
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def _inference_row(model: str, context: int, seconds: float, state_bytes: int) -> dict:
    return {
        "model": model,
        "context": context,
        "seconds_per_token": seconds,
        "tokens_per_second": 1 / seconds,
        "state_mb": state_bytes / 2**20,
        "peak_mb": None,
    }


@torch.no_grad()
def inference_rows(config: BenchConfig, log=print, later: list | None = None) -> list[dict]:
    """Per-token latency and memory as the context grows, at ModelConfig's default sizes. Timings
    first, then memory (one token step at each context, plus the state kept between tokens)."""
    torch.manual_seed(config.seed)
    models = Models(ModelConfig(), config.vocab, config.vocab).to(config.device).eval()
    contexts = sorted(config.contexts)
    longest = contexts[-1]
    tokens = torch.randint(0, config.vocab, (1, longest + 1), generator=torch.Generator().manual_seed(config.seed))
    tokens = tokens.to(config.device)
    streams: dict[str, Callable[[], RNNStream | CachedTeacherStream]] = {
        "rnn": lambda: RNNStream(models.rnn),
        "teacher-kv-cache": lambda: CachedTeacherStream(models.teacher, longest + 2),
    }
    rows = {}
    for name, make in streams.items():
        stream, states = make(), dict[int, int]()
        times = _stream(stream, tokens, config.device, contexts, lambda c: states.__setitem__(c, stream.state_bytes()))
        for context in contexts:
            rows[name, context] = _inference_row(name, context, _token_window(times, context), states[context])
    for context in contexts:
        prefix = tokens[:, :context]
        seconds = time_round_robin(
            {"encode": lambda: uncached_teacher_logits(models.teacher, prefix)},
            1,
            config.inference_repeats,
            config.device,
        )["encode"]
        rows["teacher-no-cache", context] = _inference_row(
            "teacher-no-cache", context, seconds, prefix.numel() * prefix.element_size()
        )
    log(
        "inference "
        + "  ".join(
            f"{name}@{c} {row['seconds_per_token'] * 1e3:.2f}ms"
            for (name, c), row in rows.items()
            if c in (contexts[0], longest)
        )
    )

    def stream_memory(name, make):
        def measure():
            stream = make()
            with torch.no_grad():
                for index in range(longest + 1):
                    if index in contexts:
                        row = rows[name, index]
                        set_peak(row, lambda: stream(tokens[:, index]), config.device, row["state_mb"])()
                    else:
                        stream(tokens[:, index])

        return measure

    memory = [stream_memory(name, make) for name, make in streams.items()]
    for context in contexts:
        row = rows["teacher-no-cache", context]
        call = torch.no_grad()(partial(uncached_teacher_logits, models.teacher, tokens[:, :context]))
        memory.append(set_peak(row, call, config.device, row["state_mb"]))
    measure_later(memory, later)
    return list(rows.values())
