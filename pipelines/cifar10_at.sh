#!/usr/bin/env bash
# Paper Table 1, row "AT": ResNet-18 on CIFAR-10, PGD-10 adversarial training, 80 epochs (SPEC settings).
#   bash pipelines/cifar10_at.sh --source PATH_TO_CIFAR10_ARCHIVE [--out runs/cifar10_at]
#   bash pipelines/cifar10_at.sh --smoke        # the same steps at tiny scale on the CPU (shapes data)
# Calls only the fastpart CLI: convert, then train (evaluation and report arrive with `fastpart eval`).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
source_path="" out="runs/cifar10_at" data="data" smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
    "$fastpart" train --dataset shapes --data-dir "$data" --model resnet18_cifar_w8 --method at \
        --epochs 2 --batch-size 64 --steps 2 --eval-steps 2 --out "$out"
else
    "$fastpart" convert cifar10 ${source_path:+--source "$source_path"} --out "$data"
    "$fastpart" train --dataset cifar10 --data-dir "$data" --method at --epochs 80 --eval-every 10 --out "$out"
fi
