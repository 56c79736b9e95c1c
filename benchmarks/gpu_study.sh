#!/usr/bin/env bash
# One GPU run, two answers: AT and PART trained side by side on real CIFAR-10 on one GPU (pipelines/cpu_study.sh
# --gpu: ResNet-18, a fixed 15,000-image subset, 15 epochs of batch 128, one-cycle lr, a 2-epoch budget ramp, PGD-10
# at eps 8/255 (PART: 7/255 outside the mask), alpha 2/255, burn-in 4, masks every 2, the fast path in bf16), both
# evaluated (natural and PGD-20 on the whole test split, AutoAttack standard on a seeded 1,000, fp32), and the
# released-style baseline on the same card for the speed ratio. Sized for about 9 minutes under a 600 s limit;
# every step writes as it goes, so a run cut short still reports what it measured.
#
#   bash benchmarks/gpu_study.sh --prepare          # here: the wheels into .whl/, the archive into data/downloads/
#   bash benchmarks/gpu_study.sh OUTDIR             # on the GPU machine (carry .whl and data/downloads)
#   bash benchmarks/gpu_study.sh OUTDIR --smoke     # the same steps on the CPU at tiny scale (the tests run it)
#
# OUTDIR gets at most 8 files: at-metrics.jsonl, part-metrics.jsonl, at-eval.json, part-eval.json, report.md,
# baseline-<card>.json, steps.txt, and rest.tar.gz (configs, logs, the report's PNGs, nvidia-smi).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
[ "${1:-}" = "--prepare" ] && exec bash benchmarks/gpu_figures.sh --prepare "${2:-../shared/datasets/cifar10-jpeg.tar.gz}"
out="${1:?usage: bash benchmarks/gpu_study.sh OUTDIR [--smoke]   (or --prepare)}"
smoke="${2:-}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
source benchmarks/gpu_common.sh
logs="$work" tail_lines=15  # step's logs go into the work folder (OUTDIR keeps at most 8 files)
install_carried_wheels
export FASTPART="$py -m fastpart"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$work/gpu.txt" 2>&1

study=(bash pipelines/cpu_study.sh --seeds 0 --out "$work/study" --data-dir "$work/data")
if [ "$smoke" = "--smoke" ]; then
    study+=(--smoke)
    baseline=(--dataset shapes --n 256 --batch-size 32 --batches 2 --fastpart-epochs 2 --mask-freqs 1 --device cpu)
else
    archive="$(ls data/downloads/cifar10*.tar.gz data/downloads/cifar-10-python.tar.gz 2>/dev/null | head -1)"
    study+=(--gpu --source "$archive")
    baseline=(--dataset cifar10 --data-dir "$work/data" --model resnet18_cifar --batch-size 128 --batches 10
              --fastpart-epochs 2 --mask-freqs 10 --fast)
fi
# the study resumes: its first call trains (and is cut at its limit if it must), the second evaluates and reports
step study 400 "${study[@]}"
step study-rest 100 "${study[@]}"
step baseline 80 "$py" benchmarks/bench_baseline.py "${baseline[@]}" --results "$out"

for method in at part; do
    for file in metrics.jsonl eval.json; do
        [ -f "$work/study/$method/$file" ] && cp "$work/study/$method/$file" "$out/$method-$file"
    done
done
[ -f "$work/study/report/report.md" ] && cp "$work/study/report/report.md" "$out/report.md"
tar -czf "$out/rest.tar.gz" -C "$work" --exclude='*.pt' --exclude='*.masks' --exclude='data' \
    --exclude='eval-progress.json' . 2>/dev/null
cat "$out/steps.txt"
ls -la "$out"
