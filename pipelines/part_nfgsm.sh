#!/usr/bin/env bash
# N-FGSM-PART on CIFAR-10, the cheapest configuration: see recipe.sh for the settings and --smoke.
exec bash "$(dirname "$0")/recipe.sh" cheap "$@"
