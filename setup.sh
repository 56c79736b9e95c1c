#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: the system packages ffcv builds against,
# a virtual environment at .venv, and fastpart installed in editable mode with the ffcv, tensorboard and test extras.
# Every package is taken at the version in constraints.txt: the exact set CI tests (pyproject.toml holds the wider
# ranges a plain `pip install fastpart` accepts).
# PYTHON picks the interpreter (default python3; constraints.txt is tested on Python 3.11, Linux x86_64).
set -euo pipefail
cd "$(dirname "$0")"

system_packages="pkg-config libopencv-dev libturbojpeg0-dev"
if command -v apt-get >/dev/null 2>&1; then
    missing=""
    for package in $system_packages; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing system packages:$missing"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
else
    echo "setup: no apt-get; make sure pkg-config, OpenCV 4 and libturbojpeg development files are installed" >&2
fi

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -c constraints.txt -e '.[ffcv,tensorboard,test]'
# For the tests only: RobustBench's model definitions (tests/test_robustbench_models.py) and its own evaluation
# (tests/test_interop.py). --no-deps for robustbench and the packages it pins, as it pins an old timm (and gdown)
# that must not replace fastpart's; then the few plain libraries robustbench.eval imports.
.venv/bin/python -m pip install -q --no-deps robustbench==1.1.1 gdown==5.1.0 geotorch==0.4.0 torchdiffeq==0.2.5
.venv/bin/python -m pip install -q -c constraints.txt requests pandas beautifulsoup4
.venv/bin/fastpart --version
