"""The page of a ``run_bench`` result: docs/benchmarks.md's generated blocks (tables, targets) and two figures."""

from __future__ import annotations

from pathlib import Path

from smtrnn.experiments.pages import MISSING, STYLE, Blocks, figure, save, table


def _number(value, digits: int = 3) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 10**-3:
        return f"{value:.2e}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    """report.table, numbers formatted by ``_number``."""
    return table(header, [[cell if isinstance(cell, str) else _number(cell) for cell in row] for row in rows])


def _training_section(result: dict) -> list[str]:
    training, defaults = result["training"], result["model_defaults"]
    lines = [
        "## Training step: SMT against BPTT, side by side",
        "",
        f"Batch {training[0]['batch']}, memory size {result['config']['memory_size']}, byte-level data (vocabulary "
        f"{result['config']['vocab']}, every position labelled), every other size at ModelConfig's defaults "
        f"(teacher width {defaults['teacher_width']}, {defaults['teacher_layers']} encoder and "
        f"{defaults['teacher_decoder_layers']} decoder layers, future Tf={defaults['future']}). "
        "A step is loss, backward, clipping and an AdamW step. `smt`: all-prefix SMT (`smt_loss`, decoder on "
        f"every window); `smt-sampled`: the same with `decoder_positions={result['config']['decoder_positions']}`; "
        f"`smt-windowed`: windowed SMT (docs/method.md section 3, windowed mode) on a crop of the stream, the encoder seeing its first "
        f"Tc=min(T, {result['config'].get('window', 256)}) tokens, the decoder on the same sampled positions, so its "
        "step stops growing with T (its tokens/s counts the Tc memory transitions it trains per sequence); "
        "`bptt`: our own step loop (`cell.rollout` + readout); `bptt-fused`: `bptt_loss`, i.e. nn.RNN / nn.GRU / "
        "nn.LSTM. Depth: cell applications in series. GFLOP: matmuls and attention, forward and backward.",
        "",
    ]
    for cell in dict.fromkeys(r["cell"] for r in training):
        rows = [r for r in training if r["cell"] == cell]
        lines += [f"### {cell} cell", ""]
        lines += _table(
            ["T", "method", "s/step", "tokens/s", "peak MB", "depth", "GFLOP/step", "GFLOP/s", "% of peak"],
            [
                [
                    r["length"],
                    r["method"],
                    r["seconds_per_step"],
                    r["tokens_per_second"],
                    r["peak_mb"],
                    r["sequential_depth"],
                    r["gflop_per_step"],
                    r["achieved_gflops"],
                    100 * r["peak_fraction"] if "peak_fraction" in r else None,
                ]
                for r in rows
            ],
        )
        methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "bptt"))
        seconds = {(r["method"], r["length"]): r["seconds_per_step"] for r in rows}
        lines += ["Step time relative to the bptt loop at the same T (below 1: faster than BPTT):", ""]
        lines += _table(
            ["T"] + methods,
            [
                [length] + [seconds[m, length] / seconds["bptt", length] for m in methods]
                for length in dict.fromkeys(r["length"] for r in rows)
            ],
        )
    return lines


def _inference_section(result: dict) -> list[str]:
    inference, defaults = result["inference"], result["model_defaults"]
    latency = {(r["model"], r["context"]): r for r in inference}
    contexts = sorted({r["context"] for r in inference})
    models = list(dict.fromkeys(r["model"] for r in inference))
    lines = [
        "## Inference: one token at a time as the context grows",
        "",
        f"Batch 1, ModelConfig's default sizes ({defaults['cell']} cell, memory {defaults['memory_size']}; teacher "
        f"width {defaults['teacher_width']}, {defaults['teacher_layers']} encoder layers). Each token: "
        "the RNN's `cell.step` and readout; the teacher's `encode_step` with a key-value cache and decoder; or, "
        "without a cache, `encode` of the whole prefix and decoder. State: what is kept between tokens (the "
        "memory; the keys and values; the token prefix). Peak: the state plus the peak of one token's work (on "
        "CPU, work that fits in pages already resident does not show).",
        "",
    ]
    lines += _table(
        ["context"]
        + [f"{m} ms/token" for m in models]
        + [f"{m} state MB" for m in models]
        + [f"{m} peak MB" for m in models],
        [
            [c]
            + [1e3 * latency[m, c]["seconds_per_token"] for m in models]
            + [latency[m, c]["state_mb"] for m in models]
            + [latency[m, c]["peak_mb"] for m in models]
            for c in contexts
        ],
    )
    lines += ["Per-token time relative to the RNN:", ""]
    others = [m for m in models if m != "rnn"]
    per_token = lambda model, context: latency[model, context]["seconds_per_token"]
    relative = lambda model, context: per_token(model, context) / per_token("rnn", context)
    lines += _table(["context"] + others, [[c] + [relative(m, c) for m in others] for c in contexts])
    return lines


def _optimisation_section(result: dict) -> list[str]:
    lines = [
        "## Optimisations, before and after in the same run",
        "",
        "Each pair was timed in turn in one process (same data, same weights). `exact`: the change leaves the "
        "loss and gradients (or the memories) as they were.",
        "",
    ]
    lines += _table(
        [
            "optimisation",
            "cell",
            "T / context",
            "before s",
            "after s",
            "speedup",
            "before peak MB",
            "after peak MB",
            "exact",
            "note",
        ],
        [
            [
                r["optimisation"],
                r["cell"],
                r["length"],
                r["before_seconds"],
                r["after_seconds"],
                r["speedup"],
                r["before_peak_mb"],
                r["after_peak_mb"],
                "yes" if r["exact"] else "no",
                r["note"],
            ]
            for r in result["optimisations"]
        ],
    )
    return lines


def _summary(result: dict) -> list[str]:
    training, inference = result["training"], result["inference"]
    last = max(r["length"] for r in training)
    row = {(r["method"], r["cell"]): r for r in training if r["length"] == last}
    lines = ["## Summary", ""]
    for cell in dict.fromkeys(r["cell"] for r in training):
        smt, sampled, bptt = row["smt", cell], row["smt-sampled", cell], row["bptt", cell]
        fused = row.get(("bptt-fused", cell))
        relative = lambda row: (
            f"{row['seconds_per_step'] / bptt['seconds_per_step']:.2f}x the bptt loop's time for "
            f"{row['gflop_per_step'] / bptt['gflop_per_step']:.1f}x its FLOPs"
        )
        lines.append(
            f"- {cell} cell, T={last}: smt {smt['seconds_per_step']:.3g} s/step, smt-sampled "
            f"{sampled['seconds_per_step']:.3g}, bptt loop {bptt['seconds_per_step']:.3g}"
            + (f", fused bptt {fused['seconds_per_step']:.3g}" if fused else "")
            + f". smt takes {relative(smt)}, smt-sampled {relative(sampled)}, both at "
            f"{smt['sequential_depth']}/{bptt['sequential_depth']} of its sequential depth."
        )
    latency = {(r["model"], r["context"]): r for r in inference}
    context = max(r["context"] for r in inference if r["context"] <= 8192)
    rnn = latency["rnn", context]
    lines.append(
        f"- Inference at {context} tokens of context: the RNN takes {1e3 * rnn['seconds_per_token']:.3g} ms "
        f"per token and keeps {1024 * rnn['state_mb']:.3g} KB; the teacher with a key-value cache "
        f"{latency['teacher-kv-cache', context]['seconds_per_token'] / rnn['seconds_per_token']:.0f}x the "
        f"time and {latency['teacher-kv-cache', context]['state_mb']:.3g} MB; without a cache "
        f"{latency['teacher-no-cache', context]['seconds_per_token'] / rnn['seconds_per_token']:.0f}x the time."
    )
    return lines + [""]


def _header(result: dict, command: str) -> list[str]:
    machine, matmul = result["machine"], result["matmul"]
    threads = machine.get("torch_threads")
    busy = max(machine["load_before"] + machine["load_after"]) > (machine.get("usable_cpus") or 1)
    return [
        "# Benchmarks",
        "",
        f"Command: `{command}`  ",
        f"Date: {result['date']}, {result['seconds'] / 60:.1f} minutes  ",
        f"Machine: {machine.get('cpu')}, {machine.get('usable_cpus')} usable of {machine.get('logical_cpus')} logical "
        f"CPUs, {machine.get('memory_gb')} GB, PyTorch {machine.get('torch')} on {threads} "
        f"thread{'s' if threads != 1 else ''}{', ' + machine['gpu'] if machine.get('gpu') else ''}. "
        f"Load average (1, 5, 15 min) {'/'.join(f'{x:.1f}' for x in machine['load_before'])} at the start and "
        f"{'/'.join(f'{x:.1f}' for x in machine['load_after'])} at the end"
        + (": above the CPU count, other work shared the machine and absolute times are noisy" if busy else "")
        + ".",
        "",
        f"Matmul peak, measured in the same run: {matmul['gflops']:.1f} GFLOP/s (float32, "
        f"{matmul['size']}x{matmul['size']} @ {matmul['size']}x{matmul['size']}, best of 5).",
        "",
    ]


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    """The page's generated blocks: how and where it ran, the summary, the targets and every table."""
    images = [
        f"![seconds per training step against T]({link}/bench_step_time.png)",
        "",
        f"![per-token inference against context]({link}/bench_inference.png)",
        "",
    ]
    targets = _table(
        ["target", "cell", "measured", "met"],
        [[r["target"], r["cell"], r["measured"], r["met"]] for r in result["targets"]],
    )
    return [
        ("header", _header(result, command) + (images if link else [])),
        ("summary", _summary(result)),
        ("targets", ["## Targets", "", *targets]),
        ("training", _training_section(result)),
        ("inference", _inference_section(result)),
        ("optimisations", _optimisation_section(result)),
    ]


