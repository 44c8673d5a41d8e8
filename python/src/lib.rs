//! The `predictd._native` extension: a thin layer over the predictd library. Loading, validation,
//! the ONNX-ML operators and the column rules are the library's; this module only converts numpy
//! arrays and Arrow tables to and from it, and releases the GIL while the model runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::ArrayData;
use arrow::pyarrow::{FromPyArrow, IntoPyArrow, Table};
use bytes::Bytes;
use numpy::ndarray::ArrayD;
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods};
use predictd::columns::{Binding, ListLayout, Mapping, ScoreError};
use predictd::engine::model::Model;
use predictd::engine::open::{OpenDefaults, Opened, open_named};
use predictd::engine::signature::{Signature, TensorSpec};
use predictd::engine::tensor::{DType, Element, Tensor};
use predictd::error::chain;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

pyo3::create_exception!(
    predictd,
    PredictError,
    PyValueError,
    "A model, input or column that predictd cannot use; the message is the server's."
);

fn fail(message: impl std::fmt::Display) -> PyErr {
    PredictError::new_err(message.to_string())
}

/// A model version loaded from a repository, ready to run.
#[pyclass(frozen, name = "Model", module = "predictd")]
struct PyModel {
    model: Arc<Model>,
    fill_null: Option<f64>,
}

/// Loads model `name` from the repository folder `models`: `version` is a number, or None for
/// the latest.
#[pyfunction]
#[pyo3(signature = (models, name, version = None))]
fn load(
    py: Python<'_>,
    models: PathBuf,
    name: String,
    version: Option<Bound<'_, PyAny>>,
) -> PyResult<PyModel> {
    let version = match version {
        None => String::new(),
        Some(v) => v.str()?.to_string(),
    };
    py.detach(move || {
        let Opened { model, config } =
            open_named(&models, &name, &version, &OpenDefaults::default()).map_err(fail)?;
        Ok(PyModel {
            model: Arc::new(model),
            fill_null: config.fill_null,
        })
    })
}

fn specs<'py>(py: Python<'py>, specs: &[TensorSpec]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for spec in specs {
        let item = PyDict::new(py);
        item.set_item("name", &spec.name)?;
        item.set_item("dtype", spec.dtype.name())?;
        item.set_item("shape", spec.wire_shape())?;
        list.append(item)?;
    }
    Ok(list)
}

#[pymethods]
impl PyModel {
    /// The model's name in the repository.
    #[getter]
    fn name(&self) -> &str {
        self.model.name()
    }

    /// The version loaded.
    #[getter]
    fn version(&self) -> u64 {
        self.model.version()
    }

