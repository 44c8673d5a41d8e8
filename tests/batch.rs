//! `predictd batch`, run as a user runs it: the real binary on Parquet and CSV files written
//! here with arrow-rs, its outputs read back and checked against the onnxruntime references
//! stored beside the models.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array, ListArray, RecordBatch,
    RecordBatchReader, StringArray,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float64Type};
use common::{RefTensor, Reference, bundled_models, references};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

fn predictd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_predictd"))
        .args(args)
        .output()
        .expect("predictd runs")
}

/// Runs `predictd batch` and insists that it succeeded.
fn batch_ok(args: &[&str]) {
    let mut all = vec!["batch", "--progress", "never"];
    all.extend_from_slice(args);
    let out = predictd(&all);
    assert!(
        out.status.success(),
        "predictd {}: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `predictd batch` on `input` into `output` with model `model` of repository `models`,
/// plus `extra` flags, and insists that it succeeded.
fn score(models: &Path, model: &str, input: &Path, output: &Path, extra: &[&str]) {
    let mut args = vec![
        "--models",
        models.to_str().unwrap(),
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    batch_ok(&args);
}

fn f64s(t: &RefTensor) -> Vec<f64> {
    // Reference files write NaN as null.
    t.data
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Values per row past the batch dimension.
fn width(t: &RefTensor) -> usize {
    t.shape[1..].iter().product::<i64>() as usize
}

/// One column per value of a reference input, named `{prefix}{j}`.
fn columns_of(t: &RefTensor, prefix: &str) -> Vec<(String, ArrayRef)> {
    let k = width(t);
    let rows = t.shape[0] as usize;
    (0..k)
        .map(|j| {
            let pick = |i: usize| &t.data[i * k + j];
            let array: ArrayRef = match t.dtype.as_str() {
                "FP32" => Arc::new(Float32Array::from_iter_values(
                    (0..rows).map(|i| pick(i).as_f64().unwrap_or(f64::NAN) as f32),
                )),
                "INT64" => Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|i| pick(i).as_i64().unwrap()),
                )),
                "STRING" => Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| pick(i).as_str().unwrap().to_string()),
                )),
                other => panic!("reference dtype {other} not handled by the test"),
            };
            (format!("{prefix}{j}"), array)
        })
        .collect()
}

