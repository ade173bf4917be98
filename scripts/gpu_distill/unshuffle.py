import sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
b = np.fromfile(src, dtype=np.uint8)
hdr = 8 + int(np.frombuffer(b[:8].tobytes(), dtype=np.uint64)[0])
body = b[hdr:]
n = len(body) // 2
out = np.empty(2 * n, dtype=np.uint8)
out[1::2], out[0::2] = body[:n], body[n:2 * n]
with open(dst, "wb") as f:
    f.write(b[:hdr].tobytes()); f.write(out.tobytes())
