"""Checkpoints: exact round trips of weights, optimizer state and RNG state; ``latest`` names the
newest; damaged or mismatched checkpoints are user errors; atomic writes leave nothing behind."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import smtrnn
from smtrnn import checkpoint
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.methods import phases
from smtrnn.models import ModelConfig, Models, tiny_model
from smtrnn.run import read_run, run
from smtrnn.train import TrainConfig


def tiny_models(memory_size=8, seed=0, cell="lstm") -> Models:
    torch.manual_seed(seed)
    return Models(tiny_model(cell=cell, memory_size=memory_size), 5, 4)


def trained(models, steps=3, seed=1):
    """A few AdamW steps so the optimizer has real state (step counts, both moments)."""
    optimizer = torch.optim.AdamW(models.parameters(), lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 5, (2, 6), generator=generator)
        logits, _ = models.rnn(x)
        loss = logits.logsumexp(-1).mean() + models.teacher.encode(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def rng_state(generator):
    return {"torch": torch.get_rng_state(), "data": generator.get_state()}


def assert_same_tensors(left: dict, right: dict):
    assert set(left) == set(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key], right[key]), key


def test_round_trip_is_exact(tmp_path):
    models = tiny_models()
    optimizer = trained(models)
    generator = torch.Generator().manual_seed(123)
    torch.randn(3, generator=generator)
    torch.randn(3)  # move the global RNG away from any seed
    saved_rng = rng_state(generator)
    meta = {"phase": "smt", "step": 3, "steps": 10, "seconds": 1.5}
    folder = checkpoint.save_checkpoint(tmp_path, "smt-00000003", models, optimizer, saved_rng, meta)
    assert folder == tmp_path / "checkpoints" / "smt-00000003"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "state.safetensors", "state.json"}

    # a fresh model and optimizer with different weights and no state
    restored = tiny_models(seed=99)
    assert not torch.equal(restored.rnn.readout.net[1].weight, models.rnn.readout.net[1].weight)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-2, weight_decay=0.1)
    checkpoint.load_weights(restored, folder)
    loaded_meta, loaded_rng = checkpoint.load_state(folder, restored_optimizer)
    assert_same_tensors(restored.state_dict(), models.state_dict())
    assert loaded_meta == meta
    assert_same_tensors(loaded_rng, saved_rng)

    original_state, loaded_state = optimizer.state_dict(), restored_optimizer.state_dict()
    assert set(original_state["state"]) == set(loaded_state["state"])
    for index, values in original_state["state"].items():
        assert set(values) == set(loaded_state["state"][index])
        for name, value in values.items():
            other = loaded_state["state"][index][name]
            if torch.is_tensor(value):
                assert value.dtype == other.dtype and torch.equal(value, other), (index, name)
            else:
                assert value == other
    normalise = lambda groups: json.loads(json.dumps(groups))  # tuples vs lists
    assert normalise(original_state["param_groups"]) == normalise(loaded_state["param_groups"])

    # the RNG state restores the exact stream
    torch.set_rng_state(loaded_rng["torch"])
    resumed_generator = torch.Generator()
    resumed_generator.set_state(loaded_rng["data"])
    torch.set_rng_state(saved_rng["torch"])
    expected_global = torch.randn(4)
    torch.set_rng_state(loaded_rng["torch"])
    assert torch.equal(torch.randn(4), expected_global)
    assert torch.equal(torch.randn(4, generator=resumed_generator), torch.randn(4, generator=generator))

    # and training continues identically from both
    trained_more = [trained_after(m, o) for m, o in ((models, optimizer), (restored, restored_optimizer))]
    assert_same_tensors(*trained_more)


def trained_after(models, optimizer):
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):
        x = torch.randint(0, 5, (2, 6), generator=generator)
        loss = models.rnn(x)[0].logsumexp(-1).mean() + models.teacher.encode(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return models.state_dict()


def test_latest_names_the_newest_and_old_ones_are_pruned(tmp_path):
    models = tiny_models()
    rng = rng_state(torch.Generator())
    assert checkpoint.latest_checkpoint(tmp_path) is None
    for step in (5, 10, 15):
        with torch.no_grad():
            models.rnn.cell.initial.fill_(step)
        checkpoint.save_checkpoint(tmp_path, f"train-{step:08d}", models, None, rng, {"phase": "train", "step": step})
        latest = checkpoint.latest_checkpoint(tmp_path)
        assert latest.name == f"train-{step:08d}"
        assert checkpoint.load_state(latest, None)[0]["step"] == step
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "train-00000015"
    # keep=1 by default: only the newest folder is left, and no staging or temporary files
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "train-00000015"]
    restored = tiny_models(seed=3)
    checkpoint.load_weights(restored, checkpoint.latest_checkpoint(tmp_path))
    assert torch.equal(restored.rnn.cell.initial, torch.full_like(restored.rnn.cell.initial, 15))


def test_the_last_checkpoint_of_an_earlier_phase_stays(tmp_path):
    models, rng = tiny_models(), rng_state(torch.Generator())
    for name in ("smt-00000001", "smt-00000002", "dmt-00000001", "dmt-00000002"):
        checkpoint.save_checkpoint(tmp_path, name, models, None, rng, {"phase": name[:3]})
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert folders == ["dmt-00000002", "smt-00000002"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "dmt-00000002"


def test_keep_two(tmp_path):
    models, rng = tiny_models(), rng_state(torch.Generator())
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, f"p-{step}", models, None, rng, {"step": step}, keep=2)
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert folders == ["p-2", "p-3"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "p-3"


def test_resaving_the_same_name_replaces_it(tmp_path):
    models, rng = tiny_models(), rng_state(torch.Generator())
    checkpoint.save_checkpoint(tmp_path, "same", models, None, rng, {"step": 1})
    with torch.no_grad():
        models.rnn.cell.initial.fill_(0.25)
    checkpoint.save_checkpoint(tmp_path, "same", models, None, rng, {"step": 2})
    folder = checkpoint.latest_checkpoint(tmp_path)
    assert checkpoint.load_state(folder, None)[0] == {"step": 2}
    restored = tiny_models(seed=4)
    checkpoint.load_weights(restored, folder)
    assert torch.equal(restored.rnn.cell.initial, models.rnn.cell.initial)


@pytest.mark.parametrize("keep_bytes", [0, 7, 100, -10])
def test_truncated_model_file_is_a_user_error(tmp_path, keep_bytes):
    models = tiny_models()
    folder = checkpoint.save_checkpoint(tmp_path, "c", models, None, rng_state(torch.Generator()), {"step": 1})
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes] if keep_bytes >= 0 else data[:keep_bytes])
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load_weights(tiny_models(seed=1), folder)


def test_truncated_state_file_is_a_user_error(tmp_path):
    models = tiny_models()
    optimizer = trained(models, steps=1)
    folder = checkpoint.save_checkpoint(tmp_path, "c", models, optimizer, rng_state(torch.Generator()), {"step": 1})
    path = folder / "state.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load_state(folder, None)
    (folder / "state.json").write_text('{"meta": ')
    with pytest.raises(UserError):
        checkpoint.read_json(folder / "state.json")


@pytest.mark.parametrize("pointer", ["removed", "empty"])
def test_a_lost_latest_pointer_falls_back_to_the_newest_complete_folder(tmp_path, pointer):
    """A kill between a folder's rename and the pointer's write leaves complete folders and no pointer:
    they are the run's checkpoints still, not a run that never saved one (whose folder a fresh start
    would overwrite)."""
    models, rng = tiny_models(), rng_state(torch.Generator())
    checkpoint.save_checkpoint(tmp_path, "smt-00000004", models, None, rng, {"step": 4})
    time.sleep(0.01)  # distinct modification times on any file system's clock
    newest = checkpoint.save_checkpoint(tmp_path, "dmt-00000002", models, None, rng, {"step": 2})
    (tmp_path / "checkpoints" / ".staging-x").mkdir()  # a writer killed mid-checkpoint: not a checkpoint
    latest = tmp_path / "checkpoints" / "latest"
    latest.unlink() if pointer == "removed" else latest.write_text("")
    assert checkpoint.latest_checkpoint(tmp_path) == newest
    # a prune killed part-way through an older folder: incomplete, and newer by the folder's own time
    time.sleep(0.01)
    older = checkpoint.save_checkpoint(tmp_path, "smt-00000008", models, None, rng, {"step": 8}, keep=2)
    latest.unlink() if pointer == "removed" else latest.write_text("")
    (older / "model.safetensors").unlink()
    assert checkpoint.latest_checkpoint(tmp_path) == newest


def test_missing_checkpoint_named_by_latest_is_a_user_error(tmp_path):
    models = tiny_models()
    folder = checkpoint.save_checkpoint(tmp_path, "c", models, None, rng_state(torch.Generator()), {"step": 1})
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing"):
        checkpoint.latest_checkpoint(tmp_path)


@pytest.mark.parametrize("other", [dict(memory_size=12), dict(cell="gru")])
def test_mismatched_model_is_a_user_error(tmp_path, other):
    folder = checkpoint.save_checkpoint(tmp_path, "c", tiny_models(), None, rng_state(torch.Generator()), {"step": 1})
    different = tiny_models(**other)
    before = {k: v.clone() for k, v in different.state_dict().items()}
    with pytest.raises(UserError):
        checkpoint.load_weights(different, folder)
    assert_same_tensors(different.state_dict(), before)  # nothing half-loaded


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "file.json"
    checkpoint.write_atomic(target, b"first")
    checkpoint.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    checkpoint.write_json(tmp_path / "value.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "value.json").read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(os.listdir(tmp_path)) == ["file.json", "value.json"]
    # a failed write keeps the old file and removes its temporary
    with pytest.raises(TypeError):
        checkpoint.write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path)) == ["file.json", "value.json"]


def test_read_json_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing"):
        checkpoint.read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.read_json(tmp_path / "bad.json")


# ================================================================================================
# run(): files, idempotent re-runs, exact resume after an interruption, every method

SMT_STEPS, DMT_STEPS = 12, 6


def run_config(method: str, init: str | None = None) -> RunConfig:
    config = RunConfig(
        task="parity",
        length=16,
        method=method,
        seed=3,
        eval_batches=2,
        init=init,
        model=ModelConfig(
            cell="tanh",
            memory_size=16,
            embed_dim=8,
            readout_hidden=16,
            teacher_width=32,
            teacher_layers=1,
            teacher_heads=4,
            future=2,
        ),
        train=TrainConfig(steps=SMT_STEPS, batch_size=8, warmup=2, log_every=2, checkpoint_every=4),
        dmt_train=TrainConfig(steps=DMT_STEPS, batch_size=8, lr=3e-4, warmup=2, log_every=2, checkpoint_every=3),
    )
    if method == "tbptt":
        config.bptt.truncate = 4
    # draws from the global RNG (sampled uniformity tokens, random DMT start), so that resuming
    # must restore it exactly
    config.smt.uniformity_samples = 64
    config.dmt.start, config.dmt.rollout = "teacher", 10
    return config


def phase_names(config: RunConfig) -> list[str]:
    return [phase.name for phase in phases(config)]


class Interrupted(Exception):
    pass


class Sampler:
    """sample_hook: counts batches drawn; raises Interrupted at batch ``stop_at`` (a kill)."""

    def __init__(self, stop_at: int | None = None):
        self.count, self.stop_at = 0, stop_at

    def __call__(self, batch):
        self.count += 1
        if self.stop_at is not None and self.count == self.stop_at:
            raise Interrupted
        return batch


def read_metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    for record in records:
        record.pop("seconds")  # wall time is the one thing allowed to differ
    return records


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Everything the latest checkpoint holds: weights, optimizer moments, RNG states."""
    folder = checkpoint.latest_checkpoint(run_dir)
    return {
        **{"model." + k: v for k, v in load_file(folder / "model.safetensors").items()},
        **{"state." + k: v for k, v in load_file(folder / "state.safetensors").items()},
    }


