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
            # Kept in Arrow, not an array object per row.
            assert str(got["probabilities"].dtype) == "fixed_size_list<item: float>[3][pyarrow]"
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


def test_dask_scores_written_to_parquet_read_back_with_pandas_and_dask(dataset, tmp_path):
    # What a scoring job does with its result, as python/README.md shows it. With list columns
    # of numpy arrays, to_parquet failed (Dask took the object column for strings); Arrow-backed
    # ones are written, and read back with dtype_backend="pyarrow" (pandas 2.3's default
    # cannot rebuild them from the file's pandas metadata).
    import dask.dataframe as dd
    import pandas as pd

    scores = predictd.dask.predict(dd.read_parquet(str(dataset)), str(MODELS), "wine_forest",
                                   feed=FEED, keep=["id", "note"])
    scores.to_parquet(str(tmp_path / "scores"), compute_kwargs={"scheduler": "sync"})
    for read in (pd.read_parquet, lambda path, **kw: dd.read_parquet(path, **kw).compute(scheduler="sync")):
        back = read(str(tmp_path / "scores"), dtype_backend="pyarrow")
        assert_same(back.astype({"id": "int64", "label": "int64", "note": object}), expected(dataset),
                    "written and read back")


def test_bad_feed_on_a_cluster_names_the_column(dataset):
    import dask.dataframe as dd

    ddf = dd.read_parquet(str(dataset))
    with pytest.raises(predictd.PredictError, match="no column 'm13'"):
        predictd.dask.predict(ddf, str(MODELS), "wine_forest", feed={"X": [f"m{j}" for j in range(1, 14)]})


def test_a_never_seen_model_scores_on_dask_and_spark_given_only_feed_and_keep(tmp_path, load_log):
    """A scikit-learn pipeline trained here, exported with skl2onnx into a fresh repository, fed
    from columns a user named, against onnxruntime on the same values."""
    import dask.dataframe as dd
    import onnxruntime as ort
    from dask.distributed import Client, LocalCluster
    from pyspark.sql import SparkSession
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cancer = load_breast_cancer()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        cancer.data.astype(np.float32), cancer.target)
    onnx_model = to_onnx(pipeline, initial_types=[("features", FloatTensorType([None, 30]))],
                         options={id(pipeline): {"zipmap": False}})
    repo = tmp_path / "repo"
    (repo / "tumours" / "1").mkdir(parents=True)
    (repo / "tumours" / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())

    rng = np.random.default_rng(5)
    x = cancer.data[rng.integers(0, len(cancer.data), 20_000)].astype(np.float32)
    names = [n.replace("mean ", "").title() + (" (mean)" if n.startswith("mean") else "")
             for n in cancer.feature_names]
    assert len(set(names)) == 30
    columns = {"Patient": pa.array([f"P-{i}" for i in range(len(x))])}
    columns |= {name: pa.array(x[:, j]) for j, name in enumerate(names)}
    data = tmp_path / "patients"
    data.mkdir()
    pq.write_table(pa.table(columns), data / "part-0.parquet", row_group_size=2_500)

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"features": x})
    feed, keep = {"features": names}, ["Patient"]

    def check(frame, context):
        frame = frame.assign(n=frame["Patient"].str[2:].astype(int)).sort_values("n")
        assert frame["Patient"].tolist() == [f"P-{i}" for i in range(len(x))], context
        np.testing.assert_array_equal(frame["label"].to_numpy(), label, err_msg=context)
        np.testing.assert_allclose(np.stack(frame["probabilities"]), probabilities,
                                   rtol=1e-5, atol=1e-6, err_msg=context)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        ddf = dd.read_parquet(str(data), split_row_groups=True)
        check(predictd.dask.predict(ddf, str(repo), "tumours", feed=feed, keep=keep).compute(), "dask")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        df = spark.read.parquet(str(data))
        check(predictd.spark.predict(df, str(repo), "tumours", feed=feed, keep=keep).toArrow().to_pandas(),
              "spark")
    finally:
        spark.stop()
