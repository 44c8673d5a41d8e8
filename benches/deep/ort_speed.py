"""onnxruntime's side of the deep-model bench (benches/deep.rs).

    python benches/deep/ort_speed.py MODELS MODEL:BATCH:TOKENS... [--callers 8]
        [--seconds 2] [--throughput-seconds 6]

For every case (TOKENS 0 for image models) it prints one JSON line with the median
milliseconds per call of onnxruntime on 1 thread and on every core:

    {"model": "resnet18", "batch": 1, "tokens": 0, "ms_1_thread": 57.1, "ms_all_threads": 30.2}

and, per model, its best batch-1 throughput with --callers callers (128 tokens for encoders):

    {"model": "resnet18", "calls_per_s": 40.1, "way": "..."}

"Best" is the faster of two ways of using the machine: one session on every core called by
the callers in turn (onnxruntime serialises nothing, so they overlap), and one single-thread
session per core with the callers spread over them. CPUExecutionProvider, all graph
optimisations, sequential execution. Inputs are made by the same formula as the bench's
(benches/deep.rs, `Case::inputs`), so both sides run the same numbers.
"""

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def inputs(sess, batch, tokens):
    feed = {}
    for spec in sess.get_inputs():
        if tokens == 0:
            n = batch * 3 * 224 * 224
            i = np.arange(n, dtype=np.int64)
            feed[spec.name] = (((i * 7919) % 2000).astype(np.float32) / 1000.0 - 1.0).reshape(
                batch, 3, 224, 224
            )
        elif "mask" in spec.name:
            feed[spec.name] = np.ones((batch, tokens), dtype=np.int64)
        else:
            i = np.arange(batch * tokens, dtype=np.int64)
            feed[spec.name] = ((i * 7919 + 101) % 30000).reshape(batch, tokens)
    return feed


def median_ms(sess, feed, seconds):
    sess.run(None, feed)
    times = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def rate(sessions, feed, callers, seconds):
    for s in sessions:
        s.run(None, feed)
    counts = [0] * callers
    started = time.perf_counter()

    def call(k):
        s = sessions[k % len(sessions)]
        while time.perf_counter() - started < seconds:
            s.run(None, feed)
            counts[k] += 1

    threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--throughput-seconds", type=float, default=6.0)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    by_model = {}
    for case in args.cases:
        model, batch, tokens = case.split(":")
        by_model.setdefault(model, []).append((int(batch), int(tokens)))
    for model, shapes in by_model.items():
        path = os.path.join(args.models, model, "1", "model.onnx")
        one, every = session(path, 1), session(path, cores)
        for batch, tokens in shapes:
            feed = inputs(one, batch, tokens)
            print(json.dumps({
                "model": model, "batch": batch, "tokens": tokens,
                "ms_1_thread": median_ms(one, feed, args.seconds),
                "ms_all_threads": median_ms(every, feed, args.seconds),
            }), flush=True)
        tokens = 128 if any(t for _, t in shapes) else 0
        feed = inputs(one, 1, tokens)
        ways = {
            f"one {cores}-thread session": rate([every], feed, args.callers, args.throughput_seconds),
            f"{cores} single-thread sessions": rate(
                [one] + [session(path, 1) for _ in range(cores - 1)],
                feed, args.callers, args.throughput_seconds,
            ),
        }
        way = max(ways, key=ways.get)
        print(json.dumps({"model": model, "calls_per_s": ways[way], "way": way,
                          "ways": ways}), flush=True)


if __name__ == "__main__":
    main()
