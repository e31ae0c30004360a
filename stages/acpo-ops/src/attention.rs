//! Multi-head scaled dot-product attention as one op with a hand-written backward pass, for
//! the CPU.
//!
//! Why hand-written: from candle's generic ops, attention is a dozen ops (splitting the heads
//! into contiguous copies, two batched matmuls, a scale, and a softmax of max, subtract, exp,
//! sum and divide, since candle 0.11's fused softmax has no gradient), each allocating a
//! score-sized tensor, and autograd walks back through every one of them. Here each image runs
//! as `gemm` calls on strided views of its token matrices (a head is a block of columns, so
//! nothing is split or copied) and a softmax sweep per row. The backward pass recomputes the
//! probabilities from `q` and `k` rather than keeping them:
//!
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dP * P))`, `dQ = s dS K`,
//! `dK = s dS^T Q` with `s = 1/sqrt(d)`.
//!
//! Images are independent (there are no parameters), so the gradients do not depend on the
//! thread count. Other devices use the generic-op version; finite-difference checked in
//! acpo-diffusion's `tests/gradcheck.rs`, compared with the generic version below.

use crate::cpu_op::{on_host, Elem, Op3, TypedOp3};
use crate::mat::{inner_parallelism, matmul, Mat, MatMut};
use crate::timing::OpClass;
use candle_core::{DType, Device, Layout, Shape, Tensor, D};
use gemm::Parallelism;
use rayon::prelude::*;

/// `softmax(q_h k_h^T / sqrt(d)) v_h` for each head `h` (a block of `d = C / heads` columns),
/// concatenated: `q: [B, Lq, C]`, `k, v: [B, Lk, C]` -> `[B, Lq, C]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, _, c) = q.dims3()?;
    let (bk, lk, ck) = k.dims3()?;
    if v.dims3()? != (bk, lk, ck) || bk != b || ck != c {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} must share batch and channels, k and v length",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let supported = matches!(q.device(), Device::Cpu)
        && matches!(q.dtype(), DType::F32 | DType::F64)
        && q.dtype() == k.dtype()
        && q.dtype() == v.dtype();
    if !supported || std::env::var_os("ACPO_NATIVE_ATTENTION").is_some() {
        return attention_generic(q, k, v, heads);
    }
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Op3(Attention { heads }))
}

