"""The Python package against onnxruntime's stored outputs, and against `predictd batch`.

PREDICTD_BIN names the predictd binary (python/run_tests.sh sets it to the one cargo built).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import predictd

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def references():
    return sorted(MODELS.glob("*/reference.json"))


def tensor(ref):
    data = [np.nan if v is None else v for v in ref["data"]]
    if ref["dtype"] == "STRING":
        return np.array(data, dtype=object).reshape(ref["shape"])
    return np.array(data, dtype=DTYPES[ref["dtype"]]).reshape(ref["shape"])


def assert_matches(got, ref, context):
    want = tensor(ref)
    assert got.shape == want.shape, f"{context}: shape {got.shape}, onnxruntime {want.shape}"
    if ref["dtype"].startswith("FP"):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=context)
    else:
        np.testing.assert_array_equal(got, want, err_msg=context)


@pytest.mark.parametrize("reference", references(), ids=lambda p: p.parent.name)
def test_every_bundled_model_matches_onnxruntime(reference):
    ref = json.loads(reference.read_text())
    model = predictd.load(str(MODELS), ref["model"])
    assert model.name == ref["model"] and model.version == int(ref["version"])
    assert [i["name"] for i in model.inputs] == list(ref["inputs"])
    assert all(i["shape"][0] == -1 for i in model.inputs + model.outputs)
    outputs = model.predict({name: tensor(t) for name, t in ref["inputs"].items()})
    assert sorted(outputs) == sorted(ref["outputs"])
    for name, expected in ref["outputs"].items():
        assert_matches(outputs[name], expected, f"{ref['model']} {name}")


def test_arrays_in_any_memory_order_give_the_onnxruntime_values():
    # Fortran-ordered and strided arrays are first laid out in C order by numpy, then copied in
    # one piece as C-ordered ones are; C-ordered arrays of 256 KB and more are read in place,
    # through pyarrow. Every one must give the reference.
    ref = json.loads((MODELS / "digits_mlp" / "reference.json").read_text())
    model = predictd.load(str(MODELS), "digits_mlp")
    x = tensor(ref["inputs"]["X"])
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=x.dtype)
    wide[:, ::2] = x
    times = -(-1100 // x.shape[0])  # past 256 KB of FP32 rows of 64 values
    large = np.tile(x, (times, 1))
    read_only = large.copy()
    read_only.flags.writeable = False
    cases = [("C", x, 1), ("Fortran", np.asfortranarray(x), 1), ("strided", wide[:, ::2], 1),
             ("large C", large, times), ("large Fortran", np.asfortranarray(large), times),
             ("large, from row 1", np.tile(x, (times + 1, 1))[x.shape[0]:], times),
             ("large, read-only", read_only, times)]
    for layout, array, repeats in cases:
        outputs = model.predict({"X": array})
        for name, expected in ref["outputs"].items():
            want = dict(expected, shape=[expected["shape"][0] * repeats, *expected["shape"][1:]],
                        data=expected["data"] * repeats)
            assert_matches(outputs[name], want, f"{layout}-ordered input, {name}")


def test_metadata_names_dtypes_and_free_dimensions():
    model = predictd.load(str(MODELS), "digits_cnn", version=1)
    assert model.inputs == [{"name": "image", "dtype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert {o["name"]: o["shape"] for o in model.outputs} == {
        "probabilities": [-1, 10],
        "label": [-1],
    }
    assert repr(model) == "predictd.Model('digits_cnn', version=1)"


def test_bad_inputs_raise_predict_error_with_the_servers_message():
    model = predictd.load(str(MODELS), "wine_forest")
    with pytest.raises(predictd.PredictError) as e:
        model.predict({"X": np.zeros((2, 12), np.float32)})
    assert str(e.value) == "model 'wine_forest' version 1: input 'X': expected shape [N, 13], got [2, 12]"
    with pytest.raises(predictd.PredictError, match="input 'X': expected dtype FP32, got FP64"):
        model.predict({"X": np.zeros((2, 13))})
    with pytest.raises(predictd.PredictError, match="unknown input 'x'; the model's inputs are: 'X'"):
        model.predict({"x": np.zeros((2, 13), np.float32)})
    assert isinstance(e.value, ValueError)
    with pytest.raises(predictd.PredictError, match="model 'nope' not found"):
        predictd.load(str(MODELS), "nope")
    with pytest.raises(predictd.PredictError, match="has no version '7'"):
        predictd.load(str(MODELS), "wine_forest", version=7)


def wine_table():
    ref = json.loads((MODELS / "wine_forest/reference.json").read_text())
    x = tensor(ref["inputs"]["X"])
    rows = np.tile(x, (500, 1))  # 4,000 rows: more than one 1,024-row run
    columns = {"id": pa.array(np.arange(len(rows)))}
    columns |= {f"feature {j}": pa.array(rows[:, j].astype(np.float64)) for j in range(13)}
    return pa.table(columns), ref


def test_predict_arrow_equals_predictd_batch_on_the_same_file(tmp_path):
    table, ref = wine_table()
    source = tmp_path / "wine.parquet"
    pq.write_table(table, source, row_group_size=1500)
    target = tmp_path / "scores.parquet"
    subprocess.run(
        [os.environ["PREDICTD_BIN"], "batch", "--progress", "never", "--models", str(MODELS),
         "--model", "wine_forest", "--input", str(source), "--output", str(target), "--keep", "id"],
        check=True, capture_output=True,
    )
    from_cli = pq.read_table(target)
    model = predictd.load(str(MODELS), "wine_forest")
    from_python = model.predict_arrow(pq.read_table(source), keep=["id"])
    assert from_python.schema == from_cli.schema
    assert from_python.equals(from_cli)
    labels = from_python.column("label").to_numpy()
    np.testing.assert_array_equal(labels, np.tile(tensor(ref["outputs"]["label"]), 500))


def test_predict_arrow_feed_fetch_keep_and_lists():
    table, ref = wine_table()
    model = predictd.load(str(MODELS), "wine_forest")
    names = [f"feature {j}" for j in range(13)]
    batch = table.to_batches()[0]
    out = model.predict_arrow(batch, feed={"X": names}, fetch={"probabilities": "p"}, lists="list")
    assert out.column_names == ["p"]
    assert pa.types.is_list(out.schema.field("p").type)
    got = np.array(out.column("p").to_pylist()[:8], dtype=np.float32)
    assert_matches(got, ref["outputs"]["probabilities"], "p")
    out = model.predict_arrow(table, fetch=["label"], keep=["id"])
    assert out.column_names == ["id", "label"]


def test_a_list_column_longer_than_a_run_feeds_the_input_as_an_array_does():
    ref = json.loads((MODELS / "digits_mlp/reference.json").read_text())
    x = np.tile(tensor(ref["inputs"]["X"]), (400, 1))[:3001]  # three runs and one row
    model = predictd.load(str(MODELS), "digits_mlp")
    want = model.predict({"X": x})
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64)
    plain = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, 64, dtype=np.int32)),
                                     pa.array(x.ravel()))
    # A slice starts its lists part-way into the values buffer.
    padded = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([x[:7], x]).ravel()), 64)
    for label, column in [("fixed", fixed), ("list", plain), ("sliced", padded.slice(7))]:
        out = model.predict_arrow(pa.table({"pixels": column}), feed={"X": "pixels"})
        got = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(got, want["probabilities"], err_msg=label)
        np.testing.assert_array_equal(out.column("label").to_numpy(), want["label"].ravel(),
                                      err_msg=label)


def test_bad_feeds_raise_predict_error_naming_the_column():
    table, _ = wine_table()
    model = predictd.load(str(MODELS), "wine_forest")
    with pytest.raises(predictd.PredictError, match="--feed: no column 'nope'"):
        model.predict_arrow(table, feed={"X": ["nope"] * 13})
    with pytest.raises(predictd.PredictError, match="input 'X' .* is not fed"):
        model.predict_arrow(table)
    gappy = table.set_column(3, "feature 2", pa.array([1.0, None] * 2000))
    with pytest.raises(predictd.PredictError, match=r"column 'feature 2', row 1: null value"):
        model.predict_arrow(gappy, keep=["id"])
    # A batch is read a slice at a time; the row counts from the batch's start.
    late = table.set_column(3, "feature 2", pa.array([1.0] * 2500 + [None] + [1.0] * 1499))
    with pytest.raises(predictd.PredictError, match=r"column 'feature 2', row 2500: null value"):
        model.predict_arrow(late, keep=["id"])
    words = table.set_column(3, "feature 2", pa.array(["x"] * 4000))
    with pytest.raises(predictd.PredictError, match="column 'feature 2' is Utf8"):
        model.predict_arrow(words, feed={"X": [f"feature {j}" for j in range(13)]})


def test_dask_partitions_reach_arrow_as_from_pandas_makes_them():
    pd = pytest.importorskip("pandas")
    from predictd.dask import _arrow

    frame = pd.DataFrame({
        "clean": np.arange(5, dtype=np.float32),
        "holed": np.array([1.0, np.nan, 3.0, 4.0, 5.0]),  # NaN is null, as pandas means it
        "count": np.arange(5),
        "flag": [True, False, True, True, False],
        "note": ["a", None, "c", "d", "e"],
        "nullable": pd.array([1, None, 3, 4, 5], dtype="Int64"),
    }, index=[10, 11, 12, 13, 14])
    want = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata()
    got = _arrow(frame)
    assert got.equals(want), f"{got}\n{want}"
    assert got.column("holed").null_count == 1


def test_the_running_server_gives_the_same_values():
    """The same rows through `predictd serve` (KServe v2 REST) and through the package."""
    import re
    import urllib.request

    server = subprocess.Popen(
        [os.environ["PREDICTD_BIN"], "serve", "--models", str(MODELS),
         "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        http = None
        for line in server.stderr:
            m = re.search(r"http=(127\.0\.0\.1:\d+)", line)
            if m:
                http = m.group(1)
                break
        assert http, "the server did not say where it listens"
        # The server logs when its models are loaded: read on until it does.
        assert any("models loaded; serving" in line for line in server.stderr), \
            "the server never said its models were loaded"
        with urllib.request.urlopen(f"http://{http}/v2/models/wine_forest/ready") as r:
            assert r.status == 200
        table, _ = wine_table()
        rows = table.slice(0, 64)
        x = np.column_stack([rows.column(f"feature {j}").to_numpy() for j in range(13)]).astype(np.float32)
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}
        request = urllib.request.Request(
            f"http://{http}/v2/models/wine_forest/infer", data=json.dumps(body).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(request) as r:
            served = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in json.load(r)["outputs"]}
    finally:
        server.terminate()
        server.wait(timeout=30)
    model = predictd.load(str(MODELS), "wine_forest")
    local = model.predict({"X": x})
    np.testing.assert_array_equal(served["label"], local["label"])
    # JSON carries FP32 as the shortest decimal that reads back as the same float32.
    np.testing.assert_array_equal(served["probabilities"].astype(np.float32), local["probabilities"])
    arrow = model.predict_arrow(rows, feed={"X": [f"feature {j}" for j in range(13)]})
    np.testing.assert_array_equal(arrow.column("label").to_numpy(), local["label"])
