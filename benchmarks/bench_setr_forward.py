"""Forward-pass speed and peak memory of hf_seg's SETR against mmsegmentation 1.x's, with the same weights.

    python benchmarks/bench_setr_forward.py [--decoder pup|naive|mla] [--runs 5] [--warmup 1] [--threads N]
                                            [--size 512] [--plain] [--profile] [--json FILE]

What it does (see benchmarks/README.md):

1. Builds mmseg's model from its real config (`setr_vit-l_{decoder}_8xb2-160k_ade20k-512x512`, read with mmengine's
   `Config`), with SyncBN replaced by BN and the data preprocessor dropped, fills every parameter and buffer with
   seeded random values, converts its state dict with `hf_seg.convert.setr` and loads it into
   `SetrForSemanticSegmentation` (strict), then applies `hf_seg.optimize_for_inference` to it (oneDNN linear layers,
   BatchNorm folded into the head's convolutions, in-place activations; `--plain` skips this).
2. Checks that both give the same logits on one random 512x512 image (max abs diff <= 1e-3), then times, in this one
   process, batch 1 fp32 eval forwards under `torch.inference_mode()`: `warmup` runs of each, then `runs` rounds that
   run both models back to back, alternating which goes first. mmseg's timed call is `EncoderDecoder.encode_decode`
   (backbone -> neck -> decode head -> bilinear resize to the input), hf_seg's is `model(pixel_values).logits`.
3. Peak memory: one child process per implementation builds only its own model, records its resident set size (RSS)
   after the build, resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), runs two forwards and reads the peak
   (`VmHWM` in `/proc/self/status`; `resource.getrusage().ru_maxrss` where the reset is unavailable, then the peak
   includes the build). Reported: RSS after build (interpreter + libraries + weights), the forward's peak above it,
   and the process's peak.

The ratio hf_seg / mmseg of the median times is printed with the issue's target (<= 0.7) and the memory comparison.
`--profile` adds a torch.profiler table of the operators of one forward of each model.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # mmseg_reference: imports mmseg on CPU with mmcv-lite

CONFIGS = {
    "naive": "setr_vit-l_naive_8xb2-160k_ade20k-512x512",
    "pup": "setr_vit-l_pup_8xb2-160k_ade20k-512x512",
    "mla": "setr_vit-l_mla_8xb2-160k_ade20k-512x512",
}
TARGET_RATIO = 0.7
LOGITS_TOLERANCE = 1e-3


# --- models ----------------------------------------------------------------------------------------------------------


def mmseg_model_config(decoder: str, size: int):
    """mmseg's real SETR config as a dict for `MODELS.build`: SyncBN -> BN, no data preprocessor, no pretrained file."""
    from mmseg_reference import import_mmseg

    mmseg = import_mmseg()
    from mmengine.config import Config

    path = Path(mmseg.__file__).parent / ".mim" / "configs" / "setr" / f"{CONFIGS[decoder]}.py"
    model = Config.fromfile(str(path)).model.to_dict()

    def replace_sync_bn(node):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
            for value in node.values():
                replace_sync_bn(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                replace_sync_bn(value)

    replace_sync_bn(model)
    model.pop("data_preprocessor", None)
    model["pretrained"] = None
    model["backbone"]["init_cfg"] = None
    model["backbone"]["img_size"] = (size, size)
    return model


def build_mmseg(decoder: str, size: int):
    from mmseg.registry import MODELS

    return MODELS.build(mmseg_model_config(decoder, size)).eval()


def mmseg_out_indices(decoder: str, size: int) -> list[int]:
    return list(mmseg_model_config(decoder, size)["backbone"]["out_indices"])


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Seeded random values for every parameter and buffer: fan-in scaled uniform weights, LayerNorm / BN scales
    around 1, small biases and means, positive BN variances."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = torch.rand(tensor.shape, generator=generator) + 0.5
        elif tensor.ndim >= 2 and leaf not in ("pos_embed", "cls_token"):
            bound = (3 / tensor.shape[1:].numel()) ** 0.5
            value = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound
        elif leaf == "weight":
            value = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            value = 0.1 * torch.randn(tensor.shape, generator=generator)
        tensor.copy_(value)


def hf_config(mmseg_state_dict, decoder: str, size: int, num_attention_heads: int = 16):
    from hf_seg.convert.setr import setr_config_overrides_for_mmseg
    from hf_seg.models.setr import SetrConfig

    overrides = setr_config_overrides_for_mmseg(
        mmseg_state_dict, decoder, out_indices=mmseg_out_indices(decoder, size), num_attention_heads=num_attention_heads
    )
    num_labels = mmseg_state_dict["decode_head.conv_seg.weight"].shape[0]
    return SetrConfig(**overrides, num_labels=num_labels)


def build_pair(decoder: str, size: int, optimize: bool = True):
    from hf_seg.convert.setr import convert_mmseg_setr_state_dict
    from hf_seg.models.setr import SetrForSemanticSegmentation
    from hf_seg.optimize import optimize_for_inference

    mmseg_model = build_mmseg(decoder, size)
    randomize(mmseg_model)
    state_dict = mmseg_model.state_dict()
    config = hf_config(state_dict, decoder, size)
    hf_model = SetrForSemanticSegmentation(config)
    hf_model.load_state_dict(convert_mmseg_setr_state_dict(state_dict, config), strict=True)
    hf_model.eval()
    if optimize:
        optimize_for_inference(hf_model)
    return mmseg_model, hf_model


def forwards(mmseg_model, hf_model, size: int):
    metas = [dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))]
    run_mmseg = None if mmseg_model is None else (lambda x: mmseg_model.encode_decode(x, metas))
    run_hf = None if hf_model is None else (lambda x: hf_model(pixel_values=x).logits)
    return run_mmseg, run_hf