    /// The inputs: dicts of name, dtype (FP32, INT64, ...) and shape (-1 where free).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature().inputs)
    }

    /// The outputs, as `inputs` describes the inputs.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature().outputs)
    }

    fn __repr__(&self) -> String {
        format!(
            "predictd.Model('{}', version={})",
            self.model.name(),
            self.model.version()
        )
    }

    /// Runs the model on a dict of arrays (anything numpy.asarray takes), one per input;
    /// returns a dict of numpy arrays, one per output. The GIL is released while it runs.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        inputs: HashMap<String, Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut named = Vec::with_capacity(inputs.len());
        for (name, value) in inputs {
            let tensor = to_tensor(py, &value).map_err(|e| {
                fail(format!(
                    "model '{}' version {}: input '{name}': {e}",
                    self.model.name(),
                    self.model.version()
                ))
            })?;
            named.push((name, tensor));
        }
        let model = self.model.clone();
        let outputs = py.detach(move || -> Result<Vec<Tensor>, String> {
            let context = |e: &dyn std::fmt::Display| {
                format!("model '{}' version {}: {e}", model.name(), model.version())
            };
            let valid = model.signature().validate(named).map_err(|e| context(&e))?;
            // No log to read here: the engine's own words go to the caller.
            model.run(valid).map_err(|e| context(&chain(&e)))
        });
        let outputs = outputs.map_err(fail)?;
        let result = PyDict::new(py);
        for (spec, tensor) in self.signature().outputs.iter().zip(outputs) {
            result.set_item(&spec.name, to_numpy(py, &tensor)?)?;
        }
        Ok(result)
    }

    /// Scores a pyarrow Table or RecordBatch (or any Arrow stream) with `predictd batch`'s
    /// rules: `feed` maps inputs to a column or a list of columns, `fetch` picks outputs (a
    /// list, or a dict of output to column name), `keep` copies columns through. Returns a
    /// pyarrow Table. `lists="list"` writes wide outputs as plain lists (for Spark) instead of
    /// fixed-size lists.
    #[pyo3(signature = (data, feed = None, fetch = None, keep = None, lists = "fixed_size_list"))]
    fn predict_arrow<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        feed: Option<&Bound<'py, PyDict>>,
        fetch: Option<&Bound<'py, PyAny>>,
        keep: Option<Vec<String>>,
        lists: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let layout = match lists {
            "fixed_size_list" => ListLayout::FixedSizeList,
            "list" => ListLayout::List,
            other => {
                return Err(fail(format!(
                    "lists='{other}': expected 'fixed_size_list' or 'list'"
                )));
            }
        };
        let mapping = Mapping {
            feeds: feeds(feed)?,
            fetches: fetches(fetch)?,
            keep: keep.unwrap_or_default(),
        };
        let (batches, schema) = Table::from_pyarrow_bound(data)?.into_inner();
        let binding = Binding::new(
            self.model.name(),
            self.signature(),
            &schema,
            &mapping,
            layout,
            self.fill_null,
        )
        .map_err(fail)?;
        let model = self.model.clone();
        let scored = py.detach(|| -> Result<Vec<_>, String> {
            let mut first_row = 0;
            let mut out = Vec::with_capacity(batches.len());
            for batch in &batches {
                out.push(binding.score(&model, batch).map_err(|e| match e {
                    ScoreError::Column(mut c) => {
                        c.row = c.row.map(|r| r + first_row);
                        c.to_string()
                    }
                    other => format!(
                        "model '{}' version {}: {}",
                        model.name(),
                        model.version(),
                        chain(&other)
                    ),
                })?);
                first_row += batch.num_rows();
            }
            Ok(out)
        });
        let table =
            Table::try_new(scored.map_err(fail)?, binding.output_schema().clone()).map_err(fail)?;
        table.into_pyarrow(py)
    }
}

impl PyModel {
    fn signature(&self) -> &Signature {
        self.model.signature()
    }
}

/// `{input: column}` or `{input: [columns]}`.
fn feeds(feed: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Vec<String>)>> {
    let Some(feed) = feed else {
        return Ok(Vec::new());
    };
    feed.iter()
        .map(|(input, columns)| {
            let input: String = input.extract()?;
            let columns = match columns.extract::<String>() {
                Ok(one) => vec![one],
                Err(_) => columns.extract::<Vec<String>>().map_err(|_| {
                    fail(format!(
                        "feed['{input}'] must be a column name or a list of column names"
                    ))
                })?,
            };
            Ok((input, columns))
        })
        .collect()
}

/// `[output, ...]` or `{output: column}`.
fn fetches(fetch: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, Option<String>)>> {
    let Some(fetch) = fetch else {
        return Ok(Vec::new());
    };
    if let Ok(dict) = fetch.cast::<PyDict>() {
        return dict
            .iter()
            .map(|(output, column)| Ok((output.extract()?, Some(column.extract()?))))
            .collect();
    }
    let outputs: Vec<String> = fetch
        .extract()
        .map_err(|_| fail("fetch must be a list of output names or a dict of output: column"))?;
    Ok(outputs.into_iter().map(|o| (o, None)).collect())
}

