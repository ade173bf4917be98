"""Stage a demo target for scripts/gpu_distill (run here, from the repo root):
  python scripts/gpu_distill/stage.py TARGET_DIR OUT_DIR [--texts DIR ...] [--linux-doc-share 0.2]
writes OUT_DIR/{w.xz (the weights as bfloat16, bytes split into high/low planes, xz), meta.tar.xz (config
and tokenizer), model.md5} and OUT_DIR/../texts.tar.xz (the corpus: python-doc and fortunes whole, a
random share of linux-doc's files); then `bash scripts/gpu_distill/mkparts.sh OUT_DIR` cuts the
payload into parts of what one device call may carry (64 MiB with the working tree)."""
import argparse
import hashlib
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import mlx.core as mx
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("target"), p.add_argument("out")
p.add_argument("--data", default="/work/distill/data")
p.add_argument("--linux-doc-share", type=float, default=0.2)
a = p.parse_args()
src, out = Path(a.target).expanduser(), Path(a.out)
out.mkdir(parents=True, exist_ok=True)
weights = {k: (v.astype(mx.bfloat16) if v.dtype == mx.float32 else v) for k, v in mx.load(str(src / "model.safetensors")).items()}
mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
(out / "model.md5").write_text(hashlib.md5((out / "model.safetensors").read_bytes()).hexdigest() + "\n")
b = np.fromfile(out / "model.safetensors", dtype=np.uint8)
header = 8 + int(np.frombuffer(b[:8].tobytes(), dtype=np.uint64)[0])
body = b[header:]
n = len(body) // 2  # bfloat16: high bytes (sign, exponent) compress well apart from the low ones
(out / "shuf.bin").write_bytes(b[:header].tobytes() + body[: 2 * n].reshape(-1, 2)[:, 1].tobytes() + body[: 2 * n].reshape(-1, 2)[:, 0].tobytes() + body[2 * n :].tobytes())
subprocess.run(f"xz -T0 -6 -c {out / 'shuf.bin'} > {out / 'w.xz'}", shell=True, check=True)
with tarfile.open(out / "meta.tar.xz", "w:xz") as t:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
        if (src / name).exists():
            t.add(src / name, arcname=name)
texts = out.parent / "texts"
if not (out.parent / "texts.tar.xz").exists():
    data = Path(a.data)
    for name in ("python-doc", "fortunes"):
        shutil.copytree(data / name, texts / name, symlinks=False)
    files = sorted(f for f in (data / "linux-doc").rglob("*") if f.is_file())
    random.seed(0)
    for f in (f for f in files if random.random() < a.linux_doc_share):
        dest = texts / "linux-doc" / f.relative_to(data / "linux-doc")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    subprocess.run(f"tar -C {out.parent} -cf - texts | xz -T0 -6 > {out.parent / 'texts.tar.xz'}", shell=True, check=True)
