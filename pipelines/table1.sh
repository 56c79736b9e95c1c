#!/usr/bin/env bash
# One row of the paper's Table 1: convert -> train -> eval -> report, through the fastpart CLI only.
#   bash pipelines/table1.sh --dataset cifar10 --method part [--source ARCHIVE] [--out DIR] [--data-dir DIR]
#                            [--seeds 0,1,2] [--smoke]
#   datasets: cifar10 (ResNet-18), svhn (ResNet-18), tinyimagenet (WRN-34-10); the paper's settings per dataset
#   (80 epochs, lr / 10 at epoch 60, PART burn-in 20, masks every 10); evaluation: natural, PGD-20, MMA, AutoAttack
#   on the test split.
#   methods: at, part, trades, part-trades, mart, part-mart
#   --seeds: one run per seed (<out>_seed<S>) and a report over them with Table 1's mean +- std (<out>_seeds/);
#            one seed (the default, 0): one run in <out>.
#   --smoke: the same steps at tiny scale on the CPU (generated shapes data, width-8 ResNet-18, 2 epochs; AutoAttack's
#            quick subset APGD-CE + APGD-T on 8 images).
#   --train "OPTIONS", --eval "OPTIONS": more options of fastpart train / eval, after the row's (the last value of an
#            option wins); --tag T: the default <out> is runs/<dataset>_<method>_T.
# The per-row recipes beside this file (cifar10_part.sh, svhn_at.sh, ...) call it with their dataset and method;
# recipe.sh calls it with the options of its recipes beyond the paper.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
dataset="cifar10" method="at" source_path="" out="" data="data" smoke=0 seeds="0" tag=""
more_train=() more_eval=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dataset) dataset="$2"; shift 2 ;;
        --method) method="$2"; shift 2 ;;
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --smoke) smoke=1; shift ;;
        --train) read -r -a words <<< "$2"; more_train+=("${words[@]}"); shift 2 ;;
        --eval) read -r -a words <<< "$2"; more_eval+=("${words[@]}"); shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
out="${out:-runs/${dataset}_${method}${tag:+_$tag}}"
IFS=',' read -r -a seed_list <<< "$seeds"
for seed in "${seed_list[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || { echo "--seeds takes comma-separated integers, got '$seeds'" >&2; exit 2; }
done

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
else
    "$fastpart" convert "$dataset" ${source_path:+--source "$source_path"} --out "$data"
fi
part_smoke=() part_paper=()  # PART's options; a baseline has no masks and refuses them
if [[ "$method" == part* ]]; then part_smoke=(--burn-in 1 --mask-freq 1); part_paper=(--mask-freq 10); fi
runs=()
for seed in "${seed_list[@]}"; do
    run="$out"
    [ "${#seed_list[@]}" -gt 1 ] && run="${out}_seed${seed}"
    if [ "$smoke" = 1 ]; then
        "$fastpart" train --dataset shapes --data-dir "$data" --model resnet18_cifar_w8 --method "$method" \
            --epochs 2 "${part_smoke[@]}" --batch-size 64 --steps 2 --eval-steps 2 --seed "$seed" \
            "${more_train[@]}" --out "$run" --resume
        "$fastpart" eval "$run" --attacks natural,pgd20,mma,aa-fast --n 16 --aa-n 8 --batch-size 16 --device cpu \
            "${more_eval[@]}"
    else
        "$fastpart" train --dataset "$dataset" --data-dir "$data" --method "$method" --epochs 80 "${part_paper[@]}" \
            --eval-every 10 --seed "$seed" "${more_train[@]}" --out "$run" --resume
        "$fastpart" eval "$run" --attacks natural,pgd20,mma,aa "${more_eval[@]}"
    fi
    runs+=("$run")
done
images=()
[ "$smoke" = 1 ] && images=(--images 2)
if [ "${#runs[@]}" -gt 1 ]; then
    "$fastpart" report "${runs[@]}" --out "${out}_seeds" "${images[@]}"
else
    "$fastpart" report "${runs[0]}" "${images[@]}"
fi
