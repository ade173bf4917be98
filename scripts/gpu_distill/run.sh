# The last device call (see README.md): joins the parts in /root/stage, unpacks the target and the
# texts, runs driver.py on the GPU and leaves the drafter in $OUT (model.safetensors cut in two: the
# device returns files of at most 16 MiB).
#   bash PARTDIR/run.sh N DEADLINE_S NAME HEAD_SIZE BATCH STEPS BUDGET_MIN TOKENS COLLECT_BATCH
# (a requests.jsonl.xz beside the parts is used as driver.py's REQUESTS; SEQ_LEN, PROMPT_LEN pass through)
set -x
HERE=$(cd "$(dirname "$0")" && pwd); N=$1; T=$(date +%s)
cp "$HERE"/* /root/stage/ && cd /root/stage && cat $(seq -f "x%g" 1 "$N") > payload.tar && tar -xf payload.tar || exit 1
mkdir -p /root/model/target && tar -xJf meta.tar.xz -C /root/model/target && tar -xJf texts.tar.xz -C /root && xz -T0 -dc w.xz > shuf.bin \
  && python3 unshuffle.py shuf.bin /root/model/target/model.safetensors || exit 1
echo "$(cat model.md5)  /root/model/target/model.safetensors" | md5sum -c || exit 1
[ -f requests.jsonl.xz ] && xz -dc requests.jsonl.xz > /root/requests.jsonl && export REQUESTS=/root/requests.jsonl  # optional (driver.py)
rm -f shuf.bin payload.tar x[0-9]*; echo "unpacked in $(( $(date +%s) - T ))s"; cd "$OLDPWD"
source /root/stage/env.sh
set -o pipefail
rm -rf /root/out/.distill
PYTHONUNBUFFERED=1 timeout "$2" python3 /root/stage/driver.py "$3" "$4" "$5" "$6" "$7" "$8" "$9" "$2" 2>&1 | tee /root/distill.log | grep -v "^\s*$" | cut -c1-400
echo "driver rc=$?"
cd /root/out && rm -rf .distill && split -b 12000000 model.safetensors model.part. && rm model.safetensors
cp /root/out/* /root/distill.log "$OUT"/ 2>/dev/null; ls -la "$OUT"