def without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "phase_seconds")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """finished(method) -> (config, run_dir, result): each tiny run trained once per module."""
    cache = {}

    def get(method: str):
        if method not in cache:
            init = str(get("smt")[1]) if method == "dmt" else None
            config = run_config(method, init)
            run_dir = tmp_path_factory.mktemp(method.replace("+", "-"))
            sampler = Sampler()
            result = run(copy.deepcopy(config), run_dir, progress=False, sample_hook=sampler)
            steps = SMT_STEPS + (DMT_STEPS if method == "smt+dmt" else 0)
            assert sampler.count == steps  # one batch per optimiser step
            cache[method] = (config, run_dir, result)
        return cache[method]

    return get


@pytest.mark.parametrize("method", ["smt", "smt+dmt", "bptt", "tbptt", "dmt"])
def test_run_writes_its_files(method, finished):
    config, run_dir, result = finished(method)
    names = phase_names(config)
    assert {"config.json", "metrics.jsonl", "result.json", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert RunConfig.from_dict(checkpoint.read_json(run_dir / "config.json")).to_dict() == config.to_dict()
    assert checkpoint.read_json(run_dir / "result.json") == json.loads(json.dumps(result))
    last_steps = DMT_STEPS if method == "smt+dmt" else SMT_STEPS
    meta = checkpoint.load_state(checkpoint.latest_checkpoint(run_dir), None)[0]
    assert (meta["phase"], meta["step"]) == (names[-1], last_steps)
    records = read_metrics(run_dir)
    expected = [(name, step) for name, steps in zip(names, [SMT_STEPS, DMT_STEPS]) for step in range(2, steps + 1, 2)]
    assert [(r["phase"], r["step"]) for r in records] == expected
    assert all(math.isfinite(r["loss"]) for r in records)
    if "smt" in names:
        assert {"pred", "dyn", "unif", "readout", "teacher_acc"} <= set(records[0])
    if "dmt" in names:
        assert {"dyn", "drift", "rollout_acc"} <= set(records[-1])
    assert result["method"] == method and result["steps"] == sum([SMT_STEPS, DMT_STEPS][: len(names)])
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["loss"])
    if method in ("smt", "smt+dmt", "dmt"):
        assert {"teacher_accuracy", "readout_accuracy", "one_step_accuracy", "drift"} <= set(result)
    # the gradient path of one training step: SMT's horizon K (at most T), one step for DMT, T for BPTT
    horizon = min(config.smt.horizon, 16)
    assert result["sequential_depth"] == {"smt": horizon, "smt+dmt": horizon, "dmt": 1, "bptt": 16, "tbptt": 4}[method]


