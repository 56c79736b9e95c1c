#!/usr/bin/env bash
# Paper Table 1, TinyImageNet-200, WRN-34-10, part-trades: convert, train, eval, report (see table1.sh for the options and --smoke).
exec bash "$(dirname "$0")/table1.sh" --dataset tinyimagenet --method part-trades "$@"
