"""The Python API (smtrnn.api): load a finished run's RNN, step it token by token, stream it in chunks,
sample from it, export it to config.json + model.safetensors and rebuild it from those alone.

Two tiny finished runs serve every test: retrieval (SMT->DMT, tanh cell, classes != tokens) and byte
text (SMT, LSTM cell) from the ``FakeText`` task below, loaded from this very file as a user's task.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import smtrnn
from conftest import assert_user_error
from smtrnn import api
from smtrnn.cli import main
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.methods import SMTConfig
from smtrnn.models import tiny_model
from smtrnn.rnn import RNN
from smtrnn.run import load_run, run
from smtrnn.train import TrainConfig

HERE = Path(__file__).resolve()
SRC = str(HERE.parents[1] / "src")

# The README's example, run here against a finished byte-text run (``run_dir``) in a scratch folder.
README_SNIPPET = """\
import torch
from safetensors.torch import load_file

import smtrnn

# run_dir: a finished run of a byte-text task, e.g. "runs/notes"
rnn = smtrnn.load(run_dir)                          # the trained RNN alone: eval mode, on the CPU
tokens = rnn.encode("the cat sat").unsqueeze(0)     # byte tokens [1, T]
logits, memory = rnn(tokens)                        # logits [1, T, 256] and the last memory

memory = rnn.initial_memory(1)                      # the learned m_0
for t in range(tokens.shape[1]):
    memory = rnn.step(memory, tokens[:, t])         # one token in, the next memory out: O(1) state
print(rnn.decode(rnn.logits(memory).argmax(-1)))    # the most likely next byte

stream = rnn.stream()                               # keeps only the current memory between calls
stream.feed(tokens[0, :4])
last = stream.feed(tokens[0, 4:])[-1]               # next-byte logits after the whole text
assert torch.allclose(last, logits[0, -1], atol=1e-5)

samples = smtrnn.generate(rnn, "the ", steps=60, temperature=0.8, count=2, seed=0)
print(samples.text[0])                              # samples.tokens: [2, 4 + 60], prompt included

