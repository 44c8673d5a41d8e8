"""Dask (LocalCluster, two worker processes) and Spark (local[2]) scoring a generated Parquet
dataset of 120,000 rows must equal the single-process result exactly, reaching the model by a
shared path and by shipping it from the driver, and no worker may load a model twice.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import predictd
import predictd.dask
import predictd.spark

MODELS = Path(__file__).resolve().parents[2] / "models"
ROWS = 120_000


def wine_rows(n):
    """N rows drawn from the wine forest's reference rows, each value scaled by 0.9-1.1."""
    ref = json.loads((MODELS / "wine_forest/reference.json").read_text())
    x = np.array(ref["inputs"]["X"]["data"], np.float64).reshape(-1, 13)
    rng = np.random.default_rng(0)
    rows = x[rng.integers(0, len(x), n)] * rng.uniform(0.9, 1.1, (n, 13))
    columns = {"id": pa.array(np.arange(n)), "note": pa.array([f"row {i}" for i in range(n)])}
    columns |= {f"m{j}": pa.array(rows[:, j]) for j in range(13)}
    return pa.table(columns)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four Parquet part files of wine-like rows: an id, a text column, 13 float64 features
    under a user's names (the model takes FP32: the documented cast)."""
    folder = tmp_path_factory.mktemp("dataset")
    table = wine_rows(ROWS)
    for part in range(4):
        chunk = table.slice(part * ROWS // 4, ROWS // 4)
        pq.write_table(chunk, folder / f"part-{part}.parquet", row_group_size=10_000)
    return folder


@pytest.fixture(scope="module")
def load_log(tmp_path_factory):
    """Every process that loads a model through the helpers appends its pid here."""
    log = tmp_path_factory.mktemp("loads") / "loads.txt"
    os.environ["PREDICTD_LOAD_LOG"] = str(log)
    yield log
    del os.environ["PREDICTD_LOAD_LOG"]


FEED = {"X": [f"m{j}" for j in range(13)]}


def expected(dataset):
    model = predictd.load(str(MODELS), "wine_forest")
    table = pq.read_table(dataset)
    return model.predict_arrow(table, feed=FEED, keep=["id", "note"], lists="list").to_pandas()


def assert_same(got, want, context):
    got = got.sort_values("id").reset_index(drop=True)
    want = want.sort_values("id").reset_index(drop=True)
    assert list(got.columns) == list(want.columns), context
    assert len(got) == ROWS, context
    assert got["id"].tolist() == want["id"].tolist(), context
    assert got["note"].tolist() == want["note"].tolist(), context
    assert got["label"].tolist() == want["label"].tolist(), context
    # Exactly: the same engine on the same values.
    assert np.array_equal(np.stack(got["probabilities"]), np.stack(want["probabilities"])), context


def loads_per_process(log):
    return Counter(line.split()[0] for line in log.read_text().splitlines())


def test_dask_local_cluster_equals_one_process(dataset, load_log):
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    want = expected(dataset)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        ddf = dd.read_parquet(str(dataset), split_row_groups=True)
        assert ddf.npartitions >= 8
        for how, models in [("shared path", str(MODELS)),
                            ("shipped", predictd.dask.ship(MODELS, "wine_forest"))]:
            got = predictd.dask.predict(ddf, models, "wine_forest", feed=FEED,
                                        keep=["id", "note"]).compute()
            assert_same(got, want, f"dask, {how}")
        workers = client.run(os.getpid)
    loads = loads_per_process(load_log)
    for pid in workers.values():
        # Each worker scored partitions: one load per way of reaching the model, not one per
        # partition.
        assert 1 <= loads[str(pid)] <= 2, loads


def test_spark_local_equals_one_process(dataset, load_log):
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    want = expected(dataset)
    spark = (SparkSession.builder.master("local[2]").appName("predictd-test")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    try:
        df = spark.read.parquet(str(dataset)).repartition(6)
        for how, models in [("shared path", str(MODELS)),
                            ("shipped", predictd.spark.ship(MODELS, "wine_forest"))]:
            scored = predictd.spark.predict(df, models, "wine_forest", feed=FEED,
                                            keep=["id", "note"])
            assert dict(scored.dtypes)["probabilities"] == "array<float>"
            assert_same(scored.toArrow().to_pandas(), want, f"spark, {how}")
    finally:
        spark.stop()
    loads = loads_per_process(load_log)
    python_workers = set(loads) - {str(os.getpid())}
    assert python_workers, f"no Spark Python worker loaded the model: {loads}"
    assert max(loads[pid] for pid in python_workers) <= 2, loads


def test_bad_feed_on_a_cluster_names_the_column(dataset):
    import dask.dataframe as dd

    ddf = dd.read_parquet(str(dataset))
    with pytest.raises(predictd.PredictError, match="no column 'm13'"):
        predictd.dask.predict(ddf, str(MODELS), "wine_forest", feed={"X": [f"m{j}" for j in range(1, 14)]})
