#!/usr/bin/env bash
# Table 1's AT and PART rows on CIFAR-10 in one command: convert -> both trainings (the paper's settings, on
# fastpart's fast path, side by side on one GPU) -> evaluations -> one report set against the paper.
#   bash pipelines/reproduce_at_part.sh [--source ARCHIVE] [--out DIR] [--data-dir DIR] [--sequential] [--smoke]
#   ARCHIVE: the official cifar-10-python.tar.gz or a split/class/file tree of it (default: ../shared/datasets/
#            cifar10-jpeg.tar.gz, whose images went through JPEG: say so next to every number)
#   training: ResNet-18, 80 epochs, batch 128, lr 0.01, wd 2e-4, PGD-10 (alpha 2/255), lr / 10 at epoch 60,
#             PART burn-in 20 and masks every 10, eps 8/255, eps_low 7/255, seed 0, bf16 on CUDA;
#             --compile --compile-attack --compile-mode reduce-overhead
#   evaluation (fp32): natural, PGD-20 and MMA on the whole test split; AutoAttack standard on a seeded subset of
#             1,000 (n and the binomial standard error are in eval.json)
# Every step resumes: run the same command again after a time limit or a kill and it continues where it stopped.
# --smoke: the same steps at tiny scale on the CPU (generated shapes data, width-8 ResNet-18, 2 epochs).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fastpart="${FASTPART:-$here/.venv/bin/fastpart}"
source_path="$here/../shared/datasets/cifar10-jpeg.tar.gz" out="runs/table1" data="data" smoke=0 together=1
while [ $# -gt 0 ]; do
    case "$1" in
        --source) source_path="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --data-dir) data="$2"; shift 2 ;;
        --sequential) together=0; shift ;;
        --smoke) smoke=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$smoke" = 1 ]; then
    "$fastpart" convert shapes --n-train 128 --n-test 64 --out "$data" --format npz
    train=(--dataset shapes --model resnet18_cifar_w8 --epochs 2 --batch-size 64 --steps 2 --eval-steps 2 --eval-every 1)
    part=(--burn-in 1 --mask-freq 1)
    evaluate=(--attacks natural,pgd20,mma,aa --n 16 --aa-n 8 --batch-size 16 --device cpu)
else
    "$fastpart" convert cifar10 --source "$source_path" --out "$data" --format npz
    train=(--dataset cifar10 --epochs 80 --eval-every 10 --compile --compile-attack --compile-mode reduce-overhead)
    part=(--mask-freq 10 --burn-in 20)
    evaluate=(--attacks natural,pgd20,mma,aa --aa-n 1000 --precision fp32)
fi
mkdir -p "$out"
pids=()
for method in at part; do
    options=()
    [ "$method" = part ] && options=("${part[@]}")  # AT has no masks and refuses PART's options
    run=("$fastpart" train "${train[@]}" "${options[@]}" --method "$method" --data-dir "$data" --out "$out/$method"
         --resume)
    if [ "$together" = 1 ]; then
        mkdir -p "$(dirname "$out")"
        "${run[@]}" > "$out.$method.log" 2>&1 &
        pids+=($!)
    else
        "${run[@]}"
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "a training failed: see $out.at.log and $out.part.log" >&2; exit 1; }
done
for method in at part; do
    "$fastpart" eval "$out/$method" "${evaluate[@]}"
done
"$fastpart" report "$out/at" "$out/part" --out "$out/report" --images 4
