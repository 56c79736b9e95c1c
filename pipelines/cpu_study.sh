#!/usr/bin/env bash
# PART against AT on real CIFAR-10, paired over seeds: convert -> for every seed, AT and PART with identical
# settings but the budget (same data order and initial weights) -> evaluations -> one report with the paired
# differences. Every step resumes: run the same command again after a kill or a time limit and it continues.
#   bash pipelines/cpu_study.sh [--full | --gpu | --smoke] [--seeds 0,1,2] [--source ARCHIVE] [--out DIR] [--data-dir DIR]
#                               [--sequential]
#   default (the CPU scale, about 2 hours on 2 cores; README "PART on real CIFAR-10" says why each choice):
#     the JPEG CIFAR-10 of ../shared/datasets, width-8 ResNet-18 in bf16, a fixed 10,000-image training subset, 15
#     epochs of batch 128, lr 0.1 / 10 at epoch 11, PGD-3 (alpha 2/255), eps 8/255 / 7/255, PART burn-in 3 and masks
#     every 2 epochs; evaluation (fp32): natural and PGD-20 on the whole test split, standard AutoAttack and its
#     first two attacks alone (APGD-CE + APGD-T, the figure of earlier studies) on a seeded 1,000
#   --full: the paper's scale, for a GPU: ResNet-18, 80 epochs, the whole training split, PGD-10, lr 0.01 / 10 at 60,
#     burn-in 20, masks every 10, the fast path; natural, PGD-20 and MMA on the test split, AutoAttack on 1,000
#   --gpu: one short run of each on one GPU in a few minutes (benchmarks/gpu_study.sh): ResNet-18, a 15,000-image
#     subset, 15 epochs, one-cycle lr (peak 0.1), a 2-epoch budget ramp, PGD-10, burn-in 4, masks every 2
#   --smoke: the same steps in a minute on generated shapes data (the tests run it)
#   --sequential: one training at a time (default: the AT and PART runs of a seed side by side, one thread each)
# One seed writes OUT/at and OUT/part; several write OUT/at-sS and OUT/part-sS; the report goes to OUT/report.
set -euo pipefail
invocation="$(printf '%q ' "$0" "$@")"  # before the options are parsed (shifted away)
here="$(cd "$(dirname "$0")/.." && pwd)"
read -r -a fastpart <<< "${FASTPART:-$here/.venv/bin/fastpart}"  # the command, e.g. FASTPART="python3 -m fastpart"
scale=cpu seeds=0,1,2 source_path="$here/../shared/datasets/cifar10-jpeg.tar.gz" out="runs/cpu-study" data="data"
together=1 images=4
while [ $# -gt 0 ]; do
    case "$1" in
        --full) scale=full; shift ;;
        --gpu) scale=gpu; shift ;;
        --smoke) scale=smoke; shift ;;
        --seeds) seeds="$2"; shift 2 ;;
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --sequential) together=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
IFS=',' read -r -a seed_list <<< "$seeds"
for seed in "${seed_list[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || { echo "--seeds takes comma-separated integers, got '$seeds'" >&2; exit 2; }
done

case "$scale" in
    smoke)
        "${fastpart[@]}" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
        train=(--dataset shapes --model resnet18_cifar_w8 --epochs 2 --batch-size 64 --steps 2 --eval-steps 2
               --eval-every 1)
        part=(--burn-in 1 --mask-freq 1)
        evaluate=(--attacks natural,pgd20,aa-fast --n 16 --aa-n 4 --batch-size 16 --device cpu)
        images=1 ;;
    cpu)
        "${fastpart[@]}" convert cifar10 --source "$source_path" --out "$data" --format npz
        train=(--dataset cifar10 --model resnet18_cifar_w8 --train-n 10000 --epochs 15 --batch-size 128 --lr 0.1
               --steps 3 --precision bf16 --eval-n 1000 --device cpu)
        part=(--mask-freq 2)
        evaluate=(--attacks natural,pgd20,aa-fast,aa --aa-n 1000 --batch-size 500 --device cpu) ;;
    gpu)  # one short run of each on one GPU (benchmarks/gpu_study.sh): the paper's model, budget and PGD-10
        "${fastpart[@]}" convert cifar10 --source "$source_path" --out "$data" --format npz
        train=(--dataset cifar10 --train-n 15000 --epochs 15 --lr 0.1 --lr-schedule onecycle --eps-warmup 2
               --eval-every 5 --eval-n 1000 --compile --compile-attack --compile-mode reduce-overhead)
        part=(--burn-in 4 --mask-freq 2)
        evaluate=(--attacks natural,pgd20,aa --aa-n 1000 --batch-size 1000 --precision fp32) ;;
    full)
        "${fastpart[@]}" convert cifar10 --source "$source_path" --out "$data" --format npz
        train=(--dataset cifar10 --epochs 80 --eval-every 10 --compile --compile-attack --compile-mode reduce-overhead)
        part=(--burn-in 20 --mask-freq 10)
        evaluate=(--attacks natural,pgd20,mma,aa --aa-n 1000 --precision fp32) ;;
esac
[ "$scale" = cpu ] && [ "$together" = 1 ] && export OMP_NUM_THREADS=1  # two runs side by side, a core each

mkdir -p "$out"
echo "$invocation" > "$out/command.txt"
runs=()
for seed in "${seed_list[@]}"; do
    pids=()
    for method in at part; do
        run="$out/$method"
        [ "${#seed_list[@]}" -gt 1 ] && run="$out/$method-s$seed"
        options=()
        [ "$method" = part ] && options=("${part[@]}")  # AT has no masks and refuses PART's options
        command=("${fastpart[@]}" train "${train[@]}" "${options[@]}" --method "$method" --seed "$seed" --data-dir "$data"
                 --out "$run" --resume)
        if [ "$together" = 1 ]; then
            "${command[@]}" > "$run.log" 2>&1 &
            pids+=($!)
        else
            "${command[@]}"
        fi
        runs+=("$run")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "a training of seed $seed failed: see its log beside its run folder in $out" >&2; exit 1; }
    done
done
pids=()
for run in "${runs[@]}"; do
    if [ "$together" = 1 ]; then  # two at a time, as the trainings
        "${fastpart[@]}" eval "$run" "${evaluate[@]}" > "$run.eval.log" 2>&1 &
        pids+=($!)
        if [ "${#pids[@]}" = 2 ]; then wait "${pids[@]}" || { echo "an evaluation failed: see $run.eval.log" >&2; exit 1; }; pids=(); fi
    else
        "${fastpart[@]}" eval "$run" "${evaluate[@]}"
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "an evaluation failed: see the .eval.log files in $out" >&2; exit 1; }; done
"${fastpart[@]}" report "${runs[@]}" --out "$out/report" --images "$images"
