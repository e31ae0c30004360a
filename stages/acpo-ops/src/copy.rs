//! Copies of `[B, C, H, W]` tensors on the CPU, one parallel task per image, forward only
//! (inference: the FID Inception network's blocks): the concatenation of tensors along the
//! channels, and zero padding of the rows and columns.
//!
//! Why hand-written: candle's `Tensor::cat` (and `pad_with_zeros`, a `cat` with zeros) copies
//! on candle's own thread pool, which the `acpo` command leaves without workers (acpo-diffusion
//! `startup`: its spinning threads slowed training), so there they ran on the calling thread
//! alone while rayon's workers waited: the Inception forward measured 7-20 % slower with
//! candle's pool empty than with it (bench/README, "Inception against ONNX Runtime"). These
//! copy on rayon's threads, which run the convolutions. Tensors that autograd tracks, other
//! devices and other dtypes go to candle's ops, which the tests compare against.

use candle_core::{DType, Device, Tensor, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::cpu_op::on_host_all;

/// `parts` (each `[B, C_i, H, W]`, the same `B`, `H`, `W` and dtype) concatenated along the
/// channels: `[B, sum C_i, H, W]`, as `Tensor::cat(parts, 1)`.
pub fn cat_channels(parts: &[Tensor]) -> candle_core::Result<Tensor> {
    let Some(first) = parts.first() else {
        candle_core::bail!("cat_channels: no tensors");
    };
    let (b, _, h, w) = first.dims4()?;
    let mut c = 0;
    for p in parts {
        let (pb, pc, ph, pw) = p.dims4()?;
        if (pb, ph, pw) != (b, h, w) || p.dtype() != first.dtype() {
            candle_core::bail!(
                "cat_channels: {:?} {:?} does not match {:?} {:?} but for the channels",
                p.dims(),
                p.dtype(),
                first.dims(),
                first.dtype()
            );
        }
        c += pc;
    }
    if !parts.iter().all(host_untracked) {
        return Tensor::cat(parts, 1);
    }
    let parts: Vec<&Tensor> = parts.iter().collect();
    let shape = (b, c, h, w);
    match first.dtype() {
        DType::F32 => per_image::<f32>(&parts, shape, cat_image),
        _ => per_image::<f64>(&parts, shape, cat_image),
    }
}

/// `x` (`[B, C, H, W]`) with `ph` rows of zeros above and below and `pw` columns left and
/// right: `[B, C, H + 2 ph, W + 2 pw]`, as `pad_with_zeros` on both axes.
pub fn pad_zeros(x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !host_untracked(x) {
        return x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw);
    }
    let parts = [x];
    let shape = (b, c, h + 2 * ph, w + 2 * pw);
    let (hw, p) = ((h, w), (ph, pw));
    match x.dtype() {
        DType::F32 => per_image::<f32>(&parts, shape, |s, d| pad_image(s[0], d, hw, p)),
        _ => per_image::<f64>(&parts, shape, |s, d| pad_image(s[0], d, hw, p)),
    }
}

/// Whether `t` is an f32 or f64 CPU tensor that autograd does not track.
fn host_untracked(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu)
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && !t.track_op()
}