smtrnn.export(run_dir, "exported")                  # exported/config.json + exported/model.safetensors
weights = load_file("exported/model.safetensors")   # plain PyTorch: the RNN's state_dict, no teacher
same = smtrnn.load_export("exported")               # rebuilt from those two files
assert torch.equal(same(tokens)[0], logits)
"""


class FakeText:
    """Byte text: crops of a repeated sentence, y_t = x_{t+1}."""

    text = True
    vocab_size = num_classes = 256
    sentence = "the cat sat on the mat. "

    def sample(self, batch_size, length, generator):
        repeated = torch.tensor(list((self.sentence * (length // len(self.sentence) + 2)).encode()))
        starts = torch.randint(0, len(self.sentence), (batch_size,), generator=generator).tolist()
        crops = torch.stack([repeated[start : start + length + 1] for start in starts])
        return {"x": crops[:, :-1].clone(), "y": crops[:, 1:].clone()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-runs")
    retrieval = RunConfig(
        task="retrieval",
        length=16,
        method="smt+dmt",
        task_options={"values": 4},
        eval_batches=1,
        model=tiny_model(cell="tanh"),
        train=TrainConfig(steps=3, batch_size=4, warmup=1, log_every=1),
        dmt_train=TrainConfig(steps=2, batch_size=4, warmup=1, log_every=1),
        smt=SMTConfig(dyn_warmup=1, horizon=2, horizon_grow=1),
    )
    text = RunConfig(
        task=f"{HERE}:FakeText",
        length=8,
        method="smt",
        eval_batches=1,
        model=tiny_model(cell="lstm"),
        train=TrainConfig(steps=2, batch_size=4, warmup=1, log_every=1),
        smt=SMTConfig(dyn_warmup=1, horizon=2, horizon_grow=1),
    )
    for name, config in (("retrieval", retrieval), ("text", text)):
        run(config, root / name, progress=False)
    return {"retrieval": root / "retrieval", "text": root / "text"}


def random_tokens(rnn, batch: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, rnn.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


# ================================================================================================
# load, step, stream


def test_load_gives_the_runs_rnn_in_eval_mode_on_the_cpu(runs):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rnn = smtrnn.load(runs["retrieval"])
    assert torch.equal(torch.rand(3), expected)  # loading leaves the caller's random numbers alone
    _, task, models = load_run(runs["retrieval"])
    assert isinstance(rnn, api.TrainedRNN) and isinstance(rnn, RNN) and not rnn.training
    assert rnn.device == torch.device("cpu") and not any(p.requires_grad for p in rnn.parameters())
    assert (rnn.vocab_size, rnn.num_classes, rnn.text) == (task.vocab_size, task.num_classes, False)
    state = models.rnn.state_dict()
    assert rnn.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in rnn.state_dict().items())
    assert torch.equal(rnn.initial_memory(2), models.rnn.cell.initial.expand(2, -1))


def test_load_with_the_teacher(runs):
    rnn, teacher = smtrnn.load(runs["retrieval"], teacher=True)
    assert isinstance(rnn, api.TrainedRNN) and not teacher.training
    assert teacher.encode(random_tokens(rnn)).shape[-1] == rnn.cell.memory_size


@pytest.mark.parametrize("name", ["retrieval", "text"])
def test_stepping_token_by_token_equals_the_forward_pass(runs, name):
    rnn = smtrnn.load(runs[name])
    tokens = random_tokens(rnn)
    logits, last = rnn(tokens)
    assert logits.shape == (3, 12, rnn.num_classes)
    memory = rnn.initial_memory(3)
    for t in range(tokens.shape[1]):
        memory = rnn.step(memory, tokens[:, t])
        torch.testing.assert_close(rnn.logits(memory), logits[:, t], atol=1e-5, rtol=0)
    torch.testing.assert_close(memory, last, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["retrieval", "text"])
def test_a_stream_fed_in_chunks_equals_the_forward_pass(runs, name):
    rnn = smtrnn.load(runs[name])
    tokens = random_tokens(rnn)
    logits, last = rnn(tokens)
    stream = rnn.stream(batch_size=3)
    chunks = [stream.feed(tokens[:, a:b]) for a, b in ((0, 5), (5, 5), (5, 6), (6, 12))]
    assert chunks[1].shape == (3, 0, rnn.num_classes)
    torch.testing.assert_close(torch.cat(chunks, 1), logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(stream.memory, last, atol=1e-5, rtol=0)
    assert stream.memory.shape == (3, rnn.cell.memory_size)  # all the state it keeps
    stream.reset()
    assert torch.equal(stream.memory, rnn.initial_memory(3))

    single = api.Stream(rnn)  # batch of one: a 1-D tensor or a list of ids, logits [T, C]
    torch.testing.assert_close(single.feed(tokens[0, :7]), logits[0, :7], atol=1e-5, rtol=0)
    torch.testing.assert_close(single.feed(tokens[0, 7:].tolist()), logits[0, 7:], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="batch size 3"):
        stream.feed(tokens[:2])


# ================================================================================================
# generate


def test_generate_is_deterministic_and_decodes_text(runs):
    rnn = smtrnn.load(runs["text"])
    samples = smtrnn.generate(rnn, "the ", steps=7, count=3, seed=1)
    assert samples.tokens.shape == (3, 4 + 7) and samples.tokens.dtype == torch.long
    assert samples.tokens[:, :4].tolist() == [list(b"the ")] * 3
    assert samples.text == [rnn.decode(row) for row in samples.tokens] and samples.text[0].startswith("the ")
    again = smtrnn.generate(runs["text"], list(b"the "), steps=7, count=3, seed=1)  # a run directory, ids
    assert torch.equal(again.tokens, samples.tokens)
    assert not torch.equal(smtrnn.generate(rnn, "the ", steps=7, count=3, seed=2).tokens, samples.tokens)


def test_greedy_generation_equals_stepping_the_rnn(runs):
    rnn = smtrnn.load(runs["text"])
    generated = smtrnn.generate(rnn, "the c", steps=5, temperature=0).tokens[0, 5:]
    memory = rnn.initial_memory(1)
    for token in rnn.encode("the c"):
        memory = rnn.step(memory, token.reshape(1))
    expected = []
    for _ in range(5):
        expected.append(rnn.logits(memory).argmax(-1))
        memory = rnn.step(memory, expected[-1])
    assert generated.tolist() == torch.cat(expected).tolist()


@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("text", {"prompt": ""}, "prompt token"),
        ("text", {"prompt": "the", "temperature": -1.0}, "temperature"),
        ("text", {"prompt": "the", "count": 0}, "count"),
        ("text", {"prompt": [300]}, "outside the vocabulary"),
        ("retrieval", {"prompt": "1 2"}, "next input token"),
    ],
)
def test_generation_mistakes_are_user_errors(runs, name, kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        smtrnn.generate(smtrnn.load(runs[name]), steps=3, **kwargs)


# ================================================================================================
# export


def test_export_and_load_export_give_the_same_outputs(runs, tmp_path):
    for name in ("retrieval", "text"):
        original = smtrnn.load(runs[name])
        out = smtrnn.export(runs[name], tmp_path / name)
        assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]
        config = json.loads((out / "config.json").read_text())
        assert config["format"] == api.EXPORT_FORMAT and config["cell"] == original.config.cell
        assert config["model_config"] == json.loads(json.dumps(original.spec["model_config"]))
        reloaded = smtrnn.load_export(out)
        assert not reloaded.training and reloaded.text == original.text
        tokens = random_tokens(original, length=20, seed=7)
        for mine, theirs in zip(original(tokens), reloaded(tokens)):
            assert torch.equal(mine, theirs)
        smtrnn.export(reloaded, out)  # an earlier export is replaced, here by the reloaded RNN itself
        assert torch.equal(smtrnn.load_export(out)(tokens)[0], original(tokens)[0])


def test_a_plain_pytorch_user_reads_the_export_with_safetensors_alone(runs, tmp_path):
    original = smtrnn.load(runs["text"])
    out = smtrnn.export(runs["text"], tmp_path / "exported")
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == original.state_dict().keys()  # cell.* and readout.*: no teacher, no optimizer
    assert all(torch.equal(value, original.state_dict()[key]) for key, value in weights.items())
    config = json.loads((out / "config.json").read_text())  # the plain RNN from its constructor arguments
    plain = RNN(
        config["cell"],
        config["vocab_size"],
        config["num_classes"],
        config["memory_size"],
        config["readout_hidden"],
        **config["cell_options"],
    )
    plain.load_state_dict(weights)
    tokens = random_tokens(original)
    assert torch.equal(plain.eval()(tokens)[0], original(tokens)[0])


def test_export_refuses_a_foreign_directory(runs, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        smtrnn.export(runs["retrieval"], foreign)
    with pytest.raises(UserError, match="not empty"):  # a run directory has a config.json too
        smtrnn.export(runs["retrieval"], runs["text"])
    with pytest.raises(UserError, match="file"):
        smtrnn.export(runs["retrieval"], foreign / "notes.txt")
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]
    smtrnn.export(runs["retrieval"], tmp_path / "empty")  # a new directory is fine


def test_missing_or_unfinished_runs_and_exports_are_user_errors(runs, tmp_path):
    with pytest.raises(UserError, match="no run directory"):
        smtrnn.load(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["retrieval"], unfinished)
    (unfinished / "result.json").unlink()
    with pytest.raises(UserError, match="not finished"):
        smtrnn.load(unfinished)
    with pytest.raises(UserError, match="no export directory"):
        smtrnn.load_export(tmp_path / "missing")
    with pytest.raises(UserError, match="not an smtrnn export"):
        smtrnn.load_export(runs["retrieval"])
    out = smtrnn.export(runs["retrieval"], tmp_path / "exported")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        smtrnn.load_export(out)


def test_a_bptt_run_has_no_trained_teacher_to_load(tmp_path):
    config = RunConfig(
        task=f"{HERE}:FakeText",
        length=8,
        method="bptt",
        eval_batches=1,
        model=tiny_model(cell="tanh"),
        train=TrainConfig(steps=1, batch_size=2, warmup=1, log_every=1),
    )
    run(config, tmp_path / "bptt", progress=False)
    assert isinstance(smtrnn.load(tmp_path / "bptt"), api.TrainedRNN)
    with pytest.raises(UserError, match="no trained teacher"):
        smtrnn.load(tmp_path / "bptt", teacher=True)


def test_cli_export(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(runs["text"]), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and str(out / "model.safetensors") in printed[0]
    assert smtrnn.load_export(out).text
    assert_user_error(main(["export", str(tmp_path / "missing"), str(out)]), capsys, "no run directory")
    assert_user_error(main(["export", str(runs["text"]), str(runs["retrieval"])]), capsys, "not empty")


# ================================================================================================
# the package


def test_import_smtrnn_stays_light():
    code = "import sys, smtrnn; assert not {'torch', 'smtrnn.api', 'smtrnn.cli'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC})
    assert smtrnn.load is api.load and smtrnn.export is api.export and "load_export" in dir(smtrnn)
    assert smtrnn.generate is api.generate


def test_readme_snippet(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(README_SNIPPET, {"run_dir": str(runs["text"])})
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert capsys.readouterr().out.count("\n") >= 2


def test_the_readme_shows_this_very_snippet():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert README_SNIPPET in readme
