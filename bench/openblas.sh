# Sourced by the bench scripts: the OpenBLAS library to preload (float32 + OpenBLAS is the
# bandwidth-bound CPU proxy regime), or a clear exit when it is missing.
BLAS=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ ! -e "$BLAS" ]; then
    echo "OpenBLAS missing: apt-get install libopenblas0-pthread" >&2
    exit 2
fi
