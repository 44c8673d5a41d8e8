"""The baseline `predictd batch` is measured against: a pyarrow + onnxruntime script, the way a
cron job scores a Parquet file today. One onnxruntime thread; reads record batches, stacks the
feature columns, runs the model, writes every output beside the kept id column.

    python benches/scripts/batch_ort.py MODEL.onnx INPUT.parquet OUTPUT.parquet --batch-rows 4096

Prints one JSON line: {"rows": N, "seconds": S}, the time from opening the input to closing the
output (imports and model loading excluded, as predictd's own summary excludes them).
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--keep", default="id")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]

    started = time.perf_counter()
    source = pq.ParquetFile(args.input)
    features = [n for n in source.schema_arrow.names if n != args.keep]
    writer = None
    rows = 0
    for batch in source.iter_batches(batch_size=args.batch_rows):
        x = np.column_stack(
            [batch.column(n).to_numpy(zero_copy_only=False) for n in features]
        ).astype(np.float32, copy=False)
        if len(feed.shape) == 4:
            x = x.reshape(len(x), *feed.shape[1:])
        results = session.run(outputs, {feed.name: x})
        columns = {args.keep: batch.column(args.keep)}
        for name, value in zip(outputs, results):
            if value.ndim == 1 or value.shape[1] == 1:
                columns[name] = pa.array(value.reshape(-1))
            else:
                columns[name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(value.reshape(-1)), value.shape[1]
                )
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(args.output, table.schema, compression="snappy")
        writer.write_table(table)
        rows += batch.num_rows
    writer.close()
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
