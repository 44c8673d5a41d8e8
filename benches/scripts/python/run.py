"""The Python package against onnxruntime, one run, ratios (run by benches/scripts/python.sh, which
puts this folder on PYTHONPATH so that Dask and Spark workers import onnxruntime_pipeline):

1. in one process: `Model.predict` against `InferenceSession.run` (one intra-op thread, as
   predict uses one) at batch 1, 32 and 4,096, for the bundled forest and MLP;
2. Dask LocalCluster (2 worker processes) and Spark local[2], scoring a generated Parquet file of
   --rows rows with predictd's helpers against the same pipeline with onnxruntime in
   map_partitions / mapInArrow (the session cached per worker, as predictd's model is), and
   against that pipeline with the model call replaced by zeros: the ceiling any model could reach.

Rates are rows/s, medians of --repeat runs; cluster rates are wall time from submitting the job
to its end (Dask: every partition scored and its labels counted; Spark: a `noop` write), after
one untimed run of each pipeline, the three pipelines' runs taken in turns.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import predictd
import predictd.dask
import predictd.spark
from onnxruntime_pipeline import MODELS, ort_batches, ort_partition, session

BUNDLED = {"wine_forest": ("X", 13), "digits_mlp": ("X", 64)}
def rate(fn, rows, seconds=0.5):
    fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        done += rows
    return done / (time.perf_counter() - started)


def reference_rows(name, n, seed=0):
    ref = json.loads((MODELS / name / "reference.json").read_text())
    (tensor,) = ref["inputs"].values()
    x = np.array(tensor["data"], np.float32).reshape(len(tensor["data"]) // BUNDLED[name][1], -1)
    rng = np.random.default_rng(seed)
    return (x[rng.integers(0, len(x), n)] * rng.uniform(0.95, 1.05, (n, x.shape[1]))).astype(np.float32)


def in_process(repeat):
    rows = []
    for name, (input_name, _) in BUNDLED.items():
        model = predictd.load(str(MODELS), name)
        sess = session(name)
        for batch in [1, 32, 4096]:
            x = reference_rows(name, batch)
            ours = statistics.median(rate(lambda: model.predict({input_name: x}), batch) for _ in range(repeat))
            theirs = statistics.median(rate(lambda: sess.run(None, {input_name: x}), batch) for _ in range(repeat))
            rows.append((name, f"predict, batch {batch}", ours, theirs))
    return rows


def clusters(rows, repeat):
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster
    from pyspark.sql import SparkSession

    results = []
    with tempfile.TemporaryDirectory(prefix="predictd-python-bench-") as tmp:
        files = {}
        for name, (_, width) in BUNDLED.items():
            x = reference_rows(name, rows, seed=1)
            folder = Path(tmp) / name
            folder.mkdir()
            table = pa.table({"id": np.arange(rows)} | {f"f{j}": x[:, j] for j in range(width)})
            pq.write_table(table, folder / "part-0.parquet", row_group_size=100_000)
            files[name] = folder
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            for name, (_, width) in BUNDLED.items():
                columns = [f"f{j}" for j in range(width)]
                ddf = dd.read_parquet(str(files[name]), split_row_groups=True)
                meta = ort_partition(ddf._meta, name, columns)

                # Counting the labels makes every partition run the model (a plain len() lets
                # Dask answer from the input's row counts without scoring anything).
                def ours():
                    return predictd.dask.predict(ddf, str(MODELS), name, keep=["id"])["label"].count().compute()

                runs = iter(range(1, 1000))

                def theirs(model=True):
                    return ddf.map_partitions(ort_partition, name, columns, run=next(runs), model=model,
                                              meta=meta)["label"].count().compute()

                results.append((name, "Dask LocalCluster, 2 processes",
                                *paired(ours, theirs, lambda: theirs(model=False), rows, repeat)))
        os.environ["PYSPARK_PYTHON"] = sys.executable
        spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                 .config("spark.sql.files.maxPartitionBytes", str(16 << 20)).getOrCreate())
        try:
            from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType
            schema = StructType([StructField("id", LongType()), StructField("label", LongType()),
                                 StructField("probabilities", ArrayType(FloatType()))])
            for name, (_, width) in BUNDLED.items():
                columns = [f"f{j}" for j in range(width)]
                df = spark.read.parquet(str(files[name]))

                def ours():
                    predictd.spark.predict(df, str(MODELS), name, keep=["id"]).write.format("noop").mode("overwrite").save()
                    return rows

                def theirs(model=True):
                    df.mapInArrow(ort_batches(name, columns, model), schema).write.format("noop").mode("overwrite").save()
                    return rows

                results.append((name, "Spark local[2], mapInArrow",
                                *paired(ours, theirs, lambda: theirs(model=False), rows, repeat)))
        finally:
            spark.stop()
    return results


def paired(ours, theirs, no_model, rows, repeat):
    """Median rates of REPEAT runs of each pipeline, taken in turns after one untimed run of each:
    the first run pays for worker start-up, model loads and the JVM's warm-up, and timing one
    pipeline's runs all before the other's handed the second a warmer machine (Spark's first
    run here is 2-5x slower than its next)."""
    pipelines = [ours, theirs, no_model]
    for fn in pipelines:
        timed(fn, rows)
    rates = [[timed(fn, rows) for fn in pipelines] for _ in range(repeat)]
    return tuple(statistics.median(r[i] for r in rates) for i in range(len(pipelines)))


def timed(fn, rows):
    started = time.perf_counter()
    scored = fn()
    if scored != rows:
        sys.exit(f"scored {scored} rows, expected {rows}")
    return rows / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; in-process: one thread each; clusters: {args.rows:,} rows; median of {args.repeat}")
    results = in_process(args.repeat) + clusters(args.rows, args.repeat)
    print()
    print("'Without the model' is the onnxruntime pipeline with the model call replaced by zeros of the")
    print("outputs' shapes: the rate the pipeline would reach if the model cost nothing.")
    print()
    print("| model | what | predictd rows/s | onnxruntime rows/s | × onnxruntime | without the model rows/s "
          "| ÷ without the model, predictd / onnxruntime |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, what, ours, theirs, *floor in results:
        without = f"{floor[0]:,.0f}" if floor else ""
        reach = f"{ours / floor[0]:.2f} / {theirs / floor[0]:.2f}" if floor else ""
        print(f"| {name} | {what} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} | {without} | {reach} |")


if __name__ == "__main__":
    main()
