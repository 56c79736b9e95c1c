#!/usr/bin/env bash
# Paper Table 1, SVHN, ResNet-18, at: convert, train, eval, report (see table1.sh for the options and --smoke).
exec bash "$(dirname "$0")/table1.sh" --dataset svhn --method at "$@"
