"""Check `predictd batch` scores of examples/wine.csv against onnxruntime on the same model.

Usage: python batch_scores.py WINE.csv MODEL.onnx SCORES.csv

SCORES.csv must hold, row for row, WINE.csv's id and cultivar and the label onnxruntime
predicts (column `predicted`), as the README's CSV command writes. Prints what differs and exits
1, or prints nothing.
"""

import csv
import sys

import numpy as np
import onnxruntime as ort


def main(wine, model, scores):
    with open(wine, newline="") as f:
        rows = list(csv.DictReader(f))
    features = [c for c in rows[0] if c not in ("id", "cultivar")]
    x = np.array([[float(r[c]) for c in features] for r in rows], dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    want = session.run(["label"], {session.get_inputs()[0].name: x})[0].reshape(-1)
    with open(scores, newline="") as f:
        got = list(csv.DictReader(f))
    if len(got) != len(rows):
        return f"{len(got)} rows scored, want {len(rows)}"
    if list(got[0]) != ["id", "cultivar", "predicted"]:
        return f"columns {list(got[0])}, want ['id', 'cultivar', 'predicted']"
    for i, (row, score, label) in enumerate(zip(rows, got, want)):
        if (score["id"], score["cultivar"]) != (row["id"], row["cultivar"]):
            return f"row {i}: id/cultivar {score['id']}/{score['cultivar']}, want {row['id']}/{row['cultivar']}"
        if int(score["predicted"]) != int(label):
            return f"row {i} (id {row['id']}): predicted {score['predicted']}, onnxruntime says {label}"
    return None


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    problem = main(*sys.argv[1:])
    if problem:
        print(problem)
        sys.exit(1)
