"""Run every benchmark (loader, kernel, attack, train, baseline) and summarise their results for this device.

Each benchmark runs as a subprocess with a timeout and writes ``<name>-<device slug>.json`` to the
results folder; the summary reads those files (fresh or from earlier runs) and writes

    summary-<device slug>.json   headline figures, the status of each benchmark, the inputs used
    summary-<device slug>.md     the headline figures, then one Markdown table per result table
    summary-<device slug>.png    bar charts: training images/s (incl. the baseline), attack ms per
                                 backend, kernel GB/s per backend against copy bandwidth, loader images/s

Headline figures: the PART/AT cost ratio at mask-freq 10 and 1 (training time per image of PART over
AT; the paper's own implementation: 1.76 on 2xA100; goal <= 1.05), fastpart's speed-up over the
released-code-style baseline, the PGD-10 attack speed-up of the triton step over the reference one,
and the PGD-step kernel's bandwidth as a percentage of copy bandwidth.

Sizes. With CUDA: loader 50,000 CIFAR-sized images (data/cifar10 when present, else random);
kernel at its full sizes in fp32 and bf16; attack on resnet18_cifar, batches 128 and 512, plus a
torch.compile'd model; train and baseline on --dataset/--data-dir (default: 10,000 generated shapes
images) with resnet18_cifar, train 3 epochs, baseline 10 batches of 128. Without CUDA (CPU sizes):
loader 10,000 random CIFAR-sized images; kernel --small (tiny tensors, Triton interpreted); attack
--small (resnet18_cifar_w8, batches 16 and 32, reference step); train 2,000 shapes images, 3 epochs,
resnet18_cifar_w8; baseline 1,024 shapes images, 3 batches of 128 against fastpart runs of 3 epochs.

    python benchmarks/run_all.py                                   # everything, sizes for this machine
    python benchmarks/run_all.py --only train baseline --dataset cifar10 --data-dir data
    python benchmarks/run_all.py --collect-only --device-slug nvidia-h200   # summarise existing files
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

BENCHMARKS = ("loader", "kernel", "attack", "train", "baseline")
RESULT_NAMES = {"kernel": ("kernel", "kernel-small")}  # bench_kernel --small writes kernel-small-<slug>.json
PAPER_COST_RATIO = 1.76  # PART 2:11:05 / AT 1:14:37, 2xA100, 80 epochs (paper)
GOAL_COST_RATIO = 1.05
TIMEOUTS = {"gpu": {"loader": 600, "kernel": 600, "attack": 600, "train": 900, "baseline": 900},
            "cpu": {"loader": 300, "kernel": 300, "attack": 300, "train": 600, "baseline": 300}}
# Runs a script with common.RESULTS pointed at a folder, for scripts that take no --results option.
RESULTS_SHIM = ("import runpy, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import common; "
                "common.RESULTS = Path(sys.argv[2]); sys.argv = sys.argv[3:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def benchmark_args(name: str, gpu: bool, dataset: str | None, data_dir: str | None, model: str | None) -> list[str]:
    """Command-line options of one benchmark script for this machine (see the module docstring)."""
    data = (["--dataset", dataset] if dataset else []) + (["--data-dir", data_dir] if data_dir else [])
    model = model or ("resnet18_cifar" if gpu else None)
    model_args = ["--model", model] if model else []
    if name == "loader":
        if data_dir:
            from fastpart.loader import split_path

            return ["--source", str(split_path(data_dir, dataset or "cifar10", "train"))]
        return [] if gpu else ["--n", "10000", "--repeats", "3"]
    if name == "kernel":
        return ["--dtypes", "fp32", "bf16"] if gpu else ["--small"]
    if name == "attack":
        return ["--compiled-model"] if gpu else ["--small"]
    if name == "train":
        size = [] if data_dir else ["--n", "10000" if gpu else "2000"]
        return data + size + model_args + ["--epochs", "3"]
    if name == "baseline":
        size = [] if data_dir else ["--n", "10000" if gpu else "1024"]
        return data + size + model_args + ["--batches", "10" if gpu else "3"]
    raise ValueError(f"unknown benchmark {name!r}")


def script_path(name: str) -> Path:
    return HERE / f"bench_{name}.py"


def command(name: str, args: list[str], results: Path) -> list[str]:
    script = script_path(name)
    if '"--results"' in script.read_text():
        return [sys.executable, str(script), *args, "--results", str(results)]
    return [sys.executable, "-c", RESULTS_SHIM, str(HERE), str(results), str(script), *args]


def run_benchmark(name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run one benchmark, echoing its output with a prefix; status ok / failed / timeout."""
    shown = cmd[5:] if cmd[1] == "-c" else cmd[1:]
    print(f"== {name} (timeout {timeout:.0f} s): {shlex.join(shown)}", flush=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: deque[str] = deque(maxlen=20)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # bytes, split at \n only: a progress bar's \r redraws stay on one line
            line = raw.decode(errors="replace").rstrip().rsplit("\r", 1)[-1].rstrip()
            if line:  # what is left of a progress bar once drawn over (empty once cleared)
                tail.append(line)
                print(f"[{name}] {line}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the benchmark's own process group (start_new_session)
        proc.wait()
        status = f"timeout ({timeout:.0f} s)"
    reader.join(timeout=5)
    seconds = round(time.perf_counter() - start, 1)
    print(f"== {name}: {status} in {seconds} s", flush=True)
    # the 1-minute load average before and after: other processes' load slows a CPU benchmark down
    record = {"status": status, "seconds": seconds,
              "load_avg_1min": f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus)"}
    if status != "ok":
        record["output_tail"] = list(tail)
    return record


# ---------------------------------------------------------------------------------------------
# Collecting
# ---------------------------------------------------------------------------------------------


def load_results(results: Path, device_slug: str) -> dict[str, dict[str, Any]]:
    """benchmark name -> its newest JSON record for the device (kernel: full or --small, whichever is newer)."""
    found: dict[str, dict[str, Any]] = {}
    for name in BENCHMARKS:
        candidates = []
        for result_name in RESULT_NAMES.get(name, (name,)):
            path = results / f"{result_name}-{device_slug}.json"
            if path.is_file():
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    print(f"skipping {path}: {exc}", file=sys.stderr)
                    continue
                candidates.append((str(record.get("time", "")), path.stat().st_mtime, path.name, record))
        if candidates:
            _, _, file_name, record = max(candidates, key=lambda c: (c[0], c[1]))
            found[name] = {**record, "_file": file_name}
    return found


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def train_headline(record: dict[str, Any]) -> dict[str, Any]:
    """PART/AT cost ratio (AT images/s over PART images/s) per mask frequency, from bench_train's runs."""
    runs = {r["run"]: r.get("images_per_s") for r in record.get("runs", [])}
    out: dict[str, Any] = {}
    for run, ips in runs.items():
        if run.startswith("part mask-freq "):
            out[f"part_at_cost_ratio_mask_freq_{run.rsplit(' ', 1)[1]}"] = _ratio(runs.get("at"), ips)
    return out


def baseline_headline(record: dict[str, Any]) -> dict[str, Any]:
    """fastpart images/s over the baseline's, per mask frequency, from bench_baseline's runs."""
    runs = record.get("runs", [])
    base = next((r for r in runs if r["run"].startswith("baseline")), None)
    out: dict[str, Any] = {}
    if base is None:
        return out
    out["baseline_images_per_s"] = base.get("images_per_s")
    for r in runs:
        if r["run"].startswith("fastpart part mask-freq "):
            freq = r["run"].rsplit(" ", 1)[1]
            out[f"fastpart_images_per_s_mask_freq_{freq}"] = r.get("images_per_s")
            out[f"speedup_vs_baseline_mask_freq_{freq}"] = _ratio(r.get("images_per_s"), base.get("images_per_s"))
    return out


def attack_headline(record: dict[str, Any]) -> dict[str, Any]:
    """Reference ms / triton ms at the largest batch with a triton row (and for the compiled model)."""
    rows = record.get("rows", [])
    plain = [r for r in rows if "(compiled)" not in r.get("model", "")]
    triton_batches = [r["batch"] for r in plain if r.get("backend") == "triton"]
    if not triton_batches:
        return {"attack_speedup_triton_vs_reference": None}
    batch = max(triton_batches)
    ms = {r["backend"]: r["ms_per_attack"] for r in plain if r["batch"] == batch}
    out: dict[str, Any] = {"attack_batch": batch,
                           "attack_speedup_triton_vs_reference": _ratio(ms.get("reference"), ms.get("triton"))}
    compiled = [r for r in rows if "(compiled)" in r.get("model", "") and r["batch"] == batch]
    if compiled:
        out["attack_speedup_compiled_triton_vs_reference"] = _ratio(ms.get("reference"), compiled[0]["ms_per_attack"])
    return out


def kernel_headline(record: dict[str, Any]) -> dict[str, Any]:
    """% of copy bandwidth (100 * GB/s / copy GB/s) at the largest size, per dtype: the best Triton variant and
    ``auto`` (what training calls), on uint8 level budgets (what training passes) where those were measured."""
    rows, copy = record.get("rows", []), record.get("copy_GB_s")
    if not rows or not copy:
        return {}
    largest = max(rows, key=lambda r: r.get("MB_per_step", 0))["size"]
    at_size = [r for r in rows if r["size"] == largest]
    if any(r.get("eps") == "levels" for r in at_size):
        at_size = [r for r in at_size if r.get("eps") == "levels"]
    out: dict[str, Any] = {"kernel_size": largest, "kernel_eps": at_size[0].get("eps"), "copy_GB_s": copy,
                           "kernel_triton_interpreted": bool(record.get("triton_interpreted"))}
    by_dtype: dict[str, dict[str, Any]] = {}
    for dtype in dict.fromkeys(r["dtype"] for r in at_size):
        for label, keep in (("triton", lambda b: b.startswith("triton")), ("auto", lambda b: b == "auto")):
            picked = [r for r in at_size if r["dtype"] == dtype and keep(r["backend"])]
            if picked:
                best = max(picked, key=lambda r: r["GB_s"])
                by_dtype.setdefault(dtype, {})[label] = {"pct_copy": round(100 * best["GB_s"] / copy, 1),
                                                         "backend": best["backend"], "GB_s": best["GB_s"]}
    out["kernel_pct_copy"] = by_dtype
    first = by_dtype.get("fp32") or next(iter(by_dtype.values()), {})
    for label in ("triton", "auto"):
        if label in first:
            out[f"kernel_pct_copy_{label}"] = first[label]["pct_copy"]
    return out


HEADLINES = {"train": train_headline, "baseline": baseline_headline, "attack": attack_headline,
             "kernel": kernel_headline}


def headline(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"paper_cost_ratio": PAPER_COST_RATIO, "goal_cost_ratio": GOAL_COST_RATIO}
    for name, fn in HEADLINES.items():
        if name in found:
            out.update(fn(found[name]))
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def md_table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in value.items())
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value}{suffix}"


