"""A tiny SMT->DMT run that learns: the RNN alone (no teacher) ends well above chance."""

import torch

from smtrnn.config import RunConfig
from smtrnn.run import run
from smtrnn.train import TrainConfig


def test_smt_dmt_learns_recency_teacher_free(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(task="recency", length=16, method="smt+dmt", seed=0, task_options={"values": 4, "lag": 2})
    config.model.memory_size = 32
    config.model.teacher_width = 32
    config.model.future = 2
    config.smt.c_dyn, config.smt.c_unif, config.smt.dyn_warmup, config.smt.decoder_positions = 1.0, 0.01, 0, 0
    config.smt.length_grow = 0  # 150 steps: no room for a length curriculum
    config.train = TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=20, log_every=50)
    config.dmt_train = TrainConfig(steps=50, batch_size=16, lr=1e-3, warmup=5, log_every=25)
    result = run(config, tmp_path / "run", progress=False)
    chance = 1 / 4
    assert result["teacher_accuracy"] > 0.8
    assert result["accuracy"] > chance + 0.5, result
