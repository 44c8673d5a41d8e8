"""Score a Dask DataFrame with a predictd model, partition by partition, in the workers.

    import dask.dataframe as dd, predictd.dask
    scores = predictd.dask.predict(dd.read_parquet("features/"), "models", "churn_forest",
                                   keep=["customer_id"])

Each worker process loads the model once and reuses it for every partition. Pass a repository
path every worker can read, or `predictd.dask.ship("models", "churn_forest")` (the model's bytes,
carried in the task graph) for workers without shared storage. Column rules are `predictd
batch`'s; `[N, k]` outputs become columns of k-value lists.
"""

import pyarrow as pa

from . import _workers
from ._workers import ship

__all__ = ["predict", "ship"]


def _score(frame, models, name, version, feed, fetch, keep):
    model = _workers.model(models, name, version)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    out = model.predict_arrow(table, feed=feed, fetch=fetch, keep=keep, lists="list")
    result = out.to_pandas()
    result.index = frame.index
    return result


def predict(ddf, models, name, feed=None, fetch=None, keep=None, version=None):
    """A lazy Dask DataFrame of the kept columns and the model's outputs, one row per input row,
    partitioned and indexed as DDF."""
    meta = _score(ddf._meta, models, name, version, feed, fetch, keep)
    return ddf.map_partitions(_score, models, name, version, feed, fetch, keep, meta=meta)