@pytest.mark.parametrize("method", ["smt+dmt", "bptt", "dmt"])
def test_rerunning_a_finished_run_does_no_training(method, finished):
    config, run_dir, result = finished(method)
    before_tensors, before_metrics = final_tensors(run_dir), (run_dir / "metrics.jsonl").read_text()
    sampler = Sampler()
    again = run(copy.deepcopy(config), run_dir, progress=False, sample_hook=sampler)
    assert sampler.count == 0, "a finished run trained again"
    assert again == result
    assert (run_dir / "metrics.jsonl").read_text() == before_metrics
    assert_same_tensors(final_tensors(run_dir), before_tensors)


@pytest.mark.parametrize(
    "method, stop_at",
    [("smt+dmt", 7), ("smt+dmt", SMT_STEPS + 2), ("smt+dmt", SMT_STEPS + 5), ("bptt", 11)],
    ids=["in-smt-phase", "before-first-dmt-checkpoint", "in-dmt-phase", "bptt"],
)
def test_resume_after_an_interruption_is_bit_identical(method, stop_at, finished, tmp_path):
    config, whole_dir, whole = finished(method)
    with pytest.raises(Interrupted):
        run(copy.deepcopy(config), tmp_path, progress=False, sample_hook=Sampler(stop_at=stop_at))
    assert not (tmp_path / "result.json").exists()
    meta = checkpoint.load_state(checkpoint.latest_checkpoint(tmp_path), None)[0]
    done = meta["step"] + (SMT_STEPS if meta["phase"] == "dmt" else 0)
    assert 0 < done < stop_at - 1  # training resumes from an earlier checkpoint: a step was lost
    sampler = Sampler()
    resumed = run(copy.deepcopy(config), tmp_path, progress=False, sample_hook=sampler)
    total = SMT_STEPS + (DMT_STEPS if method == "smt+dmt" else 0)
    assert sampler.count == total - done  # training continues from the checkpoint, no step twice
    assert_same_tensors(final_tensors(tmp_path), final_tensors(whole_dir))  # weights, optimizer, RNG
    assert read_metrics(tmp_path) == read_metrics(whole_dir)  # lines after the checkpoint replaced
    assert without_time(resumed) == without_time(whole)


