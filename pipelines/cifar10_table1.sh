#!/usr/bin/env bash
# Paper Table 1: ResNet-18 on CIFAR-10, 80 epochs, one row per method (SPEC settings; PART: burn-in 20, masks every 10).
#   bash pipelines/cifar10_table1.sh --method part --source PATH_TO_CIFAR10_ARCHIVE [--out runs/cifar10_part]
#   methods: at, part, trades, part-trades, mart, part-mart
#   bash pipelines/cifar10_table1.sh --method part --smoke     # the same steps at tiny scale on the CPU (shapes data)
# Calls only the fastpart CLI: convert, then train (evaluation and report arrive with `fastpart eval`).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
method="at" source_path="" out="" data="data" smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --method) method="$2"; shift 2 ;;
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
out="${out:-runs/cifar10_$method}"

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
    "$fastpart" train --dataset shapes --data-dir "$data" --model resnet18_cifar_w8 --method "$method" \
        --epochs 2 --burn-in 1 --mask-freq 1 --batch-size 64 --steps 2 --eval-steps 2 --out "$out" --resume
else
    "$fastpart" convert cifar10 ${source_path:+--source "$source_path"} --out "$data"
    "$fastpart" train --dataset cifar10 --data-dir "$data" --method "$method" --epochs 80 --mask-freq 10 \
        --eval-every 10 --out "$out" --resume
fi
