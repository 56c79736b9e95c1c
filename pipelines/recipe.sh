#!/usr/bin/env bash
# Two PART recipes beyond the paper, run by table1.sh's convert -> train -> eval -> report with their options:
#   bash pipelines/recipe.sh strong|cheap [table1.sh's options: --source ARCHIVE --out DIR --data-dir DIR
#                                          --seeds 0,1,2 --smoke ...]
#   strong  PART + EMA + AWP: the paper's 80-epoch schedule (burn-in 20, masks every 10, lr / 10 at 60), the weights'
#           moving average (decay 0.999), adversarial weight perturbation (gamma 0.01, from the first epoch, as the
#           official AT-AWP), 1,000 held-out training images to pick the best epoch of the average; evaluated on
#           that epoch's averaged weights.
#   cheap   N-FGSM-PART: one step per batch (noise 2 eps, step eps, no projection; per pixel under the masks), 30
#           epochs of a one-cycle schedule up to lr 0.2 (de Jorge et al., NeurIPS 2022), burn-in 7 (a quarter),
#           masks every 4 (the paper's 10 of 80, scaled); every epoch checks for catastrophic overfitting.
#   Both evaluate natural, PGD-20 and standard AutoAttack on the test split (--smoke: natural and PGD-20 on 16
#   images). Meant for a GPU (see the estimate fastpart train prints); --smoke runs the same steps at tiny scale on
#   the CPU (shapes data, width-8 ResNet-18, 2 epochs). Run folder: runs/cifar10_part_<recipe> unless --out.
# The recipes beside this file (part_ema_awp.sh, part_nfgsm.sh) call it by name.
set -euo pipefail
recipe="${1:-}"
[ $# -gt 0 ] && shift
smoke=0
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=1; done
case "$recipe" in
    strong)
        full="--ema 0.999 --awp 0.01 --val-n 1000"
        small="--ema 0.8 --awp 0.01 --val-n 32 --val-steps 1"
        weights="--checkpoint best --weights ema" ;;
    cheap)
        full="--ae n-fgsm --epochs 30 --lr-schedule onecycle --lr 0.2 --mask-freq 4 --eval-every 5"
        small="--ae n-fgsm --lr-schedule onecycle --lr 0.05"
        weights="" ;;
    *) echo "choose a recipe: strong (PART + EMA + AWP) or cheap (N-FGSM-PART), got '${recipe}'" >&2; exit 2 ;;
esac
train="$full" attacks="natural,pgd20,aa"
[ "$smoke" = 1 ] && train="$small" attacks="natural,pgd20"
exec bash "$(dirname "$0")/table1.sh" --dataset cifar10 --method part --tag "$recipe" --train "$train" \
    --eval "--attacks $attacks $weights" "$@"
