"""Performance benchmarks: SMT's time-parallel training step against BPTT, side by side at equal
memory size and batch, and the RNN's O(1)-per-token inference against its Transformer teacher with
and without a key-value cache; plus the machine's matmul peak, so each step's achieved FLOP/s can be
read against the limit.

    result = run_bench(quick_config())   # rows for docs/benchmarks.json; bench_report renders them

How each number is taken (honest first, cheap second):
- time: wall seconds of a whole training step (loss, backward, gradient clipping, AdamW step), median
  of ``repeats`` after ``warmup``. The methods of one (cell, length) are timed in turn, round-robin,
  so a machine that gets busier slows them alike: read ratios, not absolute numbers.
- memory: on CUDA, torch.cuda.max_memory_allocated during the call minus what was allocated before.
  On CPU, the peak resident set (VmHWM in /proc/self/status, reset through /proc/self/clear_refs)
  minus the resident set before the call, with glibc told to give every allocation over 64 KiB its
  own mapping (mallopt M_MMAP_THRESHOLD) so a freed tensor leaves the resident set at once. That
  setting changes speed, so memory is measured in a pass of its own after every timing.
- FLOPs: torch.utils.flop_counter over one step (matmuls and attention, what "model FLOPs" means);
  it does not know PyTorch's CPU flash-attention kernels, so we count them with its own SDPA
  formulas, halved when causal (the kernel skips the masked half).
- sequential depth: cell applications in series in one step's gradient path: SMT its horizon K, BPTT T.
"""

from __future__ import annotations

import ctypes
import os
import re
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from smtrnn import teacher as teacher_module
from smtrnn.methods import BPTTConfig, SMTConfig, bptt_loss, smt_loss
from smtrnn.methods import smt as smt_module
from smtrnn.methods.common import masked_cross_entropy
from smtrnn.models import ModelConfig, Models
from smtrnn.tasks import make_task
from smtrnn.tasks.base import IGNORE

FUSED = ("tanh", "gru", "lstm")  # cells whose forward is nn.RNN / nn.GRU / nn.LSTM


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
    autocast: bool = False  # also time the SMT step under bf16 autocast (CUDA only; untested here)
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


# ------------------------------------------------------------------------------------------------
# measuring


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(calls: dict, warmup: int, repeats: int, device: str = "cpu") -> dict:
    """Median wall seconds of each call, the calls taking turns (see the module docstring)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as handle:
        return int(re.search(key + r":\s+(\d+) kB", handle.read()).group(1)) / 1024


_LIBC = None


def _exact_resident_memory():
    """glibc: every allocation over 64 KiB gets its own mapping, returned to the system on free."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD; a fixed value also stops glibc raising it
    return _LIBC


def peak_memory_mb(call, device: str = "cpu") -> float | None:
    """Peak memory in use during ``call()`` above what was in use before it, in MiB (None: the
    platform cannot say: no /proc or no glibc)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        libc = _exact_resident_memory()
        libc.malloc_trim(0)
        before = _proc_status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current resident size
    except (OSError, AttributeError):
        return None
    call()
    return max(0.0, _proc_status_mb("VmHWM") - before)


def _flash_cpu_forward(query, key, value, dropout_p=0.0, is_causal=False, *_, out_shape=None, **__):
    flops = sdpa_flop_count(query, key, value)
    return flops // 2 if is_causal else flops


def _flash_cpu_backward(
    grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *_, out_shape=None, **__
):
    flops = sdpa_backward_flop_count(grad_out, query, key, value)
    return flops // 2 if is_causal else flops


_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_cpu_backward,
}


def count_flops(call) -> int:
    """FLOPs of matmuls and attention in ``call()`` (forward and backward)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        call()
    return counter.get_total_flops()


def matmul_peak(size: int, repeats: int = 5, device: str = "cpu") -> dict:
    """The machine's float32 matmul rate: the best of ``repeats`` [size x size] @ [size x size]."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {"size": size, "seconds": best, "gflops": 2 * size**3 / best / 1e9}


# ------------------------------------------------------------------------------------------------
# training steps


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


def sampled_positions(config: BenchConfig) -> int:
    return config.decoder_positions or SMTConfig().decoder_positions or 8


def windowed(config: BenchConfig, length: int) -> tuple[int, int]:
    """(context Tc, crop length) of windowed SMT on a stream of ``length`` tokens: the window is capped by
    the stream, and a crop holds Tc tokens for the encoder plus future - 1 more for the decoder's targets."""
    future = ModelConfig().future
    crop = min(length, config.window + future - 1)
    return max(1, crop - future + 1), crop  # a stream shorter than Tf: one memory, truncated targets


