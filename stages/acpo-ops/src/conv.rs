//! 2-D convolution with a fused bias, forward and backward, for the CPU.
//!
//! Why hand-written: candle 0.11's conv2d backward computes the input gradient with
//! `conv_transpose2d` (a dot-product loop, about 24 GFLOP/s here) and the weight gradient with a
//! convolution whose kernel is the whole image, and the two dominated a UNet training step on the
//! CPU (`STACK.md`: about 4 of 5 s). A first replacement built on candle tensor ops (one im2col of
//! the whole batch, batched matmuls) was still dominated by its overheads: allocating and
//! page-faulting batch-sized column buffers, and candle's slow reduction over the batch and
//! spatial axes for the weight and bias gradients (`perf`, README "Speed").
//!
//! This op works image by image, in parallel over the batch (rayon), and within an image in
//! tiles of output rows small enough for the core's L2 cache ([`TILE_ELEMS`]): the tile's
//! im2col columns into a per-thread buffer, one `gemm` call (the crate candle's own matmul
//! uses) into the tile's output columns, the bias written first and accumulated into. The
//! backward pass accumulates the weight and bias gradients per thread (`dW += dY_tile
//! cols_tile^T`); the input gradient of a stride-1 kernel is the forward convolution of `dY`
//! with the flipped, channel-transposed kernel, and otherwise `W^T dY_tile` scattered back to
//! the image (col2im). Other devices use candle's conv2d plus a broadcast add. Finite-difference checked
//! in `tests/gradcheck.rs`.

