"""Run every benchmark with one command; write one JSON, one Markdown table and a bar chart of the ratios.

Each benchmark runs in its own process (the real script, with `--json`), one after the other so that they do not
disturb each other; its JSON is read back into rows "case, hf_seg, reference, ratio, target". Written to
`--output-dir` (default `benchmarks/results/`):

- `results.json`: every row, each benchmark's full JSON, its command line and seconds, the machine and versions;
- `results.md`: the table (the README's performance table is this table: `--update-readme` writes it between the
  README's `<!-- benchmarks:start -->` / `<!-- benchmarks:end -->` markers);
- `ratios.png`: the ratios against their targets (needs matplotlib: `pip install "hf_seg[analysis]"`).

Ratios are hf_seg's time over the reference's, measured side by side in the same process (lower is better). The
CPU-time ratio (`time.process_time`) is printed beside the wall-clock one where the benchmark measures it: on a
shared machine it is the steadier of the two.

    python benchmarks/run_all.py                 # the full settings (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick         # fewer rounds, for a smoke run
    python benchmarks/run_all.py --only segformer metric --update-readme
    python benchmarks/run_all.py --from-results benchmarks/results/results.json --update-readme   # re-render only
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path


HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


@dataclass
class Row:
    benchmark: str
    case: str
    hf_seg: str
    reference: str
    ratio: float | None  # hf_seg / reference, wall clock
    cpu_ratio: float | None  # the same in process CPU time, where measured
    target: float | None  # the target for the ratio (lower is better)


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value >= 0.1 else f"{value * 1e3:.2f} ms"


def setr_rows(result: dict) -> list[Row]:
    medians = result["medians_s"]
    return [Row("setr", f"SETR-{result['decoder'].upper()} ViT-L {result['size']}², forward", _seconds(medians["hf_seg"]),
                f"mmsegmentation 1.x {_seconds(medians['mmseg'])}", result["ratio"], None, 0.45)]


def mpvit_rows(result: dict) -> list[Row]:
    # machine time in units of a 2048^2 matmul's rate: comparable across machines and loads
    return [Row("mpvit", f"{result['preset']}, forward, in matmul-GFLOP", f"{result['matmul_gflop']:.0f}",
                f"the authors' code {result['authors_matmul_gflop']:.0f}",
                result["matmul_gflop"] / result["authors_matmul_gflop"], None,
                result["target_matmul_gflop"] / result["authors_matmul_gflop"])]


def segformer_rows(result: dict) -> list[Row]:
    rows = []
    for variant in result["results"]:
        name, timings = variant["variant"].upper(), variant["timings"]
        rows.append(Row("segformer", f"SegFormer-{name} 512², optimized vs plain transformers",
                        _seconds(timings["transformers optimized"]["wall"]),
                        f"transformers {_seconds(timings['transformers plain']['wall'])}",
                        variant["ratio_vs_plain"], variant["ratio_vs_plain_cpu"], 0.5))
        rows.append(Row("segformer", f"SegFormer-{name} 512², optimized transformers (the authors' head) vs mmseg "
                        f"(its ConvModule head, width {variant['decoder_width']})",
                        _seconds(timings["transformers optimized"]["wall"]),
                        f"mmsegmentation 1.x {_seconds(timings['mmseg']['wall'])}",
                        timings["transformers optimized"]["wall"] / timings["mmseg"]["wall"],
                        timings["transformers optimized"]["cpu"] / timings["mmseg"]["cpu"], 0.5))
        rows.append(Row("segformer", f"SegFormer-{name} 512², hf_seg's mmseg-head class vs mmseg (same function and "
                        f"weights, width {variant['decoder_width']})",
                        _seconds(timings["hf_seg mmseg-head optimized"]["wall"]),
                        f"mmsegmentation 1.x {_seconds(timings['mmseg']['wall'])}",
                        variant["ratio_vs_mmseg"], variant["ratio_vs_mmseg_cpu"], 0.5))
    return rows


def slide_rows(result: dict) -> list[Row]:
    return [Row("slide", f"SegFormer-B0 slide 1024x2048, batch {result['batch_size']}",
                _seconds(result["hf_seg_batched_s"]), f"mmseg slide_inference {_seconds(result['mmseg_s'])}",
                result["hf_seg_batched_s"] / result["mmseg_s"], result["hf_seg_batched_cpu_s"] / result["mmseg_cpu_s"],
                0.4)]


def metric_rows(result: dict) -> list[Row]:
    return [Row("metric", f"mIoU update, {result['batch']} x {result['size']}², {result['num_labels']} classes",
                _seconds(result["hf_seg_s"]), f"mmseg IoUMetric {_seconds(result['mmseg_s'])}",
                result["hf_seg_s"] / result["mmseg_s"], None, 0.3)]


def data_rows(result: dict) -> list[Row]:
    return [Row("data", "training transform (ADE20K recipe), crops/s per worker",
                f"{result['crops_per_second']:.1f} crops/s", "(no mmseg run in this benchmark)", None, None, None)]


# name: (script, full arguments, quick arguments, rows from its JSON)
BENCHMARKS = {
    "segformer": ("bench_segformer_forward.py", ["--runs", "5"], ["--runs", "2", "--variants", "b0"], segformer_rows),
    "setr": ("bench_setr_forward.py", ["--runs", "5", "--skip-memory"], ["--runs", "2", "--skip-memory"], setr_rows),
    "mpvit": ("bench_mpvit_forward.py", ["--repeats", "5"], ["--repeats", "2"], mpvit_rows),
    "slide": ("bench_slide_inference.py", ["--runs", "3"], ["--runs", "1"], slide_rows),
    "metric": ("bench_metric.py", ["--runs", "21"], ["--runs", "5"], metric_rows),
    "data": ("bench_data_pipeline.py", ["--epochs", "3"], ["--epochs", "1", "--count", "6"], data_rows),
}


def markdown(rows: list[Row]) -> str:
    lines = ["| benchmark | case | hf_seg | reference | ratio | CPU-time ratio | target |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        cpu = "" if row.cpu_ratio is None else f"{row.cpu_ratio:.2f}x"
        if row.target is None:
            target = ""
        else:
            met = "" if row.ratio is None else (" (met)" if row.ratio <= row.target else " (missed)")
            target = f"≤ {row.target:.2f}x{met}"
        lines.append(f"| {row.benchmark} | {row.case} | {row.hf_seg} | {row.reference} | {ratio} | {cpu} | {target} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no ratios.png (pip install \"hf_seg[analysis]\")")
        return False
    rows = [row for row in rows if row.ratio is not None]
    if not rows:
        return False
    figure, axes = plt.subplots(figsize=(11, 0.7 * len(rows) + 1.4))
    positions = range(len(rows))
    axes.barh(positions, [row.ratio for row in rows], color="#4c72b0", label="hf_seg / reference (wall clock)")
    for position, row in zip(positions, rows):
        if row.target is not None:
            axes.plot([row.target, row.target], [position - 0.4, position + 0.4], color="#c44e52", linewidth=2)
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_yticks(list(positions), [textwrap.fill(row.case, 48) for row in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("hf_seg time / reference time (lower is faster; red: the target)")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def update_readme(table: str, readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers for the table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run, not a measurement")
    parser.add_argument("--threads", type=int, default=None, help="passed to every benchmark as --threads")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--update-readme", action="store_true", help=f"write the table into {README.name}")
    parser.add_argument("--from-results", type=Path, help="re-render the tables of an earlier results.json, no runs")
    args = parser.parse_args()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    rows, runs = [], {}
    earlier = json.loads(args.from_results.read_text()) if args.from_results else None
    if earlier is not None:
        runs = {name: run for name, run in earlier["runs"].items() if name in names}
        for name, run in runs.items():
            if run["exit_code"] == 0:
                rows += BENCHMARKS[name][3](run["result"])
    with tempfile.TemporaryDirectory() as scratch:
        for name in [] if earlier is not None else names:
            script, full, quick, to_rows = BENCHMARKS[name]
            json_path = Path(scratch) / f"{name}.json"
            command = [sys.executable, str(HERE / script), *(quick if args.quick else full), "--json", str(json_path)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            # as the user would type it (no machine paths in results.json)
            at = command.index("--json")
            shown = ["python", f"benchmarks/{script}", *command[2:at], *command[at + 2:]]
            print(f"== {name}: {' '.join(shown)}", flush=True)
            start = time.perf_counter()
            completed = subprocess.run(command, cwd=HERE.parent, text=True)
            seconds = time.perf_counter() - start
            if completed.returncode != 0 or not json_path.exists():
                print(f"== {name} FAILED (exit {completed.returncode}); its row is left out", flush=True)
                runs[name] = dict(command=shown, seconds=seconds, exit_code=completed.returncode)
                continue
            result = json.loads(json_path.read_text())
            runs[name] = dict(command=shown, seconds=seconds, exit_code=0, result=result)
            rows += to_rows(result)

    import torch

    table = markdown(rows)
    machine = earlier["machine"] if earlier is not None else dict(
        python=platform.python_version(), platform=platform.platform(), processor=platform.processor(),
        cpus=os.cpu_count(), torch=torch.__version__, quick=args.quick,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    (args.output_dir / "results.json").write_text(
        json.dumps(dict(machine=machine, rows=[asdict(row) for row in rows], runs=runs), indent=2))
    note = (f"Measured {machine['date']} on {machine['cpus']} CPUs ({machine['processor'] or platform.machine()}), "
            f"torch {machine['torch']}" + (", --quick (a smoke run, not a measurement)" if machine["quick"] else "")
            + f"; benchmarks run: {', '.join(runs)} (of {', '.join(BENCHMARKS)}).\n\n")
    (args.output_dir / "results.md").write_text(note + table)
    chart = bar_chart(rows, args.output_dir / "ratios.png")
    print("\n" + note + table)
    print(f"written: {args.output_dir / 'results.json'}, {args.output_dir / 'results.md'}"
          + (f", {args.output_dir / 'ratios.png'}" if chart else ""))
    if args.update_readme:
        update_readme(note + table, README)
        print(f"table written into {README}")
    failed = [name for name, run in runs.items() if run["exit_code"] != 0]
    if failed:
        raise SystemExit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
