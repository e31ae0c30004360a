//! 2-D max and average pooling over windows that may reach into the padding, forward only
//! (inference: the FID Inception network's pools), for the CPU.
//!
//! Why hand-written: candle 0.11 pools without padding, on one thread, an index computation
//! per element, so the Inception forward built them from candle ops: a zero-padded copy, the
//! pool, and for the average a second pool of ones to count the window's pixels inside the
//! image (`count_include_pad=False`) and a division. On 2 threads those pools, all on the
//! calling thread, were several percent of the forward (`perf`, bench/README "Inception
//! against ONNX Runtime"). Here both are one parallel sweep over the image planes, and only
//! the window's pixels inside the image take part: a max pool's padding is `-inf` (PyTorch's
//! `MaxPool2d(padding=..)`), an average pool divides by the number of pixels inside (PyTorch's
//! `AvgPool2d(count_include_pad=False)`). Other devices and dtypes use those candle
//! compositions; the tests compare the two.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::{contiguous_slice, Elem, ParZeroed};

/// Which reduction a window takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest pixel of the window inside the image.
    Max,
    /// The mean of the window's pixels inside the image.
    AvgExcludePad,
}

/// `x: [B, C, H, W]` pooled over `k x k` windows, `stride` apart, `pad` pixels of padding on
/// every side: `[B, C, (H + 2 pad - k) / stride + 1, ...]`. No backward pass (an error if one
/// is asked for). Errors when a window would lie wholly in the padding (`pad >= k`) or does
/// not fit the padded image.
pub fn pool2d(
    x: &Tensor,
    kind: PoolKind,
    k: usize,
    stride: usize,
    pad: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || pad >= k || h + 2 * pad < k || w + 2 * pad < k {
        candle_core::bail!(
            "pool2d: a {k}x{k} window, stride {stride}, padding {pad} does not fit a {h}x{w} image"
        );
    }
    let op = Pool2d {
        kind,
        k,
        stride,
        pad,
    };
    let supported =
        matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F64);
    if !supported {
        return op.generic(x);
    }
    x.contiguous()?.apply_op1_no_bwd(&op)
}

#[derive(Debug, Clone, Copy)]
struct Pool2d {
    kind: PoolKind,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Pool2d {
    /// Output rows and columns for an `h x w` image.
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.pad - self.k) / self.stride + 1;
        (o(h), o(w))
    }

    /// The input pixels `[lo, hi)` along one axis of output index `o` (inside the image).
    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        let start = o * self.stride;
        (
            start.saturating_sub(self.pad),
            (start + self.k - self.pad).min(n),
        )
    }

    /// One image plane `x` (`h x w`) into `y` (`oh x ow`) ([`Pool2d::reduce`] with this
    /// pool's reduction; the larger of two values is the first unless the second is larger;
    /// an average divides by the window's pixel count last).
    fn plane<T: Elem>(&self, x: &[T], hw: (usize, usize), column: &mut Vec<T>, y: &mut [T]) {
        match self.kind {
            PoolKind::Max => {
                let max = |a: T, b: T| if b > a { b } else { a };
                self.reduce(x, hw, column, y, T::neg_infinity(), max);
            }
            PoolKind::AvgExcludePad => {
                self.reduce(x, hw, column, y, T::zero(), |a, b| a + b);
                let (h, w) = hw;
                let (oh, ow) = self.out_hw(h, w);
                let cols: Vec<T> = (0..ow)
                    .map(|ox| self.window(ox, w))
                    .map(|(x0, x1)| T::from_f64((x1 - x0) as f64))
                    .collect();
                for (oy, yrow) in y.chunks_exact_mut(ow).enumerate().take(oh) {
                    let (y0, y1) = self.window(oy, h);
                    let rows = T::from_f64((y1 - y0) as f64);
                    for (v, &c) in yrow.iter_mut().zip(&cols) {
                        *v /= rows * c;
                    }
                }
            }
        }
    }

    /// The windows' reductions by `step` from `start`, separably: for each output row, its
    /// window's input rows reduced into `column` (`w` long, one value per input column), then
    /// the windows' columns of that, one window column at a time. The inner loops run along a
    /// row and vectorise (the last one for stride 1).
    fn reduce<T: Elem>(
        &self,
        x: &[T],
        (h, w): (usize, usize),
        column: &mut Vec<T>,
        y: &mut [T],
        start: T,
        step: impl Fn(T, T) -> T,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        // per window column kx, the output columns whose input column lies inside the image
        let taps: Vec<_> = (0..self.k)
            .map(|kx| {
                let inside = |ox: &usize| pad_free(ox * self.stride + kx, self.pad, w).is_some();
                let lo = (0..ow).find(inside).unwrap_or(ow);
                let hi = (lo..ow).take_while(inside).last().map_or(lo, |o| o + 1);
                (kx, lo, hi)
            })
            .collect();
        for (oy, yrow) in y.chunks_exact_mut(ow).enumerate().take(oh) {
            let (y0, y1) = self.window(oy, h);
            column.clear();
            column.resize(w, start);
            for xrow in x[y0 * w..y1 * w].chunks_exact(w) {
                for (acc, &v) in column.iter_mut().zip(xrow) {
                    *acc = step(*acc, v);
                }
            }
            yrow.fill(start);
            for &(kx, lo, hi) in &taps {
                let first = lo * self.stride + kx - self.pad;
                let out = &mut yrow[lo..hi];
                if self.stride == 1 {
                    for (acc, &v) in out.iter_mut().zip(&column[first..first + hi - lo]) {
                        *acc = step(*acc, v);
                    }
                } else {
                    let src = column[first..].iter().step_by(self.stride);
                    for (acc, &v) in out.iter_mut().zip(src) {
                        *acc = step(*acc, v);
                    }
                }
            }
        }
    }

    fn forward<T: Elem>(&self, x: &[T], (b, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
        let (oh, ow) = self.out_hw(h, w);
        let mut y = ParZeroed::new(b * c * oh * ow, oh * ow);
        y.par_chunks_mut()
            .zip(x.par_chunks(h * w))
            .for_each_init(Vec::new, |column, (yp, xp)| {
                self.plane(xp, (h, w), column, yp)
            });
        y.into_vec()
    }

    /// The same pool from candle ops (other devices and dtypes, and the tests' reference): for
    /// the max a pad with the input's minimum (every window holds an image pixel, so the pad
    /// never wins) then candle's pool; for the average the zero-padded sum over the window
    /// divided by the count of image pixels in it.
    fn generic(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, self.stride, self.pad);
        match self.kind {
            PoolKind::Max => {
                let low = x.flatten_all()?.min(0)?.to_dtype(x.dtype())?;
                let shift = |t: &Tensor| t.broadcast_sub(&low);
                let padded = shift(x)?.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
                padded.max_pool2d_with_stride(k, s)?.broadcast_add(&low)
            }
            PoolKind::AvgExcludePad => {
                let pad = |t: Tensor| t.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p);
                let sum = pad(x.clone())?.avg_pool2d_with_stride(k, s)?;
                let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
                let count = pad(ones)?.avg_pool2d_with_stride(k, s)?;
                sum.broadcast_div(&count)
            }
        }
    }
}

