"""One readable training loop: AdamW, warm-up + cosine schedule, clipping, JSONL metrics,
atomic checkpoints, exact resume, DistributedDataParallel under torchrun (see distributed.py). It
does not know which method it runs: it minimises whatever ``objective(batch) -> (loss, metrics)``
returns over the parameters it is given.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from smtrnn import checkpoint, distributed, interrupt, metrics
from smtrnn.errors import UserError


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps of this phase
    batch_size: int = 32  # sequences per step (the global batch under torchrun)
    lr: float = 2e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 100  # linear learning-rate warm-up, in steps
    weight_decay: float = 0.0  # AdamW weight decay
    clip: float = 1.0  # max gradient norm; 0 disables
    log_every: int = 25  # steps between lines of metrics.jsonl
    checkpoint_every: int = 500  # steps between checkpoints (and always at the end)
    eval_every: int = 0  # score the RNN alone on held-out data every N steps (into metrics.jsonl); 0 = only at the end

    def validate(self):
        if self.steps < 0:
            raise UserError(f"steps must be non-negative, got {self.steps}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise UserError("checkpoint-every and log-every must be positive")
        if self.eval_every < 0:
            raise UserError(f"eval-every must be 0 (only at the end) or positive, got {self.eval_every}")


class Diverged(UserError):
    """The loss became NaN or infinite."""


# glibc's heap, handed back every this many steps (``release_freed_memory``)
RELEASE_EVERY = 25


def _c_library():
    if not sys.platform.startswith("linux"):
        return None
    try:
        library = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return library if hasattr(library, "malloc_trim") else None  # glibc only (not musl)


_LIBC = _c_library()


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    When a step's tensor shapes change from step to step (SMT's horizon starts, the decoder's positions)
    the heap fragments: freed blocks are reused only in part and stay resident, so a long run's memory
    grows without bound although nothing is held. Measured on copy at T=256 (`smtrnn train --task copy
    --length 256 --method smt`, one thread, schedules off): 13 MB a step, 0.9 to 1.7 GB over 80 steps,
    8.7 GB in a run killed for memory after 700; with this every 25 steps it stays at 0.9-1.3 GB, at no
    measurable cost in steps per second."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # methods draw on the device of their tensors
    return state


def _set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _log(run_dir: Path | None, record: dict, hook: Callable[[dict], None] | None = None) -> None:
    if is_main_process():
        if run_dir is not None:
            metrics.append(run_dir, record)
        if hook is not None:
            hook(record)


@interrupt.catching
def train(
    objective: nn.Module,
    parameters: list[nn.Parameter],
    sample: Callable[[torch.Generator, int], dict],
    config: TrainConfig,
    *,
    model: nn.Module,
    phase: str = "train",
    earlier_phases: tuple = (),
    run_dir: Path | None = None,
    generator: torch.Generator,
    evaluate: Callable[[], dict] | None = None,
    progress: bool = True,
    finish: Callable[[], None] | None = None,
    log_hook: Callable[[dict], None] | None = None,
) -> dict:
    """Minimise ``objective`` for ``config.steps`` steps; resume from ``run_dir`` when it holds a
    checkpoint of this phase. ``model`` is what checkpoints save; ``finish`` runs after the last step,
    before the final checkpoint (so a resumed run never repeats it); ``log_hook`` also receives every logged
    record (e.g. a TensorBoard writer); returns the last logged metrics. SIGINT or SIGTERM stops it after
    the current step, with a checkpoint at that step (``interrupt.Interrupted``)."""
    config.validate()
    distributed.check_batch_size(config.batch_size)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    step, elapsed = 0, 0.0
    if run_dir is not None and (folder := checkpoint.latest_checkpoint(run_dir)) is not None:
        meta, _ = checkpoint.load_state(folder, None)
        if meta.get("phase") == phase:
            checkpoint.load_weights(model, folder)
            meta, rng = checkpoint.load_state(folder, optimizer)
            _set_rng_state(distributed.select_rng(rng), generator)
            step, elapsed = meta["step"], meta.get("seconds", 0.0)
    if run_dir is not None:
        # also when starting this phase afresh: drop lines of an attempt killed before its first checkpoint
        if is_main_process():
            metrics.truncate(run_dir, phase, step, list(earlier_phases))
        distributed.check_same_start(phase, step, run_dir)

    def save(at_step: int, seconds: float) -> None:
        if run_dir is not None:
            rng = distributed.gather_rng(_rng_state(generator))  # collective: every rank takes part
            if is_main_process():
                meta = {
                    "phase": phase,
                    "step": at_step,
                    "steps": config.steps,
                    "seconds": seconds,
                    "world_size": distributed.world_size(),
                }
                checkpoint.save_checkpoint(run_dir, f"{phase}-{at_step:08d}", model, optimizer, rng, meta)

    last: dict = {}
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=phase,
        disable=not (progress and is_main_process()),
        dynamic_ncols=True,
        leave=False,
    )
    started = time.perf_counter() - elapsed
    step_fn = distributed.wrap(objective)  # DistributedDataParallel under torchrun, else objective
    step_fn.train()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        # every rank draws the global batch and keeps its slice: see distributed.py
        batch = distributed.shard(sample(generator, step))
        # the step, for methods with schedules of their own (SMT's dynamics warm-up, horizon growth)
        loss, step_metrics = step_fn(batch, step)
        global_loss = distributed.mean(loss)  # the loss itself for one process
        if not torch.isfinite(global_loss):
            bar.close()
            kept = (
                "the last good checkpoint is kept"
                if run_dir is not None and checkpoint.latest_checkpoint(run_dir) is not None
                else "nothing was saved: a corrected command may reuse the run directory"
            )
            raise Diverged(f"{phase}: loss became {global_loss.item()} at step {step + 1}; {kept}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip:
            torch.nn.utils.clip_grad_norm_(parameters, config.clip)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % RELEASE_EVERY == 0:
            release_freed_memory()
        evaluating = evaluate is not None and config.eval_every and step % config.eval_every == 0
        if step % config.log_every == 0 or step == config.steps or evaluating:
            last = {
                "phase": phase,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": global_loss.item(),
                **distributed.mean_metrics(step_metrics),
                "seconds": round(time.perf_counter() - started, 3),
            }
            if evaluating and evaluate is not None:
                last.update(evaluate())
                step_fn.train()
            _log(run_dir, last, log_hook)
            bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
        if step == config.steps and finish is not None:
            finish()
        saved = step % config.checkpoint_every == 0 or step == config.steps
        if saved:
            save(step, time.perf_counter() - started)
        signum = distributed.max_over_ranks(interrupt.pending())  # every rank stops at the same step
        if signum:
            if not saved:
                save(step, time.perf_counter() - started)
            bar.close()
            kept = "; checkpoint saved, the same command resumes" if run_dir is not None else ""
            raise interrupt.Interrupted(signum, f"interrupted ({interrupt.name(signum)}) at {phase} step {step}{kept}")
    bar.close()
    return last
