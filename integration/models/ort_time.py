"""Times ONNX Runtime on the host CPU: MODEL INPUT.npy RUNS THREADS.
Prints {"ms": [per-inference times]} as JSON, after two warm-up runs."""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, inp, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
x = np.load(inp)
feed = {sess.get_inputs()[0].name: x}
for _ in range(2):
    sess.run(None, feed)
ms = []
for _ in range(runs):
    t = time.perf_counter()
    sess.run(None, feed)
    ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"ms": ms}))