/// The image column of padded column `i` (`i - pad`), if inside an image `w` wide.
fn pad_free(i: usize, pad: usize, w: usize) -> Option<usize> {
    i.checked_sub(pad).filter(|&c| c < w)
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "acpo-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let storage = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.forward(contiguous_slice(v, l, self.name())?, dims))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(self.forward(contiguous_slice(v, l, self.name())?, dims))
            }
            _ => candle_core::bail!("pool2d: only f32 and f64"),
        };
        let (oh, ow) = self.out_hw(dims.2, dims.3);
        Ok((storage, Shape::from((dims.0, dims.1, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A `[b, c, h, w]` f64 tensor of signed values (so a max pool's padding must not be 0).
    fn image(dims: (usize, usize, usize, usize)) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.71).sin() - 0.3).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_the_candle_composition_and_the_definition() {
        // The Inception's three pools (3x3 stride 2 unpadded, 3x3 stride 1 padding 1, max and
        // average), odd sizes, batch 1, a window reaching two pixels into the padding.
        for (dims, k, stride, pad) in [
            ((2, 3, 7, 9), 3, 2, 0),
            ((1, 2, 5, 5), 3, 1, 1),
            ((2, 1, 8, 6), 3, 1, 1),
            ((1, 2, 6, 7), 5, 2, 2),
        ] {
            let x = image(dims);
            let xs = values(&x);
            for kind in [PoolKind::Max, PoolKind::AvgExcludePad] {
                let op = Pool2d {
                    kind,
                    k,
                    stride,
                    pad,
                };
                let ours = values(&pool2d(&x, kind, k, stride, pad).unwrap());
                let generic = values(&op.generic(&x).unwrap());
                let at = format!("{dims:?} k {k} stride {stride} pad {pad} {kind:?}");
                let d = ours.iter().zip(&generic).map(|(a, b)| (a - b).abs());
                assert!(d.fold(0.0, f64::max) < 1e-12, "{at}");
                // the definition, at every output pixel
                let (b, c, h, w) = dims;
                let (oh, ow) = op.out_hw(h, w);
                assert_eq!(ours.len(), b * c * oh * ow, "{at}");
                for (i, &got) in ours.iter().enumerate() {
                    let (plane, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                    let mut inside = vec![];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                            if (pad..h + pad).contains(&iy) && (pad..w + pad).contains(&ix) {
                                inside.push(xs[(plane * h + iy - pad) * w + ix - pad]);
                            }
                        }
                    }
                    let want = match kind {
                        PoolKind::Max => inside.iter().cloned().fold(f64::MIN, f64::max),
                        PoolKind::AvgExcludePad => inside.iter().sum::<f64>() / inside.len() as f64,
                    };
                    assert!((got - want).abs() < 1e-12, "{at} at {i}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn rejects_windows_that_do_not_fit() {
        let x = image((1, 1, 4, 4));
        assert!(
            pool2d(&x, PoolKind::Max, 3, 1, 3).is_err(),
            "window in the padding"
        );
        assert!(
            pool2d(&x, PoolKind::Max, 7, 1, 1).is_err(),
            "window past the image"
        );
        assert!(pool2d(
            &image((1, 1, 4, 4)).flatten_all().unwrap(),
            PoolKind::Max,
            3,
            1,
            1
        )
        .is_err());
    }
}
