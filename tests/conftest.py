"""Shared test helpers: tiny configs that train in well under a second."""

from __future__ import annotations

import pytest

from smtrnn.models import ModelConfig
from smtrnn.run import RunConfig
from smtrnn.train import TrainConfig


def make_tiny_config(method: str = "smt+dmt", steps: int = 6, dmt_steps: int = 4, **top) -> RunConfig:
    """Parity at T=12 with a 16-unit tanh RNN and a one-layer teacher."""
    config = RunConfig(
        task="parity",
        length=12,
        method=method,
        seed=3,
        eval_batches=1,
        model=ModelConfig(
            memory_size=16,
            embed_dim=8,
            readout_hidden=16,
            teacher_width=16,
            teacher_layers=1,
            teacher_heads=2,
            future=2,
        ),
        train=TrainConfig(steps=steps, batch_size=8, warmup=1, log_every=1, checkpoint_every=3),
        dmt_train=TrainConfig(steps=dmt_steps, batch_size=8, warmup=1, log_every=1, checkpoint_every=2),
        **top,
    )
    config.smt.uniformity_samples = 32
    config.smt.horizon, config.smt.horizon_grow, config.smt.dyn_warmup, config.smt.teacher_delay = 2, 1, 1, 0
    return config


@pytest.fixture
def tiny_config():
    """``tiny_config(method=..., steps=..., dmt_steps=...)``: a fresh tiny RunConfig."""
    return make_tiny_config
