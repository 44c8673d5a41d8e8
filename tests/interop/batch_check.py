"""`predictd batch` used as a new user would: the README's commands on examples/, and models
predictd has never seen, fed from columns named the way a user names them, checked against
onnxruntime run here on the very same values.

    python batch_check.py PREDICTD REPO_ROOT UNSEEN_MODELS TMP

Prints "ok - ..." / "not ok - ...: ..." per check.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check import Failed, example  # noqa: E402


def onnxruntime(model, feeds):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def read(path):
    path = Path(path)
    return pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)


def column_values(table, name, width):
    """Output NAME of TABLE as an [N, width] array: one scalar, one list, or NAME_j columns."""
    if name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
        return column.to_numpy(zero_copy_only=False).reshape(-1, 1)
    return np.column_stack([table.column(f"{name}_{j}").to_numpy() for j in range(width)])


def compare(table, column, expected):
    expected = np.asarray(expected)
    expected = expected.reshape(len(expected), -1)
    got = column_values(table, column, expected.shape[1])
    if got.shape != expected.shape:
        raise Failed(f"{column}: shape {got.shape}, onnxruntime {expected.shape}")
    if expected.dtype.kind == "f":
        bad = ~np.isclose(got.astype(np.float64), expected, rtol=1e-5, atol=1e-6)
    else:
        bad = got.astype(expected.dtype) != expected
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise Failed(f"{column} row {i}: {got[i].tolist()}, onnxruntime {expected[i].tolist()}")


def batch(predictd, *args, cwd=None):
    done = subprocess.run([predictd, "batch", "--progress", "never", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise Failed(f"exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def check(what, fn):
    try:
        fn()
        print(f"ok - {what}")
    except Exception as e:  # every failure is reported, none stops the others
        detail = " ".join(str(e).split())[:400]
        print(f"not ok - {what}: {type(e).__name__}: {detail}")


def readme(predictd, repo, tmp):
    """The README's batch commands, run as written from a folder holding examples/ and models/
    (with `cargo run --release --` standing for the binary already built)."""
    work = tmp / "readme-batch"
    work.mkdir()
    for name in ["examples", "models"]:
        (work / name).symlink_to(repo / name)
    commands = example(repo / "README.md", "batch-example").splitlines()
    if len(commands) != 2:
        raise Failed(f"expected two commands, found {commands}")
    source = pq.read_table(repo / "examples" / "wine.parquet")
    features = [n for n in source.column_names if n not in ("id", "cultivar")]
    x = np.column_stack([source.column(n).to_numpy() for n in features]).astype(np.float32)
    want = onnxruntime(repo / "models/wine_forest/1/model.onnx", {"X": x})
    for command in commands:
        if not command.startswith("cargo run --release -- batch "):
            raise Failed(f"unexpected command {command!r}")
        args = command.removeprefix("cargo run --release -- batch ").split()
        stdout = batch(predictd, *args, cwd=work)
        if not re.search(r"178 rows in [\d.]+ s", stdout):
            raise Failed(f"summary line: {stdout!r}")
        output = work / args[args.index("--output") + 1]
        table = read(output)
        if table.column("id").to_pylist() != source.column("id").to_pylist():
            raise Failed(f"{output.name}: ids not kept in order")
        if table.column("cultivar").to_pylist() != source.column("cultivar").to_pylist():
            raise Failed(f"{output.name}: cultivar not kept")
        label = "predicted" if "label=predicted" in command else "label"
        compare(table, label, want["label"])
        if "--fetch" not in command:
            compare(table, "probabilities", want["probabilities"])


def user_columns(unseen, tmp):
    """A never-seen SVM pipeline fed from a file whose columns a user named and ordered."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    names = ["Alcohol %", "Malic acid (g/l)", "Ash", "Ash alcalinity", "Magnesium (mg/l)",
             "Total phenols", "Flavanoids", "Non-flavanoid phenols", "Proanthocyanins",
             "Colour intensity", "Hue", "OD280/OD315", "Proline"]
    rng = np.random.default_rng(7)
    rows = rng.integers(0, len(wine.data), 500)
    x = wine.data[rows].astype(np.float32)
    columns = {"Patient ID": pa.array([f"P{i:05d}" for i in range(len(rows))])}
    # The file holds the measurements in another order, with a count column among them.
    order = rng.permutation(len(names))
    for j in order:
        columns[names[j]] = pa.array(x[:, j])
        if j == order[5]:
            columns["visits"] = pa.array(rng.integers(0, 9, len(rows)))
    table = pa.table(columns)
    source = tmp / "patients.parquet"
    pq.write_table(table, source, row_group_size=128)
    want = onnxruntime(unseen / "wine_svc/1/model.onnx", {"x": x})
    for suffix in ["csv", "parquet"]:
        output = tmp / f"patients-scored.{suffix}"
        batch(PREDICTD, "--models", str(unseen), "--model", "wine_svc", "--input", str(source),
              "--output", str(output), "--feed", "x=" + ",".join(names),
              "--keep", "Patient ID", "--fetch", "label=class", "--fetch", "probabilities=p")
        scored = read(output)
        if scored.column("Patient ID").to_pylist() != table.column("Patient ID").to_pylist():
            raise Failed(f"{output.name}: Patient ID not kept in order")
        compare(scored, "class", want["label"])
        compare(scored, "p", want["probabilities"])


