#!/usr/bin/env bash
# One row of the paper's Table 1: convert -> train -> eval -> report, through the fastpart CLI only.
#   bash pipelines/table1.sh --dataset cifar10 --method part [--source ARCHIVE] [--out DIR] [--data-dir DIR] [--smoke]
#   datasets: cifar10 (ResNet-18), svhn (ResNet-18), tinyimagenet (WRN-34-10); SPEC settings per dataset (80 epochs,
#   lr / 10 at epoch 60, PART burn-in 20, masks every 10); evaluation: natural, PGD-20, MMA, AutoAttack on the test split.
#   methods: at, part, trades, part-trades, mart, part-mart
#   --smoke: the same four steps at tiny scale on the CPU (generated shapes data, width-8 ResNet-18, 2 epochs).
# The per-row recipes beside this file (cifar10_part.sh, svhn_at.sh, ...) call it with their dataset and method.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
dataset="cifar10" method="at" source_path="" out="" data="data" smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) dataset="$2"; shift 2 ;;
        --method) method="$2"; shift 2 ;;
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
out="${out:-runs/${dataset}_${method}}"

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
    "$fastpart" train --dataset shapes --data-dir "$data" --model resnet18_cifar_w8 --method "$method" \
        --epochs 2 --burn-in 1 --mask-freq 1 --batch-size 64 --steps 2 --eval-steps 2 --out "$out" --resume
    "$fastpart" eval "$out" --attacks natural,pgd20,mma,aa --n 16 --batch-size 16 --device cpu
    "$fastpart" report "$out" --images 2
else
    "$fastpart" convert "$dataset" ${source_path:+--source "$source_path"} --out "$data"
    "$fastpart" train --dataset "$dataset" --data-dir "$data" --method "$method" --epochs 80 --mask-freq 10 \
        --eval-every 10 --out "$out" --resume
    "$fastpart" eval "$out" --attacks natural,pgd20,mma,aa
    "$fastpart" report "$out"
fi