def sequential_depth(method: str, length: int) -> int:
    """Cell applications in series on one training step's gradient path: SMT's horizon K (within the
    sequence), BPTT's T."""
    return min(SMTConfig().horizon, length) if method.startswith("smt") else length


class TrainingStep:
    """One optimiser step of a method, as training runs it: loss, backward, clip to norm 1, AdamW."""

    def __init__(
        self, method: str, cell: str, config: BenchConfig, vocab: int | None = None, classes: int | None = None
    ):
        torch.manual_seed(config.seed)
        vocab = vocab or config.vocab
        model = ModelConfig(cell=cell, memory_size=config.memory_size)
        self.models = Models(model, vocab, classes or vocab).to(config.device)
        self.first_call_seconds = None  # includes torch.compile's warm-up
        smt = method.startswith("smt")
        self.loss_fn = smt_loss if smt else (bptt_loss if method == "bptt-fused" else loop_bptt_loss)
        sampled = method in ("smt-sampled", "smt-windowed")
        # the step as training runs it once the horizon has grown to K and the dynamics reach the teacher
        self.loss_config = (
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


def _later(tasks: list, later: list | None) -> None:
    """Memory is measured after every timing (see the module docstring): by whoever holds ``later``,
    or here and now when there is none."""
    if later is None:
        for task in tasks:
            task()
    else:
        later.extend(tasks)


def _set_peak(row: dict, call, device: str, base_mb: float = 0.0):
    def measure():
        step_mb = peak_memory_mb(call, device)
        row["peak_mb"] = None if step_mb is None else base_mb + step_mb

    return measure


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
            flop_counts = {
                method: call() if method == "smt-compiled" else count_flops(call) for method, call in calls.items()
            }
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
                    "sequential_depth": sequential_depth(method, length),
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
                memory.append(_set_peak(row, call, config.device))
            log(f"train {cell:>11} T={length:<5} " + "  ".join(f"{m} {s:.3f}s" for m, s in seconds.items()))
    _later(memory, later)
    return rows


# ------------------------------------------------------------------------------------------------
# inference


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
        _sync(device)
        start = time.perf_counter()
        stream(tokens[:, index])
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


class RNNStream:
    """The RNN generating: memory = cell.step(memory, token), then its next-token logits."""

    def __init__(self, rnn):
        self.rnn, self.memory = rnn, rnn.cell.initial_memory(1)

    def __call__(self, token):
        self.memory = self.rnn.cell.step(self.memory, token)
        return self.rnn.logits(self.memory)

    def state_bytes(self) -> int:
        return self.memory.numel() * self.memory.element_size()


class CachedTeacherStream:
    """The teacher generating with a key-value cache: encode_step, then decode the memory alone."""

    def __init__(self, teacher, capacity: int):
        self.teacher = teacher
        self.memory, self.cache = teacher.encode_step(None, batch=1, capacity=capacity)
        self.no_future = torch.zeros(1, 0, dtype=torch.long, device=self.memory.device)

    def __call__(self, token):
        self.memory, self.cache = self.teacher.encode_step(token, self.cache)
        return self.teacher.decode(self.memory, self.no_future)

    def state_bytes(self) -> int:
        return self.cache.nbytes() + self.memory.numel() * self.memory.element_size()


def uncached_teacher_logits(teacher, prefix: torch.Tensor) -> torch.Tensor:
    """Next-token logits without a cache: re-encode the whole prefix, decode its last memory."""
    memory = teacher.encode(prefix)[:, -1]
    return teacher.decode(memory, prefix[:, :0])


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
    streams = {
        "rnn": lambda: RNNStream(models.rnn),
        "teacher-kv-cache": lambda: CachedTeacherStream(models.teacher, longest + 2),
    }
    rows = {}
    for name, make in streams.items():
        stream, states = make(), {}
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
                        _set_peak(row, lambda: stream(tokens[:, index]), config.device, row["state_mb"])()
                    else:
                        stream(tokens[:, index])

        return measure

    memory = [stream_memory(name, make) for name, make in streams.items()]
    for context in contexts:
        row = rows["teacher-no-cache", context]
        call = torch.no_grad()(partial(uncached_teacher_logits, models.teacher, tokens[:, :context]))
        memory.append(_set_peak(row, call, config.device, row["state_mb"]))
    _later(memory, later)
    return list(rows.values())


# ------------------------------------------------------------------------------------------------
# optimisations, before and after in the same run


@contextmanager
def _swapped(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _before_after(name, cell, length, before, after, config, repeats, exact, note, later) -> dict:
    seconds = time_round_robin({"before": before, "after": after}, config.warmup, repeats, config.device)
    row = {
        "optimisation": name,
        "cell": cell,
        "length": length,
        "before_seconds": seconds["before"],
        "after_seconds": seconds["after"],
        "speedup": seconds["before"] / seconds["after"],
        "before_peak_mb": None,
        "after_peak_mb": None,
        "exact": exact,
        "note": note,
    }

    def measure():
        row["before_peak_mb"] = peak_memory_mb(before, config.device)
        row["after_peak_mb"] = peak_memory_mb(after, config.device)

    _later([measure], later)
    return row


def optimisation_rows(config: BenchConfig, log=print, later: list | None = None) -> list[dict]:
    """Each optimisation against the code without it, interleaved in one process."""
    rows = []
    # 1. SMT step: decode and read out only the windows that carry a label (retrieval: one per sequence)
    task, length = make_task("retrieval"), config.optimisation_length
    batch = task.sample(config.batch, length, torch.Generator().manual_seed(config.seed))
    batch = {key: value.to(config.device) for key, value in batch.items()}
    before_step, after_step = (TrainingStep("smt", "tanh", config, task.vocab_size, task.num_classes) for _ in range(2))

    def before(step=before_step):
        with _swapped(smt_module, "labelled_rows", lambda labelled, *tensors: tensors):
            step(batch)

    rows.append(
        _before_after(
            "smt: decode and read out labelled windows only",
            "tanh",
            length,
            before,
            partial(after_step, batch),
            config,
            config.repeats,
            True,
            "retrieval (one label per sequence), decoder on every window; same loss and gradients",
            later,
        )
    )
    # the same with the decoder on sampled windows, which are drawn among labelled ones: the readout's share
    before_step, after_step = (
        TrainingStep("smt-sampled", "tanh", config, task.vocab_size, task.num_classes) for _ in range(2)
    )
    rows.append(
        _before_after(
            "smt-sampled: read out labelled positions only",
            "tanh",
            length,
            partial(before, before_step),
            partial(after_step, batch),
            config,
            config.repeats,
            True,
            f"retrieval, decoder on {sampled_positions(config)} sampled windows; same loss and gradients",
            later,
        )
    )
    # 2. teacher without a cache: PyTorch's fused inference path off in Teacher.encode
    models = Models(ModelConfig(), config.vocab, config.vocab).to(config.device).eval()
    prefix = torch.randint(0, config.vocab, (1, config.encode_context), generator=torch.Generator().manual_seed(1))
    prefix = prefix.to(config.device)
    after = torch.no_grad()(partial(uncached_teacher_logits, models.teacher, prefix))

    def fused_path():
        with _swapped(teacher_module, "_without_fused_inference_path", nullcontext):
            after()

    rows.append(
        _before_after(
            "teacher encode: no fused inference path (eval, no grad)",
            "-",
            config.encode_context,
            fused_path,
            after,
            config,
            config.inference_repeats,
            True,
            "one token of the teacher without a cache; same memories to 1e-5",
            later,
        )
    )
    log("optimisations " + "  ".join(f"{r['optimisation'].split(':')[0]} x{r['speedup']:.2f}" for r in rows))
    return rows


def derived_rows(training: list[dict], config: BenchConfig) -> list[dict]:
    """Options compared inside the training matrix: decoder sampling, torch.compile, bf16 autocast."""
    table = {(r["method"], r["cell"], r["length"]): r for r in training}
    variants = {
        "smt-sampled": (
            f"smt: decoder on {sampled_positions(config)} sampled windows per sequence",
            False,
            "changes the loss: fewer decoder windows",
        ),
        "smt-compiled": ("smt: torch.compile", True, "first call (compile) in first_call_seconds"),
        "smt-bf16": ("smt: bf16 autocast (CUDA)", False, "bf16 numerics"),
    }
    rows = []
    for (method, cell, length), after in table.items():
        if method in variants and ("smt", cell, length) in table:
            before = table["smt", cell, length]
            name, exact, note = variants[method]
            rows.append(
                {
                    "optimisation": name,
                    "cell": cell,
                    "length": length,
                    "before_seconds": before["seconds_per_step"],
                    "after_seconds": after["seconds_per_step"],
                    "speedup": before["seconds_per_step"] / after["seconds_per_step"],
                    "before_peak_mb": before["peak_mb"],
                    "after_peak_mb": after["peak_mb"],
                    "exact": exact,
                    "note": note,
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------
# the run


def machine() -> dict:
    def first(path, pattern):
        try:
            with open(path) as handle:
                found = re.search(pattern, handle.read(), re.M)
            return found.group(1).strip() if found else None
        except OSError:
            return None

    memory_kb = first("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    info = {
        "cpu": first("/proc/cpuinfo", r"^model name\s*:(.*)$"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(int(memory_kb) / 2**20, 1) if memory_kb else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def targets(result: dict) -> list[dict]:
    """The speed and memory targets, each with the measured value and whether it is met."""
    training, inference = result["training"], result["inference"]
    seconds = {(r["method"], r["cell"], r["length"]): r["seconds_per_step"] for r in training}
    lengths = sorted({r["length"] for r in training})
    first, last = lengths[0], lengths[-1]
    rows = []
    for cell in dict.fromkeys(r["cell"] for r in training):
        bptt = seconds["bptt", cell, last] / seconds["bptt", cell, first]
        for method in ("smt", "smt-sampled", "smt-windowed"):
            growth = seconds[method, cell, last] / seconds[method, cell, first]
            rows.append(
                {
                    "target": f"{method} step grows less than bptt's from T={first} to T={last}",
                    "cell": cell,
                    "measured": f"{method} x{growth:.1f}, bptt x{bptt:.1f}",
                    "met": growth < bptt,
                }
            )
        for method in ("smt", "smt-sampled", "smt-windowed"):
            ratio = seconds[method, cell, last] / seconds["bptt", cell, last]
            rows.append(
                {
                    "target": f"{method} step no slower than the bptt loop at T={last}",
                    "cell": cell,
                    "measured": f"{ratio:.2f}x the bptt loop's time",
                    "met": ratio <= 1,
                }
            )
        for method in ("smt", "smt-sampled"):
            smt = next(r for r in training if (r["method"], r["cell"], r["length"]) == (method, cell, last))
            if "peak_fraction" in smt:
                rows.append(
                    {
                        "target": f"{method} step at >= 30% of the matmul peak",
                        "cell": cell,
                        "measured": f"{100 * smt['peak_fraction']:.1f}% at T={last}",
                        "met": smt["peak_fraction"] >= 0.3,
                    }
                )
    latency = {(r["model"], r["context"]): r["seconds_per_token"] for r in inference}
    contexts = sorted({r["context"] for r in inference})
    rnn, cell = [latency["rnn", c] for c in contexts], result["model_defaults"]["cell"]
    rows.append(
        {
            "target": "rnn per-token latency flat in context (max/min <= 1.5)",
            "cell": cell,
            "measured": f"max/min {max(rnn) / min(rnn):.2f} over {contexts[0]}..{contexts[-1]}",
            "met": max(rnn) / min(rnn) <= 1.5,
        }
    )
    at = 8192 if 8192 in contexts else contexts[-1]
    ratio = latency["teacher-no-cache", at] / latency["rnn", at]
    rows.append(
        {
            "target": f"rnn >= 10x cheaper per token than the teacher without cache at {at}",
            "cell": cell,
            "measured": f"{ratio:.0f}x",
            "met": ratio >= 10,
        }
    )
    return rows


def run_bench(config: BenchConfig, log=print) -> dict:
    """Every section, timings first and memory last; the result that docs/benchmarks.json holds."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    later: list = []
    peak = matmul_peak(config.matmul_size, 5, config.device)
    log(f"matmul peak {peak['gflops']:.1f} GFLOP/s")
    training = training_rows(config, peak["gflops"], log, later)
    inference = inference_rows(config, log, later)
    optimisations = optimisation_rows(config, log, later)
    log(f"memory pass ({len(later)} measurements)")
    for measure in later:
        measure()
    result = {
        "date": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": {**machine(), "load_before": load_before, "load_after": os.getloadavg()},
        "config": {**asdict(config), "decoder_positions": sampled_positions(config)},
        "model_defaults": asdict(ModelConfig()),
        "matmul": peak,
        "training": training,
        "inference": inference,
        "optimisations": optimisations + derived_rows(training, config),
    }
    result["targets"] = targets(result)
    return result
