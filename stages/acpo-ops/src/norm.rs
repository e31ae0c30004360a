//! Group normalisation (optionally followed by SiLU) as one op with a hand-written backward
//! pass, for the CPU.
//!
//! Why hand-written: written with candle's generic ops (mean, broadcast subtract and divide,
//! per-channel affine), GroupNorm's backward pass is a chain of broadcast reductions, and candle
//! 0.11 reduces over non-trailing axes element by element; in a UNet training step those
//! reductions took about a fifth of the time (`perf`, README "Speed"). Here the forward and
//! backward passes are each one sweep per image, in parallel over the batch, with statistics
//! accumulated in f64. Other devices use the generic-op version. Finite-difference checked in
//! `tests/gradcheck.rs`.

use crate::cpu_op::{self, host_vec, run_len, sum_runs, Elem, TypedOp3};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// `GroupNorm(x) * weight + bias` over `x: [B, C, H, W]` with `groups` groups, then SiLU when
/// `silu` is set. `weight`, `bias`: `[C]`.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group norm: {c} channels do not split into {groups} groups");
    }
    let supported = matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == weight.dtype()
        && x.dtype() == bias.dtype();
    if !supported || std::env::var_os("ACPO_NATIVE_NORM").is_some() {
        let y = group_norm_generic(x, weight, bias, groups, eps)?;
        return if silu { y.silu() } else { Ok(y) };
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!("group norm: weight and bias must have shape [{c}]");
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        GroupNormOp { groups, eps, silu },
    )
}

/// The same function from candle's generic ops (autodiff of elementary ops).
pub fn group_norm_generic(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let xg = x.reshape((b, groups, (c / groups) * h * w))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.reshape((b, c, h, w))?
        .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)
}

#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// Mean and 1/std of one group's values.
fn stats<T: WithDType>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = xs
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl GroupNormOp {
    /// One image: `x`, `y` are `[C, HW]`.
    fn forward_image<T: Elem>(&self, x: &[T], gamma: &[T], beta: &[T], y: &mut [T]) {
        let c = gamma.len();
        let hw = x.len() / c;
        let cg = c / self.groups;
        for g in 0..self.groups {
            let range = g * cg * hw..(g + 1) * cg * hw;
            let (mean, rstd) = stats(&x[range.clone()], self.eps);
            for ch in g * cg..(g + 1) * cg {
                // y = x * scale + shift, with the statistics folded into the affine transform.
                let scale = rstd * gamma[ch].to_f64();
                let shift = beta[ch].to_f64() - mean * scale;
                let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
                let xs = &x[ch * hw..][..hw];
                let ys = &mut y[ch * hw..][..hw];
                if self.silu {
                    for (o, &v) in ys.iter_mut().zip(xs) {
                        let a = v * scale + shift;
                        *o = a / (T::one() + (-a).exp());
                    }
                } else {
                    for (o, &v) in ys.iter_mut().zip(xs) {
                        *o = v * scale + shift;
                    }
                }
            }
        }
    }

    fn forward<T: Elem>(&self, x: &[T], gamma: &[T], beta: &[T], b: usize) -> Vec<T> {
        let per = x.len() / b;
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(yb, xb)| self.forward_image(xb, gamma, beta, yb));
        y
    }

    /// One image: writes `dx` and adds into the per-channel `dgamma`, `dbeta` accumulators.
    #[allow(clippy::too_many_arguments)]
    fn backward_image<T: Elem>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        gout: &[T],
        gx: &mut [T],
        dgamma: &mut [f64],
        dbeta: &mut [f64],
    ) {
        let c = gamma.len();
        let hw = x.len() / c;
        let cg = c / self.groups;
        let n = (cg * hw) as f64;
        for g in 0..self.groups {
            let range = g * cg * hw..(g + 1) * cg * hw;
            let (mean, rstd) = stats(&x[range.clone()], self.eps);
            // Pass 1: dL/dxhat into gx, and its two group means.
            let (mut m1, mut m2) = (0f64, 0f64);
            let (tm, tr) = (T::from_f64(mean), T::from_f64(rstd));
            for ch in g * cg..(g + 1) * cg {
                let (ga, be) = (gamma[ch], beta[ch]);
                let (mut sg, mut sgx) = (0f64, 0f64);
                let (mut s1, mut s2) = (0f64, 0f64);
                for i in ch * hw..(ch + 1) * hw {
                    let xhat = (x[i] - tm) * tr;
                    let mut gy = gout[i];
                    if self.silu {
                        let a = xhat * ga + be;
                        let s = T::one() / (T::one() + (-a).exp());
                        gy = gy * s * (T::one() + a * (T::one() - s));
                    }
                    let (gy64, xhat64) = (gy.to_f64(), xhat.to_f64());
                    sg += gy64;
                    sgx += gy64 * xhat64;
                    let gxhat = gy * ga;
                    s1 += gxhat.to_f64();
                    s2 += gxhat.to_f64() * xhat64;
                    gx[i] = gxhat;
                }
                m1 += s1;
                m2 += s2;
                dbeta[ch] += sg;
                dgamma[ch] += sgx;
            }
            let (m1, m2) = (T::from_f64(m1 / n), T::from_f64(m2 / n));
            // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
            for i in range {
                let xhat = (x[i] - tm) * tr;
                gx[i] = tr * (gx[i] - m1 - xhat * m2);
            }
        }
    }

    fn backward<T: Elem>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        gout: &[T],
        b: usize,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let c = gamma.len();
        let per = x.len() / b;
        let mut gx = vec![T::zero(); x.len()];
        // Fixed runs of images summed in a fixed order: bit-reproducible (see cpu_op.rs).
        let run = run_len(b);
        let partial: Vec<(Vec<f64>, Vec<f64>)> = gx
            .par_chunks_mut(run * per)
            .zip(x.par_chunks(run * per))
            .zip(gout.par_chunks(run * per))
            .map(|((gxr, xr), gor)| {
                let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
                let images = gxr.chunks_mut(per).zip(xr.chunks(per)).zip(gor.chunks(per));
                for ((gxb, xb), gob) in images {
                    self.backward_image(xb, gamma, beta, gob, gxb, &mut dg, &mut db);
                }
                (dg, db)
            })
            .collect();
        let (dg, db) = sum_runs(partial);
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        (gx, cast(dg), cast(db))
    }
}

