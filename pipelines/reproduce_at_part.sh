#!/usr/bin/env bash
# Table 1's AT and PART rows on CIFAR-10 in one command: the paired study of cpu_study.sh at the paper's scale
# (--full), one seed: convert -> both trainings (ResNet-18, 80 epochs, batch 128, lr 0.01 / 10 at epoch 60, wd 2e-4,
# PGD-10 alpha 2/255, eps 8/255 / 7/255, burn-in 20, masks every 10; fastpart's fast path, side by side on one GPU)
# -> natural, PGD-20 and MMA on the test split, AutoAttack standard on a seeded 1,000 (fp32) -> one report.
#   bash pipelines/reproduce_at_part.sh [--source ARCHIVE] [--out DIR] [--data-dir DIR] [--sequential] [--smoke]
#   ARCHIVE: the official cifar-10-python.tar.gz or a split/class/file tree of it (default: ../shared/datasets/
#            cifar10-jpeg.tar.gz, whose images went through JPEG: say so next to every number)
# Every step resumes: run the same command again after a time limit or a kill and it continues where it stopped.
# --smoke: the same steps at tiny scale on the CPU (generated shapes data, width-8 ResNet-18, 2 epochs).
set -euo pipefail
exec bash "$(dirname "$0")/cpu_study.sh" --full --seeds 0 --out runs/table1 "$@"
