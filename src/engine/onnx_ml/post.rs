//! Score post-transforms, computed the way onnxruntime computes them (in f32, with its
//! approximation of erfinv for PROBIT), so that outputs match it to the last few ulps.

use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl Post {
    pub(crate) fn parse(name: Option<&str>) -> TractResult<Post> {
        Ok(match name.unwrap_or("NONE") {
            "NONE" => Post::None,
            "LOGISTIC" => Post::Logistic,
            "SOFTMAX" => Post::Softmax,
            "SOFTMAX_ZERO" => Post::SoftmaxZero,
            "PROBIT" => Post::Probit,
            other => bail!("unknown post_transform {other}"),
        })
    }

    /// Applies the transform to one row of two or more scores.
    pub(crate) fn apply(self, scores: &mut [f32]) {
        match self {
            Post::None => {}
            Post::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            Post::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            Post::Softmax => softmax(scores),
            Post::SoftmaxZero => softmax_zero(scores),
        }
    }
}

pub(crate) fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - e } else { e }
}

pub(crate) fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

/// Winitzki's approximation, with onnxruntime's constants.
fn erf_inv(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let ln = ((1.0 - x) * (1.0 + x)).ln();
    let a = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * ln;
    let b = 1.0 / 0.147 * ln;
    sign * (-a + (a * a - b).sqrt()).sqrt()
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(-f32::MAX, f32::max);
    let mut sum = 0.0;
    for s in v.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    v.iter_mut().for_each(|s| *s /= sum);
}

/// Softmax over the non-zero scores; zeros stay (almost) zero.
fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().copied().fold(-f32::MAX, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for s in v.iter_mut() {
        if *s > 0.000_000_1 || *s < -0.000_000_1 {
            *s = (*s - max).exp();
            sum += *s;
        } else {
            *s *= exp_neg_max;
        }
    }
    v.iter_mut().for_each(|s| *s /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_saturates_without_overflow() {
        assert_eq!(logistic(0.0), 0.5);
        assert!((logistic(2.0) + logistic(-2.0) - 1.0).abs() < 1e-7);
        assert_eq!(logistic(-1000.0), 0.0);
        assert_eq!(logistic(1000.0), 1.0);
    }

    #[test]
    fn softmax_zero_leaves_zeros_out_of_the_sum() {
        let mut v = [0.0, 1.0, 1.0];
        softmax_zero(&mut v);
        assert_eq!(v, [0.0, 0.5, 0.5]);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_approximately() {
        // Phi(1.0) = 0.8413; the approximation is good to about 2e-3.
        assert!((probit(0.841_344_7) - 1.0).abs() < 2e-3);
        assert!(probit(0.5).abs() < 1e-6);
    }
}
