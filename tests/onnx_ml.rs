//! The ONNX-ML corpus (`tests/corpus`, made by `tests/corpus/make_corpus.py`): scikit-learn,
//! XGBoost and LightGBM models with onnxruntime's outputs stored beside them. Every one must
//! load, serve over gRPC and match: labels and integers exactly, scores within 1e-5 relative
//! (plus 1e-6 absolute, for scores near zero).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{RefTensor, Reference, TestServer, references, request, typed};
use predictd::proto::predictd::v1 as pb;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("corpus")
}

/// Why `got` differs from onnxruntime's `expected`, if it does.
fn mismatch(got: &pb::Tensor, expected: &RefTensor) -> Option<String> {
    let dtype = pb::DataType::try_from(got.dtype).ok()?;
    if dtype != common::dtype(&expected.dtype) {
        return Some(format!("dtype {dtype:?}, onnxruntime {}", expected.dtype));
    }
    if got.shape != expected.shape {
        return Some(format!(
            "shape {:?}, onnxruntime {:?}",
            got.shape, expected.shape
        ));
    }
    if expected.dtype == "STRING" {
        let want: Vec<&str> = expected.data.iter().map(|v| v.as_str().unwrap()).collect();
        let i = got
            .string_values
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)?;
        return Some(format!(
            "element {i}: got {}, onnxruntime {}",
            got.string_values[i], want[i]
        ));
    }
    let got = common::values(got);
    let want: Vec<f64> = expected
        .data
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    if got.len() != want.len() {
        return Some(format!(
            "{} elements, onnxruntime {}",
            got.len(),
            want.len()
        ));
    }
    let exact = !expected.dtype.starts_with("FP");
    let bad = |(g, w): &(&f64, &f64)| {
        if exact {
            g != w
        } else {
            !((g.is_nan() && w.is_nan()) || (*g - *w).abs() <= 1e-5 * w.abs() + 1e-6)
        }
    };
    let wrong: Vec<usize> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, p)| bad(p))
        .map(|(i, _)| i)
        .collect();
    let i = *wrong.first()?;
    Some(format!(
        "{} of {} elements differ; element {i}: got {}, onnxruntime {}",
        wrong.len(),
        got.len(),
        got[i],
        want[i]
    ))
}

/// The reference's rows `range` only.
fn rows(reference: &Reference, range: std::ops::Range<usize>) -> Reference {
    let slice = |t: &RefTensor| {
        let n = t.shape[0] as usize;
        let width = t.data.len().checked_div(n).unwrap_or(0);
        let mut shape = t.shape.clone();
        shape[0] = range.len() as i64;
        RefTensor {
            dtype: t.dtype.clone(),
            shape,
            data: t.data[range.start * width..range.end * width].to_vec(),
        }
    };
    Reference {
        inputs: reference
            .inputs
            .iter()
            .map(|(k, t)| (k.clone(), slice(t)))
            .collect(),
        outputs: reference
            .outputs
            .iter()
            .map(|(k, t)| (k.clone(), slice(t)))
            .collect(),
        ..reference.clone()
    }
}

async fn check(client: &mut common::Client, reference: &Reference, how: &str) -> Vec<String> {
    let context = |name: &str| format!("{} {name} ({how})", reference.model);
    let reply = match client.predict(request(reference, typed)).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return vec![format!("{}: {status}", context(""))],
    };
    let mut problems = Vec::new();
    if reply.outputs.len() != reference.outputs.len() {
        problems.push(format!("{}: {} outputs", context(""), reply.outputs.len()));
    }
    for (name, expected) in &reference.outputs {
        match reply.outputs.get(name) {
            None => problems.push(format!("{}: missing", context(name))),
            Some(got) => {
                problems.extend(mismatch(got, expected).map(|m| format!("{}: {m}", context(name))))
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_model_serves_and_matches_onnxruntime() {
    let server = TestServer::start(&corpus()).await;
    let mut client = server.client();
    let refs = references(&corpus());
    assert!(refs.len() >= 60, "the corpus has {} models", refs.len());
    let mut problems = Vec::new();
    for reference in &refs {
        problems.extend(check(&mut client, reference, "all rows in one request").await);
        for row in 0..3 {
            problems.extend(
                check(
                    &mut client,
                    &rows(reference, row..row + 1),
                    &format!("row {row} alone"),
                )
                .await,
            );
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
