#!/usr/bin/env bash
# Virtualenvs for the peer libraries the benchmark compares facekp with. Each gets its own:
# MediaPipe 0.10.21 pins numpy<2, dlib-bin is independent of facekp's stack. Everything installs
# from PyPI wheels; both models ship inside the wheels (no download at run time).
#   bash benchmarks/peers/setup.sh [/work/peers]
set -euo pipefail
root="${1:-/work/peers}"
mkdir -p "$root"
python3 -m venv "$root/dlib-venv"
"$root/dlib-venv/bin/pip" install -q dlib-bin face-recognition-models numpy pillow
python3 -m venv "$root/mediapipe-venv"
"$root/mediapipe-venv/bin/pip" install -q "mediapipe==0.10.21" pillow
echo "peer venvs ready under $root"
