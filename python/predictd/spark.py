"""Score a Spark DataFrame with a predictd model, through Arrow (`mapInArrow`), in the executors.

    import predictd.spark
    scores = predictd.spark.predict(spark.read.parquet("features/"), "models", "churn_forest",
                                    keep=["customer_id"])

Each Python worker process loads the model once and reuses it for every batch and partition
(Spark reuses Python workers by default). Pass a repository path every executor can read, or
`predictd.spark.ship("models", "churn_forest")` (the model's bytes, sent with the task) for
executors without shared storage. Column rules are `predictd batch`'s; `[N, k]` outputs become
`array<...>` columns (Spark's Arrow path rejects fixed-size lists).
"""

import pyarrow as pa

from . import _workers
from ._workers import ship

__all__ = ["predict", "ship"]


def predict(df, models, name, feed=None, fetch=None, keep=None, version=None):
    """A Spark DataFrame of the kept columns and the model's outputs, one row per input row."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    # The output schema, from scoring no rows on the driver.
    empty = pa.Table.from_batches([], schema=to_arrow_schema(df.schema))
    driver_model = _workers.model(models, name, version)
    out_schema = driver_model.predict_arrow(empty, feed=feed, fetch=fetch, keep=keep, lists="list").schema

    def score(batches):
        model = _workers.model(models, name, version)
        for batch in batches:
            yield from model.predict_arrow(
                batch, feed=feed, fetch=fetch, keep=keep, lists="list"
            ).to_batches()

    return df.mapInArrow(score, from_arrow_schema(out_schema))
