"""Command line: a thin layer over the library (and, for ``experiment`` and ``bench``, the studies). The
options of ``train`` are generated from the config dataclasses (options.py)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from smtrnn import __version__
from smtrnn.errors import UserError, WorkerDied
from smtrnn.interrupt import Interrupted
from smtrnn.options import add_config_options, check_given, config_from_args, take_settings

__all__ = ["build_parser", "check_given", "config_from_args", "main"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, no usage dump
        raise UserError(message)


def check_writable(path: str | None, option: str = "--json") -> None:
    """Refuse, before any work, a file that cannot be written: its nearest existing folder must take files
    (the folders below it are created when it is written). ``-`` is standard output."""
    if not path or path == "-":
        return
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise UserError(f"{option} {path} is a directory")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{option} {path}: cannot write there (permission denied)")


def _write_json(path: str | None, value) -> None:
    """Write ``value`` to ``path`` (``-``: to standard output, alone)."""
    if path == "-":
        print(json.dumps(value, indent=2, sort_keys=True))
    elif path:
        from smtrnn.checkpoint import write_json

        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json(target, value)
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror}") from None


def _report(result: dict, json_path: str | None) -> None:
    """The result: printed as a table, and as JSON to ``json_path`` (``-``: JSON alone on standard output)."""
    if json_path != "-":
        _print_result(result)
    _write_json(json_path, result)


def _print_result(result: dict) -> None:
    keys = ["task", "method", "cell", "length", "checkpoint", "accuracy", "loss", "bits_per_token"]
    keys += ["teacher_accuracy", "teacher_bits_per_token", "teacher_step_accuracy", "teacher_step_bits_per_token"]
    keys += ["readout_accuracy", "readout_bits_per_token"]
    keys += ["one_step_accuracy", "one_step_bits_per_token", "drift"]
    keys += ["seconds", "steps"]
    shown = [key for key in keys + ["sequential_depth"] if key in result]
    width = max(map(len, shown), default=0)
    for key in shown:
        value = result[key]
        print(f"{key:>{width}}: {value:.4f}" if isinstance(value, float) else f"{key:>{width}}: {value}")


def cmd_train(args) -> None:
    from smtrnn import distributed
    from smtrnn.run import run

    if not args.out.strip():
        raise UserError("--out is empty: give the run directory")
    config = config_from_args(args)
    check_given(config, args)
    check_writable(args.json)
    note = take_settings(config, args)
    with distributed.session(config.device):  # several processes under torchrun, else a no-op
        main_process = distributed.rank() == 0

        def say() -> None:  # once the run is sure to train: a refused run's error stays its one line
            if note and main_process:  # --quiet silences the progress bar, not what the run is
                print(f"smtrnn: {note}", file=sys.stderr)

        try:
            result = run(config, args.out, progress=not args.quiet, tensorboard=args.tensorboard, on_start=say)
        except Interrupted as stop:
            if not main_process:  # every rank stopped at the same step: rank 0 says so
                raise SystemExit(stop.exit_code) from None
            raise
    if main_process:
        _report(result, args.json)


def cmd_eval(args) -> None:
    from smtrnn.run import checkpoint_folder, evaluate_run, read_run

    if args.length is not None and args.length < 1:
        raise UserError(f"length must be positive, got {args.length}")
    if args.batches < 1:
        raise UserError(f"batches must be positive, got {args.batches}")
    check_writable(args.json)
    loaded = read_run(args.run, args.device, args.data)
    config, used = loaded.config, f"{loaded.checkpoint.get('phase')} step {loaded.checkpoint.get('step')}"
    length = args.length or config.length
    result: dict = {"run": str(args.run), "task": config.task, "method": config.method, "cell": config.model.cell}
    # which weights were scored: a run still training has only its latest checkpoint, not its final model
    named = checkpoint_folder(args.run)[1] is not None  # a checkpoint folder the user chose, e.g. SMT's last
    result["checkpoint"] = used + ("" if loaded.finished or named else " (in progress)")
    result.update(finished=loaded.finished, trained_length=config.trained_length(), length=length)
    if not loaded.finished and not named:
        print(
            f"smtrnn: {args.run} is still in progress (no result.json): scoring its {used} checkpoint", file=sys.stderr
        )
    result.update(evaluate_run(config, loaded.task, loaded.models, length, args.batches))
    _report(result, args.json)


def cmd_generate(args) -> None:
    from smtrnn.run import load_run
    from smtrnn.sampling import generate, save_png

    config, task, models = load_run(args.run, args.device)  # the data is read only for primed images
    generated = generate(
        config,
        task,
        models,
        mode=args.mode,
        prompt=args.prompt,
        steps=args.steps,
        count=args.count,
        temperature=args.temperature,
        seed=args.seed,
        prime_rows=args.prime_rows,
    )
    if generated.grid is not None:
        out = args.out or str(Path(args.run) / f"samples-{args.mode}.png")
        save_png(generated.grid, out)
        print(f"wrote {out}")
        return
    print(generated.text)
    if args.out:
        from smtrnn.checkpoint import write_atomic

        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(args.out), (generated.text + "\n").encode())
        except OSError as error:
            raise UserError(f"cannot write {args.out}: {error.strerror}") from None


def cmd_export(args) -> None:
    from smtrnn.api import export

    out = export(args.run, args.dir)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'} (the RNN alone)")


def cmd_plot(args) -> None:
    from smtrnn.plot import plot_runs

    print(f"wrote {plot_runs(args.runs, args.out)}")


def _comma_list(text: str | None, kind, option: str) -> list | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    try:
        if not all(items):
            raise ValueError
        return [kind(item) for item in items]
    except ValueError:
        raise UserError(f"{option} wants a comma-separated list of {kind.__name__} values, got {text!r}") from None


def _json_rows(path: str) -> tuple[list[dict], list[str] | None]:
    """The rows of a study's JSON written earlier (none when there is no such file yet) and the settings
    their config digests cover (None where the JSON does not say: every setting of today's config)."""
    if not Path(path).exists():
        return [], None
    try:
        written = json.loads(Path(path).read_text())
        rows, fields = written["rows"], written.get("config_fields")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: not a study's JSON ({error})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path}: its rows are not a list of objects")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(name, str) for name in fields)):
        raise UserError(f"{path}: its config_fields are not a list of setting names")
    return rows, fields


def cmd_experiment(args) -> None:
    from smtrnn import experiments
    from smtrnn.experiments.runner import run_study

    if args.jobs < 1:
        raise UserError(f"jobs must be positive, got {args.jobs}")
    only = {
        name: _comma_list(getattr(args, name + "s"), kind, f"--{name}s")
        for name, kind in (("task", str), ("cell", str), ("variant", str), ("length", int), ("seed", int))
    }
    chosen = experiments.customise(experiments.study(args.name, args.preset), only, args.steps, args.dmt_steps)
    out = args.out or f"runs/{args.name}"
    earlier, fields = None, None
    if args.keep_rows:
        if not args.json:
            raise UserError("--keep-rows keeps the rows of the --json file: give --json")
        earlier, fields = _json_rows(args.json)
    result = run_study(
        chosen,
        out,
        jobs=args.jobs,
        progress=not args.quiet,
        train=not args.report_only,
        earlier=earlier,
        earlier_fields=fields,
    )
    if args.report_only:
        written = earlier if earlier is not None else _json_rows(args.json)[0] if args.json else []
        if not result["rows"] or len(result["rows"]) < len(written):
            hint = "" if args.keep_rows or not args.json else f"; --keep-rows keeps the rows of {args.json}"
            raise UserError(
                f"--report-only found {len(result['rows'])} finished runs of {result['planned']}"
                + (f", fewer than the {len(written)} rows of {args.json}" if written else "")
                + f": nothing written (is --out {out} the study's folder?{hint})"
            )
    print(
        f"{len(result['rows'])} of {result['planned']} runs finished ({result['trained']} trained now); rows from {out}"
        + (f" and {result['carried']} kept from {args.json}" if result["carried"] else "")
    )
    command = shlex.join(["smtrnn", *args.argv])
    experiments.write(args.name, result, command, args.markdown, args.json, args.figures)
    if args.name == "demo":
        from smtrnn.experiments.demo import summary

        print("\n".join(summary(result["rows"])))


def cmd_bench(args) -> None:

    from smtrnn.config import check_device
    from smtrnn.experiments.bench import BenchConfig, quick_config, run_bench
    from smtrnn.experiments.bench.page import blocks, figures
    from smtrnn.experiments.pages import write_outputs

    if args.threads < 0:
        raise UserError(f"threads must be non-negative, got {args.threads}")
    check_device(args.device)
    if args.breakdown:
        from smtrnn.experiments.bench import breakdown

        if args.device != "cpu":
            raise UserError("--breakdown times the CPU only")
        try:
            lengths = tuple(int(value) for value in args.lengths.split(","))
        except ValueError:
            raise UserError(f"--lengths must be a comma list of integers, got {args.lengths!r}") from None
        if min(lengths) < 8:
            raise UserError(f"--lengths must be at least 8, got {args.lengths!r}")
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        result = breakdown.run_breakdown(lengths, threads=args.threads, log=log)
        write_outputs(result, shlex.join(["smtrnn", *args.argv]), breakdown.blocks, None, args.markdown, args.json)
        return
    options = {"device": args.device, "threads": args.threads, "compile": args.compile, "autocast": args.autocast}
    config = quick_config(**options) if args.quick else BenchConfig(**options)
    result = run_bench(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    for target in result["targets"]:
        print(f"{'met ' if target['met'] else 'MISS'}  {target['cell']:>11}  {target['target']}: {target['measured']}")
    command = shlex.join(["smtrnn", *args.argv])
    figures_dir = str(Path(args.markdown).parent / "figures") if args.markdown else None
    write_outputs(result, command, blocks, figures, args.markdown, args.json, figures_dir)


def build_parser() -> argparse.ArgumentParser:
    from smtrnn.experiments import EXPERIMENTS

    parser = Parser(prog="smtrnn", description="Supervised Memory Training for recurrent networks")
    parser.add_argument("--version", action="version", version=f"smtrnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser(
        "train", help="train an RNN with smt, dmt, smt+dmt, bptt or tbptt", usage="smtrnn train --out DIR [OPTIONS]"
    )
    train.add_argument(
        "--out",
        required=True,
        help="run directory (required; the same command resumes it, a larger --steps or --dmt-steps continues it)",
    )
    add_config_options(train)
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    train.add_argument("--json", help="also write the result here (- for standard output)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's RNN on its own (teacher-free), and the rungs from its teacher to it"
    )
    evaluate.add_argument(
        "run",
        help="run directory (finished, or the latest checkpoint of one in progress), or one of its checkpoint "
        "folders, RUN/checkpoints/NAME (e.g. SMT's last, before DMT)",
    )
    evaluate.add_argument("--length", type=int, default=None, help="sequence length (default: the trained one)")
    evaluate.add_argument("--batches", type=int, default=8, help="held-out batches of 64 sequences (default: 8)")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    evaluate.add_argument(
        "--data",
        metavar="NEW_PATH",
        help="the run's data file at a new place (it must hold the same bytes: its sha256 is checked)",
    )
    evaluate.add_argument("--json", help="also write the scores here (- for standard output)")
    evaluate.set_defaults(handler=cmd_eval)

    generate = commands.add_parser("generate", help="sample text, images (PNG grid) or token ids from a run's RNN")
    generate.add_argument("run", help="run directory")
    generate.add_argument(
        "--mode",
        choices=("rnn", "teacher"),
        default="rnn",
        help="rnn: the RNN alone reads the prompt and continues; teacher: the teacher encodes the prompt and the "
        "RNN continues from its memory (not for bptt runs)",
    )
    generate.add_argument("--prompt", help="text to continue (text tasks), or token ids separated by spaces")
    generate.add_argument("--steps", type=int, default=None, help="tokens to generate after the prompt (default: 200)")
    generate.add_argument("--count", type=int, default=1, help="samples (images: a grid of this many)")
    generate.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    generate.add_argument(
        "--prime-rows",
        type=int,
        default=None,
        help="images: given top rows of held-out images, shown beside the completion (default: none in rnn mode, "
        "half the rows in teacher mode)",
    )
    generate.add_argument("--out", help="write the text here, or the PNG (default for images: RUN/samples-MODE.png)")
    generate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    generate.set_defaults(handler=cmd_generate)

    export = commands.add_parser("export", help="write a run's RNN as config.json + model.safetensors (no teacher)")
    export.add_argument("run", help="run directory (finished)")
    export.add_argument("dir", help="output directory: new, empty or an earlier export")
    export.set_defaults(handler=cmd_export)

    plot = commands.add_parser("plot", help="draw the loss and accuracy curves of one or more runs to a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (their metrics.jsonl)")
    plot.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    plot.set_defaults(handler=cmd_plot)

    study = commands.add_parser("experiment", help="run a study behind a page in docs/ (resumable)")
    study.add_argument(
        "name", choices=list(EXPERIMENTS), help="; ".join(f"{k}: {v[1]}" for k, v in EXPERIMENTS.items())
    )
    study.add_argument(
        "--preset", default="cpu", help="cpu (the committed page), full or smoke (seconds) where it has them"
    )
    study.add_argument("--out", help="run directories (re-running resumes; default: runs/NAME)")
    study.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (default: 1)")
    for name, example in (
        ("tasks", "copy,stack"),
        ("cells", "tanh,gru"),
        ("variants", "bptt,smt+dmt"),
        ("lengths", "64,256"),
        ("seeds", "0,1"),
    ):
        study.add_argument("--" + name, help=f"comma list: only the preset's points with these {name}, e.g. {example}")
    study.add_argument(
        "--steps", type=int, help="optimiser steps of every run (default: the preset's budget by length)"
    )
    study.add_argument(
        "--dmt-steps", type=int, help="of which smt+dmt spends this many in DMT (default: the budget's share)"
    )
    study.add_argument("--json", help="write the study and its rows here")
    study.add_argument("--markdown", help="write the page here (its prose outside the generated blocks is kept)")
    study.add_argument("--figures", help="write the figures into this folder")
    study.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    study.add_argument(
        "--keep-rows",
        action="store_true",
        help="a run not in --out keeps its row of the --json file written earlier, where its config is the same",
    )
    study.add_argument(
        "--report-only", action="store_true", help="train nothing: the outputs from the runs already in --out"
    )
    study.set_defaults(handler=cmd_experiment)

    bench = commands.add_parser("bench", help="time-parallel SMT against BPTT, RNN inference against the teacher")
    bench.add_argument("--quick", action="store_true", help="lengths 64..1024 and contexts to 8k (minutes)")
    bench.add_argument("--json", help="write every row here")
    bench.add_argument("--markdown", help="write the page here, and its figures to figures/ beside it")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    bench.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: PyTorch's choice)")
    bench.add_argument("--compile", action="store_true", help="also time smt under torch.compile (slow warm-up)")
    bench.add_argument("--autocast", action="store_true", help="also time smt under bf16 autocast (CUDA)")
    bench.add_argument("--breakdown", action="store_true", help="instead: where an SMT step's time goes, term by term")
    bench.add_argument("--lengths", default="256,512,1024", help="the lengths of --breakdown (default: 256,512,1024)")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for pages
        args.handler(args)
    except Interrupted as error:  # a checkpoint was saved at the step reached: not a mistake
        print(f"smtrnn: {error}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        message = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"smtrnn: error: {message}", file=sys.stderr)
        return 2
    except WorkerDied as error:  # not the user's mistake, but no traceback either
        print(f"smtrnn: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # outside training, or a second signal: nothing more was saved
        print(f"smtrnn: interrupted{f' ({error})' if str(error) else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