use crate::cpu_op::{host_vec, run_len, sum_runs, Elem, Op3, TypedOp3};
use crate::mat::{inner_parallelism, matmul, Mat, MatMut};
use crate::timing::OpClass;
use candle_core::{DType, Device, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x: [B, C, H, W]` convolved with `w: [Cout, C, kh, kw]` (no bias), zero padding, stride.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let zeros = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
    conv2d_bias(x, w, &zeros, padding, stride)
}

/// `conv2d(x, w) + b` with `b: [Cout]` broadcast over the batch and the image.
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let supported = matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
        && x.dtype() == b.dtype();
    if !supported || std::env::var_os("ACPO_NATIVE_CONV").is_some() {
        return x
            .conv2d(w, padding, stride, 1, 1)?
            .broadcast_add(&b.reshape((1, (), 1, 1))?);
    }
    let (_, c, h, wd) = x.dims4()?;
    let (cout, cin, kh, kw) = w.dims4()?;
    if c != cin {
        candle_core::bail!("conv2d: input has {c} channels, kernel expects {cin}");
    }
    if b.dims() != [cout] {
        candle_core::bail!("conv2d: bias has shape {:?}, expected [{cout}]", b.dims());
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw || stride == 0 {
        candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        Op3(GemmConv { padding, stride }),
    )
}

#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    pad: usize,
    stride: usize,
}

impl Geom {
    fn new(xd: &[usize], wd: &[usize], pad: usize, stride: usize) -> Self {
        let (b, c, h, w) = (xd[0], xd[1], xd[2], xd[3]);
        let (cout, kh, kw) = (wd[0], wd[2], wd[3]);
        Self {
            b,
            c,
            h,
            w,
            cout,
            kh,
            kw,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (w + 2 * pad - kw) / stride + 1,
            pad,
            stride,
        }
    }
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per channel.
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.l()
    }
    /// A 1x1, stride-1, unpadded kernel: the image itself is the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }
    /// Input column of output column `ox` at kernel offset `kx`, if inside the image (the
    /// definition [`valid_ox`] is tested against).
    #[cfg(test)]
    fn ix(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride + kx)
            .checked_sub(self.pad)
            .filter(|&i| i < self.w)
    }
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&i| i < self.h)
    }
}

/// The output columns `ox` whose input column `ox * stride + kx - pad` lies inside the image,
/// as a half-open range.
fn valid_ox(g: &Geom, kx: usize) -> (usize, usize) {
    // ox * stride + kx >= pad  <=>  ox >= ceil((pad - kx) / stride)
    let lo = g.pad.saturating_sub(kx).div_ceil(g.stride);
    // ox * stride + kx - pad <= w - 1  <=>  ox <= (w - 1 + pad - kx) / stride
    let hi = match (g.w + g.pad).checked_sub(kx + 1) {
        Some(v) => (v / g.stride + 1).min(g.ow),
        None => 0,
    };
    (lo.min(hi), hi)
}

/// One image `x` (contiguous `[C, H, W]`) -> columns `[C*kh*kw, OH*OW]` in `cols` (every
/// element is written: the buffer is reused between images). The ops work in row tiles
/// ([`im2col_rows`]); the tests check this whole-image form against its definition.
#[cfg(test)]
fn im2col<T: WithDType>(x: &[T], g: &Geom, cols: &mut [T]) {
    im2col_rows(x, g, 0..g.oh, cols)
}

/// The columns of the output rows `rows` only: `[C*kh*kw, rows.len()*OW]` in `cols`.
fn im2col_rows<T: WithDType>(x: &[T], g: &Geom, rows: std::ops::Range<usize>, cols: &mut [T]) {
    let l = rows.len() * g.ow;
    let first_row = rows.start;
    for c in 0..g.c {
        let xs = &x[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (c * g.kh + ky) * g.kw + kx;
                let dst = &mut cols[row * l..][..l];
                let (lo, hi) = valid_ox(g, kx);
                for oy in rows.clone() {
                    let drow = &mut dst[(oy - first_row) * g.ow..][..g.ow];
                    let Some(iy) = g.iy(oy, ky) else {
                        drow.fill(T::zero());
                        continue;
                    };
                    let xrow = &xs[iy * g.w..][..g.w];
                    drow[..lo].fill(T::zero());
                    drow[hi..].fill(T::zero());
                    if lo < hi {
                        let first = lo * g.stride + kx - g.pad;
                        if g.stride == 1 {
                            drow[lo..hi].copy_from_slice(&xrow[first..first + (hi - lo)]);
                        } else {
                            for (d, &v) in drow[lo..hi]
                                .iter_mut()
                                .zip(xrow[first..].iter().step_by(g.stride))
                            {
                                *d = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`] for one image: columns summed back into `x` (`[C, H, W]`, which the
/// caller zeroes first).
#[cfg(test)]
fn col2im<T: WithDType>(cols: &[T], g: &Geom, x: &mut [T]) {
    col2im_rows(cols, g, 0..g.oh, x)
}

/// Adjoint of [`im2col_rows`]: the columns of output rows `rows` summed back into `x`.
fn col2im_rows<T: WithDType>(cols: &[T], g: &Geom, rows: std::ops::Range<usize>, x: &mut [T]) {
    let l = rows.len() * g.ow;
    let first_row = rows.start;
    for c in 0..g.c {
        let xs = &mut x[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (c * g.kh + ky) * g.kw + kx;
                let src = &cols[row * l..][..l];
                let (lo, hi) = valid_ox(g, kx);
                if lo >= hi {
                    continue;
                }
                let first = lo * g.stride + kx - g.pad;
                for oy in rows.clone() {
                    let Some(iy) = g.iy(oy, ky) else { continue };
                    let xrow = &mut xs[iy * g.w..][..g.w];
                    let srow = &src[(oy - first_row) * g.ow..][lo..hi];
                    for (d, &v) in xrow[first..].iter_mut().step_by(g.stride).zip(srow) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Elements of the column buffer a tile may use: the tile's columns are written by `im2col`
/// and read back by `gemm`'s packing (the backward's also by `col2im`) while they are still in
/// the core's L2 cache; a whole image's columns, `C*9 x OH*OW`, are up to several MB at the
/// cpu profile's sizes. 64 Ki elements (256 KiB in f32) made the UNet's convolution forward
/// about 12 % faster than whole-image columns on the 2-core EPYC of 2026-12-03, and 16 Ki
/// slower again (`bench/README.md`).
const TILE_ELEMS: usize = 64 * 1024;

/// Output rows per tile: as many as fit [`TILE_ELEMS`], at least one.
fn tile_rows(g: &Geom) -> usize {
    (TILE_ELEMS / (g.ckk() * g.ow).max(1)).clamp(1, g.oh.max(1))
}

/// Forward pass over contiguous `x [B,C,H,W]`, `w [Cout,C*kh*kw]`, `bias [Cout]`.
fn forward<T: WithDType>(x: &[T], w: &[T], bias: &[T], g: &Geom) -> Vec<T> {
    forward_tiled(x, w, bias, g, tile_rows(g))
}

/// [`forward`] in tiles of `rt` output rows: per image, per tile, the tile's columns then one
/// `gemm` into those output columns.
fn forward_tiled<T: WithDType>(x: &[T], w: &[T], bias: &[T], g: &Geom, rt: usize) -> Vec<T> {
    let par = inner_parallelism(g.b);
    let mut out = vec![T::zero(); g.b * g.out_len()];
    out.par_chunks_mut(g.out_len())
        .zip(x.par_chunks(g.in_len()))
        .for_each_init(
            || vec![T::zero(); cols_len(g, rt)],
            |cols, (y, xb)| conv_image(xb, w, bias, g, rt, cols, y, par),
        );
    out
}

/// The column buffer one image's tiles of `rt` rows need (none for a pointwise kernel).
fn cols_len(g: &Geom, rt: usize) -> usize {
    if g.pointwise() {
        0
    } else {
        g.ckk() * rt * g.ow
    }
}

/// One image: `y [Cout, OH*OW] = bias + w [Cout, C*kh*kw] * columns of xb`, in tiles of `rt`
/// output rows through `cols` (at least [`cols_len`]).
#[allow(clippy::too_many_arguments)] // the image, the kernel, its geometry and the scratch
fn conv_image<T: WithDType>(
    xb: &[T],
    w: &[T],
    bias: &[T],
    g: &Geom,
    rt: usize,
    cols: &mut [T],
    y: &mut [T],
    par: gemm::Parallelism,
) {
    let (ckk, l) = (g.ckk(), g.l());
    for (row, &bv) in y.chunks_mut(l).zip(bias) {
        row.fill(bv);
    }
    if g.pointwise() {
        let (lhs, rhs) = (Mat::rows(w, ckk), Mat::rows(xb, l));
        matmul(MatMut::rows(y, l), true, g.cout, l, ckk, lhs, rhs, par);
        return;
    }
    for r0 in (0..g.oh).step_by(rt) {
        let rows = r0..(r0 + rt).min(g.oh);
        let n = rows.len() * g.ow;
        im2col_rows(xb, g, rows, cols);
        matmul(
            MatMut::block(&mut y[r0 * g.ow..], l),
            true,
            g.cout,
            n,
            ckk,
            Mat::rows(w, ckk),
            Mat::rows(&cols[..ckk * n], n),
            par,
        );
    }
}

/// For a stride-1 square kernel that is not pointwise, the input gradient is itself a
/// convolution: `dY` correlated with the kernel flipped in space and transposed in its
/// channels, padded by `k - 1 - pad`. Returns that convolution's geometry (`dY [B, Cout, OH,
/// OW]` -> `[B, C, H, W]`) and kernel `[C, Cout*kh*kw]`; None where it does not apply.
fn input_gradient_as_conv<T: WithDType>(w: &[T], g: &Geom) -> Option<(Geom, Vec<T>)> {
    if g.stride != 1 || g.kh != g.kw || g.pointwise() || g.pad + 1 > g.kh {
        return None;
    }
    let (k, c, cout) = (g.kh, g.c, g.cout);
    let gt = Geom::new(&[g.b, cout, g.oh, g.ow], &[c, cout, k, k], k - 1 - g.pad, 1);
    debug_assert_eq!((gt.oh, gt.ow), (g.h, g.w));
    let mut flipped = vec![T::zero(); w.len()];
    for o in 0..cout {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    let src = ((o * c + ci) * k + ky) * k + kx;
                    let dst = ((ci * cout + o) * k + (k - 1 - ky)) * k + (k - 1 - kx);
                    flipped[dst] = w[src];
                }
            }
        }
    }
    Some((gt, flipped))
}

/// Backward pass: `(dx, dw, db)` from contiguous `x`, `w`, `gy [B, Cout, OH*OW]`.
fn backward<T: WithDType>(x: &[T], w: &[T], gy: &[T], g: &Geom) -> (Vec<T>, Vec<T>, Vec<T>) {
    backward_tiled(x, w, gy, g, tile_rows(g))
}

/// [`backward`] in tiles of `rt` output rows (as [`forward_tiled`]): per image, per tile,
/// `dW += dY_tile cols_tile^T`; `dX` as the convolution of [`input_gradient_as_conv`] where it
/// applies (no scatter, and a product over `Cout*k*k` instead of `Cout`), else per tile
/// `dcols_tile = W^T dY_tile` scattered back to the image.
fn backward_tiled<T: WithDType>(
    x: &[T],
    w: &[T],
    gy: &[T],
    g: &Geom,
    rt: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (ckk, l, cout) = (g.ckk(), g.l(), g.cout);
    let par = inner_parallelism(g.b);
    let buf = cols_len(g, rt);
    let as_conv = input_gradient_as_conv(w, g);
    let zeros = vec![T::zero(); g.c];
    let run = run_len(g.b);
    let mut gx = vec![T::zero(); g.b * g.in_len()];
    let partial: Vec<(Vec<T>, Vec<T>)> = gx
        .par_chunks_mut(run * g.in_len())
        .zip(x.par_chunks(run * g.in_len()))
        .zip(gy.par_chunks(run * g.out_len()))
        .map(|((gxr, xr), gyr)| {
            let mut gw = vec![T::zero(); cout * ckk];
            let mut gb = vec![T::zero(); cout];
            let mut cols = vec![T::zero(); buf];
            let mut gcols = vec![T::zero(); if as_conv.is_some() { 0 } else { buf }];
            let mut tcols = match &as_conv {
                Some((gt, _)) => vec![T::zero(); cols_len(gt, tile_rows(gt))],
                None => vec![],
            };
            let images = gxr
                .chunks_mut(g.in_len())
                .zip(xr.chunks(g.in_len()))
                .zip(gyr.chunks(g.out_len()));
            for ((gxb, xb), gyb) in images {
                for (gbv, row) in gb.iter_mut().zip(gyb.chunks(l)) {
                    *gbv += row.iter().fold(T::zero(), |s, &v| s + v);
                }
                let wt = Mat::rows(w, ckk).t();
                if g.pointwise() {
                    // The columns are the image itself: dW += dY_b X_b^T, dX_b = W^T dY_b.
                    let (dy, xt) = (Mat::rows(gyb, l), Mat::rows(xb, l).t());
                    matmul(MatMut::rows(&mut gw, ckk), true, cout, ckk, l, dy, xt, par);
                    matmul(MatMut::rows(gxb, l), false, ckk, l, cout, wt, dy, par);
                    continue;
                }
                for r0 in (0..g.oh).step_by(rt) {
                    let rows = r0..(r0 + rt).min(g.oh);
                    let n = rows.len() * g.ow;
                    // this tile's output columns of dY_b: Cout x n, rows l apart
                    let dy = Mat::block(&gyb[r0 * g.ow..], l);
                    im2col_rows(xb, g, rows.clone(), &mut cols);
                    let cols_t = Mat::rows(&cols[..ckk * n], n).t();
                    matmul(
                        MatMut::rows(&mut gw, ckk),
                        true,
                        cout,
                        ckk,
                        n,
                        dy,
                        cols_t,
                        par,
                    );
                    if as_conv.is_none() {
                        let dcols = &mut gcols[..ckk * n];
                        matmul(MatMut::rows(dcols, n), false, ckk, n, cout, wt, dy, par);
                        col2im_rows(dcols, g, rows, gxb);
                    }
                }
                if let Some((gt, flipped)) = &as_conv {
                    let rt = tile_rows(gt);
                    conv_image(gyb, flipped, &zeros, gt, rt, &mut tcols, gxb, par);
                }
            }
            (gw, gb)
        })
        .collect();
    let (gw, gb) = sum_runs(partial);
    (gx, gw, gb)
}

#[derive(Debug, Clone, Copy)]
struct GemmConv {
    padding: usize,
    stride: usize,
}

impl TypedOp3 for GemmConv {
    const NAME: &'static str = "acpo-gemm-conv2d";
    const TIMING: [OpClass; 2] = [OpClass::ConvForward, OpClass::ConvBackward];

    fn out_shape(&self, layouts: [&Layout; 3]) -> Shape {
        let g = Geom::new(
            layouts[0].dims(),
            layouts[1].dims(),
            self.padding,
            self.stride,
        );
        Shape::from((g.b, g.cout, g.oh, g.ow))
    }

    fn forward<T: Elem>(&self, x: &[T], w: &[T], b: &[T], layouts: [&Layout; 3]) -> Vec<T> {
        let g = Geom::new(
            layouts[0].dims(),
            layouts[1].dims(),
            self.padding,
            self.stride,
        );
        forward(x, w, b, &g)
    }

    fn backward<T: Elem>(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let g = Geom::new(x.dims(), w.dims(), self.padding, self.stride);
        let (gx, gw, gb) = backward(
            &host_vec::<T>(x)?,
            &host_vec::<T>(w)?,
            &host_vec::<T>(gy)?,
            &g,
        );
        let dev = x.device();
        Ok((
            Tensor::from_vec(gx, x.dims(), dev)?,
            Tensor::from_vec(gw, w.dims(), dev)?,
            Tensor::from_vec(gb, g.cout, dev)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for every geometry the UNet uses.
        for (k, pad, stride) in [(3, 1, 1), (3, 1, 2), (3, 0, 1), (1, 0, 1), (3, 2, 2)] {
            let g = Geom::new(&[1, 2, 5, 6], &[3, 2, k, k], pad, stride);
            let x: Vec<f64> = (0..g.in_len()).map(|i| (i as f64 * 0.37).sin()).collect();
            let c: Vec<f64> = (0..g.ckk() * g.l())
                .map(|i| (i as f64 * 0.11).cos())
                .collect();
            let mut cols = vec![0.0; g.ckk() * g.l()];
            im2col(&x, &g, &mut cols);
            let mut back = vec![0.0; g.in_len()];
            col2im(&c, &g, &mut back);
            let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-9, "k {k} pad {pad} stride {stride}");
        }
    }

    #[test]
    fn im2col_matches_the_per_element_definition() {
        for (h, w, k, pad, stride) in [
            (5, 6, 3, 1, 1),
            (5, 6, 3, 1, 2),
            (4, 4, 3, 0, 1),
            (7, 5, 3, 2, 2),
            (3, 3, 1, 0, 1),
        ] {
            let g = Geom::new(&[1, 2, h, w], &[3, 2, k, k], pad, stride);
            let x: Vec<f64> = (0..g.in_len()).map(|i| i as f64 + 1.0).collect();
            let mut cols = vec![-1.0; g.ckk() * g.l()];
            im2col(&x, &g, &mut cols);
            for c in 0..g.c {
                for ky in 0..k {
                    for kx in 0..k {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let want = match (g.iy(oy, ky), g.ix(ox, kx)) {
                                    (Some(iy), Some(ix)) => x[(c * h + iy) * w + ix],
                                    _ => 0.0,
                                };
                                let row = (c * k + ky) * k + kx;
                                assert_eq!(cols[row * g.l() + oy * g.ow + ox], want);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A batch of two 3-channel `h x w` images, a 4-output `k x k` kernel and an output
    /// gradient, all deterministic, with their geometry.
    fn two_images(
        h: usize,
        w: usize,
        k: usize,
        pad: usize,
        stride: usize,
    ) -> (Geom, Vec<f64>, Vec<f64>, Vec<f64>) {
        let g = Geom::new(&[2, 3, h, w], &[4, 3, k, k], pad, stride);
        let wave = |n: usize, f: f64| (0..n).map(|i| (i as f64 * f).sin()).collect::<Vec<_>>();
        let wt = (0..g.cout * g.ckk())
            .map(|i| (i as f64 * 0.13).cos())
            .collect();
        (
            g,
            wave(2 * g.in_len(), 0.37),
            wt,
            wave(2 * g.out_len(), 0.29),
        )
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn row_tiles_compute_what_one_whole_image_tile_computes() {
        // Tiles of 1, 2 and 3 rows (3 leaves a partial last tile) against a single tile of
        // all rows, forward and backward, on the geometries the UNet uses, two images,
        // pointwise included. Only the order of additions differs (dW over the tiles, dX where
        // two tiles' rows reach one input row).
        for (h, w, k, pad, stride) in [
            (7, 6, 3, 1, 1),
            (7, 6, 3, 1, 2),
            (5, 5, 3, 0, 1),
            (6, 5, 1, 0, 1),
        ] {
            let (g, x, wt, gy) = two_images(h, w, k, pad, stride);
            let bias = [0.5, -0.25, 0.0, 1.0];
            let whole = forward_tiled(&x, &wt, &bias, &g, g.oh);
            let (gx, gw, gb) = backward_tiled(&x, &wt, &gy, &g, g.oh);
            for rt in [1, 2, 3] {
                let at = format!("h {h} w {w} k {k} stride {stride} rows {rt}");
                let d = max_abs_diff(&whole, &forward_tiled(&x, &wt, &bias, &g, rt));
                assert!(d < 1e-12, "forward, {at}: {d}");
                let (tx, tw, tb) = backward_tiled(&x, &wt, &gy, &g, rt);
                for (what, a, b) in [("dx", &gx, &tx), ("dw", &gw, &tw), ("db", &gb, &tb)] {
                    let d = max_abs_diff(a, b);
                    assert!(d < 1e-12, "{what}, {at}: {d}");
                }
            }
        }
    }

    #[test]
    fn the_input_gradient_matches_its_definition() {
        // dX[c, iy, ix] = sum over o, ky, kx of dY[o, oy, ox] W[o, c, ky, kx] with
        // iy = oy * stride + ky - pad (likewise x), on both of backward's paths: the
        // flipped-kernel convolution (stride 1) and the scatter (stride 2, pointwise).
        for (h, w, k, pad, stride) in [
            (7, 6, 3, 1, 1),
            (5, 5, 3, 0, 1),
            (6, 5, 3, 2, 1),
            (7, 6, 3, 1, 2),
            (6, 5, 1, 0, 1),
        ] {
            let (g, x, wt, gy) = two_images(h, w, k, pad, stride);
            let mut want = vec![0.0; 2 * g.in_len()];
            for b in 0..2 {
                for o in 0..g.cout {
                    for c in 0..g.c {
                        for ky in 0..k {
                            for kx in 0..k {
                                for oy in 0..g.oh {
                                    for ox in 0..g.ow {
                                        let (Some(iy), Some(ix)) = (g.iy(oy, ky), g.ix(ox, kx))
                                        else {
                                            continue;
                                        };
                                        let dy = gy[(b * g.cout + o) * g.l() + oy * g.ow + ox];
                                        let wv = wt[((o * g.c + c) * k + ky) * k + kx];
                                        want[((b * g.c + c) * h + iy) * w + ix] += dy * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let (gx, _, _) = backward(&x, &wt, &gy, &g);
            let d = max_abs_diff(&want, &gx);
            let path = input_gradient_as_conv(&wt, &g).map_or("scatter", |_| "convolution");
            assert!(
                d < 1e-12,
                "h {h} w {w} k {k} pad {pad} stride {stride} ({path}): {d}"
            );
        }
    }

    #[test]
    fn tiles_fit_the_cache_budget() {
        let g = Geom::new(&[1, 32, 32, 32], &[32, 32, 3, 3], 1, 1);
        let rt = tile_rows(&g);
        assert!(rt >= 1 && rt * g.ow * g.ckk() <= TILE_ELEMS, "{rt}");
        // a row wider than the budget still makes one-row tiles
        let wide = Geom::new(&[1, 512, 4, 64], &[8, 512, 3, 3], 1, 1);
        assert_eq!(tile_rows(&wide), 1);
    }

    #[test]
    fn im2col_overwrites_a_dirty_buffer() {
        // The per-thread buffer is reused between images: padding cells must be rewritten.
        let g = Geom::new(&[1, 1, 3, 3], &[1, 1, 3, 3], 1, 1);
        let x = vec![1.0f32; 9];
        let mut cols = vec![7.0f32; g.ckk() * g.l()];
        im2col(&x, &g, &mut cols);
        assert!(cols.iter().all(|&v| v == 0.0 || v == 1.0));
        assert_eq!(cols.iter().filter(|&&v| v == 1.0).count(), 49);
    }
}
