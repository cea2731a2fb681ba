#!/usr/bin/env bash
# One device session on a lent CUDA machine: the GPU tests, then the GPU benchmarks, each figure
# written under $OUT (or ./gpu-out). Runs with the machine's own python3 and torch; vitplas from
# src/ (no install); wheels the machine lacks (submitit) from .whl/ when carried.
#     bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
  python3 -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name(0))"
  nproc
} 2>&1 | tee "$OUT/env.txt"

echo "== GPU tests"
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" --continue-on-collection-errors tests/ 2>&1 |
  tee "$OUT/gpu_tests.log" | tail -15

echo "== plasticity estimator (12,800 pairs ViT-B/16, bf16 and tf32; throughput; ViT-H fits)"
timeout 240 python3 benchmarks/plasticity_gpu.py --pairs 12800 --batch-size 256 2>&1 |
  tee "$OUT/plasticity_gpu.log" | grep '^{' | tail -1

echo "== train step of ViT-B/16 at 224, batch 512, per precision"
for precision in bf16 tf32 fp32; do
  timeout 120 python3 benchmarks/train_gpu.py --precision "$precision" --steps 5 --warmup 2 \
    --loader-workers 0 2>&1 | tee -a "$OUT/train_gpu.log" | grep '^{' | tail -1
done
echo "== the input pipeline against the bf16 train step"
timeout 120 python3 benchmarks/train_gpu.py --precision bf16 --steps 5 --warmup 2 \
  --loader-workers "$(nproc)" 2>&1 | tee -a "$OUT/train_gpu.log" | grep '^{' | tail -1
