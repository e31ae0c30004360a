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

use crate::cpu_op::{
    avx2_fma, in_reference_ops, lane_sum, on_host, run_len, sum_runs, Elem, Op3, ParZeroed,
    TypedOp3,
};
use crate::timing::OpClass;
use candle_core::{DType, Device, Layout, Shape, Tensor, WithDType, D};
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
        Op3(GroupNormOp { groups, eps, silu }),
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
#[inline(always)]
fn stats<T: WithDType>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = lane_sum(xs, xs, |x, _| x.to_f64()) / n;
    let var = lane_sum(xs, xs, |x, _| {
        let d = x.to_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Runs `$body` (an expression over the op's slices) compiled twice: for AVX2+FMA where the CPU
/// has them, else for the baseline target. The two copies compute the same operations in the
/// same order (Rust does not contract `a * b + c` into an FMA), so their results are
/// bit-identical; the AVX2 copy's loops vectorise 8 wide.
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Elem>(&self, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Elem>(op: &GroupNormOp, $($arg: $ty),*) {
                    op.$body($($arg),*)
                }
                // SAFETY: the CPU reports the features this copy is compiled for.
                return unsafe { avx2(self, $($arg),*) };
            }
            self.$body($($arg),*)
        }
    };
}

/// `ys = silu(xs * scale + shift)`, `silu(a) = a / (1 + exp(-a))`, with the given `exp`.
#[inline(always)]
fn affine_silu<T: Elem>(xs: &[T], ys: &mut [T], scale: T, shift: T, exp: impl Fn(T) -> T) {
    for (o, &v) in ys.iter_mut().zip(xs) {
        let a = v * scale + shift;
        *o = a / (T::one() + exp(-a));
    }
}

/// `gys = gos * silu'(a)` with `a = (xs - mean) * rstd * gamma + beta` (the pre-activation) and
/// `silu'(a) = s (1 + a (1 - s))`, `s = 1 / (1 + exp(-a))`, with the given `exp`.
#[inline(always)]
fn silu_gradient<T: Elem>(
    xs: &[T],
    gos: &[T],
    gys: &mut [T],
    (mean, rstd, gamma, beta): (T, T, T, T),
    exp: impl Fn(T) -> T,
) {
    for ((o, &xv), &go) in gys.iter_mut().zip(xs).zip(gos) {
        let a = (xv - mean) * rstd * gamma + beta;
        let s = T::one() / (T::one() + exp(-a));
        *o = go * s * (T::one() + a * (T::one() - s));
    }
}

impl GroupNormOp {
    multiversion!(
        forward_image,
        forward_image_body,
        (x: &[T], gamma: &[T], beta: &[T], y: &mut [T], exact: bool)
    );
    multiversion!(
        backward_image,
        backward_image_body,
        (
            x: &[T],
            gamma: &[T],
            beta: &[T],
            gout: &[T],
            gx: &mut [T],
            dgamma: &mut [f64],
            dbeta: &mut [f64],
            exact: bool
        )
    );