/// Any array-like to a tensor, by its numpy dtype.
fn to_tensor(py: Python<'_>, value: &Bound<'_, PyAny>) -> Result<Tensor, String> {
    // C order, copied by numpy only when the array is not already in it: a DataFrame's
    // `to_numpy()` is in Fortran order, and walking that element by element below took 160 ms
    // for 100,000 rows of 64 columns, ten times the model.
    let array = py
        .import("numpy")
        .and_then(|np| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("order", "C")?;
            np.call_method("asarray", (value,), Some(&kwargs))
        })
        .map_err(|e| format!("not an array: {e}"))?;
    macro_rules! typed {
        ($($t:ty),*) => {$(
            if let Ok(a) = array.cast::<PyArrayDyn<$t>>() {
                let view = a.readonly();
                let view = view.as_array();
                let shape = view.shape().to_vec();
                // Copied in one go; walking a dynamic-rank view element by element cost 0.9 ms
                // for a 4,096 x 64 batch, more than running the MLP.
                let made = match view.as_slice() {
                    Some(values) if <$t as Element>::DTYPE != DType::Bool
                        && std::mem::size_of_val(values) >= BORROW_BYTES =>
                    {
                        match borrowed(py, &array, <$t as Element>::DTYPE, shape.clone(), values.len()) {
                            Some(tensor) => return Ok(tensor),
                            None => Tensor::from_values(shape, values),
                        }
                    }
                    Some(values) => Tensor::from_values(shape, values),
                    None => Tensor::from_values(shape, &view.iter().copied().collect::<Vec<$t>>()),
                };
                return made.map_err(|e| e.to_string());
            }
        )*};
    }
    typed!(f32, f64, i64, i32, i16, i8, u64, u32, u16, u8, bool);
    let kind: String = array
        .getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract())
        .unwrap_or_default();
    if kind == "U" || kind == "O" || kind == "S" {
        let shape: Vec<usize> = array
            .getattr("shape")
            .and_then(|s| s.extract())
            .map_err(|e| e.to_string())?;
        let strings: Vec<String> = array
            .call_method0("ravel")
            .and_then(|a| a.call_method0("tolist"))
            .and_then(|l| l.extract())
            .map_err(|_| "an object array must hold only str".to_string())?;
        return Tensor::from_strings(shape, strings).map_err(|e| e.to_string());
    }
    let dtype = array
        .getattr("dtype")
        .map(|d| d.to_string())
        .unwrap_or_default();
    Err(format!("numpy dtype {dtype} has no predictd equivalent"))
}

/// Arrays of at least this many bytes reach the engine without a copy: pyarrow wraps numpy's
/// memory (`py_buffer`) and Arrow's C data interface hands it over, released when the engine is
/// done with it. Measured on MLP `predict` calls, against copying: 5 µs slower at 64 KB, 7 µs
/// faster at 256 KB, 34 µs (6%) faster at 1 MB.
const BORROW_BYTES: usize = 256 << 10;

/// A C-ordered numeric array's memory, shared rather than copied; None when pyarrow cannot wrap
/// it (the caller then copies it).
fn borrowed(
    py: Python<'_>,
    array: &Bound<'_, PyAny>,
    dtype: DType,
    shape: Vec<usize>,
    count: usize,
) -> Option<Tensor> {
    let size = dtype.size()?;
    let pa = py.import("pyarrow").ok()?;
    let arrow_type = pa
        .call_method1("from_numpy_dtype", (array.getattr("dtype").ok()?,))
        .ok()?;
    let buffer = pa.call_method1("py_buffer", (array,)).ok()?;
    let wrapped = pa
        .getattr("Array")
        .and_then(|a| a.call_method1("from_buffers", (arrow_type, count, (py.None(), buffer))))
        .ok()?;
    let data = ArrayData::from_pyarrow_bound(&wrapped).ok()?;
    let [values] = data.buffers() else {
        return None;
    };
    let values = values.slice_with_length(data.offset() * size, data.len() * size);
    Tensor::from_bytes(dtype, shape, Bytes::from_owner(values)).ok()
}

fn to_numpy<'py>(py: Python<'py>, tensor: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let shape = tensor.shape().to_vec();
    let bad = |e: numpy::ndarray::ShapeError| fail(e.to_string());
    macro_rules! typed {
        ($t:ty) => {{
            let values = tensor
                .to_values::<$t>()
                .ok_or_else(|| fail("output has no values"))?;
            Ok(ArrayD::from_shape_vec(shape, values)
                .map_err(bad)?
                .into_pyarray(py)
                .into_any())
        }};
    }
    match tensor.dtype() {
        DType::F32 => typed!(f32),
        DType::F64 => typed!(f64),
        DType::I64 => typed!(i64),
        DType::I32 => typed!(i32),
        DType::I16 => typed!(i16),
        DType::I8 => typed!(i8),
        DType::U64 => typed!(u64),
        DType::U32 => typed!(u32),
        DType::U16 => typed!(u16),
        DType::U8 => typed!(u8),
        DType::Bool => typed!(bool),
        DType::F16 => Err(fail("FP16 outputs are not supported in Python yet")),
        DType::String => {
            let strings = tensor.strings().unwrap_or_default().to_vec();
            let np = py.import("numpy")?;
            let flat = np.call_method1("array", (strings, "object"))?;
            flat.call_method1("reshape", (shape,))
        }
    }
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add("PredictError", m.py().get_type::<PredictError>())?;
    Ok(())
}