def test_dmt_init_starts_from_the_smt_run_and_keeps_its_teacher(finished, tmp_path):
    _, smt_dir, _ = finished("smt")
    _, dmt_dir, _ = finished("dmt")
    smt_weights = load_file(checkpoint.latest_checkpoint(smt_dir) / "model.safetensors")
    dmt_weights = load_file(checkpoint.latest_checkpoint(dmt_dir) / "model.safetensors")
    assert set(smt_weights) == set(dmt_weights)
    teacher = [k for k in smt_weights if k.startswith("teacher.")]
    rnn = [k for k in smt_weights if k.startswith("rnn.")]
    assert teacher and all(torch.equal(smt_weights[k], dmt_weights[k]) for k in teacher)  # frozen, inherited
    assert any(not torch.equal(smt_weights[k], dmt_weights[k]) for k in rnn)  # fine-tuned
    # DMT moved the RNN a little from the SMT weights (lr 1e-3, 12 steps), not from a fresh init
    torch.manual_seed(12345)
    fresh = Models(run_config("dmt").model, 2, 2).state_dict()  # parity: 2 tokens, 2 classes
    distance = lambda a, b: sum((a[k].float() - b[k].float()).pow(2).sum() for k in rnn).sqrt()
    assert distance(dmt_weights, smt_weights) < 0.5 * distance(dmt_weights, fresh)
    # a DMT run needs --init, and an --init with another model is refused
    with pytest.raises(UserError, match="--init"):
        run(run_config("dmt"), tmp_path / "no-init", progress=False)
    other = run_config("dmt", init=str(smt_dir))
    other.model.memory_size = 8
    with pytest.raises(UserError, match="different model"):
        run(other, tmp_path / "other", progress=False)


