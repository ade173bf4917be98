#!/usr/bin/env bash
# Cut a staged payload (stage.py's OUT_DIR) into parts one device call can carry each:
#   bash scripts/gpu_distill/mkparts.sh OUT_DIR   ->  OUT_DIR/p1 .. pN
# p1 and p2 travel with the two halves of MLX's CUDA build (.device/a, .device/b from
# ../shared/tools/mlx-cuda-stage.sh), so they are smaller; the last part also holds the scripts.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$1"
cp ../texts.tar.xz "$HERE/unshuffle.py" .
tar -cf payload.tar w.xz texts.tar.xz meta.tar.xz unshuffle.py
rm -rf p[0-9]*/
size=$(stat -c %s payload.tar); off=0; i=1
for s in 19000000 18400000 $(yes 57000000 | head -40); do
  [ $off -ge "$size" ] && break
  mkdir p$i; tail -c +$((off + 1)) payload.tar | head -c $s > p$i/x$i; off=$((off + s)); i=$((i + 1))
done
n=$((i - 1)); cp "$HERE/env.sh" p2/; cp "$HERE/driver.py" "$HERE/run.sh" model.md5 p$n/
[ "$(cat p*/x* | md5sum)" = "$(md5sum < payload.tar)" ] && echo "$n parts: $(ls -d p*/ | tr '\n' ' ')"