# --- timing ----------------------------------------------------------------------------------------------------------


class CpuContention:
    """CPU time that other processes used between construction and `others_share()`, as a share of the machine's
    capacity (all CPUs x wall time): /proc/stat's busy time minus this process's user + system time."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime, time.monotonic()

    def others_share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (after - before for after, before in zip(end, self.start))
        return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))


def timed(function, pixel_values) -> float:
    start = time.perf_counter()
    function(pixel_values)
    return time.perf_counter() - start


def time_alternating(run_mmseg, run_hf, pixel_values, runs: int, warmup: int) -> dict[str, list[float]]:
    times = {"mmseg": [], "hf_seg": []}
    with torch.inference_mode():
        for _ in range(warmup):
            run_mmseg(pixel_values)
            run_hf(pixel_values)
        for index in range(runs):
            order = [("mmseg", run_mmseg), ("hf_seg", run_hf)]
            for name, function in order if index % 2 == 0 else order[::-1]:
                times[name].append(timed(function, pixel_values))
                print(f"  run {index + 1}/{runs} {name}: {times[name][-1]:.3f} s", flush=True)
    return times


def profile(run, pixel_values, label: str, rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run(pixel_values)
    print(f"\n--- torch.profiler: {label} (self CPU time, top {rows} operators) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))
    print(f"--- {label}: by input shape (top 15) ---")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                             max_name_column_width=40, max_shapes_column_width=70))


# --- memory (child processes) ----------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(which: str, decoder: str, size: int, threads: int, config_json: str | None,
                 optimize: bool = True) -> None:
    """Runs in a child process: build one model, then measure the forward's peak RSS. Prints one JSON line."""
    torch.set_num_threads(threads)
    if which == "mmseg":
        from mmseg_reference import import_mmseg

        import_mmseg()
        run, _ = forwards(build_mmseg(decoder, size), None, size)
    else:
        from hf_seg.models.setr import SetrConfig, SetrForSemanticSegmentation

        model = SetrForSemanticSegmentation(SetrConfig.from_dict(json.loads(config_json))).eval()
        if optimize:
            from hf_seg.optimize import optimize_for_inference

            optimize_for_inference(model)
        _, run = forwards(None, model, size)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    after_build = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        method = "VmHWM after /proc/self/clear_refs reset"
    except OSError:
        method = "ru_maxrss (includes the build)"
    with torch.inference_mode():
        for _ in range(2):
            run(pixel_values)
    peak = _rss_kib("VmHWM") if method.startswith("VmHWM") else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(dict(which=which, after_build_kib=after_build, peak_kib=peak, method=method)))