    /// One image: `x`, `y` are `[C, HW]`.
    #[inline(always)]
    fn forward_image_body<T: Elem>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        y: &mut [T],
        exact: bool,
    ) {
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
                if self.silu && exact {
                    affine_silu(xs, ys, scale, shift, T::exp);
                } else if self.silu {
                    affine_silu(xs, ys, scale, shift, T::exp_fast);
                } else {
                    for (o, &v) in ys.iter_mut().zip(xs) {
                        *o = v * scale + shift;
                    }
                }
            }
        }
    }

    fn forward<T: Elem>(&self, x: &[T], gamma: &[T], beta: &[T], b: usize) -> Vec<T> {
        let exact = in_reference_ops();
        let per = x.len() / b;
        let mut y = ParZeroed::new(x.len(), per);
        y.par_chunks_mut()
            .zip(x.par_chunks(per))
            .for_each(|(yb, xb)| self.forward_image(xb, gamma, beta, yb, exact));
        y.into_vec()
    }

    /// One image: writes `dx` and adds into the per-channel `dgamma`, `dbeta` accumulators.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backward_image_body<T: Elem>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        gout: &[T],
        gx: &mut [T],
        dgamma: &mut [f64],
        dbeta: &mut [f64],
        exact: bool,
    ) {
        let c = gamma.len();
        let hw = x.len() / c;
        let cg = c / self.groups;
        let n = (cg * hw) as f64;
        for g in 0..self.groups {
            let range = g * cg * hw..(g + 1) * cg * hw;
            let (mean, rstd) = stats(&x[range.clone()], self.eps);
            // Pass 1: dL/dy (through the SiLU when fused) into gx, then per channel its sum
            // and its sum against xhat: the affine gradients, and (times gamma) the two group
            // sums of dL/dxhat = dL/dy * gamma, which replaces dL/dy in gx.
            let (mut m1, mut m2) = (0f64, 0f64);
            let (tm, tr) = (T::from_f64(mean), T::from_f64(rstd));
            for ch in g * cg..(g + 1) * cg {
                let (ga, be) = (gamma[ch], beta[ch]);
                let xs = &x[ch * hw..][..hw];
                let gys = &mut gx[ch * hw..][..hw];
                let gos = &gout[ch * hw..][..hw];
                let affine = (tm, tr, ga, be);
                if self.silu && exact {
                    silu_gradient(xs, gos, gys, affine, T::exp);
                } else if self.silu {
                    silu_gradient(xs, gos, gys, affine, T::exp_fast);
                } else {
                    gys.copy_from_slice(gos);
                }
                let sg = lane_sum(gys, gys, |g, _| g.to_f64());
                let sgx = lane_sum(gys, xs, |g, x| g.to_f64() * ((x - tm) * tr).to_f64());
                let ga64 = ga.to_f64();
                m1 += ga64 * sg;
                m2 += ga64 * sgx;
                dbeta[ch] += sg;
                dgamma[ch] += sgx;
                for o in gys.iter_mut() {
                    *o *= ga;
                }
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
        // Fixed runs of images summed in a fixed order: bit-reproducible (see cpu_op.rs).
        let run = run_len(b);
        let mut gx = ParZeroed::new(x.len(), run * per);
        let exact = in_reference_ops();
        let partial: Vec<(Vec<f64>, Vec<f64>)> = gx
            .par_chunks_mut()
            .zip(x.par_chunks(run * per))
            .zip(gout.par_chunks(run * per))
            .map(|((gxr, xr), gor)| {
                let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
                let images = gxr.chunks_mut(per).zip(xr.chunks(per)).zip(gor.chunks(per));
                for ((gxb, xb), gob) in images {
                    self.backward_image(xb, gamma, beta, gob, gxb, &mut dg, &mut db, exact);
                }
                (dg, db)
            })
            .collect();
        let (dg, db) = sum_runs(partial);
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        (gx.into_vec(), cast(dg), cast(db))
    }
}

impl TypedOp3 for GroupNormOp {
    const NAME: &'static str = "acpo-group-norm";
    const TIMING: [OpClass; 2] = [OpClass::NormForward, OpClass::NormBackward];

    fn out_shape(&self, layouts: [&Layout; 3]) -> Shape {
        layouts[0].shape().clone()
    }

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
        let batch = x.dim(0)?;
        let (gx, dg, db) = on_host([x, gamma, beta, gout], |[x, gamma, beta, gout]| {
            self.backward::<T>(x, gamma, beta, gout, batch)
        })?;
        let dev = x.device();
        Ok((
            Tensor::from_vec(gx, x.dims(), dev)?,
            Tensor::from_vec(dg, gamma.dims(), dev)?,
            Tensor::from_vec(db, beta.dims(), dev)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, wave};

    /// Output and the three gradients of the fused op against the generic ops in f32, with and
    /// without SiLU, for a batch of images, one image, odd sizes and one group. The fused
    /// sums run in another order (8 chains, f64), so they agree to a tolerance: 1e-5 on the
    /// output, 1e-4 on the gradients (sums over up to 160 values of order 1).
    #[test]
    fn fused_matches_generic_ops_forward_and_backward() {
        use candle_core::Var;
        for (shape, groups) in [([3, 8, 5, 4], 4), ([1, 6, 3, 7], 3), ([2, 4, 1, 9], 1)] {
            let c = shape[1];
            let x = Var::from_tensor(&((wave(&shape, 0.0, 1.0) * 2.0).unwrap() + 0.5).unwrap())
                .unwrap();
            let g = Var::from_tensor(&wave(&[c], 1.0, 1.0)).unwrap();
            let b = Var::from_tensor(&wave(&[c], 2.0, 1.0)).unwrap();
            let r = wave(&shape, 3.0, 1.0);
            for silu in [false, true] {
                let run = |fused: bool| {
                    let (xt, gt, bt) = (x.as_tensor(), g.as_tensor(), b.as_tensor());
                    let y = if fused {
                        group_norm(xt, gt, bt, groups, 1e-5, silu).unwrap()
                    } else {
                        let y = group_norm_generic(xt, gt, bt, groups, 1e-5).unwrap();
                        if silu {
                            y.silu().unwrap()
                        } else {
                            y
                        }
                    };
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                    (y, [grad(&x), grad(&g), grad(&b)])
                };
                let ((y1, g1), (y2, g2)) = (run(true), run(false));
                let case = format!("shape {shape:?} groups {groups} silu {silu}");
                assert!(max_diff(&y1, &y2) < 1e-5, "{case}: output");
                for (i, (a, e)) in g1.iter().zip(&g2).enumerate() {
                    assert!(max_diff(a, e) < 1e-4, "{case}: gradient of input {i}");
                }
            }
        }
    }

    #[test]
    fn the_avx2_copy_computes_the_baseline_bits() {
        // The dispatched sweeps (the AVX2+FMA copy where the CPU has it) against the bodies
        // called directly (the baseline copy), with either exp, forward and backward: equal
        // bits. An odd pixel count leaves the vector loops a tail.
        let op = GroupNormOp {
            groups: 2,
            eps: 1e-5,
            silu: true,
        };
        let (c, hw) = (4, 37);
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin() * 2.0).collect();
        let (x, go): (Vec<f32>, Vec<f32>) = (wave(c * hw, 0.37), wave(c * hw, 0.29));
        let (gamma, beta): (Vec<f32>, Vec<f32>) = (wave(c, 0.7), wave(c, 1.3));
        for exact in [false, true] {
            let (mut y1, mut y2) = (vec![0f32; c * hw], vec![0f32; c * hw]);
            op.forward_image(&x, &gamma, &beta, &mut y1, exact);
            op.forward_image_body(&x, &gamma, &beta, &mut y2, exact);
            assert_eq!(y1, y2, "forward, exact {exact}");
            let mut one = (vec![0f32; c * hw], vec![0f64; c], vec![0f64; c]);
            let mut two = one.clone();
            let (gx, dg, db) = (&mut one.0, &mut one.1, &mut one.2);
            op.backward_image(&x, &gamma, &beta, &go, gx, dg, db, exact);
            let (gx, dg, db) = (&mut two.0, &mut two.1, &mut two.2);
            op.backward_image_body(&x, &gamma, &beta, &go, gx, dg, db, exact);
            assert_eq!(one, two, "backward, exact {exact}");
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
