#!/usr/bin/env bash
# Every GPU figure of the fast path, in one run of at most ~9 minutes on one GPU, with no network:
#
#   bash benchmarks/gpu_figures.sh --prepare [ARCHIVE]   # here, with network: wheels into .whl/, the CIFAR-10
#                                                        # archive (default ../shared/datasets/cifar10-jpeg.tar.gz)
#                                                        # into data/downloads/
#   bash benchmarks/gpu_figures.sh OUTDIR                # on the GPU machine (carry .whl and data/downloads)
#
# On the GPU machine it needs python3 with torch, triton, timm, numba, tqdm, scipy, matplotlib and pillow, plus
# the wheels of .whl (pyautoattack, grad-cam, ttach, torchattacks: installed into /tmp/site, nothing else touched). Steps, each
# under its own time limit, each writing as it goes (a step cut short keeps what it measured):
#   1. convert CIFAR-10 (--format npz: no ffcv there)
#   2. benchmarks/bench_fastpath.py: PGD-10 attack eager vs one graph per step (default, reduce-overhead) at
#      batch 128 and 512; AT and PART (mask-freq 10) images/s eager vs fast path at 128 and 512; the 50,000-image
#      mask refresh; host synchronisations per epoch
#   3. benchmarks/bench_baseline.py --fast: the released-code-style loop beside fastpart's fast path, same GPU
#   4. benchmarks/bench_autoattack.py: standard AutoAttack, fastpart's fast path vs pyautoattack vs torchattacks,
#      on the same 200 test points of a model trained there for 100 batches
#   5. benchmarks/bench_train.py --ae pgd n-fgsm: PGD-10 AT, PART, N-FGSM-AT and N-FGSM-PART images/s side by
#      side (10,000 training images, 2 epochs each) and their cost against PGD-10 AT
#   6. CUDA correctness: tests/test_fastpath.py and tests/test_kernels.py on the GPU
# OUTDIR receives fastpath-<card>.json/.md, baseline-<card>.json, autoattack-<card>.json/.md,
# train-pgd-n-fgsm-<card>.json, every step's log and steps.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"

if [ "${1:-}" = "--prepare" ]; then
    archive="${2:-../shared/datasets/cifar10-jpeg.tar.gz}"
    mkdir -p .whl data/downloads
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    for wheel in pyautoattack==0.2.0 grad-cam==1.5.7 ttach==0.0.3 torchattacks==3.5.1; do
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$wheel" \
            || "$py" -m pip wheel -q --no-deps -w .whl "$wheel"
    done
    rm -f .whl/*.tar.gz
    # pyautoattack's wheel carries 45 MB of example models: drop them (and their RECORD lines) to fit a carry
    "$py" - <<'PYTHON'
import glob, zipfile
for path in glob.glob(".whl/pyautoattack-*.whl"):
    with zipfile.ZipFile(path) as src:
        items = [(i, src.read(i)) for i in src.infolist() if "/examples/" not in i.filename]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, data in items:
            if info.filename.endswith("RECORD"):
                data = b"".join(l for l in data.splitlines(True) if b"/examples/" not in l)
            dst.writestr(info, data)
PYTHON
    cp "$archive" data/downloads/
    du -sh .whl data/downloads
    exit 0
fi

out="${1:?usage: bash benchmarks/gpu_figures.sh OUTDIR   (or --prepare)}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source benchmarks/gpu_common.sh
logs="$out" tail_lines=25
install_carried_wheels
archive="$(ls data/downloads/cifar10*.tar.gz data/downloads/cifar-10-python.tar.gz 2>/dev/null | head -1)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1

step convert 60 "$py" -m fastpart convert cifar10 --source "$archive" --out data --format npz
step fastpath 240 "$py" benchmarks/bench_fastpath.py --data-dir data --dataset cifar10 --train-n 20000 \
    --epochs 2 --results "$out"
step baseline 100 "$py" benchmarks/bench_baseline.py --dataset cifar10 --data-dir data --model resnet18_cifar \
    --batch-size 128 --batches 10 --fastpart-epochs 2 --mask-freqs 10 --fast --results "$out"
step autoattack 60 "$py" benchmarks/bench_autoattack.py --device cuda --data-dir data --n 200 --train-batches 100 \
    --results "$out"
step single-step 60 "$py" benchmarks/bench_train.py --dataset cifar10 --data-dir data --model resnet18_cifar \
    --train-n 10000 --epochs 2 --ae pgd n-fgsm --mask-freqs 10 --skip-refresh-cost --results "$out"
step cuda-tests 60 "$py" -m pytest -q -x tests/test_fastpath.py -k "compiled" tests/test_kernels.py -p no:cacheprovider
cat "$out/steps.txt"
