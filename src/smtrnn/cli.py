"""Command line: a thin layer over the library. Options of ``train`` are generated from the config
dataclasses, so every field of every config is settable and the names never drift apart."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from smtrnn.errors import UserError

# (section of RunConfig, option prefix): every field of that dataclass becomes --prefix-field-name
SECTIONS = [("model", ""), ("train", ""), ("smt", "smt-"), ("dmt", "dmt-"), ("dmt_train", "dmt-"), ("bptt", "bptt-")]
TOP_LEVEL = ["task", "length", "method", "seed", "device", "init", "eval_batches", "length_generalisation"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, no usage dump
        raise UserError(message)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _type_of(default):
    if isinstance(default, bool):
        return _bool
    if default is None:
        return str
    return type(default)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from smtrnn.config import RunConfig

    base = RunConfig()
    for name in TOP_LEVEL:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_type_of(getattr(base, name)),
            default=None,
            help=f"(default: {getattr(base, name)})",
        )
    seen = set()
    for section, prefix in SECTIONS:
        group = parser.add_argument_group(section)
        for item in fields(getattr(base, section)):
            option = "--" + prefix + item.name.replace("_", "-")
            if option in seen:
                raise RuntimeError(f"duplicate option {option}")
            seen.add(option)
            default = getattr(getattr(base, section), item.name)
            group.add_argument(
                option,
                dest=f"{section}.{item.name}",
                type=_type_of(default),
                default=None,
                help=f"(default: {default})",
            )
    parser.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the task, e.g. values=4 (repeatable)",
    )


def _parse_task_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--task-option wants KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def config_from_args(args: argparse.Namespace, base=None):
    """A RunConfig from defaults (or ``base``) overridden by the options the user gave."""
    from smtrnn.config import RunConfig

    config = base or RunConfig()
    for name in TOP_LEVEL:
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".")
            setattr(getattr(config, section), name, value)
    config.task_options.update(_parse_task_options(args.task_option))
    from smtrnn.tasks.files import file_form

    if (
        file_form(config.task) is not None and config.task.partition(":")[2]
    ):  # text:PATH etc.: saved with an absolute path, so a resume works anywhere
        form, _, path = config.task.partition(":")
        config.task = f"{form}:{Path(path).expanduser().resolve()}"
    return config


def _write_json(path: str | None, value) -> None:
    if path:
        from smtrnn.checkpoint import write_json

        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json(target, value)
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror}") from None


def _print_result(result: dict) -> None:
    keys = [
        "task",
        "method",
        "cell",
        "length",
        "accuracy",
        "loss",
        "teacher_accuracy",
        "drift",
        "seconds",
        "steps",
        "sequential_depth",
    ]
    for key in keys:
        if key in result:
            value = result[key]
            print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")


def cmd_train(args) -> None:
    from smtrnn import distributed
    from smtrnn.run import run

    if not args.out:
        raise UserError("train needs --out DIR")
    config = config_from_args(args)
    with distributed.session(config.device):  # several processes under torchrun, else a no-op
        result = run(config, args.out, progress=not args.quiet, tensorboard=args.tensorboard)
        main_process = distributed.rank() == 0
    if main_process:
        _print_result(result)
        _write_json(args.json, result)


def cmd_eval(args) -> None:
    from smtrnn.run import evaluate_run, load_run

    if args.length is not None and args.length < 1:
        raise UserError(f"length must be positive, got {args.length}")
    if args.batches < 1:
        raise UserError(f"batches must be positive, got {args.batches}")
    config, task, models = load_run(args.run, args.device)
    length = args.length or config.length
    result = {
        "run": str(args.run),
        "task": config.task,
        "method": config.method,
        "cell": config.model.cell,
        "trained_length": config.length,
        "length": length,
    }
    result.update(evaluate_run(config, task, models, length, args.batches))
    _print_result(result)
    _write_json(args.json, result)


def cmd_generate(args) -> None:
    from smtrnn.run import load_run
    from smtrnn.sampling import generate, save_png

    config, task, models = load_run(args.run, args.device)
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


def cmd_demo(args) -> None:
    from smtrnn.demo import demo, format_table

    if args.jobs < 1:
        raise UserError(f"jobs must be positive, got {args.jobs}")
    result = demo(args.out, quick=args.quick, progress=not args.quiet, jobs=args.jobs)
    print(format_table(result))
    _write_json(args.json, result)
    if args.markdown:
        from smtrnn.checkpoint import write_atomic
        from smtrnn.demo import format_report

        command = "smtrnn demo " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "smtrnn demo"
        write_atomic(Path(args.markdown), format_report(result, command).encode())


def cmd_bench(args) -> None:
    import torch

    from smtrnn.bench import BenchConfig, quick_config, run_bench
    from smtrnn.bench_report import figures, markdown

    if args.threads < 0:
        raise UserError(f"threads must be non-negative, got {args.threads}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {args.device} asked for, but PyTorch sees no CUDA device")
    options = {"device": args.device, "threads": args.threads, "compile": args.compile, "autocast": args.autocast}
    config = quick_config(**options) if args.quick else BenchConfig(**options)
    result = run_bench(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    for target in result["targets"]:
        print(f"{'met ' if target['met'] else 'MISS'}  {target['cell']:>11}  {target['target']}: {target['measured']}")
    _write_json(args.json, result)
    if args.out_md:
        from smtrnn.checkpoint import write_atomic

        flags = [("--quick", args.quick), ("--compile", args.compile), ("--autocast", args.autocast)]
        command = " ".join(
            ["smtrnn bench"]
            + [flag for flag, given in flags if given]
            + [f"--device {args.device}"] * (args.device != "cpu")
            + [f"--threads {args.threads}"] * bool(args.threads)
            + [f"--json {args.json}"] * bool(args.json)
            + [f"--out-md {args.out_md}"]
        )
        target = Path(args.out_md)
        target.parent.mkdir(parents=True, exist_ok=True)
        figures(result, target.parent / "figures")
        write_atomic(target, markdown(result, command).encode())


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


def _comma_lists(args, **kinds: type) -> dict:
    """``{option: its list or None}`` for the comma-separated options named in ``kinds`` (name=element type)."""
    return {name: _comma_list(getattr(args, name), kind, f"--{name}") for name, kind in kinds.items()}


def cmd_compare(args) -> None:
    import shlex

    from smtrnn.compare import compare, customise, preset
    from smtrnn.report import figures, machine, markdown, write_page

    grid = customise(
        preset(args.preset),
        **_comma_lists(args, tasks=str, cells=str, methods=str, lengths=int, seeds=int),
        steps=args.steps,
        dmt_steps=args.dmt_steps,
        generalisation=False if args.no_generalisation else None,
    )
    result = compare(
        grid,
        args.out,
        jobs=args.jobs,
        threads_per_job=args.threads_per_job,
        progress=not args.quiet,
        train=not args.report_only,
    )
    print(
        f"{len(result['rows'])} runs ({result['trained']} trained, {result['reused']} reused) in "
        f"{result['wall_seconds']:.0f} s; rows in {Path(args.out) / 'results.json'}"
    )
    _write_json(args.json, result["rows"])
    if args.figures:
        figures(result["rows"], args.figures)
    if args.markdown:
        command = shlex.join(["smtrnn", *args.argv])
        write_page(args.markdown, lambda link: markdown(result, command, machine(), link), args.figures)


def cmd_realdata(args) -> None:
    import shlex

    from smtrnn.realdata import customise, preset, realdata, write_outputs
    from smtrnn.report import machine

    chosen = customise(preset(args.preset), **_comma_lists(args, datasets=str, methods=str, cells=str))
    result = realdata(chosen, args.out, jobs=args.jobs, progress=not args.quiet, train=not args.report_only)
    for row in result["rows"]:
        bits = "diverged" if row["bits_per_byte"] is None else f"{row['bits_per_byte']:.3f} bits/byte"
        print(f"{row['dataset']:>10} {row['cell']:>6} {row['method']:>8}: {bits}")
    write_outputs(
        chosen,
        result,
        args.out,
        shlex.join(["smtrnn", *args.argv]),
        machine(),
        json_path=args.json,
        markdown_path=args.markdown,
        figures_dir=args.figures,
    )


def cmd_horizon(args) -> None:
    import shlex

    from smtrnn.horizon_report import figures, markdown
    from smtrnn.horizon_study import preset, run_study
    from smtrnn.report import machine, write_page

    if args.jobs < 1:
        raise UserError(f"jobs must be positive, got {args.jobs}")
    result = run_study(
        preset(args.preset), args.out, jobs=args.jobs, progress=not args.quiet, train=not args.report_only
    )
    print(
        f"{len(result['rows'])} runs ({result['trained']} trained, {result['reused']} reused) in "
        f"{result['wall_seconds']:.0f} s"
    )
    _write_json(args.json, result)
    if args.figures:
        figures(result, args.figures)
    if args.markdown:
        command = shlex.join(["smtrnn", *args.argv])
        write_page(args.markdown, lambda link: markdown(result, command, machine(), link), args.figures)


def _add_preset(parser: argparse.ArgumentParser, choices: str) -> None:
    parser.add_argument("--preset", default="cpu", help=f"{choices}; default: cpu")


def _add_experiment_outputs(parser: argparse.ArgumentParser, out: str, figures: str) -> None:
    """The options every experiment command shares: where its runs live and where its outputs go."""
    parser.add_argument("--out", default=out, help=f"run directories (re-running resumes; default: {out})")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the page here")
    parser.add_argument("--figures", help=f"write the {figures} figures into this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: write the outputs from the runs already in --out"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="smtrnn", description="Supervised Memory Training for recurrent networks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="train an RNN with smt, dmt, smt+dmt, bptt or tbptt")
    _add_config_options(train)
    train.add_argument(
        "--out",
        help="run directory (re-running the same command resumes it; a larger --steps or --dmt-steps continues it)",
    )
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the logged metrics as TensorBoard scalars to OUT/tensorboard (needs the tensorboard extra)",
    )
    train.add_argument("--json", help="also write the result here")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a run's RNN on its own (teacher-free)")
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--length", type=int, default=None, help="sequence length (default: the trained one)")
    evaluate.add_argument("--batches", type=int, default=8)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--json")
    evaluate.set_defaults(handler=cmd_eval)

    generate = commands.add_parser("generate", help="sample text, images (PNG grid) or token ids from a run's RNN")
    generate.add_argument("run", help="run directory")
    generate.add_argument(
        "--mode",
        choices=("rnn", "teacher"),
        default="rnn",
        help="rnn: the RNN alone reads the prompt and continues; teacher: the teacher encodes the "
        "prompt and the RNN continues from its memory (not for bptt runs)",
    )
    generate.add_argument("--prompt", help="text to continue (text tasks), or token ids separated by spaces")
    generate.add_argument("--steps", type=int, default=None, help="tokens to generate after the prompt (default: 200)")
    generate.add_argument("--count", type=int, default=1, help="samples (images: a grid of this many)")
    generate.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--prime-rows",
        type=int,
        default=None,
        help="images: given top rows of held-out images, shown beside the completion (default: "
        "none in rnn mode, starting from a black first pixel; half the rows in teacher mode)",
    )
    generate.add_argument("--out", help="write the text here, or the PNG (default for images: RUN/samples-MODE.png)")
    generate.add_argument("--device", default="cpu")
    generate.set_defaults(handler=cmd_generate)

    export = commands.add_parser("export", help="write a run's RNN as config.json + model.safetensors (no teacher)")
    export.add_argument("run", help="run directory (finished)")
    export.add_argument("dir", help="output directory: new, empty or an earlier export")
    export.set_defaults(handler=cmd_export)

    plot = commands.add_parser("plot", help="draw the loss and accuracy curves of one or more runs to a PNG")
    plot.add_argument("runs", nargs="+", help="run directories (their metrics.jsonl)")
    plot.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    plot.set_defaults(handler=cmd_plot)

    demo = commands.add_parser("demo", help="BPTT against SMT->DMT on long-range retrieval, same cell, three seeds")
    demo.add_argument("--out", default="runs/demo", help="where the two runs are kept (resumable)")
    demo.add_argument("--quick", action="store_true", help="a much shorter smoke run (not the result)")
    demo.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process (default: 2)")
    demo.add_argument("--json")
    demo.add_argument("--markdown", help="also write a markdown report (command, machine, date, table)")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(handler=cmd_demo)

    bench = commands.add_parser("bench", help="time-parallel SMT against BPTT, RNN inference against the teacher")
    bench.add_argument("--quick", action="store_true", help="lengths 64..1024 and contexts to 8k (minutes)")
    bench.add_argument("--json", help="write every row here")
    bench.add_argument("--out-md", help="write a markdown report here, and its figures to figures/ beside it")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: PyTorch's choice)")
    bench.add_argument("--compile", action="store_true", help="also time smt under torch.compile (slow warm-up)")
    bench.add_argument("--autocast", action="store_true", help="also time smt under bf16 autocast (CUDA)")
    bench.set_defaults(handler=cmd_bench)

    grid = commands.add_parser("compare", help="a grid of runs: tasks x cells x methods x lengths x seeds (resumable)")
    _add_preset(
        grid,
        "cpu (the committed grid, about 3.3 h on 2 cores), full (every point, more than 12 h, estimated) or smoke (seconds)",
    )
    for option, example in (
        ("tasks", "retrieval,copy"),
        ("cells", "tanh,gru"),
        ("methods", "bptt,smt+dmt"),
        ("lengths", "32,128"),
        ("seeds", "0,1"),
    ):
        grid.add_argument("--" + option, help=f"comma list replacing the preset's, e.g. {example}")
    grid.add_argument("--steps", type=int, help="total optimiser steps of every run (default: the preset's by length)")
    grid.add_argument("--dmt-steps", type=int, help="of which smt+dmt spends this many in DMT")
    grid.add_argument("--jobs", type=int, default=1, help="grid points at once, each in its own process")
    grid.add_argument("--threads-per-job", type=int, default=1, help="PyTorch threads of each job")
    _add_experiment_outputs(grid, "runs/compare", "<task>.png")
    grid.add_argument("--no-generalisation", action="store_true", help="skip the 2T, 4T, 8T evaluations")
    grid.set_defaults(handler=cmd_compare)

    horizon = commands.add_parser("horizon", help="the horizon study on needle retrieval (docs/horizon.md; resumable)")
    _add_preset(
        horizon, "cpu (the committed study, about 2 h on 2 cores), full (every variant, about 6 h) or smoke (seconds)"
    )
    horizon.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process with one thread")
    _add_experiment_outputs(horizon, "runs/horizon", "horizon-*.png")
    horizon.set_defaults(handler=cmd_horizon)

    real = commands.add_parser("realdata", help="BPTT against SMT->DMT on MNIST, Quick, Draw! and Brown (resumable)")
    _add_preset(real, "cpu (the committed experiment) or smoke (seconds)")
    for option, example in (("datasets", "mnist,brown"), ("methods", "bptt,smt+dmt"), ("cells", "mlp,transformer")):
        real.add_argument("--" + option, help=f"comma list replacing the preset's, e.g. {example}")
    real.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process with one thread")
    _add_experiment_outputs(real, "runs/realdata", "realdata-*.png")
    real.set_defaults(handler=cmd_realdata)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for reports
        args.handler(args)
    except UserError as error:
        message = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"smtrnn: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smtrnn: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
