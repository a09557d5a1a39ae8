"""Single-seed variants of SMT->DMT on needle retrieval, behind docs/hyperparameters.md.

    python scripts/retrieval_variants.py TASK LENGTH SMT_STEPS DMT_STEPS DECODER_NOISE INPUT_NOISE CELL [C_UNIF]

DECODER_NOISE adds Gaussian noise (in units of the memories' spread) to the memories the teacher's
decoder reads during SMT, so the teacher must keep what the future needs in directions that survive
noise; it is an experiment here, not a library option. INPUT_NOISE is SMTConfig.input_noise (noise
on the memories the cell reads). Everything else is the library's defaults with the future window
capped at 16 and the warm-ups scaled to the budget. Prints one JSON line.
"""
import json
import sys

import torch

import smtrnn.methods.smt as smt
from smtrnn.methods.common import memory_spread
from smtrnn.horizon_study import BY_NAME
from smtrnn.run import RunConfig, run

torch.set_num_threads(1)
task, length, steps, dmt_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
decoder_noise, input_noise, cell = float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
c_unif = float(sys.argv[8]) if len(sys.argv) > 8 else 0.01
plain_predictive_loss = smt.predictive_loss


def noisy_predictive_loss(teacher, memories, x, y, config):
    if decoder_noise and teacher.training:
        scale = decoder_noise * memory_spread(memories[:, 1:]).detach().sqrt()
        memories = memories + scale * torch.randn_like(memories)
    return plain_predictive_loss(teacher, memories, x, y, config)


smt.predictive_loss = noisy_predictive_loss
config = RunConfig(task=task, length=length, method="smt+dmt")
BY_NAME["paper"].change(config)  # the recipe these numbers were measured with: one-step SMT, sinusoidal teacher
config.model.cell, config.model.future = cell, min(16, length)
config.train.steps, config.dmt_train.steps = steps, dmt_steps
config.train.warmup = min(100, steps // 5)
config.smt.dyn_warmup, config.smt.input_noise, config.smt.c_unif = min(300, steps // 2), input_noise, c_unif
config.train.checkpoint_every = config.dmt_train.checkpoint_every = 10**6
name = f"{task}-{length}-{steps}-{dmt_steps}-{decoder_noise}-{input_noise}-{cell}-{c_unif}"
result = run(config, f"runs/variants/{name}", progress=False)
keys = ["task", "length", "accuracy", "teacher_accuracy", "readout_accuracy", "one_step_accuracy", "drift", "seconds"]
print(json.dumps({"decoder_noise": decoder_noise, "input_noise": input_noise, "cell": cell, "c_unif": c_unif,
                  **{key: result.get(key) for key in keys}}))
