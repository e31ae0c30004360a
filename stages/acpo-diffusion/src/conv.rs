//! 2-D convolution as im2col + matrix multiply, forward and backward, for the CPU.
//!
//! Why hand-written: candle 0.11's conv2d backward computes the input gradient with
//! `conv_transpose2d` (a dot-product loop, about 24 GFLOP/s here) and the weight gradient with a
//! convolution whose kernel is the whole image, and the two dominate a UNet training step on
//! the CPU (`STACK.md`: about 4 of 5 s). This op keeps candle's im2col + gemm forward and makes
//! the backward two batched matmuls (gemm) plus a col2im scatter. Other devices use candle's
//! own conv2d. Finite-difference checked in `tests/gradcheck.rs`.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, WithDType};

/// `x: [B, C, H, W]` convolved with `w: [Cout, C, kh, kw]` (no bias), zero padding, stride.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let supported =
        matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F64);
    if !supported || std::env::var_os("ACPO_NATIVE_CONV").is_some() {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let (_, c, h, wd) = x.dims4()?;
    let (_, cin, kh, kw) = w.dims4()?;
    if c != cin {
        candle_core::bail!("conv2d: input has {c} channels, kernel expects {cin}");
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw || stride == 0 {
        candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, GemmConv { padding, stride })
}

#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
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
        let (kh, kw) = (wd[2], wd[3]);
        Self {
            b,
            c,
            h,
            w,
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
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    /// Input column of output column `ox` at kernel offset `kx`, if inside the image.
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

/// `x` (contiguous `[B, C, H, W]`) -> columns `[B, C*kh*kw, OH*OW]`.
fn im2col<T: WithDType>(x: &[T], g: &Geom) -> Vec<T> {
    let (ckk, l) = (g.ckk(), g.l());
    let mut cols = vec![T::zero(); g.b * ckk * l];
    for b in 0..g.b {
        for c in 0..g.c {
            let xs = &x[(b * g.c + c) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = (c * g.kh + ky) * g.kw + kx;
                    let dst = &mut cols[(b * ckk + row) * l..][..l];
                    for oy in 0..g.oh {
                        let Some(iy) = g.iy(oy, ky) else { continue };
                        let xrow = &xs[iy * g.w..][..g.w];
                        let drow = &mut dst[oy * g.ow..][..g.ow];
                        for (ox, d) in drow.iter_mut().enumerate() {
                            if let Some(ix) = g.ix(ox, kx) {
                                *d = xrow[ix];
                            }
                        }
                    }
                }
            }
        }
    }
    cols
}

/// Adjoint of [`im2col`]: columns `[B, C*kh*kw, OH*OW]` summed back into `[B, C, H, W]`.
fn col2im<T: WithDType>(cols: &[T], g: &Geom) -> Vec<T> {
    let (ckk, l) = (g.ckk(), g.l());
    let mut x = vec![T::zero(); g.b * g.c * g.h * g.w];
    for b in 0..g.b {
        for c in 0..g.c {
            let xs = &mut x[(b * g.c + c) * g.h * g.w..][..g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = (c * g.kh + ky) * g.kw + kx;
                    let src = &cols[(b * ckk + row) * l..][..l];
                    for oy in 0..g.oh {
                        let Some(iy) = g.iy(oy, ky) else { continue };
                        let xrow = &mut xs[iy * g.w..][..g.w];
                        let srow = &src[oy * g.ow..][..g.ow];
                        for (ox, &v) in srow.iter().enumerate() {
                            if let Some(ix) = g.ix(ox, kx) {
                                xrow[ix] += v;
                            }
                        }
                    }
                }
            }
        }
    }
    x
}

fn cols_tensor(x: &Tensor, g: &Geom) -> candle_core::Result<Tensor> {
    let shape = (g.b, g.ckk(), g.l());
    match x.dtype() {
        DType::F32 => Tensor::from_vec(
            im2col(&x.flatten_all()?.to_vec1::<f32>()?, g),
            shape,
            x.device(),
        ),
        DType::F64 => Tensor::from_vec(
            im2col(&x.flatten_all()?.to_vec1::<f64>()?, g),
            shape,
            x.device(),
        ),
        d => candle_core::bail!("conv2d: unsupported dtype {d:?}"),
    }
}

struct GemmConv {
    padding: usize,
    stride: usize,
}

impl GemmConv {
    fn forward_t(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let g = Geom::new(x.dims(), w.dims(), self.padding, self.stride);
        let cout = w.dim(0)?;
        let cols = if g.kh == 1 && g.kw == 1 && g.pad == 0 && g.stride == 1 {
            x.reshape((g.b, g.c, g.l()))?
        } else {
            cols_tensor(x, &g)?
        };
        w.reshape((cout, g.ckk()))?
            .broadcast_left(g.b)?
            .matmul(&cols)?
            .reshape((g.b, cout, g.oh, g.ow))
    }
}

fn storage_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv2d: non-contiguous input".into()))?;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], l.shape(), &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], l.shape(), &Device::Cpu),
        _ => candle_core::bail!("conv2d: unsupported dtype"),
    }
}

impl CustomOp2 for GemmConv {
    fn name(&self) -> &'static str {
        "acpo-gemm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = storage_tensor(s1, l1)?;
        let w = storage_tensor(s2, l2)?;
        let y = self.forward_t(&x, &w)?;
        let shape = y.shape().clone();
        let flat = y.flatten_all()?;
        let storage = match flat.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
            _ => CpuStorage::F64(flat.to_vec1::<f64>()?),
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let x = x.detach();
        let w = w.detach();
        let gy = gy.detach();
        let g = Geom::new(x.dims(), w.dims(), self.padding, self.stride);
        let cout = w.dim(0)?;
        let pointwise = g.kh == 1 && g.kw == 1 && g.pad == 0 && g.stride == 1;
        let gy3 = gy.contiguous()?.reshape((g.b, cout, g.l()))?;
        let cols = if pointwise {
            x.reshape((g.b, g.c, g.l()))?
        } else {
            cols_tensor(&x, &g)?
        };
        // dW = sum_b dY_b cols_b^T
        let gw = gy3.matmul(&cols.t()?)?.sum(0)?.reshape(w.dims())?;
        // dcols_b = W^T dY_b, then scatter back to the image.
        let gcols = w
            .reshape((cout, g.ckk()))?
            .t()?
            .contiguous()?
            .broadcast_left(g.b)?
            .matmul(&gy3)?;
        let gx = if pointwise {
            gcols.reshape(x.dims())?
        } else if gcols.dtype() == DType::F32 {
            let c = col2im(&gcols.flatten_all()?.to_vec1::<f32>()?, &g);
            Tensor::from_vec(c, x.dims(), x.device())?
        } else {
            let c = col2im(&gcols.flatten_all()?.to_vec1::<f64>()?, &g);
            Tensor::from_vec(c, x.dims(), x.device())?
        };
        Ok((Some(gx), Some(gw)))
    }
}
