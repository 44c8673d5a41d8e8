"""The baseline pipelines of benches/scripts/python/run.py: onnxruntime (one intra-op thread, the
session cached per worker process, as predictd's model is) in Dask's map_partitions and Spark's
mapInArrow; and the same pipelines with the model call replaced by zeros of the outputs' shapes,
which time everything but the model. A module of its own so that worker processes can import it."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa

MODELS = Path(__file__).resolve().parents[3] / "models"
_sessions = {}


def session(name):
    if name not in _sessions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _sessions[name] = ort.InferenceSession(
            str(MODELS / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return _sessions[name]



def ort_partition(frame, name, columns, run=0, model=True):
    # RUN only makes each timed run a task graph of its own, never served from an earlier one.
    x = frame[columns].to_numpy(np.float32)
    label, probabilities = score(name, x, model)
    return frame[["id"]].assign(label=label, probabilities=list(probabilities))


def score(name, x, model):
    if model:
        return session(name).run(["label", "probabilities"], {"X": x})
    (classes,) = (o.shape[1] for o in session(name).get_outputs() if o.name == "probabilities")
    return np.zeros(len(x), np.int64), np.zeros((len(x), classes), np.float32)


def ort_batches(name, columns, model=True):
    def scored(batches):
        for batch in batches:
            x = np.column_stack([batch.column(c).to_numpy() for c in columns]).astype(np.float32)
            label, probabilities = score(name, x, model)
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), pa.array(label),
                 pa.ListArray.from_arrays(np.arange(0, probabilities.size + 1, probabilities.shape[1], dtype=np.int32),
                                          pa.array(probabilities.ravel()))],
                names=["id", "label", "probabilities"])
    return scored