def test_smt_then_dmt_keeps_smts_last_checkpoint_to_start_from_and_to_score(finished, tmp_path):
    _, both_dir, _ = finished("smt+dmt")
    _, smt_dir, _ = finished("smt")
    _, dmt_dir, _ = finished("dmt")  # DMT started from the smt run
    folders = sorted(p.name for p in (both_dir / "checkpoints").iterdir() if p.is_dir())
    assert folders == [f"dmt-{DMT_STEPS:08d}", f"smt-{SMT_STEPS:08d}"]  # the last of each phase
    smt_last = both_dir / "checkpoints" / f"smt-{SMT_STEPS:08d}"
    # the SMT phase of smt+dmt is the smt run (same seed and steps): its last checkpoint is that run's
    weights = load_file(smt_last / "model.safetensors")
    assert_same_tensors(weights, load_file(checkpoint.latest_checkpoint(smt_dir) / "model.safetensors"))
    # so DMT started from that folder is, bit for bit, DMT started from the smt run
    run(run_config("dmt", init=str(smt_last)), tmp_path / "dmt", progress=False)
    assert_same_tensors(final_tensors(tmp_path / "dmt"), final_tensors(dmt_dir))
    # the folder is read back as that checkpoint, not the run's final weights
    loaded = read_run(smt_last)
    assert (loaded.checkpoint["phase"], loaded.checkpoint["step"], loaded.finished) == ("smt", SMT_STEPS, False)
    assert read_run(both_dir).checkpoint["phase"] == "dmt" and read_run(both_dir).finished
    rnn = smtrnn.load(smt_last)
    for key, value in rnn.state_dict().items():
        assert torch.equal(value, weights["rnn." + key])


def test_a_different_config_in_the_same_directory_is_refused(finished):
    config, run_dir, _ = finished("bptt")
    changed = copy.deepcopy(config)
    changed.train.lr = 5e-4
    with pytest.raises(UserError, match="different config"):
        run(changed, run_dir, progress=False)