fn table(columns: Vec<(String, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

fn ids(rows: usize) -> (String, ArrayRef) {
    (
        "id".to_string(),
        Arc::new(Int64Array::from_iter_values(0..rows as i64)),
    )
}

/// `batch`'s columns, named.
fn named_columns(batch: &RecordBatch) -> Vec<(String, ArrayRef)> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect()
}

/// `batch` with a null at `row` of its FP32 column `column`.
fn with_null(batch: &RecordBatch, column: usize, row: usize) -> RecordBatch {
    let mut columns = named_columns(batch);
    let values = batch
        .column(column)
        .as_primitive::<arrow::datatypes::Float32Type>();
    columns[column].1 = Arc::new(
        (0..batch.num_rows())
            .map(|i| (i != row).then(|| values.value(i)))
            .collect::<Float32Array>(),
    );
    table(columns)
}

fn write_parquet(path: &Path, batch: &RecordBatch, row_group_rows: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn write_csv(path: &Path, batch: &RecordBatch) {
    let mut writer = arrow::csv::Writer::new(File::create(path).unwrap());
    writer.write(batch).unwrap();
}

fn read_output(path: &Path) -> RecordBatch {
    if path.extension().unwrap() == "csv" {
        let mut file = File::open(path).unwrap();
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format.infer_schema(&mut file, None).unwrap();
        let schema = Arc::new(schema);
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_header(true)
            .build(File::open(path).unwrap())
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        concat_batches(&schema, &batches).unwrap()
    } else {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let schema = reader.schema();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        concat_batches(&schema, &batches).unwrap()
    }
}

/// The values of output `column` of `out`, row-major: one scalar column, one list column, or
/// (CSV) columns `column_0 ...`.
fn output_values(out: &RecordBatch, column: &str, k: usize) -> Vec<ArrayRef> {
    if let Some(array) = out.column_by_name(column) {
        return vec![match array.data_type() {
            DataType::FixedSizeList(_, _) => array.as_fixed_size_list().values().clone(),
            DataType::List(_) => array.as_list::<i32>().values().clone(),
            _ => array.clone(),
        }];
    }
    (0..k)
        .map(|j| {
            out.column_by_name(&format!("{column}_{j}"))
                .unwrap_or_else(|| panic!("no column {column} or {column}_{j}: {:?}", out.schema()))
                .clone()
        })
        .collect()
}

/// Checks output `column` against onnxruntime's `expected`: labels and integers exactly,
/// scores within 1e-5 relative plus 1e-6 absolute.
fn assert_output(context: &str, out: &RecordBatch, column: &str, expected: &RefTensor) {
    let k = width(expected).max(1);
    let parts = output_values(out, column, k);
    let rows = out.num_rows();
    let value = |i: usize, j: usize| -> ArrayRef {
        if parts.len() == 1 {
            parts[0].slice(i * k + j, 1)
        } else {
            parts[j].slice(i, 1)
        }
    };
    assert_eq!(
        rows * k,
        expected.data.len(),
        "{context}: {column}: row count"
    );
    for i in 0..rows {
        for j in 0..k {
            let got = value(i, j);
            let want = &expected.data[i * k + j];
            if expected.dtype == "STRING" {
                let got = cast(&got, &DataType::Utf8).unwrap();
                assert_eq!(
                    got.as_string::<i32>().value(0),
                    want.as_str().unwrap(),
                    "{context}: {column}[{i}][{j}]"
                );
                continue;
            }
            let got = cast(&got, &DataType::Float64).unwrap();
            let got = got.as_primitive::<Float64Type>().value(0);
            let want = want.as_f64().unwrap_or(f64::NAN);
            let ok = if expected.dtype.starts_with("FP") {
                (got - want).abs() <= 1e-5 * want.abs() + 1e-6 || (got.is_nan() && want.is_nan())
            } else {
                got == want
            };
            assert!(
                ok,
                "{context}: {column}[{i}][{j}] = {got}, onnxruntime {want}"
            );
        }
    }
}

fn assert_reference(context: &str, out: &RecordBatch, reference: &Reference) {
    let rows = reference.inputs.values().next().unwrap().shape[0] as usize;
    assert_eq!(out.num_rows(), rows, "{context}");
    let id = out.column_by_name("id").expect("id kept");
    let id = cast(id, &DataType::Int64).unwrap();
    assert_eq!(
        id.as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec(),
        (0..rows as i64).collect::<Vec<_>>(),
        "{context}: ids in input order"
    );
    for (name, expected) in &reference.outputs {
        assert_output(context, out, name, expected);
    }
}

#[test]
fn every_bundled_model_scores_parquet_and_csv_like_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let models = bundled_models();
    for reference in references(&models) {
        let (input, tensor) = reference.inputs.iter().next().unwrap();
        assert_eq!(reference.inputs.len(), 1, "bundled models have one input");
        let rows = tensor.shape[0] as usize;
        let mut columns = vec![ids(rows)];
        columns.extend(columns_of(tensor, &format!("{input}_")));
        let batch = table(columns);
        let name = &reference.model;
        for (from, to) in [("parquet", "parquet"), ("csv", "csv"), ("csv", "parquet")] {
            let source = dir.path().join(format!("{name}-in.{from}"));
            let target = dir.path().join(format!("{name}-out-{from}.{to}"));
            match from {
                "parquet" => write_parquet(&source, &batch, 3),
                _ => write_csv(&source, &batch),
            }
            // No --feed: the model's one input takes the numeric columns not kept.
            score(&models, name, &source, &target, &["--keep", "id"]);
            assert_reference(
                &format!("{name} {from} -> {to}"),
                &read_output(&target),
                &reference,
            );
        }
    }
}

fn list_column(t: &RefTensor, fixed: bool) -> ArrayRef {
    let k = width(t);
    let values = Arc::new(Float32Array::from_iter_values(
        f64s(t).into_iter().map(|v| v as f32),
    ));
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    if fixed {
        Arc::new(FixedSizeListArray::new(field, k as i32, values, None))
    } else {
        let rows = t.shape[0] as usize;
        Arc::new(ListArray::new(
            field,
            arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(k, rows)),
            values,
            None,
        ))
    }
}

