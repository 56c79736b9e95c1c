#!/usr/bin/env bash
# PART + EMA + AWP on CIFAR-10, the strongest configuration: see recipe.sh for the settings and --smoke.
exec bash "$(dirname "$0")/recipe.sh" strong "$@"
