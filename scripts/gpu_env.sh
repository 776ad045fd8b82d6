# Sourced at the start of a command on a lent GPU machine (no package registry there):
# installs the wheels carried in .whl/ (jax-triton and the test tools) into /tmp/site and
# puts this checkout on the path under its import names, as an install would.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkgs
ln -sfn "$PWD/kernels" /tmp/pkgs/onerec_kernels
ln -sfn "$PWD/checkpoints" /tmp/pkgs/onerec_checkpoints
export PYTHONPATH="$PWD:/tmp/pkgs:/tmp/site" PYTHONUNBUFFERED=1
export ONEREC_JAX_CACHE=/tmp/onerec-cache
python3 -c "import jax, jax_triton, onerec_jax, onerec_kernels; print(jax.__version__, jax.devices())"