#[test]
fn one_list_column_feeds_a_whole_input() {
    let dir = tempfile::tempdir().unwrap();
    let models = bundled_models();
    let reference = references(&models)
        .into_iter()
        .find(|r| r.model == "digits_cnn")
        .unwrap();
    let image = &reference.inputs["image"];
    let rows = image.shape[0] as usize;
    for fixed in [true, false] {
        let source = dir.path().join(format!("pixels-{fixed}.parquet"));
        let target = dir.path().join(format!("scores-{fixed}.parquet"));
        let batch = table(vec![
            ids(rows),
            ("pixels".to_string(), list_column(image, fixed)),
        ]);
        write_parquet(&source, &batch, 1024);
        score(
            &models,
            "digits_cnn:1",
            &source,
            &target,
            &["--feed", "image=pixels", "--keep", "id"],
        );
        assert_reference(
            &format!("digits_cnn from a list column (fixed size: {fixed})"),
            &read_output(&target),
            &reference,
        );
    }
}

/// A repository in `dir` holding one corpus model under `name`, with `config` as its
/// config.toml.
fn repository_with(dir: &Path, corpus_model: &str, name: &str, config: &str) -> PathBuf {
    let root = dir.join("repo");
    let version = root.join(name).join("1");
    std::fs::create_dir_all(&version).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(corpus_model)
        .join("1/model.onnx");
    std::fs::copy(source, version.join("model.onnx")).unwrap();
    std::fs::write(root.join(name).join("config.toml"), config).unwrap();
    root
}

fn corpus_reference(model: &str) -> Reference {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(model)
        .join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[test]
fn several_feeds_fill_a_multi_input_model_from_columns_named_by_the_user() {
    // A ColumnTransformer pipeline: six scaled numeric features and three one-hot categories.
    let dir = tempfile::tempdir().unwrap();
    let models = repository_with(dir.path(), "coltrans_bc", "cancer_pipeline", "");
    let reference = corpus_reference("coltrans_bc");
    let num = &reference.inputs["num"];
    let cat = &reference.inputs["cat"];
    let rows = num.shape[0] as usize;
    let num_names = [
        "mean radius",
        "mean texture",
        "mean perimeter",
        "mean area",
        "worst radius",
        "worst texture",
    ];
    let cat_names = ["site", "grade", "batch"];
    let mut columns = vec![ids(rows)];
    // The user's file holds the categories first and the numbers in their own names.
    for ((_, array), name) in columns_of(cat, "").into_iter().zip(cat_names) {
        columns.push((name.to_string(), array));
    }
    for ((_, array), name) in columns_of(num, "").into_iter().zip(num_names) {
        columns.push((name.to_string(), array));
    }
    let source = dir.path().join("patients.parquet");
    write_parquet(&source, &table(columns), 100);
    let num_feed = format!("num={}", num_names.join(","));
    let cat_feed = format!("cat={}", cat_names.join(","));
    let feeds = ["--feed", num_feed.as_str(), "--feed", cat_feed.as_str()];
    for to in ["parquet", "csv"] {
        let target = dir.path().join(format!("scored.{to}"));
        score(
            &models,
            "cancer_pipeline",
            &source,
            &target,
            &[&feeds[..], &["--keep", "id"]].concat(),
        );
        assert_reference(
            &format!("coltrans_bc -> {to}"),
            &read_output(&target),
            &reference,
        );
    }

    // --fetch picks one output and renames its column.
    let target = dir.path().join("labels.parquet");
    score(
        &models,
        "cancer_pipeline",
        &source,
        &target,
        &[&feeds[..], &["--fetch", "label=diagnosis"]].concat(),
    );
    let out = read_output(&target);
    let names: Vec<&str> = out
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["diagnosis"]);
    assert_output(
        "renamed label",
        &out,
        "diagnosis",
        &reference.outputs["label"],
    );
}

/// `rows` rows of the wine forest's reference inputs, repeated, with ids.
fn wine_rows(rows: usize) -> RecordBatch {
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "wine_forest")
        .unwrap();
    let x = &reference.inputs["X"];
    let base = x.shape[0] as usize;
    let values = f64s(x);
    let mut columns = vec![ids(rows)];
    for j in 0..13 {
        let column: Float32Array = (0..rows)
            .map(|i| values[(i % base) * 13 + j] as f32)
            .collect();
        columns.push((format!("f{j}"), Arc::new(column) as ArrayRef));
    }
    table(columns)
}