def figures(result: dict, folder: Path) -> list[Path]:
    """bench_step_time.png and bench_inference.png (log-log)."""
    training = result["training"]
    cells = list(dict.fromkeys(r["cell"] for r in training))
    drawn, axes = figure(1, len(cells), 4.2, 3.6)
    for axis, cell in zip(axes[0], cells):
        for method in dict.fromkeys(r["method"] for r in training if r["cell"] == cell):
            rows = [r for r in training if r["cell"] == cell and r["method"] == method]
            marker, color = STYLE.get(method, ("x", "k"))
            lengths, seconds = [r["length"] for r in rows], [r["seconds_per_step"] for r in rows]
            axis.plot(lengths, seconds, marker=marker, color=color, label=method)
        axis.set(xscale="log", yscale="log", title=f"{cell} cell", xlabel="sequence length T")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("seconds per training step")
    axes[0][0].legend(fontsize=8)
    paths = [save(drawn, Path(folder) / "bench_step_time.png")]
    inference = result["inference"]
    drawn, axes = figure(1, 2, 4.5, 3.6)
    left, right = axes[0]
    for model in dict.fromkeys(r["model"] for r in inference):
        rows = [r for r in inference if r["model"] == model]
        contexts = [r["context"] for r in rows]
        left.plot(contexts, [1e3 * r["seconds_per_token"] for r in rows], marker="o", label=model)
        right.plot(contexts, [r["peak_mb"] or float("nan") for r in rows], marker="o", label=model)
    left.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms per token")
    right.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="peak MB per token")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    return paths + [save(drawn, Path(folder) / "bench_inference.png")]
