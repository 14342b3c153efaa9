# Sourced by the device-tool scripts (bench_gpu.sh, bench_gpu_generation.sh) after `out` is set: the carried wheels
# of experiments/gpu_wheels.sh installed into /tmp/site, the offline environment, and `quiet` (drops the libraries'
# repeated warnings from the logs).
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
quiet() { grep -v -E "kept in float32|Dynamo|originates from|upsampling.py|warn_once|is_torch_version|^$"; }