#[test]
fn shards_together_are_exactly_the_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let models = bundled_models();
    let run = |input: &Path, output: &Path, shard: &str| {
        score(
            &models,
            "wine_forest",
            input,
            output,
            &["--keep", "id", "--shard", shard, "--batch-rows", "64"],
        );
        read_output(output)
    };
    // Parquet: one file of ten row groups.
    let rows = wine_rows(1000);
    let parquet = dir.path().join("wine.parquet");
    write_parquet(&parquet, &rows, 100);
    // CSV: a folder of four part files.
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    for p in 0..4 {
        write_csv(
            &parts.join(format!("part-{p:03}.csv")),
            &rows.slice(p * 250, 250),
        );
    }
    for (input, ext) in [(parquet.as_path(), "parquet"), (parts.as_path(), "csv")] {
        let full = run(input, &dir.path().join(format!("full.{ext}")), "0/1");
        assert_eq!(full.num_rows(), 1000);
        let shards: Vec<RecordBatch> = (0..3)
            .map(|i| {
                run(
                    input,
                    &dir.path().join(format!("shard-{i}.{ext}")),
                    &format!("{i}/3"),
                )
            })
            .collect();
        assert!(
            shards
                .iter()
                .all(|s| s.num_rows() > 0 && s.num_rows() < 1000),
            "{ext}: every shard takes a part: {:?}",
            shards.iter().map(RecordBatch::num_rows).collect::<Vec<_>>()
        );
        let together = concat_batches(&full.schema(), &shards).unwrap();
        assert_eq!(together, full, "{ext}: shards 0/3, 1/3, 2/3 concatenated");
    }
    // More shards than units: the shards without one still write a file, with no rows.
    let empty = run(&parts, &dir.path().join("shard-0-of-9.csv"), "0/9");
    assert_eq!(empty.num_rows(), 0);
    let empty = run(&parquet, &dir.path().join("shard-1-of-19.parquet"), "1/19");
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(
        empty.schema().fields().len(),
        3,
        "id, label, probabilities: {:?}",
        empty.schema()
    );
}

