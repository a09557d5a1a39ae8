"""The benchmark: well-formed rows from every section at tiny sizes, the teacher's key-value cache
path equal to its full encode, and the SMT step's label cut exact. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from smtrnn.cli import main
from smtrnn.experiments import bench
from smtrnn.experiments.bench import BenchConfig
from smtrnn.experiments.bench.page import blocks, figures
from smtrnn.experiments.pages import render
from smtrnn.methods import SMTConfig, smt_loss
from smtrnn.methods import smt as smt_module
from smtrnn.models import ModelConfig, Models
from smtrnn.tasks import make_task
from smtrnn.teacher import POSITIONS, Teacher, TeacherConfig, sinusoid

TINY = BenchConfig(
    lengths=(6, 12),
    cells=("tanh", "transformer"),
    batch=2,
    warmup=0,
    repeats=1,
    contexts=(4, 10),
    inference_repeats=1,
    matmul_size=32,
    optimisation_length=12,
    encode_context=10,
)


@pytest.fixture(scope="module")
def result():
    return bench.run_bench(TINY, log=lambda line: None)


def _teacher(space, tokens, memory_size, layers=2, heads=2, positions="none"):
    torch.manual_seed(0)
    return Teacher(7, 5, memory_size, space, tokens, TeacherConfig(16, layers, 1, heads, 3, positions)).double()


@pytest.mark.parametrize("space, tokens, memory_size", [("tanh", 1, 8), ("rms", 2, 8), ("lstm", 1, 8)])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("positions", POSITIONS)
def test_cached_encode_step_equals_encode(space, tokens, memory_size, mode, positions):
    """Token by token through the key-value cache (capacity doubling on the way) = one full encode,
    with every position scheme."""
    teacher = _teacher(space, tokens, memory_size, positions=positions)
    teacher.train(mode == "train")
    x = torch.randint(0, 7, (3, 13), generator=torch.Generator().manual_seed(1))
    with torch.set_grad_enabled(mode == "train"):
        full = teacher.encode(x)
        memory, cache = teacher.encode_step(None, batch=3, capacity=2)
        streamed = [memory]
        for t in range(x.shape[1]):
            memory, cache = teacher.encode_step(x[:, t], cache)
            streamed.append(memory)
    torch.testing.assert_close(torch.stack(streamed, 1), full, rtol=1e-10, atol=1e-10)
    assert cache.length == x.shape[1] + 1
    width = teacher.config.width
    assert cache.nbytes() == 2 * teacher.config.layers * 3 * (x.shape[1] + 1) * width * 8


def test_cached_stream_gives_the_teachers_next_token_logits():
    teacher = _teacher("rms", 2, 8).float().eval()
    x = torch.randint(0, 7, (1, 9), generator=torch.Generator().manual_seed(2))
    stream = bench.CachedTeacherStream(teacher, capacity=4)
    with torch.no_grad():
        for t in range(x.shape[1]):
            logits = stream(x[:, t])
        torch.testing.assert_close(logits, bench.uncached_teacher_logits(teacher, x), rtol=1e-5, atol=1e-5)


def test_sinusoid_start_is_a_slice_of_the_table():
    torch.testing.assert_close(sinusoid(3, 8, start=5), sinusoid(8, 8)[5:], rtol=0, atol=0)


def test_smt_label_cut_is_exact():
    """Decoding and reading out only labelled windows leaves the SMT loss, metrics and gradients."""
    task = make_task("retrieval")
    batch = task.sample(3, 24, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    models = Models(ModelConfig(memory_size=8, teacher_width=16, readout_hidden=16), task.vocab_size, task.num_classes)
    outcomes = []
    for cut in (True, False):
        saved = smt_module.labelled_rows
        if not cut:
            smt_module.labelled_rows = lambda labelled, *tensors: tensors
        try:
            models.zero_grad()
            loss, metrics = smt_loss(models, batch, SMTConfig())
            loss.backward()
        finally:
            smt_module.labelled_rows = saved
        outcomes.append((loss.detach(), metrics, [p.grad.clone() for p in models.parameters() if p.grad is not None]))
    (loss_cut, metrics_cut, grads_cut), (loss_all, metrics_all, grads_all) = outcomes
    torch.testing.assert_close(loss_cut, loss_all, rtol=1e-6, atol=1e-7)
    for name in metrics_all:
        torch.testing.assert_close(metrics_cut[name], metrics_all[name], rtol=1e-6, atol=1e-7)
    assert len(grads_cut) == len(grads_all)
    for cut, full in zip(grads_cut, grads_all):
        torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-7)


def test_labelled_rows_keeps_one_row_when_nothing_is_labelled():
    rows = torch.arange(8.0).reshape(4, 2)
    (kept,) = smt_module.labelled_rows(torch.zeros(4, dtype=torch.bool), rows)
    assert kept.shape == (1, 2)
    (all_rows,) = smt_module.labelled_rows(torch.ones(4, dtype=torch.bool), rows)
    assert all_rows is rows


def test_flop_count_knows_cpu_flash_attention():
    q = torch.randn(2, 3, 16, 8)
    full = bench.count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    causal = bench.count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert full == 2 * (2 * 2 * 3 * 16 * 16 * 8)  # two [16 x 8] @ [8 x 16]-sized products per head
    assert causal == full // 2


def test_peak_memory_sees_a_large_temporary():
    peak = bench.peak_memory_mb(lambda: torch.ones(8 * 2**20).sum())  # 32 MiB, freed at once
    if peak is None:
        pytest.skip("no /proc or glibc here")
    assert 28 < peak < 200


def test_training_rows_are_well_formed(result):
    rows = result["training"]
    keys = {
        "method",
        "cell",
        "length",
        "batch",
        "seconds_per_step",
        "tokens_per_second",
        "peak_mb",
        "sequential_depth",
        "gflop_per_step",
        "achieved_gflops",
        "peak_fraction",
    }
    assert {(r["cell"], r["method"]) for r in rows} == {
        ("tanh", "smt"),
        ("tanh", "smt-sampled"),
        ("tanh", "smt-windowed"),
        ("tanh", "bptt"),
        ("tanh", "bptt-fused"),
        ("transformer", "smt"),
        ("transformer", "smt-sampled"),
        ("transformer", "smt-windowed"),
        ("transformer", "bptt"),
    }
    for row in rows:
        assert keys <= set(row), row
        assert row["batch"] == TINY.batch and row["length"] in TINY.lengths
        assert row["seconds_per_step"] > 0 and row["gflop_per_step"] > 0
        tokens = row["context"] if row["method"] == "smt-windowed" else row["length"]
        assert math.isclose(row["tokens_per_second"], row["batch"] * tokens / row["seconds_per_step"])
        horizon = min(SMTConfig().horizon, tokens)  # SMT: the horizon K within what it encodes; BPTT: T
        assert row["sequential_depth"] == (horizon if row["method"].startswith("smt") else row["length"])
        assert row["peak_mb"] is None or row["peak_mb"] >= 0


def test_inference_rows_are_well_formed(result):
    rows = result["inference"]
    assert {(r["model"], r["context"]) for r in rows} == {
        (model, context) for model in ("rnn", "teacher-kv-cache", "teacher-no-cache") for context in TINY.contexts
    }
    state = {(r["model"], r["context"]): r["state_mb"] for r in rows}
    assert state["rnn", 4] == state["rnn", 10]  # the RNN keeps one memory, whatever the context
    assert state["teacher-kv-cache", 10] > state["teacher-kv-cache", 4]
    for row in rows:
        assert row["seconds_per_token"] > 0 and math.isclose(row["tokens_per_second"], 1 / row["seconds_per_token"])
        assert row["peak_mb"] is None or row["peak_mb"] >= row["state_mb"]


def test_result_is_json_and_renders(result, tmp_path):
    assert json.loads(json.dumps(result))["config"]["lengths"] == list(TINY.lengths)
    assert result["matmul"]["gflops"] > 0
    names = {r["optimisation"] for r in result["optimisations"]}
    assert names >= {
        "smt: decode and read out labelled windows only",
        "smt-sampled: read out labelled positions only",
        "teacher encode: no fused inference path (eval, no grad)",
    }
    assert any(name.startswith("smt: decoder on") for name in names)
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    text = render(blocks(result, "smtrnn bench --quick", "figures"))
    for heading in ("## Targets", "## Training step", "## Inference", "## Optimisations", "smtrnn bench --quick"):
        assert heading in text
    paths = figures(result, tmp_path)
    assert all(path.stat().st_size > 0 for path in paths)


def test_cli_bench_rejects_bad_options(capsys):
    assert main(["bench", "--threads", "-1"]) == 2
    assert "threads" in capsys.readouterr().err


def test_step_breakdown_times_every_term_and_writes_its_page(tmp_path, capsys):
    page = tmp_path / "breakdown.md"
    argv = ["bench", "--breakdown", "--lengths", "16", "--threads", "1", "--markdown", str(page)]
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["length"] == 16 and all(row[name] > 0 for name in bench.breakdown.TERMS + ("smt step", "dmt step"))
    assert "| 16 | 32 |" in page.read_text()
    assert main(["bench", "--breakdown", "--lengths", "4"]) == 2
    assert "at least 8" in capsys.readouterr().err