def measure_memory(which: str, args, config_json: str) -> dict:
    command = [sys.executable, __file__, "--memory-child", which, "--decoder", args.decoder, "--size", str(args.size),
               "--threads", str(args.threads), "--config-json", config_json] + (["--plain"] if args.plain else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(f"memory child for {which} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


# --- main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", choices=sorted(CONFIGS), default="pup")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (each runs both models once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards of each model first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's default on this machine)")
    parser.add_argument("--size", type=int, default=512, help="square input side and the configs' img_size")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables for both models")
    parser.add_argument("--skip-memory", action="store_true", help="skip the child-process memory measurement")
    parser.add_argument("--plain", action="store_true",
                        help="time hf_seg's plain model (no hf_seg.optimize_for_inference)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--memory-child", choices=["mmseg", "hf_seg"], help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        memory_child(args.memory_child, args.decoder, args.size, args.threads, args.config_json, not args.plain)
        return

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    import transformers

    from mmseg_reference import import_mmseg

    mmseg = import_mmseg()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, mmseg {mmseg.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch threads {args.threads} "
          f"(default here: {default_threads})")
    print(f"building {CONFIGS[args.decoder]} (BN instead of SyncBN, random weights) and converting it ...", flush=True)
    mmseg_model, hf_model = build_pair(args.decoder, args.size, optimize=not args.plain)
    record = getattr(hf_model, "_hf_seg_inference_optimizations", None)
    print(f"hf_seg optimize_for_inference: {record if record is not None else 'off (--plain)'}")
    print(f"hf_seg attention implementation: {hf_model.config._attn_implementation}; parameters: "
          f"{sum(p.numel() for p in hf_model.parameters()):,} (hf_seg, incl. aux heads) / "
          f"{sum(p.numel() for p in mmseg_model.parameters()):,} (mmseg)")
    run_mmseg, run_hf = forwards(mmseg_model, hf_model, args.size)

    pixel_values = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, logits = run_mmseg(pixel_values), run_hf(pixel_values)
    diff = (logits - expected).abs().max().item()
    agreement = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
    print(f"logits {tuple(logits.shape)}: max abs diff {diff:.3g} (tolerance {LOGITS_TOLERANCE}), "
          f"argmax agreement {agreement:.4%}, logit std {expected.std().item():.3g}")
    if not diff <= LOGITS_TOLERANCE:
        raise SystemExit(f"logits differ by {diff:.3g} > {LOGITS_TOLERANCE}: not timing different functions")

    print(f"timing: {args.warmup} warm-up + {args.runs} alternating runs each, batch 1, fp32, inference_mode")
    contention = CpuContention()
    times = time_alternating(run_mmseg, run_hf, pixel_values, args.runs, args.warmup)
    others_share = contention.others_share()
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["hf_seg"] / medians["mmseg"]

    memory = {}
    if not args.skip_memory:
        config_json = json.dumps(hf_model.config.to_diff_dict() | {"num_labels": hf_model.config.num_labels})
        del mmseg_model, hf_model, run_mmseg, run_hf
        for which in ("mmseg", "hf_seg"):
            print(f"measuring peak memory of {which} in a child process ...", flush=True)
            memory[which] = measure_memory(which, args, config_json)

    print("\n=== SETR-%s ViT-L, %dx%d, batch 1, fp32, CPU, %d threads ===" % (args.decoder.upper(), args.size,
                                                                            args.size, args.threads))
    for name in ("mmseg", "hf_seg"):
        spread = f"min {min(times[name]):.3f} / max {max(times[name]):.3f}"
        print(f"{name:7s} median {medians[name]:.3f} s over {args.runs} runs ({spread})")
    if others_share is not None:
        print(f"other processes used {others_share:.1%} of the machine's CPU time while timing ran "
              "(from /proc/stat minus this process; well above 0 means the timings were disturbed)")
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"ratio hf_seg / mmseg = {ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    for name, record in memory.items():
        forward_peak = record["peak_kib"] - record["after_build_kib"]
        print(f"{name:7s} RSS after build {record['after_build_kib'] / 2**20:.2f} GiB, forward peak above it "
              f"{forward_peak / 2**20:.2f} GiB, process peak {record['peak_kib'] / 2**20:.2f} GiB ({record['method']})")

    if args.profile:
        run_mmseg, run_hf = forwards(*build_pair(args.decoder, args.size, optimize=not args.plain), args.size)
        profile(run_mmseg, pixel_values, "mmseg")
        profile(run_hf, pixel_values, "hf_seg")

    if args.json:
        args.json.write_text(json.dumps(dict(
            decoder=args.decoder, size=args.size, threads=args.threads, runs=args.runs, warmup=args.warmup,
            optimized=not args.plain,
            logits_max_abs_diff=diff, others_cpu_share=others_share, times_s=times, medians_s=medians, ratio=ratio, memory=memory,
            torch=torch.__version__, transformers=transformers.__version__, mmseg=mmseg.__version__,
        ), indent=2))


if __name__ == "__main__":
    main()
