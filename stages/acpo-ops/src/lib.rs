//! Hand-written candle ops for the CPU, shared by the stage crates that run convolutions: the
//! diffusion UNet (acpo-diffusion: training, sampling, fine-tuning) and the FID Inception
//! network (acpo-fid). Each op falls back to candle's own on other devices and dtypes.
//!
//! - [`conv`]: 2-D convolution with a fused bias, forward and backward (why hand-written: its
//!   module docs; how fast: README "Speed"), and with a fused ReLU for inference.
//! - [`norm`]: group normalisation, optionally fused with SiLU, forward and backward.
//! - [`attention`]: multi-head scaled dot-product attention, forward and backward.
//! - [`resample`]: nearest-neighbour 2x upsampling, forward and backward.
//! - [`pool`]: max and average pooling with padding (inference only).
//! - [`copy`]: concatenation along the channels and zero padding, one task per image
//!   (inference; tracked tensors go to candle's ops).
//! - [`timing`]: opt-in wall-clock counters per op class, for the roofline bench.
//! - `cpu_op`: what they share: the f32/f64 dispatch, host slices, fixed-order reductions, the
//!   CPU feature check and a vectorisable f32 `exp`;
//!   `mat`: strided matrix views and the bounds-checked call into `gemm`; `panel`: the f32
//!   product on panel-packed columns with the AVX2+FMA kernel the convolution uses.

pub mod attention;
pub mod conv;
pub mod copy;
mod cpu_op;
mod mat;
pub mod norm;
mod panel;
pub mod pool;
pub mod resample;
#[cfg(test)]
mod test_util;
pub mod timing;

pub use cpu_op::{on_host, reference_ops};