impl TypedOp3 for GroupNormOp {
    const NAME: &'static str = "group norm";

    fn forward<T: Elem>(&self, x: &[T], g: &[T], be: &[T], layouts: [&Layout; 3]) -> Vec<T> {
        self.forward(x, g, be, layouts[0].dims()[0])
    }

    fn backward<T: Elem>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        gout: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (gx, dg, db) = self.backward(
            &host_vec::<T>(x)?,
            &host_vec::<T>(gamma)?,
            &host_vec::<T>(beta)?,
            &host_vec::<T>(gout)?,
            x.dim(0)?,
        );
        let dev = x.device();
        Ok((
            Tensor::from_vec(gx, x.dims(), dev)?,
            Tensor::from_vec(dg, gamma.dims(), dev)?,
            Tensor::from_vec(db, beta.dims(), dev)?,
        ))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "acpo-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = cpu_op::forward(self, (s1, l1), (s2, l2), (s3, l3))?;
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        gout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        cpu_op::backward(self, x, gamma, beta, gout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-1, 1] (no RNG needed for a comparison).
    fn wave(shape: &[usize], phase: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7371 + phase).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_matches_generic_ops_with_and_without_silu() {
        let x = ((wave(&[3, 8, 5, 4], 0.0) * 2.0).unwrap() + 0.5).unwrap();
        let g = wave(&[8], 1.0);
        let b = wave(&[8], 2.0);
        for silu in [false, true] {
            let a = group_norm(&x, &g, &b, 4, 1e-5, silu).unwrap();
            let mut e = group_norm_generic(&x, &g, &b, 4, 1e-5).unwrap();
            if silu {
                e = e.silu().unwrap();
            }
            let d = (a - e).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "silu {silu}");
        }
    }

    #[test]
    fn groups_must_divide_channels() {
        let x = Tensor::zeros((1, 6, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
        let err = group_norm(&x, &g, &g, 4, 1e-5, false).unwrap_err();
        assert!(err.to_string().contains("6 channels"), "{err}");
    }
}
