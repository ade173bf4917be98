# Sourced on the device from the repo root: installs MLX CUDA (the parts and wheels copied to /root/stage
# by the first two calls) into /root/mlx-site once, then sets the paths. From ../shared/tools/mlx-cuda-stage.sh.
S=/root/mlx-site
if [ ! -f $S/.ok ]; then
  rm -rf $S; mkdir -p $S
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $S /root/stage/*.whl
  cat /root/stage/part.aa /root/stage/part.ab | xz -dc | tar -x -C $S && touch $S/.ok
fi
SP=$(python3 -c "import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))")
export PYTHONPATH=$S:$PWD${PYTHONPATH:+:$PYTHONPATH}
export LD_LIBRARY_PATH=$(find $SP/nvidia -maxdepth 3 -name lib -type d | tr '\n' ':')${LD_LIBRARY_PATH:-}
[ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