/// The `[B, C, H, W]` tensor of `shape` whose image `i` `write` fills, every element, from
/// image `i` of each of `inputs` (CPU tensors of dtype `T`, read in place where contiguous,
/// [`on_host_all`]): one task per image.
fn per_image<T: WithDType>(
    inputs: &[&Tensor],
    shape: (usize, usize, usize, usize),
    write: impl Fn(&[&[T]], &mut [MaybeUninit<T>]) + Sync,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = shape;
    let image = c * h * w;
    let mut out = Vec::<T>::with_capacity(b * image);
    on_host_all(inputs, |slices: &[&[T]]| {
        out.spare_capacity_mut()[..b * image]
            .par_chunks_mut(image.max(1))
            .enumerate()
            .for_each(|(i, dst)| {
                let src: Vec<&[T]> = slices
                    .iter()
                    .map(|s| &s[i * s.len() / b..][..s.len() / b])
                    .collect();
                write(&src, dst);
            });
    })?;
    // SAFETY: every chunk, and so every element, was written by `write` (its contract).
    unsafe { out.set_len(b * image) };
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// One image of [`cat_channels`]: the parts' planes one after the other.
fn cat_image<T: Copy>(src: &[&[T]], dst: &mut [MaybeUninit<T>]) {
    let mut at = 0;
    for s in src {
        copy(&mut dst[at..at + s.len()], s);
        at += s.len();
    }
    assert_eq!(at, dst.len(), "cat_channels: the parts fill the image");
}

/// One image of [`pad_zeros`]: each `h x w` plane of `src` into the middle of a zeroed plane.
fn pad_image<T: WithDType>(
    src: &[T],
    dst: &mut [MaybeUninit<T>],
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
) {
    let wp = w + 2 * pw;
    for (src, dst) in src.chunks(h * w).zip(dst.chunks_mut((h + 2 * ph) * wp)) {
        let (top, rest) = dst.split_at_mut(ph * wp);
        let (rows, bottom) = rest.split_at_mut(h * wp);
        fill(top, T::zero());
        fill(bottom, T::zero());
        for (s, d) in src.chunks(w).zip(rows.chunks_mut(wp)) {
            let (left, rest) = d.split_at_mut(pw);
            let (mid, right) = rest.split_at_mut(w);
            fill(left, T::zero());
            copy(mid, s);
            fill(right, T::zero());
        }
    }
}

fn copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

fn fill<T: Copy>(dst: &mut [MaybeUninit<T>], v: T) {
    for d in dst {
        d.write(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn wave(shape: (usize, usize, usize, usize), f: f64, dtype: DType) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * f).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn same(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        assert_eq!(a.dtype(), b.dtype());
        let (a, b) = (
            a.to_dtype(DType::F64).unwrap(),
            b.to_dtype(DType::F64).unwrap(),
        );
        let a: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn concatenation_is_candles() {
        // odd sizes, batch 1 and 3, a part of one channel, a transposed (non-contiguous) part
        for dtype in [DType::F32, DType::F64] {
            for b in [1, 3] {
                let parts = [
                    wave((b, 2, 5, 7), 0.3, dtype),
                    wave((b, 1, 5, 7), 0.7, dtype),
                    wave((b, 3, 7, 5), 1.1, dtype).transpose(2, 3).unwrap(),
                ];
                let want = Tensor::cat(&parts, 1).unwrap();
                same(&cat_channels(&parts).unwrap(), &want);
            }
        }
    }

    #[test]
    fn padding_is_candles() {
        for dtype in [DType::F32, DType::F64] {
            for (b, ph, pw) in [(1, 0, 3), (2, 3, 0), (3, 1, 2), (1, 0, 0)] {
                let x = wave((b, 3, 5, 7), 0.3, dtype);
                let want = x.pad_with_zeros(2, ph, ph).unwrap();
                let want = want.pad_with_zeros(3, pw, pw).unwrap();
                same(&pad_zeros(&x, ph, pw).unwrap(), &want);
            }
        }
    }

    #[test]
    fn tracked_tensors_keep_their_gradients() {
        let v = Var::from_tensor(&wave((2, 2, 3, 3), 0.3, DType::F32)).unwrap();
        let other = wave((2, 1, 3, 3), 0.5, DType::F32);
        let y = cat_channels(&[v.as_tensor().clone(), other]).unwrap();
        let y = pad_zeros(&y, 1, 1).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        // d/dv sum(y^2) = 2 v
        let g = grads
            .get(v.as_tensor())
            .expect("a gradient for the tracked input");
        same(g, &(v.as_tensor() * 2.0).unwrap());
    }

    #[test]
    fn mismatched_parts_are_an_error() {
        let a = wave((1, 2, 3, 3), 0.3, DType::F32);
        let b = wave((1, 2, 3, 4), 0.3, DType::F32);
        let err = cat_channels(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