def headline_lines(h: dict[str, Any]) -> list[str]:
    lines = []
    for freq in ("10", "1"):
        key = f"part_at_cost_ratio_mask_freq_{freq}"
        if key in h:
            verdict = "" if h[key] is None else (" (meets the goal)" if h[key] <= GOAL_COST_RATIO else " (above the goal)")
            lines.append(f"- PART/AT cost ratio, mask-freq {freq}: **{_fmt(h[key])}**{verdict} "
                         f"(paper: {PAPER_COST_RATIO} on 2xA100; goal <= {GOAL_COST_RATIO})")
    speedups = sorted((k for k in h if k.startswith("speedup_vs_baseline_mask_freq_")),
                      key=lambda k: -int(k.rsplit("_", 1)[1]))
    if speedups:
        parts = [f"mask-freq {k.rsplit('_', 1)[1]}: **{_fmt(h[k], 'x')}**" for k in speedups]
        lines.append(f"- Speed-up over the released-code-style baseline ({_fmt(h.get('baseline_images_per_s'))} "
                     f"img/s): " + ", ".join(parts))
    if "attack_speedup_triton_vs_reference" in h:
        value = h["attack_speedup_triton_vs_reference"]
        text = (f"**{value}x** at batch {h.get('attack_batch')}" if value is not None
                else "n/a (no triton rows: the step was timed with the reference backend only)")
        if h.get("attack_speedup_compiled_triton_vs_reference") is not None:
            text += f"; compiled model + triton: **{h['attack_speedup_compiled_triton_vs_reference']}x**"
        lines.append(f"- PGD-10 attack, triton step vs reference: {text}")
    if "kernel_size" in h:
        parts = []
        for dtype, entries in h.get("kernel_pct_copy", {}).items():
            for label, e in entries.items():
                parts.append(f"{dtype} {label} **{e['pct_copy']}%** ({e['backend']}, {e['GB_s']} GB/s)")
        note = " (Triton interpreted on the CPU: a harness check, not a speed)" if h.get("kernel_triton_interpreted") else ""
        lines.append(f"- PGD step kernel, % of copy bandwidth at {h['kernel_size']}, {h.get('kernel_eps')} budgets "
                     f"(copy {h['copy_GB_s']} GB/s): " + "; ".join(parts) + note)
    return lines or ["- no results"]


