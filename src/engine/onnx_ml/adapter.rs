//! The glue between our ONNX-ML kernels and tract. One wrapper type is at once the
//! inference-time `Expansion` (typed from the kernel's own `output_facts`, so each kernel
//! states its shapes once) and the typed, runnable op that the optimised plan holds.

use std::fmt::Debug;
use std::sync::Arc;

use tract_onnx::tract_hir::internal::*;

/// One ONNX-ML operator: its output types from its input types, and its evaluation.
pub(crate) trait Kernel: Debug + Send + Sync + 'static {
    /// The ONNX op type, for tract's graph dumps and error chains.
    fn name(&self) -> &'static str;
    /// How many outputs the node has.
    fn outputs(&self) -> usize {
        1
    }
    /// Output types and shapes from the inputs'; an error here fails the model's load.
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;
    /// Runs the operator on concrete inputs.
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A kernel as a tract op. Compiled kernels (a forest of thousands of nodes) are shared, never
/// copied, when tract clones the graph for each plan.
#[derive(Debug, Clone)]
pub(crate) struct MlOp(Arc<dyn Kernel>);

/// The boxed inference op for tract's ONNX op register.
pub(crate) fn boxed(kernel: impl Kernel) -> Box<dyn InferenceOp> {
    expand(MlOp(Arc::new(kernel)))
}

impl MlOp {
    /// A kernel as a typed op, for rewriting a graph tract has already typed.
    pub(crate) fn from_kernel(kernel: Arc<dyn Kernel>) -> MlOp {
        MlOp(kernel)
    }
}

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MlOp {}

impl Expansion for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, self.0.outputs())?;
        s.given_all(inputs.iter().map(|i| &i.datum_type), move |s, types| {
            s.given_all(inputs.iter().map(|i| &i.shape), move |s, shapes| {
                let facts: TVec<TypedFact> = types
                    .iter()
                    .zip(shapes)
                    .map(|(dt, shape)| TypedFact::dt_shape(*dt, shape))
                    .collect();
                let refs: TVec<&TypedFact> = facts.iter().collect();
                for (proxy, fact) in outputs.iter().zip(self.0.output_facts(&refs)?) {
                    s.equals(&proxy.datum_type, fact.datum_type)?;
                    s.equals(&proxy.shape, fact.shape.to_tvec())?;
                }
                Ok(())
            })
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}

/// The row count and width of a `[N, F]` input (a `[F]` input is one row), as ONNX-ML
/// operators read their feature matrix.
pub(crate) fn rows_and_width(op: &str, fact: &TypedFact) -> TractResult<(TDim, TDim)> {
    match fact.rank() {
        1 => Ok((1.into(), fact.shape[0].clone())),
        2 => Ok((fact.shape[0].clone(), fact.shape[1].clone())),
        rank => bail!("{op} takes a [N, F] feature matrix, got rank {rank}"),
    }
}

/// The row count and width of a concrete `[N, F]` (or `[F]`) input.
pub(crate) fn rows_and_width_of(op: &str, shape: &[usize]) -> TractResult<(usize, usize)> {
    match *shape {
        [f] => Ok((1, f)),
        [n, f] => Ok((n, f)),
        _ => bail!("{op} takes a [N, F] feature matrix, got shape {shape:?}"),
    }
}

/// The row count of a `[N, F]` input that must have exactly `features` columns (checked when
/// the width is known at load).
pub(crate) fn rows_of_width(op: &str, fact: &TypedFact, features: usize) -> TractResult<TDim> {
    let (rows, width) = rows_and_width(op, fact)?;
    if let Ok(width) = width.to_usize() {
        ensure!(
            width == features,
            "{op} expects {features} features, its input has {width}"
        );
    }
    Ok(rows)
}

/// The row count of a concrete `[N, F]` input that must have exactly `features` columns.
pub(crate) fn rows_of_width_of(op: &str, shape: &[usize], features: usize) -> TractResult<usize> {
    let (rows, width) = rows_and_width_of(op, shape)?;
    ensure!(
        width == features,
        "{op} expects {features} features, got {width}"
    );
    Ok(rows)
}

/// An input as a flat slice of `T`, borrowed when it already has that type and converted
/// otherwise (integers and the other float width).
pub(crate) fn values_as<T: Datum + Copy>(value: &TValue) -> TractResult<std::borrow::Cow<'_, [T]>> {
    let tensor: &Tensor = value;
    if tensor.datum_type() == T::datum_type() {
        return Ok(std::borrow::Cow::Borrowed(
            tensor.try_as_plain_ram()?.as_slice::<T>()?,
        ));
    }
    // Shape arithmetic (a Cast to INT64, say) can reach us as tract's TDim.
    let ints;
    let tensor = if tensor.datum_type() == DatumType::TDim {
        ints = tensor.cast_to::<i64>()?;
        &*ints
    } else {
        tensor
    };
    ensure!(
        tensor.datum_type().is_number(),
        "expected numbers, got {:?}",
        tensor.datum_type()
    );
    let cast = tensor.cast_to::<T>()?;
    Ok(std::borrow::Cow::Owned(
        cast.try_as_plain_ram()?.as_slice::<T>()?.to_vec(),
    ))
}

/// A tensor from a shape and a vector of exactly that many values, without copying.
pub(crate) fn tensor_of<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
    let array = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, data)?;
    Ok(Tensor::from(array).into_tvalue())
}
