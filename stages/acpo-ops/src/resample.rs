//! Nearest-neighbour 2x upsampling of `[B, C, H, W]` as one op, with its adjoint (the sum of
//! each 2x2 block) as the backward pass, for the CPU.
//!
//! Why hand-written: candle 0.11's `upsample_nearest2d` returns a wrong gradient when its
//! input also feeds another op (acpo-diffusion's `tests/gradcheck.rs` keeps the regression
//! test), and the generic formulation below (a broadcast of `[B, C, H, 1, W, 1]`) is right but
//! slow: its backward pass is candle's sum over two non-trailing axes, an index computation per
//! element, which cost about 2 % of a training step of the cpu-profile UNet. Here both
//! directions are one sweep over the rows of each image plane. Other devices and dtypes use
//! the generic version; both are finite-difference checked in acpo-diffusion's
//! `tests/gradcheck.rs` and compared with each other in the tests below.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::{contiguous_slice, Elem, ParZeroed};

/// `x: [B, C, H, W]` -> `[B, C, 2H, 2W]`, each pixel repeated in a 2x2 block.
pub fn upsample_nearest2x(x: &Tensor) -> candle_core::Result<Tensor> {
    x.dims4()?;
    let supported =
        matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F64);
    if !supported || std::env::var_os("ACPO_NATIVE_UPSAMPLE").is_some() {
        return upsample_nearest2x_generic(x);
    }
    x.contiguous()?.apply_op1(Upsample2x)
}

/// The same function from candle's generic ops: unsqueeze, broadcast, reshape. The backward
/// pass of a broadcast is a sum over the broadcast axes, which is exactly upsampling's adjoint.
pub fn upsample_nearest2x_generic(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

/// Rows of an image plane handed to one task: enough work to pay for a rayon task.
const ROWS_PER_TASK: usize = 64;

/// Forward: each input row of `w` becomes two output rows of `2w`.
struct Upsample2x;

fn upsample<T: Elem>(x: &[T], w: usize) -> Vec<T> {
    let task = (w * ROWS_PER_TASK).max(1);
    let mut y = ParZeroed::new(4 * x.len(), 4 * task);
    y.par_chunks_mut()
        .zip(x.par_chunks(task))
        .for_each(|(ys, xs)| {
            for (pair, row) in ys.chunks_exact_mut(4 * w).zip(xs.chunks_exact(w)) {
                let (top, bottom) = pair.split_at_mut(2 * w);
                for (out, &v) in top.chunks_exact_mut(2).zip(row) {
                    out[0] = v;
                    out[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    y.into_vec()
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let storage = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(upsample(contiguous_slice(v, l, self.name())?, w))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(upsample(contiguous_slice(v, l, self.name())?, w))
            }
            _ => candle_core::bail!("{}: only f32 and f64", self.name()),
        };
        Ok((storage, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(gy.contiguous()?.apply_op1_no_bwd(&BlockSum2x)?))
    }
}

/// Backward: each output pixel is the sum of its 2x2 block of `gy`, added from zero in the
/// generic version's order (candle's reduction: the top row's pair, then the bottom row's), so
/// the two give the same bits.
struct BlockSum2x;

fn block_sum<T: Elem>(gy: &[T], w: usize) -> Vec<T> {
    let task = (w * ROWS_PER_TASK).max(1);
    let mut gx = ParZeroed::new(gy.len() / 4, task);
    gx.par_chunks_mut()
        .zip(gy.par_chunks(4 * task))
        .for_each(|(xs, ys)| {
            for (row, pair) in xs.chunks_exact_mut(w).zip(ys.chunks_exact(4 * w)) {
                let (top, bottom) = pair.split_at(2 * w);
                for ((out, t), u) in row
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    *out = T::zero() + t[0] + t[1] + u[0] + u[1];
                }
            }
        });
    gx.into_vec()
}

impl CustomOp1 for BlockSum2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = l.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("{}: odd gradient shape {:?}", self.name(), l.dims());
        }
        let w = w2 / 2;
        let storage = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(block_sum(contiguous_slice(v, l, self.name())?, w))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(block_sum(contiguous_slice(v, l, self.name())?, w))
            }
            _ => candle_core::bail!("{}: only f32 and f64", self.name()),
        };
        Ok((storage, Shape::from((b, c, h2 / 2, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        // a fixed LCG, so the test needs no RNG crate
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Forward and backward equal the generic version's exactly, for odd sizes, batch 1, and
    /// planes of more rows than one task takes.
    #[test]
    fn matches_the_generic_version_bit_for_bit() {
        for shape in [[1, 1, 1, 1], [2, 3, 5, 7], [1, 2, 70, 3], [3, 4, 8, 8]] {
            let x = Var::from_tensor(&random(&shape, 1)).unwrap();
            let r = random(&[shape[0], shape[1], 2 * shape[2], 2 * shape[3]], 2);
            let ours = upsample_nearest2x(x.as_tensor()).unwrap();
            let generic = upsample_nearest2x_generic(x.as_tensor()).unwrap();
            assert_eq!(values(&ours), values(&generic), "forward {shape:?}");
            let grad = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                values(g.get(x.as_tensor()).unwrap())
            };
            assert_eq!(grad(ours), grad(generic), "backward {shape:?}");
        }
    }

    #[test]
    fn rejects_a_tensor_that_is_not_four_dimensional() {
        let x = random(&[2, 3, 4], 3);
        assert!(upsample_nearest2x(&x).is_err());
    }
}