/// Runs a batch that must fail; returns its one-line error. Checks that it exits non-zero and
/// leaves no output, finished or partial, in the output's folder.
fn batch_err(args: &[&str], out_dir: &Path) -> String {
    let mut all = vec!["batch", "--progress", "never"];
    all.extend_from_slice(args);
    let out = predictd(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "{}: should fail", all.join(" "));
    assert!(
        !stderr.contains("panicked"),
        "{}: panicked: {stderr}",
        all.join(" ")
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{}: left {left:?}", all.join(" "));
    stderr
}

#[test]
fn bad_input_gets_one_line_naming_what_is_wrong_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let models = bundled_models();
    let models = models.to_str().unwrap();
    let mut rows = wine_rows(40);
    // A text column and a column with a null at row 17.
    let notes: StringArray = (0..40).map(|i| Some(format!("note {i}"))).collect();
    let gappy: Float32Array = (0..40)
        .map(|i| if i == 17 { None } else { Some(i as f32) })
        .collect();
    let mut columns = named_columns(&rows);
    columns.push(("notes".to_string(), Arc::new(notes)));
    columns.push(("gappy".to_string(), Arc::new(gappy)));
    rows = table(columns);
    let good = dir.path().join("wine.parquet");
    write_parquet(&good, &rows, 16);
    let good = good.to_str().unwrap();
    let output = out_dir.join("scores.parquet");
    let output = output.to_str().unwrap();
    let feature_list = (0..13)
        .map(|j| format!("f{j}"))
        .collect::<Vec<_>>()
        .join(",");
    let twelve = (0..12)
        .map(|j| format!("f{j}"))
        .collect::<Vec<_>>()
        .join(",");
    let with_notes = format!("X={twelve},notes");
    let with_gap = format!("X={twelve},gappy");
    let feed_all = format!("X={feature_list}");
    let truncated = dir.path().join("truncated.parquet");
    let bytes = std::fs::read(good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = truncated.to_str().unwrap();
    let not_parquet = dir.path().join("garbage.parquet");
    std::fs::write(&not_parquet, b"this is not parquet").unwrap();
    let not_parquet = not_parquet.to_str().unwrap();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--feed", "X=f0,f1,nope,f3"],
            vec![
                "wine.parquet",
                "--feed: no column 'nope'",
                "the columns are: id, f0",
            ],
        ),
        (
            vec!["--feed", &feed_all, "--keep", "ident"],
            vec!["--keep: no column 'ident'"],
        ),
        (
            vec!["--feed", &with_notes],
            vec!["input 'X' expects FP32", "column 'notes' is Utf8"],
        ),
        (
            vec!["--feed", "X=f0,f1,f2"],
            vec![
                "input 'X' has shape [N, 13]",
                "takes 13",
                "3 column(s) were given",
            ],
        ),
        (
            vec!["--keep", "id"],
            vec![
                "input 'X' (FP32 [N, 13]) is not fed",
                "13 value(s) per row",
                "14 numeric column(s)",
                "candidate columns: f0 (Float32)",
            ],
        ),
        (
            vec!["--feed", &with_gap],
            vec![
                "wine.parquet",
                "column 'gappy', row 17",
                "null value",
                "fill_null",
            ],
        ),
        (
            vec!["--feed", &feed_all, "--fetch", "probs"],
            vec![
                "model 'wine_forest' has no output 'probs'",
                "label, probabilities",
            ],
        ),
        (
            vec!["--feed", "Y=f0"],
            vec!["model 'wine_forest' has no input 'Y'; its inputs are: X"],
        ),
        (
            vec!["--feed", &feed_all, "--keep", "id", "--fetch", "label=id"],
            vec!["two columns would be named 'id'"],
        ),
    ];
    for (extra, wanted) in cases {
        let mut args = vec![
            "--models",
            models,
            "--model",
            "wine_forest",
            "--input",
            good,
            "--output",
            output,
        ];
        args.extend(extra.iter().copied());
        let err = batch_err(&args, &out_dir);
        for w in wanted {
            assert!(err.contains(w), "{extra:?}: {err:?} lacks {w:?}");
        }
    }

    let file_cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--model", "wine_tree", "--input", good],
            vec!["model 'wine_tree' not found", "wine_forest"],
        ),
        (
            vec!["--model", "wine_forest:9", "--input", good],
            vec!["model 'wine_forest' has no version '9'"],
        ),
        (
            vec!["--model", "wine_forest", "--input", truncated],
            vec!["truncated.parquet", "not a readable Parquet file"],
        ),
        (
            vec!["--model", "wine_forest", "--input", not_parquet],
            vec!["garbage.parquet", "not a readable Parquet file"],
        ),
        (
            vec!["--model", "wine_forest", "--input", "/no/such/file.parquet"],
            vec!["/no/such/file.parquet: no such file"],
        ),
        (
            vec![
                "--model",
                "wine_forest",
                "--input",
                "/tmp/*.nothing-matches*.csv",
            ],
            vec!["no .parquet or .csv files"],
        ),
    ];
    for (extra, wanted) in file_cases {
        let mut args = vec!["--models", models, "--output", output, "--feed", &feed_all];
        args.extend(extra.iter().copied());
        let err = batch_err(&args, &out_dir);
        for w in wanted {
            assert!(err.contains(w), "{extra:?}: {err:?} lacks {w:?}");
        }
    }

    // A CSV line that does not parse as the input's type names its row.
    let csv = dir.path().join("bad.csv");
    let mut text = String::from("id,a,b\n");
    for i in 0..30 {
        text.push_str(&format!(
            "{i},{i}.5,{}\n",
            if i == 21 { "x7".into() } else { i.to_string() }
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let err = batch_err(
        &[
            "--models",
            models,
            "--model",
            "diabetes_linear",
            "--input",
            csv.to_str().unwrap(),
            "--output",
            output,
            "--feed",
            "X=a,b,a,b,a,b,a,b,a,b",
        ],
        &out_dir,
    );
    assert!(err.contains("bad.csv"), "{err}");
}

#[test]
fn fill_null_in_the_model_config_replaces_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("repo");
    let version = models.join("forest").join("1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(
        bundled_models().join("wine_forest/1/model.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(models.join("forest/config.toml"), "fill_null = nan\n").unwrap();
    let rows = wine_rows(8);
    // Row 3 of the first feature is null.
    let gappy = with_null(&rows, 1, 3);
    let source = dir.path().join("gappy.parquet");
    write_parquet(&source, &gappy, 100);
    let target = dir.path().join("scores.parquet");
    score(&models, "forest", &source, &target, &["--keep", "id"]);
    let out = read_output(&target);
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "wine_forest")
        .unwrap();
    // Every row but the filled one is onnxruntime's.
    let label = out
        .column_by_name("label")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    for i in (0..8).filter(|&i| i != 3) {
        assert_eq!(
            label.value(i),
            reference.outputs["label"].data[i].as_i64().unwrap(),
            "row {i}"
        );
    }
    assert_eq!(out.num_rows(), 8);
}

#[test]
fn an_interrupted_run_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let source = dir.path().join("big.parquet");
    write_parquet(&source, &wine_rows(400_000), 50_000);
    let output = out_dir.join("scores.parquet");
    let mut child = Command::new(env!("CARGO_BIN_EXE_predictd"))
        .args([
            "batch",
            "--progress",
            "never",
            "--models",
            bundled_models().to_str().unwrap(),
            "--model",
            "wine_forest",
            "--input",
            source.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--keep",
            "id",
            "--threads",
            "1",
            "--batch-rows",
            "16",
        ])
        // The run says when its partial output exists: then it is under way.
        .env("PREDICTD_LOG", "predictd=debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stderr.take().expect("stderr is piped"),
    ));
    let mut stderr = String::new();
    let mut under_way = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("writing the output under a temporary name") {
            under_way = true;
            break;
        }
    }
    assert!(under_way, "the run never said it began writing: {stderr}");
    assert!(
        std::fs::read_dir(&out_dir).unwrap().next().is_some(),
        "no partial output: {stderr}"
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_batch_larger_than_one_run_keeps_rows_in_order_and_errors_name_the_file_row() {
    // 3,000 rows in one 4,096-row batch: the model runs them 1,024 at a time.
    let dir = tempfile::tempdir().unwrap();
    let models = bundled_models();
    let rows = wine_rows(3000);
    let source = dir.path().join("wine.parquet");
    write_parquet(&source, &rows, 3000);
    let target = dir.path().join("scores.parquet");
    score(&models, "wine_forest", &source, &target, &["--keep", "id"]);
    let reference = references(&models)
        .into_iter()
        .find(|r| r.model == "wine_forest")
        .unwrap();
    let out = read_output(&target);
    let label = out
        .column_by_name("label")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    let want = &reference.outputs["label"].data;
    for i in 0..3000 {
        assert_eq!(
            label.value(i),
            want[i % want.len()].as_i64().unwrap(),
            "row {i}"
        );
    }

    // A null in the third run is reported at its row in the file.
    let with_gap = with_null(&rows, 6, 2500);
    let gappy = dir.path().join("gappy.parquet");
    write_parquet(&gappy, &with_gap, 3000);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("scores.parquet");
    let err = batch_err(
        &[
            "--models",
            models.to_str().unwrap(),
            "--model",
            "wine_forest",
            "--input",
            gappy.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--keep",
            "id",
        ],
        &out_dir,
    );
    assert!(
        err.contains("gappy.parquet: column 'f5', row 2500: null"),
        "{err}"
    );
}

#[test]
fn metrics_file_records_a_run_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let models = bundled_models();
    let reference = references(&models)
        .into_iter()
        .find(|r| r.model == "diabetes_linear")
        .unwrap();
    let (input, tensor) = reference.inputs.iter().next().unwrap();
    let rows = tensor.shape[0] as usize;
    let mut columns = vec![ids(rows)];
    columns.extend(columns_of(tensor, &format!("{input}_")));
    let source = dir.path().join("in.parquet");
    write_parquet(&source, &table(columns), 3);
    let prom = dir.path().join("scoring.prom");
    let prom_arg = prom.to_str().unwrap();
    score(
        &models,
        "diabetes_linear",
        &source,
        &dir.path().join("out.parquet"),
        &["--keep", "id", "--metrics-file", prom_arg],
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains(&format!(
            "predictd_batch_rows{{model=\"diabetes_linear\"}} {rows}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("predictd_batch_errors{model=\"diabetes_linear\"} 0\n"),
        "{text}"
    );

    // A run that fails (its input is missing) says so in the same file.
    let out = predictd(&[
        "batch",
        "--progress",
        "never",
        "--models",
        models.to_str().unwrap(),
        "--model",
        "diabetes_linear",
        "--input",
        dir.path().join("missing.parquet").to_str().unwrap(),
        "--output",
        dir.path().join("never.parquet").to_str().unwrap(),
        "--metrics-file",
        prom_arg,
    ]);
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("predictd_batch_errors{model=\"diabetes_linear\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("predictd_batch_rows{model=\"diabetes_linear\"} 0\n"),
        "{text}"
    );
}