def csv_regressor_and_two_inputs(unseen, tmp):
    """A never-seen boosted regressor from a CSV of integer and float columns, and a two-input
    model fed by two --feeds."""
    from sklearn.datasets import load_diabetes

    diabetes = load_diabetes()
    x = diabetes.data.astype(np.float32)
    names = ["age", "sex", "bmi", "bp", "tc", "ldl", "hdl", "tch", "ltg", "glu"]
    table = pa.table({"visit": pa.array(np.arange(len(x)) * 10)}
                     | {n: pa.array(x[:, j]) for j, n in enumerate(names)})
    source = tmp / "visits.csv"
    pacsv.write_csv(table, source)
    output = tmp / "visits-scored.parquet"
    batch(PREDICTD, "--models", str(unseen), "--model", "sugar_boost", "--input", str(source),
          "--output", str(output), "--feed", "x=" + ",".join(names), "--keep", "visit")
    # The CSV holds decimal text: onnxruntime gets what parsing it as FP32 gives.
    parsed = pacsv.read_csv(source)
    x_csv = np.column_stack([parsed.column(n).to_numpy() for n in names]).astype(np.float32)
    want = onnxruntime(unseen / "sugar_boost/1/model.onnx", {"x": x_csv})
    (name, value), = want.items()
    compare(read(output), name, value)

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 3)).astype(np.float32), rng.normal(size=(300, 3)).astype(np.float32)
    pairs = pa.table({f"left {j}": a[:, j] for j in range(3)} | {f"right {j}": b[:, j] for j in range(3)})
    source = tmp / "pairs.parquet"
    pq.write_table(pairs, source)
    output = tmp / "pairs-scored.csv"
    batch(PREDICTD, "--models", str(unseen), "--model", "pair_dot", "--input", str(source),
          "--output", str(output), "--feed", "a=left 0,left 1,left 2", "--feed", "b=right 0,right 1,right 2")
    compare(read(output), "sum", onnxruntime(unseen / "pair_dot/1/model.onnx", {"a": a, "b": b})["sum"])


def bad_null(unseen, tmp):
    """A null in a feed: exit 1, one line naming file, column and row, and no output."""
    x = pa.array([1.0, 2.0, None, 4.0], pa.float32())
    table = pa.table({f"c{j}": x if j == 4 else pa.array([0.5] * 4, pa.float32()) for j in range(13)})
    source = tmp / "gaps.parquet"
    pq.write_table(table, source)
    out_dir = tmp / "gaps-out"
    out_dir.mkdir()
    done = subprocess.run([PREDICTD, "batch", "--models", str(unseen), "--model", "wine_svc",
                           "--input", str(source), "--output", str(out_dir / "scores.parquet")],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 1:
        raise Failed(f"exit code {done.returncode}: {done.stderr}")
    message = done.stderr.strip()
    for part in ["gaps.parquet", "column 'c4', row 2", "null"]:
        if part not in message:
            raise Failed(f"{message!r} lacks {part!r}")
    if list(out_dir.iterdir()):
        raise Failed(f"left {list(out_dir.iterdir())}")


PREDICTD = ""


def main():
    global PREDICTD
    PREDICTD, repo, unseen, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    tmp.mkdir(parents=True, exist_ok=True)
    check("README batch examples score examples/wine.parquet and wine.csv like onnxruntime",
          lambda: readme(PREDICTD, repo, tmp))
    check("batch: never-seen wine_svc fed from user-named, reordered columns, Parquet -> CSV and Parquet",
          lambda: user_columns(unseen, tmp))
    check("batch: never-seen sugar_boost from CSV, pair_dot from two --feeds",
          lambda: csv_regressor_and_two_inputs(unseen, tmp))
    check("batch: a null gets exit 1, one line naming file, column and row, no output",
          lambda: bad_null(unseen, tmp))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