/// The same function from candle's generic ops (autodiff of elementary ops).
pub fn attention_generic(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (b, lq, c) = q.dims3()?;
    let lk = k.dim(1)?;
    let d = c / heads;
    let split = |x: &Tensor, l: usize| -> candle_core::Result<Tensor> {
        x.reshape((b, l, heads, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * heads, l, d))
    };
    let (qh, kh, vh) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
    let scores = (qh.matmul(&kh.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let p = softmax_last(&scores)?;
    p.matmul(&vh)?
        .reshape((b, heads, lq, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, lq, c))
}

/// Softmax over the last dimension from generic ops (the fused `softmax_last_dim` kernel has no
/// gradient in candle 0.11). The max is subtracted for stability and detached: the softmax is
/// invariant to it, so its gradient contribution is exactly zero.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

#[derive(Debug, Clone, Copy)]
struct Attention {
    heads: usize,
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    lq: usize,
    lk: usize,
    c: usize,
    heads: usize,
}

impl Dims {
    fn new(q: &[usize], k: &[usize], heads: usize) -> Self {
        Self {
            b: q[0],
            lq: q[1],
            lk: k[1],
            c: q[2],
            heads,
        }
    }
    fn d(&self) -> usize {
        self.c / self.heads
    }
    fn scale<T: Elem>(&self) -> T {
        T::from_f64(1.0 / (self.d() as f64).sqrt())
    }
}

/// `p = softmax(scale * q_h k_h^T)` for one image and head: `p` is `[Lq, Lk]`; `q`, `k` start
/// at the head's first column of the image's `[L, C]` token matrices.
fn probabilities<T: Elem>(q: &[T], k: &[T], g: &Dims, p: &mut [T], par: Parallelism) {
    let (lq, lk) = (g.lq, g.lk);
    matmul(
        MatMut::rows(p, lk),
        false,
        lq,
        lk,
        g.d(),
        Mat::block(q, g.c),
        Mat::block(k, g.c).t(),
        par,
    );
    let scale = g.scale::<T>();
    for row in p.chunks_mut(lk) {
        let max = row.iter().fold(T::neg_infinity(), |m, &s| {
            num_traits::Float::max(m, s * scale)
        });
        let mut sum = T::zero();
        for s in row.iter_mut() {
            *s = (*s * scale - max).exp();
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
}

fn forward<T: Elem>(q: &[T], k: &[T], v: &[T], g: &Dims) -> Vec<T> {
    let (lq, lk, c, d) = (g.lq, g.lk, g.c, g.d());
    let par = inner_parallelism(g.b);
    let mut out = vec![T::zero(); g.b * lq * c];
    out.par_chunks_mut(lq * c)
        .zip(q.par_chunks(lq * c))
        .zip(k.par_chunks(lk * c).zip(v.par_chunks(lk * c)))
        .for_each_init(
            || vec![T::zero(); lq * lk],
            |p, ((ob, qb), (kb, vb))| {
                for h in 0..g.heads {
                    let col = h * d;
                    probabilities(&qb[col..], &kb[col..], g, p, par);
                    matmul(
                        MatMut::block(&mut ob[col..], c),
                        false,
                        lq,
                        d,
                        lk,
                        Mat::rows(p, lk),
                        Mat::block(&vb[col..], c),
                        par,
                    );
                }
            },
        );
    out
}

/// The gradients of `q`, `k`, `v` from the output's gradient `go` (all contiguous).
fn backward<T: Elem>(q: &[T], k: &[T], v: &[T], go: &[T], g: &Dims) -> [Vec<T>; 3] {
    let (lq, lk, c, d) = (g.lq, g.lk, g.c, g.d());
    let par = inner_parallelism(g.b);
    let scale = g.scale::<T>();
    let mut gq = vec![T::zero(); q.len()];
    let mut gk = vec![T::zero(); k.len()];
    let mut gv = vec![T::zero(); v.len()];
    let grads = gq
        .par_chunks_mut(lq * c)
        .zip(gk.par_chunks_mut(lk * c).zip(gv.par_chunks_mut(lk * c)));
    let inputs = q
        .par_chunks(lq * c)
        .zip(k.par_chunks(lk * c).zip(v.par_chunks(lk * c)))
        .zip(go.par_chunks(lq * c));
    grads.zip(inputs).for_each_init(
        || (vec![T::zero(); lq * lk], vec![T::zero(); lq * lk]),
        |(p, ds), ((gqb, (gkb, gvb)), ((qb, (kb, vb)), gob))| {
            for h in 0..g.heads {
                let col = h * d;
                probabilities(&qb[col..], &kb[col..], g, p, par);
                // dV = P^T dO
                matmul(
                    MatMut::block(&mut gvb[col..], c),
                    false,
                    lk,
                    d,
                    lq,
                    Mat::rows(p, lk).t(),
                    Mat::block(&gob[col..], c),
                    par,
                );
                // dP = dO V^T, then dS = s * P * (dP - rowsum(dP * P)) in place.
                matmul(
                    MatMut::rows(ds, lk),
                    false,
                    lq,
                    lk,
                    d,
                    Mat::block(&gob[col..], c),
                    Mat::block(&vb[col..], c).t(),
                    par,
                );
                for (dsr, pr) in ds.chunks_mut(lk).zip(p.chunks(lk)) {
                    let dot = dsr.iter().zip(pr).fold(T::zero(), |a, (&x, &y)| a + x * y);
                    for (x, &y) in dsr.iter_mut().zip(pr) {
                        *x = scale * y * (*x - dot);
                    }
                }
                // dQ = dS K, dK = dS^T Q
                matmul(
                    MatMut::block(&mut gqb[col..], c),
                    false,
                    lq,
                    d,
                    lk,
                    Mat::rows(ds, lk),
                    Mat::block(&kb[col..], c),
                    par,
                );
                matmul(
                    MatMut::block(&mut gkb[col..], c),
                    false,
                    lk,
                    d,
                    lq,
                    Mat::rows(ds, lk).t(),
                    Mat::block(&qb[col..], c),
                    par,
                );
            }
        },
    );
    [gq, gk, gv]
}

impl TypedOp3 for Attention {
    const NAME: &'static str = "acpo-attention";
    const TIMING: [OpClass; 2] = [OpClass::AttentionForward, OpClass::AttentionBackward];

    fn out_shape(&self, layouts: [&Layout; 3]) -> Shape {
        layouts[0].shape().clone()
    }

    fn forward<T: Elem>(&self, q: &[T], k: &[T], v: &[T], layouts: [&Layout; 3]) -> Vec<T> {
        let g = Dims::new(layouts[0].dims(), layouts[1].dims(), self.heads);
        forward(q, k, v, &g)
    }

    fn backward<T: Elem>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let g = Dims::new(q.dims(), k.dims(), self.heads);
        let [gq, gk, gv] = on_host([q, k, v, go], |[q, k, v, go]| {
            backward::<T>(q, k, v, go, &g)
        })?;
        let dev = q.device();
        Ok((
            Tensor::from_vec(gq, q.dims(), dev)?,
            Tensor::from_vec(gk, k.dims(), dev)?,
            Tensor::from_vec(gv, v.dims(), dev)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, wave};
    use candle_core::Var;

    /// Output and every input gradient of the fused op against the generic ops, in f32, for
    /// self- and cross-attention, one and several heads, batch 1 and odd lengths.
    #[test]
    fn fused_matches_generic_ops_forward_and_backward() {
        for (b, lq, lk, c, heads) in [(2, 16, 16, 8, 1), (1, 7, 5, 6, 3), (3, 9, 9, 12, 2)] {
            let q = Var::from_tensor(&wave(&[b, lq, c], 0.0, 1.5)).unwrap();
            let k = Var::from_tensor(&wave(&[b, lk, c], 1.0, 1.5)).unwrap();
            let v = Var::from_tensor(&wave(&[b, lk, c], 2.0, 1.5)).unwrap();
            let r = wave(&[b, lq, c], 3.0, 1.5);
            let run = |f: fn(&Tensor, &Tensor, &Tensor, usize) -> candle_core::Result<Tensor>| {
                let o = f(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads).unwrap();
                let grads = (&o * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
                (o, [g(&q), g(&k), g(&v)])
            };
            let (o1, g1) = run(attention);
            let (o2, g2) = run(attention_generic);
            let case = format!("b {b} lq {lq} lk {lk} c {c} heads {heads}");
            assert!(max_diff(&o1, &o2) < 1e-5, "{case}: output");
            for (i, (a, e)) in g1.iter().zip(&g2).enumerate() {
                assert!(max_diff(a, e) < 1e-5, "{case}: gradient of input {i}");
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_rejected() {
        let q = wave(&[1, 4, 6], 0.0, 1.5);
        let k = wave(&[1, 5, 6], 0.0, 1.5);
        let v = wave(&[1, 4, 6], 0.0, 1.5);
        let err = attention(&q, &k, &v, 2).unwrap_err();
        assert!(err.to_string().contains("must share"), "{err}");
        let err = attention(&q, &q, &q, 4).unwrap_err();
        assert!(err.to_string().contains("6 channels"), "{err}");
    }
}
