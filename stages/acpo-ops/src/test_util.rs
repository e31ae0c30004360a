//! What the ops' unit tests share: deterministic inputs and the largest difference of two
//! results.

use candle_core::{Device, Tensor};

/// `amp * sin(0.7371 i + phase)` for element `i`, as F32 of `shape`: varied values with no RNG.
pub(crate) fn wave(shape: &[usize], phase: f64, amp: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * 0.7371 + phase).sin() * amp) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a - b|` of two F32 tensors of one shape.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
