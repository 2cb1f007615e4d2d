#!/usr/bin/env bash
# The GPU checks of facekp in one command, for a CUDA machine that already has PyTorch, OpenCV,
# onnxruntime, pytest and the other dependencies installed but cannot download anything.
#
#   bash benchmarks/gpu_check.sh pack [FACES68]   # here: copy the validation faces to .gpu-data/ (7 MB)
#   bash benchmarks/gpu_check.sh run OUT_DIR      # on the GPU machine, from the repo root, with .gpu-data/
#
# `pack` copies only the validation identities of faces68 (split_by_identity(..., 0.15, seed=0)
# is a hash of each identity, so the copy splits into the same 616 validation faces). `run` writes
# OUT_DIR/gpu.txt (nvidia-smi), OUT_DIR/pytest.log (the CUDA tests among the backend tests) and
# OUT_DIR/benchmarks-gpu.md (benchmarks/run.py --device cuda: latency, throughput at batch
# 1..1024, peak memory and RMSE for fp32/fp16/bf16). Not yet run on a GPU: a few minutes expected.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
pack)
    src=${2:-../shared/data/faces68}
    python - "$src" .gpu-data/faces68-val <<'EOF'
import csv, shutil, sys
from pathlib import Path
from facekp.train.data import split_by_identity, load_pts_folder

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
val = {s.name for s in split_by_identity(load_pts_folder(src), 0.15, seed=0)[1]}
rows = list({r["image"]: r for r in csv.DictReader((src / "index.csv").open(newline="")) if r["image"] in val}.values())
for r in rows:
    for path in (Path(r["image"]), Path(r["image"]).with_suffix(".pts")):
        (dst / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / path, dst / path)
with (dst / "index.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
print(f"copied {len(rows)} validation faces to {dst}")
EOF
    ;;
run)
    out=${2:?usage: gpu_check.sh run OUT_DIR}
    mkdir -p "$out"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"
    python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_onnx.py tests/test_detector.py 2>&1 | tee "$out/pytest.log"
    python3 benchmarks/run.py --device cuda --data .gpu-data/faces68-val --out "$out/benchmarks-gpu.md" 2>&1 | tee "$out/benchmarks.log"
    ;;
*)
    sed -n 2,12p "$0"
    exit 2
    ;;
esac
