"""onnxruntime throughput baseline for the predictd benches.

    python benches/scripts/ort_speed.py MODEL_DIR... [--batches 1,32,1024] [--seconds 1.0]

MODEL_DIR is a model-repository entry ``<repo>/<name>`` holding ``1/model.onnx``
and ``reference.json`` (tests/corpus/*, models/*). For each model and batch size
the input batch is built by cycling the reference rows (row i of the batch is
reference row i mod R, for every input tensor alike); NaN (JSON null) inputs,
STRING inputs, several inputs, STRING outputs and ZipMap (sequence-of-map)
outputs all go through onnxruntime unchanged.

onnxruntime runs single-threaded (intra_op_num_threads=1, inter_op_num_threads=1),
sequential execution, all graph optimisations enabled, CPUExecutionProvider,
fetching every graph output. After a warm-up (>= 3 runs and >= 0.1 s) it times
back-to-back runs in windows of ~0.2 s; the number of windows is
max(3, round(seconds / 0.2)), and the reported rate is the median window's
rows per second. One JSON line per (model, batch) goes to stdout:

    {"model": "rf_clf_bc", "batch": 32, "rows_per_s": 123456.7}

Caveat: the Python binding turns ZipMap outputs into Python lists of dicts,
which is part of the measured time (noticeable at large batches).

Needs numpy and onnxruntime (pinned in tests/corpus/requirements.txt).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

NP_DTYPES = {
    "FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
    "BOOL": np.bool_, "STRING": object,
}
WINDOW_S = 0.2


def load_inputs(ref):
    out = {}
    for name, t in ref["inputs"].items():
        dtype = NP_DTYPES[t["dtype"]]
        if t["dtype"] in ("FP32", "FP64"):
            data = [np.nan if v is None else v for v in t["data"]]
        else:
            data = t["data"]
        out[name] = np.array(data, dtype=dtype).reshape(t["shape"])
    return out


def batch_of(inputs, batch):
    res = {}
    for name, arr in inputs.items():
        idx = np.arange(batch) % arr.shape[0]
        res[name] = np.ascontiguousarray(arr[idx])
    return res


def make_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_model(sess, feeds, batch, seconds):
    outputs = [o.name for o in sess.get_outputs()]
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < 0.1:  # warm-up
        sess.run(outputs, feeds)
        n += 1
    rates = []
    for _ in range(max(3, round(seconds / WINDOW_S))):
        runs, start = 0, time.perf_counter()
        while True:
            sess.run(outputs, feeds)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= WINDOW_S:
                break
        rates.append(runs * batch / elapsed)
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description="onnxruntime rows/s per model and batch size")
    ap.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR")
    ap.add_argument("--batches", default="1,32,1024", help="comma-separated batch sizes")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="timed seconds per (model, batch), split into ~0.2 s windows")
    ap.add_argument("--version", default="1", help="model version folder (default 1)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1:
        ap.error("--batches needs positive integers")

    for d in args.model_dirs:
        d = d.rstrip("/")
        name = os.path.basename(d)
        with open(os.path.join(d, "reference.json")) as f:
            ref = json.load(f)
        sess = make_session(os.path.join(d, args.version, "model.onnx"))
        inputs = load_inputs(ref)
        want = sorted(i.name for i in sess.get_inputs())
        if sorted(inputs) != want:
            sys.exit(f"{name}: reference inputs {sorted(inputs)} != model inputs {want}")
        for batch in batches:
            rate = time_model(sess, batch_of(inputs, batch), batch, args.seconds)
            print(json.dumps({"model": name, "batch": batch, "rows_per_s": round(rate, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
