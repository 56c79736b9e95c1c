#!/usr/bin/env bash
# Paper Table 1, CIFAR-10, ResNet-18, mart: convert, train, eval, report (see table1.sh for the options and --smoke).
exec bash "$(dirname "$0")/table1.sh" --dataset cifar10 --method mart "$@"
