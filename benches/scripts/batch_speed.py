"""`predictd batch` against a pyarrow + onnxruntime script (benches/scripts/batch_ort.py), same files,
same batch size, one run: rows/s, ratios and peak RSS. Run by benches/scripts/batch.sh.

For each model (the bundled random forest and MLP) it writes a Parquet file of --rows rows,
drawn with replacement from the model's own scikit-learn data set plus a little noise, then
runs, --repeat times each: the script (one onnxruntime thread), `predictd batch --threads 1`
and `predictd batch` with one thread per core. Rows/s are each program's own count of the
time from opening the input to closing the output; peak RSS is the process's high-water mark (VmHWM). It
checks that predictd's outputs equal the script's, and compares predictd's peak RSS on a file
of the same rows ten times over (ten row groups) with the one-row-group file's.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def features(model, rows, seed=0):
    from sklearn.datasets import load_digits, load_wine

    data = {"wine_forest": load_wine, "digits_mlp": load_digits}[model]().data
    rng = np.random.default_rng(seed)
    x = data[rng.integers(0, len(data), rows)].astype(np.float32)
    x += rng.normal(0, 0.01, x.shape).astype(np.float32) * x.std(axis=0, dtype=np.float32)
    columns = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for j in range(x.shape[1]):
        columns[f"f{j}"] = pa.array(x[:, j])
    return pa.table(columns)


def measured(command):
    """Runs command; returns (stdout, peak RSS in MB). The peak is the process's own high-water
    mark (VmHWM), sampled every 5 ms until it exits. (wait4's ru_maxrss would count the forking
    Python process's memory, which this script's tables fill, against the child.)"""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{process.pid}/status")
    peak_kb = 0
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.005)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {process.returncode}):\n{stderr}")
    return stdout, peak_kb / 1024


def predictd_rate(stdout):
    m = re.search(r"(\d+) rows in ([\d.]+) s", stdout)
    if not m:
        sys.exit(f"cannot read predictd's summary: {stdout!r}")
    return int(m.group(1)) / float(m.group(2))


def same_outputs(a, b):
    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.num_rows != tb.num_rows or ta.column_names != tb.column_names:
        return f"shapes differ: {ta.num_rows} {ta.column_names} vs {tb.num_rows} {tb.column_names}"
    for name in ta.column_names:
        x = ta.column(name).combine_chunks()
        y = tb.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(x.type):
            x, y = x.flatten(), y.flatten()
        x, y = x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-5, atol=1e-6):
                return f"{name}: max difference {np.max(np.abs(x - y))}"
        elif not np.array_equal(x, y):
            return f"{name}: {int(np.sum(x != y))} values differ"
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--predictd", default=str(REPO / "target/release/predictd"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=4096)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    models = REPO / "models"
    print(f"{args.rows:,} rows, batches of {args.batch_rows}, {cores} cores, median of {args.repeat}")
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="predictd-batch-bench-") as tmp:
        tmp = Path(tmp)
        for model in ["wine_forest", "digits_mlp"]:
            source = tmp / f"{model}.parquet"
            pq.write_table(features(model, args.rows), source)
            # The same rows ten times over, one row group each: a file 10x larger.
            large = tmp / f"{model}-10x.parquet"
            rows_table = pq.read_table(source)
            with pq.ParquetWriter(large, rows_table.schema) as writer:
                for _ in range(10):
                    writer.write_table(rows_table, row_group_size=args.rows)
            del rows_table
            onnx = models / model / "1" / "model.onnx"
            script = [sys.executable, str(HERE / "batch_ort.py"), str(onnx), str(source)]

            def predictd(source, out, threads, model=model):
                return [
                    args.predictd, "batch", "--progress", "never",
                    "--models", str(models), "--model", model,
                    "--input", str(source), "--output", str(out), "--keep", "id",
                    "--threads", str(threads), "--batch-rows", str(args.batch_rows),
                ]

            runners = {
                "pyarrow + onnxruntime script, 1 thread": lambda out: script
                + [str(out), "--batch-rows", str(args.batch_rows)],
            }
            for threads in sorted({1, cores}):
                runners[f"predictd batch --threads {threads}"] = (
                    lambda out, threads=threads, source=source: predictd(source, out, threads)
                )
            results = {}
            for name, command in runners.items():
                rates, rss = [], []
                for i in range(args.repeat):
                    out = tmp / f"{model}-{len(results)}.parquet"
                    stdout, peak = measured(command(out))
                    if name.startswith("pyarrow"):
                        report = json.loads(stdout.strip().splitlines()[-1])
                        rates.append(report["rows"] / report["seconds"])
                    else:
                        rates.append(predictd_rate(stdout))
                    rss.append(peak)
                results[name] = (statistics.median(rates), max(rss), out)
            baseline = results["pyarrow + onnxruntime script, 1 thread"]
            for name, (rate, rss, out) in results.items():
                mismatch = None if out == baseline[2] else same_outputs(baseline[2], out)
                if mismatch:
                    sys.exit(f"{model}: {name} differs from the script: {mismatch}")
                rows_out.append((model, name, rate, rate / baseline[0], rss))
            # Memory against input size: the same run on the file ten times as long.
            for threads in sorted({1, cores}):
                _, large_rss = measured(predictd(large, tmp / "large-out.parquet", threads))
                rss = results[f"predictd batch --threads {threads}"][1]
                rows_out.append((model, f"predictd --threads {threads}, peak RSS on 10x the rows / on 1x",
                                 None, large_rss / rss, large_rss))
            large.unlink()
    print()
    print("| model | runner | rows/s | × script | peak RSS (MB) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for model, name, rate, ratio, rss in rows_out:
        rate = f"{rate:,.0f}" if rate is not None else ""
        rss = f"{rss:.0f}" if rss is not None else ""
        print(f"| {model} | {name} | {rate} | {ratio:.2f} | {rss} |")
    print()
    print("Targets: >= 1.0x the script with 1 thread, >= 1.7x with 2 threads, peak RSS <= 150 MB,")
    print("and a 10x larger file needing no more than ~1.2x the memory.")


if __name__ == "__main__":
    main()