def write_markdown(path: Path, device: str, slug: str, found: dict[str, dict[str, Any]], h: dict[str, Any],
                   status: dict[str, dict[str, Any]]) -> None:
    out = [f"# Benchmark summary: {device} (`{slug}`)", "",
           f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')}.", "", "## Headline figures", ""]
    out += headline_lines(h)
    rows = []
    for n in BENCHMARKS:
        entry = {k: v for k, v in status.get(n, {"status": "no result"}).items() if k != "output_tail"}
        rows.append({"benchmark": n, **entry, "file": found.get(n, {}).get("_file"),
                     "recorded": found.get(n, {}).get("time")})
    out += ["", "## Benchmarks", "", md_table(rows)]
    for n in BENCHMARKS:
        if status.get(n, {}).get("output_tail"):
            stale = f" (the tables below show its earlier result, {found[n]['time']})" if n in found else ""
            out += ["", f"{n}: {status[n]['status']}{stale}; last output:", "", "```",
                    *status[n]["output_tail"][-8:], "```"]
    for name in BENCHMARKS:
        if name not in found:
            continue
        record = found[name]
        out += ["", f"## {name}", ""]
        scalars = {k: v for k, v in record.items()
                   if not k.startswith("_") and k != "benchmark" and not isinstance(v, (list, dict))}
        out.append("; ".join(f"{k}: {v}" for k, v in scalars.items()))
        for key, value in record.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                out += ["", f"### {key}", "", md_table(value)]
            elif isinstance(value, dict) and value and not key.startswith("_"):
                out += ["", f"### {key}", "", md_table([value])]
    path.write_text("\n".join(out) + "\n")


def write_figure(path: Path, device: str, found: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    fig.suptitle(f"fastpart benchmarks: {device}")
    _panel_train(axes[0, 0], found)
    _panel_attack(axes[0, 1], found.get("attack"))
    _panel_kernel(axes[1, 0], found.get("kernel"))
    _panel_loader(axes[1, 1], found.get("loader"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _panel_train(ax, found: dict[str, dict[str, Any]]) -> None:
    title = "training images/s"
    bars = []
    for r in found.get("train", {}).get("runs", []):
        bars.append((f"train: {r['run']}", r["images_per_s"], "tab:blue" if r["run"] == "at" else "tab:green"))
    for r in found.get("baseline", {}).get("runs", []):
        colour = "tab:red" if r["run"].startswith("baseline") else "tab:olive"
        bars.append((f"vs baseline: {r['run']}", r["images_per_s"], colour))
    if not bars:
        return _no_data(ax, title)
    labels, values, colours = zip(*bars)
    ax.barh(range(len(bars)), values, color=colours)
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    ax.set_xlabel("images/s")
    ax.set_title(title)


def _grouped(ax, groups: list[str], series: dict[str, dict[str, float]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [values.get(group, 0.0) for group in groups], width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.legend(fontsize=7)


def _panel_attack(ax, record: dict[str, Any] | None) -> None:
    title = "PGD-10 attack, ms (lower is better)"
    rows = (record or {}).get("rows", [])
    if not rows:
        return _no_data(ax, title)
    groups = sorted({f"batch {r['batch']}" for r in rows}, key=lambda g: int(g.split()[1]))
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        label = r["backend"] + (" + compiled model" if "(compiled)" in r.get("model", "") else "")
        series.setdefault(label, {})[f"batch {r['batch']}"] = r["ms_per_attack"]
    _grouped(ax, groups, series)
    ax.set_ylabel("ms")
    ax.set_title(f"{title}, {rows[0]['model'].replace(' (compiled)', '')}")


def _panel_kernel(ax, record: dict[str, Any] | None) -> None:
    title = "PGD step: GB/s per backend"
    rows = (record or {}).get("rows", [])
    if not rows:
        return _no_data(ax, title)
    dtype = "fp32" if any(r["dtype"] == "fp32" for r in rows) else rows[0]["dtype"]
    eps = "levels" if any(r["eps"] == "levels" for r in rows) else rows[0]["eps"]
    layout = rows[0]["layout"]
    picked = [r for r in rows if r["dtype"] == dtype and r["eps"] == eps and r["layout"] == layout]
    groups = list(dict.fromkeys(r["size"] for r in picked))
    series: dict[str, dict[str, float]] = {}
    for r in picked:
        series.setdefault(r["backend"], {})[r["size"]] = r["GB_s"]
    _grouped(ax, groups, series)
    if record.get("copy_GB_s"):
        ax.axhline(record["copy_GB_s"], color="black", linestyle="--", linewidth=1)
        ax.text(len(groups) - 0.5, record["copy_GB_s"], f"copy {record['copy_GB_s']} GB/s", ha="right",
                va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GB/s")
    note = " (Triton interpreted)" if record.get("triton_interpreted") else ""
    ax.set_title(f"{title}: {dtype}, {eps} eps, {layout}{note}")


def _panel_loader(ax, record: dict[str, Any] | None) -> None:
    title = "loader: images/s of one epoch"
    rows = (record or {}).get("rows", [])
    if not rows:
        return _no_data(ax, title)
    groups = list(dict.fromkeys(f"batch {r['batch']} {r['precision']}" for r in rows))
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        series.setdefault(r["backend"], {})[f"batch {r['batch']} {r['precision']}"] = r["images_per_s"]
    _grouped(ax, groups, series)
    ax.set_ylabel("images/s")
    ax.set_title(title)


def summarise(results: Path, device_slug: str, status: dict[str, dict[str, Any]] | None = None,
              sizes: dict[str, list[str]] | None = None) -> dict[str, Path]:
    found = load_results(results, device_slug)
    device = next((r.get("device") for r in found.values() if r.get("device")), device_slug)
    status = {**{name: {"status": "collected"} for name in found}, **(status or {})}
    h = headline(found)
    summary = {"benchmark": "summary", "device": device, "device_slug": device_slug,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "headline": h,
               "benchmarks": {name: {**status.get(name, {"status": "no result"}),
                                     "file": found.get(name, {}).get("_file"),
                                     "recorded": found.get(name, {}).get("time"),
                                     **({"args": sizes[name]} if sizes and name in sizes else {})}
                              for name in BENCHMARKS}}
    results.mkdir(parents=True, exist_ok=True)
    paths = {ext: results / f"summary-{device_slug}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    write_markdown(paths["md"], device, device_slug, found, h, status)
    write_figure(paths["png"], device, found)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)}); the summary still uses every result file")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder of the JSON results")
    parser.add_argument("--collect-only", action="store_true", help="run nothing: summarise the existing files")
    parser.add_argument("--device-slug", help="whose files to summarise (default: this machine's, e.g. amd-epyc-x2, "
                        "nvidia-h200)")
    parser.add_argument("--dataset", help="train/baseline: converted dataset (with --data-dir)")
    parser.add_argument("--data-dir", help="train/baseline (and loader): converted data (default: generated shapes)")
    parser.add_argument("--model", help="train/baseline model (default: resnet18_cifar with CUDA, resnet18_cifar_w8 without)")
    parser.add_argument("--timeout", type=float, help="seconds per benchmark (default: 300-900, per benchmark)")
    parser.add_argument("--extra", nargs=2, action="append", default=[], metavar=("NAME", "ARGS"),
                        help="more options for one benchmark, e.g. --extra kernel '--repeats 10'")
    args = parser.parse_args(argv)
    results = args.results.resolve()

    if args.collect_only:
        slug = args.device_slug or _this_device_slug()
        paths = summarise(results, slug)
    else:
        import torch

        gpu = torch.cuda.is_available()
        slug = args.device_slug or _this_device_slug()
        extra = {}
        for name, text in args.extra:
            if name not in BENCHMARKS:
                parser.error(f"--extra: unknown benchmark {name!r}")
            extra[name] = extra.get(name, []) + shlex.split(text)
        status, sizes = {}, {}
        for name in args.only or BENCHMARKS:
            bench_args = benchmark_args(name, gpu, args.dataset, args.data_dir, args.model) + extra.get(name, [])
            sizes[name] = bench_args
            timeout = args.timeout or TIMEOUTS["gpu" if gpu else "cpu"][name]
            status[name] = run_benchmark(name, command(name, bench_args, results), timeout)
        paths = summarise(results, slug, status, sizes)
    print(paths["md"].read_text())
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _this_device_slug() -> str:
    import torch

    return common.slug(common.device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")))


if __name__ == "__main__":
    sys.exit(main())
