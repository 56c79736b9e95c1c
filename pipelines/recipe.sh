#!/usr/bin/env bash
# Two PART recipes beyond the paper: convert -> train -> eval -> report, through the fastpart CLI only.
#   bash pipelines/recipe.sh strong|cheap [--dataset cifar10] [--source ARCHIVE] [--out DIR] [--data-dir DIR]
#                            [--seed S] [--smoke]
#   strong  PART + EMA + AWP: the paper's 80-epoch schedule (burn-in 20, masks every 10, lr / 10 at 60), the weights'
#           moving average (decay 0.999), adversarial weight perturbation (gamma 0.01, from the first epoch, as the
#           official AT-AWP), 1,000 held-out training images to pick the best epoch of the average; evaluated on
#           that epoch's averaged weights.
#   cheap   N-FGSM-PART: one step per batch (noise 2 eps, step eps, no projection; per pixel under the masks), 30
#           epochs of a one-cycle schedule up to lr 0.2 (de Jorge et al., NeurIPS 2022), burn-in 7 (a quarter),
#           masks every 4 (the paper's 10 of 80, scaled); every epoch checks for catastrophic overfitting.
#   Both evaluate natural, PGD-20 and standard AutoAttack on the test split. Meant for a GPU (see the estimate
#   fastpart train prints); --smoke runs the same steps at tiny scale on the CPU (shapes data, width-8 ResNet-18,
#   2 epochs).
# The recipes beside this file (part_ema_awp.sh, part_nfgsm.sh) call it by name.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
recipe="${1:-}"
[ $# -gt 0 ] && shift
dataset="cifar10" source_path="" out="" data="data" smoke=0 seed=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) dataset="$2"; shift 2 ;;
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case "$recipe" in
    strong)
        full=(--epochs 80 --mask-freq 10 --ema 0.999 --awp 0.01 --val-n 1000 --eval-every 10)
        small=(--epochs 2 --burn-in 1 --mask-freq 1 --steps 2 --ema 0.8 --awp 0.01 --val-n 32 --val-steps 1)
        weights=(--checkpoint best --weights ema) ;;
    cheap)
        full=(--ae n-fgsm --epochs 30 --lr-schedule onecycle --lr 0.2 --mask-freq 4 --eval-every 5)
        small=(--ae n-fgsm --epochs 2 --burn-in 1 --mask-freq 1 --lr-schedule onecycle --lr 0.05)
        weights=() ;;
    *) echo "choose a recipe: strong (PART + EMA + AWP) or cheap (N-FGSM-PART), got '${recipe}'" >&2; exit 2 ;;
esac
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "--seed takes an integer, got '$seed'" >&2; exit 2; }
out="${out:-runs/${dataset}_part_${recipe}}"

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
    "$fastpart" train --dataset shapes --data-dir "$data" --model resnet18_cifar_w8 --method part "${small[@]}" \
        --batch-size 64 --eval-steps 2 --seed "$seed" --out "$out" --resume
    "$fastpart" eval "$out" "${weights[@]}" --attacks natural,pgd20 --n 16 --batch-size 16 --device cpu
    "$fastpart" report "$out" --images 2
else
    "$fastpart" convert "$dataset" ${source_path:+--source "$source_path"} --out "$data"
    "$fastpart" train --dataset "$dataset" --data-dir "$data" --method part "${full[@]}" --seed "$seed" \
        --out "$out" --resume
    "$fastpart" eval "$out" "${weights[@]}" --attacks natural,pgd20,aa
    "$fastpart" report "$out"
fi
