"""Write the example input files the README's `predictd batch` commands score.

    python examples/make_examples.py     # with pyarrow and scikit-learn (tests/interop/requirements.txt)

wine.parquet and wine.csv: the 178 rows of scikit-learn's wine data set, as a user would keep
them: an `id`, the grape `cultivar` as text, and the 13 measurements under their own names, as
FP64 (the model takes FP32: predictd casts, as documented). Deterministic: rerunning rewrites the
same rows.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sklearn.datasets import load_wine

HERE = Path(__file__).resolve().parent


def main():
    wine = load_wine()
    columns = {
        "id": pa.array(range(1, len(wine.target) + 1), pa.int64()),
        "cultivar": pa.array([str(wine.target_names[t]) for t in wine.target]),
    }
    for j, name in enumerate(wine.feature_names):
        columns[name] = pa.array(wine.data[:, j], pa.float64())
    table = pa.table(columns)
    pq.write_table(table, HERE / "wine.parquet", row_group_size=64)
    pacsv.write_csv(table, HERE / "wine.csv")


if __name__ == "__main__":
    main()
