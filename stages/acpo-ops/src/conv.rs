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
//! This op works image by image, in parallel over the batch (rayon). A [`Plan`] per call picks
//! the product that multiplies the kernel by the image's columns:
//!
//! - **The panel kernel** (`crate::panel`: f32, a CPU with AVX2+FMA, a batch with an image per
//!   thread). For a stride-1 or stride-2 kernel whose output rows are 8 pixels or a multiple of
//!   16 there is no im2col: each 16-pixel panel's columns are 16 consecutive elements of a
//!   zero-padded copy of the image (for stride 2 with its columns split by parity), which the
//!   kernel gathers as it multiplies ([`Taps`]); a pointwise kernel's are the image itself,
//!   read in place. A stride-1 kernel with any other row width is multiplied the same way over
//!   the padded image's pitch, the positions past each output row computed and dropped
//!   ([`Taps::product_pitched`]). Otherwise (stride 2 there) the columns of a tile of output
//!   rows small enough for the core's L2 cache ([`TILE_ELEMS`]) are written in 16-pixel
//!   panels and multiplied from there.
//! - **`gemm`** (the crate candle's own matmul uses) everywhere else: the tile's im2col
//!   columns, row-major, and one `gemm` call into the tile's output columns.
//!
//! The bias is written first and accumulated into. The backward pass accumulates the weight and
//! bias gradients per run of images (`dW += dY_tile cols_tile^T`; with the panel kernel
//! `dW^T += cols_tile dY_tile^T`, `dY^T` packed in 16-channel panels, and for stride 1 the
//! columns read from the padded image as well, [`Taps::row_span`]); the input gradient of a
//! stride-1 kernel is the forward convolution of `dY` with the flipped, channel-transposed
//! kernel (so it takes the same fast path), and otherwise `W^T dY_tile` scattered back to the
//! image (col2im). The two products compute the same sums in different orders (a test bounds
//! the difference). Other devices use candle's conv2d plus a broadcast add. Finite-difference
//! checked in `tests/gradcheck.rs` (f64, `gemm`).

use crate::cpu_op::{
    in_reference_ops, lane_sum, on_host, run_len, sum_runs, Elem, Op3, ParZeroed, Pool, TypedOp3,
};
use crate::mat::{inner_parallelism, matmul, Mat, MatMut};
use crate::panel::{
    f32s, f32s_mut, offsets_product, pack_left, packed_gather_product, packed_len,
    packed_panel_product, panel_product, panels_len, Kernel, NR,
};
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
    conv(x, w, b, padding, stride, false)
}

/// `relu(conv2d(x, w) + b)`, the ReLU applied to each image's output as it is finished (no
/// second pass over the batch, no second tensor), for inference: the op has no backward pass
/// (an error if one is asked for). The FID Inception's layers.
pub fn conv2d_bias_relu(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    conv(x, w, b, padding, stride, true)
}

fn conv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    stride: usize,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let supported = matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
        && x.dtype() == b.dtype();
    if !supported || std::env::var_os("ACPO_NATIVE_CONV").is_some() {
        let y = x
            .conv2d(w, padding, stride, 1, 1)?
            .broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        return if relu { y.relu() } else { Ok(y) };
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
        Op3(GemmConv {
            padding,
            stride,
            relu,
        }),
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

/// How a tile's im2col columns (`C*kh*kw` kernel rows by `n` output pixels) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColLayout {
    /// Row-major `[C*kh*kw, n]`: `gemm`'s right operand, and the weight gradient's left
    /// operand for the panel kernel.
    Rows,
    /// Panels of 16 pixels, `[ceil(n / 16), C*kh*kw, 16]` (`panel` module docs): the forward
    /// product's right operand for the panel kernel.
    PixelPanels,
}

/// One image `x` (contiguous `[C, H, W]`) -> columns `[C*kh*kw, OH*OW]` in `cols` (every
/// element is written: the buffer is reused between images). The ops work in row tiles
/// ([`im2col_tile`]); the tests check this whole-image form against its definition.
#[cfg(test)]
fn im2col<T: WithDType>(x: &[T], g: &Geom, cols: &mut [T]) {
    im2col_tile(x, g, 0..g.oh, ColLayout::Rows, cols)
}

/// The columns of the output rows `rows` only (`n = rows.len() * OW` pixels), stored in
/// `layout`; every element of the layout is written, the padding of a last partial panel with
/// zeros.
fn im2col_tile<T: WithDType>(
    x: &[T],
    g: &Geom,
    rows: std::ops::Range<usize>,
    layout: ColLayout,
    cols: &mut [T],
) {
    let (ckk, n) = (g.ckk(), rows.len() * g.ow);
    let valid: Vec<_> = (0..g.kw).map(|kx| valid_ox(g, kx)).collect();
    match layout {
        ColLayout::Rows => {
            // each (kernel row, output row) is one segment of a column row
            for oy in rows.clone() {
                let p = (oy - rows.start) * g.ow;
                for_each_tap(x, g, &valid, oy, |j, tap| {
                    tap_segment(g, tap, 0, &mut cols[j * n + p..][..g.ow]);
                });
            }
        }
        ColLayout::PixelPanels => {
            for (pp, panel) in cols[..panels_len(ckk, n)].chunks_mut(ckk * NR).enumerate() {
                let (start, end) = (pp * NR, (pp * NR + NR).min(n));
                // the panel's pixels, one output row's segment at a time
                let mut p = start;
                while p < end {
                    let (oy, ox0) = (rows.start + p / g.ow, p % g.ow);
                    let len = (g.ow - ox0).min(end - p);
                    let lane = p - start;
                    for_each_tap(x, g, &valid, oy, |j, tap| {
                        tap_segment(g, tap, ox0, &mut panel[j * NR + lane..][..len]);
                    });
                    p += len;
                }
                if end - start < NR {
                    for row in panel.chunks_mut(NR) {
                        row[end - start..].fill(T::zero());
                    }
                }
            }
        }
    }
}

/// Calls `f(j, tap)` for every kernel row `j = (c, ky, kx)` of output row `oy`.
fn for_each_tap<'x, T>(
    x: &'x [T],
    g: &Geom,
    valid: &[(usize, usize)],
    oy: usize,
    mut f: impl FnMut(usize, Tap<'x, T>),
) {
    for c in 0..g.c {
        let xs = &x[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            let xrow = g.iy(oy, ky).map(|iy| &xs[iy * g.w..][..g.w]);
            for (kx, &valid) in valid.iter().enumerate() {
                f((c * g.kh + ky) * g.kw + kx, Tap { xrow, kx, valid });
            }
        }
    }
}

/// What one kernel tap reads for one output row: the input row (None where it falls in the
/// padding), the kernel column, and the output columns whose input lies inside the row
/// ([`valid_ox`], computed once per tile: it divides by the stride).
#[derive(Clone, Copy)]
struct Tap<'x, T> {
    xrow: Option<&'x [T]>,
    kx: usize,
    valid: (usize, usize),
}

/// `dst[i]` = the input pixel that output column `ox0 + i` reads through `tap` (zero where that
/// falls in the padding).
#[inline]
fn tap_segment<T: WithDType>(g: &Geom, tap: Tap<'_, T>, ox0: usize, dst: &mut [T]) {
    let Some(xrow) = tap.xrow else {
        dst.fill(T::zero());
        return;
    };
    let (len, kx) = (dst.len(), tap.kx);
    let (lo, hi) = tap.valid;
    let hi = hi.clamp(ox0, ox0 + len) - ox0;
    let lo = lo.clamp(ox0, ox0 + len) - ox0;
    let lo = lo.min(hi);
    dst[..lo].fill(T::zero());
    dst[hi..].fill(T::zero());
    if lo == hi {
        return;
    }
    let first = (ox0 + lo) * g.stride + kx - g.pad;
    if g.stride == 1 {
        copy_short(&mut dst[lo..hi], &xrow[first..first + (hi - lo)]);
    } else {
        for (d, &v) in dst[lo..hi]
            .iter_mut()
            .zip(xrow[first..].iter().step_by(g.stride))
        {
            *d = v;
        }
    }
}

/// `dst.copy_from_slice(src)`, with the panel's lengths (16 and 8) as fixed-size copies: a copy
/// of unknown length is a call to `memcpy`, which cost more than the copy at these sizes.
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    match dst.len() {
        NR => copy_fixed::<T, NR>(dst, src),
        8 => copy_fixed::<T, 8>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

fn copy_fixed<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
    let d: &mut [T; N] = dst.try_into().expect("copy_fixed: destination length");
    *d = src.try_into().expect("copy_fixed: source length");
}

/// Adjoint of [`im2col`] for one image: columns summed back into `x` (`[C, H, W]`, which the
/// caller zeroes first).
#[cfg(test)]
fn col2im<T: WithDType>(cols: &[T], g: &Geom, x: &mut [T]) {
    col2im_rows(cols, g, 0..g.oh, x)
}

/// Adjoint of [`im2col_tile`] in [`ColLayout::Rows`]: the columns of output rows `rows` summed
/// back into `x`.
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
/// and read back by the product (the backward's also by `col2im`) while they are still in
/// the core's L2 cache; a whole image's columns, `C*9 x OH*OW`, are up to several MB at the
/// cpu profile's sizes. 64 Ki elements (256 KiB in f32) made the UNet's convolution forward
/// about 12 % faster than whole-image columns on the 2-core EPYC of 2026-12-03, and 16 Ki
/// slower again (`bench/README.md`).
const TILE_ELEMS: usize = 64 * 1024;

/// Kernel rows per pass of the panel product: a panel's slice of at most this many rows (16
/// floats each, 20 KiB) stays in L1 while every block of output channels reads it. The kernel
/// rows are split into equal chunks no longer than this (576 as 2 x 288).
const PANEL_ROWS: usize = 320;

/// Kernel elements (`Cout * C*kh*kw`) above which [`Taps::product`] runs chunk by chunk of
/// kernel rows, every panel within a chunk, instead of panel by panel, every chunk within a
/// panel: 128 Ki (512 KiB in f32, the L2 of one core here). A larger kernel would otherwise be
/// read from L3 or memory once per 16-pixel panel (the FID Inception's 8x8 blocks: kernels of
/// up to 2.6 MB); the cpu-profile UNet's kernels (at most 64 x 1152) keep the panel order.
const LARGE_KERNEL: usize = 128 * 1024;

/// Kernel rows per pass of the panel product: `ckk` split into equal chunks of at most
/// [`PANEL_ROWS`].
fn panel_chunk(ckk: usize) -> usize {
    ckk.div_ceil(ckk.div_ceil(PANEL_ROWS))
}

/// The chunks of [`panel_chunk`] kernel rows as `(k0, kc)`: the first row and the row count.
/// The packed kernel ([`packed_kernel`]) and every product over it take the same chunks.
fn kernel_chunks(ckk: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let chunk = panel_chunk(ckk);
    (0..ckk)
        .step_by(chunk)
        .map(move |k0| (k0, chunk.min(ckk - k0)))
}

/// Output rows per tile: as many as fit [`TILE_ELEMS`], at least one.
fn tile_rows(g: &Geom) -> usize {
    (TILE_ELEMS / (g.ckk() * g.ow).max(1)).clamp(1, g.oh.max(1))
}

/// Output pixels that a tile of im2col panels holds at least.
const MIN_TILE_PIXELS: usize = 128;

/// Output rows per tile of im2col panels: [`tile_rows`], but at least [`MIN_TILE_PIXELS`]
/// pixels, so that the tile's last, partial panel wastes at most about an eighth of its
/// product. Where a row's columns are larger than [`TILE_ELEMS`], one row per tile made
/// tiles of one row; the FID Inception's stride-2 kernel to 17-pixel rows (`C*kh*kw` = 2,592)
/// then multiplied two panels per row, one of them for a single pixel. The tile's columns
/// then outgrow L2, but the product reads them a chunk of kernel rows at a time.
fn panel_tile_rows(g: &Geom) -> usize {
    tile_rows(g)
        .max(MIN_TILE_PIXELS.div_ceil(g.ow.max(1)))
        .min(g.oh.max(1))
}

/// How one call's convolution runs: its geometry, the output rows per tile, which kernel
/// multiplies a tile's columns, and where the panel kernel can read the columns straight from
/// the padded image instead ([`Taps`]).
#[derive(Debug, Clone)]
struct Plan {
    g: Geom,
    rt: usize,
    kernel: Kernel,
    taps: Option<Taps>,
}

impl Plan {
    /// Tiles of [`tile_rows`] (of im2col panels, [`panel_tile_rows`]); the panel kernel for
    /// f32 where the CPU has it ([`Kernel::detect`]), this thread is not inside
    /// [`crate::reference_ops`], the batch has an image for every thread (the panel kernel
    /// does not split one image's product over threads; `gemm` does), and a pointwise kernel
    /// reads the image without im2col ([`Taps`]; else `gemm` multiplies the image itself,
    /// where the panel kernel would copy it into panels). [`Taps`] are built once, here.
    fn new<T: 'static>(g: Geom) -> Self {
        let f32 = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        let gemm_only = in_reference_ops();
        let taps = Taps::new(&g);
        let in_place = !g.pointwise() || taps.is_some();
        let kernel = if f32 && !gemm_only && in_place && g.b >= rayon::current_num_threads() {
            Kernel::detect()
        } else {
            Kernel::Gemm
        };
        let taps = taps.filter(|_| kernel == Kernel::Panels);
        let rt = match (kernel, &taps) {
            (Kernel::Panels, None) => panel_tile_rows(&g),
            _ => tile_rows(&g),
        };
        Self {
            g,
            rt,
            kernel,
            taps,
        }
    }

    /// `rt` rows per tile and `kernel`; [`Taps`] where the panel kernel can use them.
    fn with(g: Geom, rt: usize, kernel: Kernel) -> Self {
        let taps = (kernel == Kernel::Panels).then(|| Taps::new(&g)).flatten();
        Self {
            g,
            rt,
            kernel,
            taps,
        }
    }

    /// A pointwise kernel through `gemm`, which multiplies the image itself (its columns,
    /// row-major), forward and backward, without tiles.
    fn pointwise_gemm(&self) -> bool {
        self.g.pointwise() && self.kernel == Kernel::Gemm
    }

    /// Per-thread buffers for the forward pass: the tile's columns (none where the plan has
    /// [`Taps`]), or the zero-padded image they read.
    fn scratch<T: WithDType>(&self) -> Scratch<T> {
        let (cols, padded) = match &self.taps {
            Some(t) if t.needs_tile(&self.g) => {
                (self.g.cout * pitch_tile(&self.g), t.padded_len(&self.g))
            }
            Some(t) => (0, t.padded_len(&self.g)),
            None => (self.cols_len(), 0),
        };
        Scratch {
            cols: vec![T::zero(); cols],
            padded: vec![T::zero(); padded],
        }
    }

    /// A tile's columns in any [`ColLayout`] (none for a pointwise kernel through `gemm`,
    /// whose columns are the image).
    fn cols_len(&self) -> usize {
        if self.pointwise_gemm() {
            0
        } else {
            self.g.ckk().next_multiple_of(NR) * (self.rt * self.g.ow).next_multiple_of(NR)
        }
    }
}

/// See [`Plan::scratch`]. The padded image's border is written once, as zeros, and only its
/// interior after that. `cols` is the pitch tile of [`Taps::product_pitched`] where it needs
/// one.
struct Scratch<T> {
    cols: Vec<T>,
    padded: Vec<T>,
}

/// The convolution without im2col, for a stride-1 or stride-2 kernel: a panel of 16 output
/// pixels is one row segment (`OW` a multiple of 16) or two whole rows (`OW` = 8, an even
/// `OH`), and then the 16 columns of kernel tap `(c, ky, kx)` are 16 (or 2 x 8) consecutive
/// elements of the zero-padded image. For stride 2 the padded image's columns are stored split
/// by parity (the even columns, then the odd ones, of each row), so that every second input
/// column is again consecutive. A tap reads at `offs[(c, ky, kx)]` from the position of the
/// panel's first output pixel; the panel kernel gathers the columns as it multiplies
/// ([`packed_gather_product`]).
#[derive(Debug, Clone)]
struct Taps {
    offs: Vec<u32>,
    hp: usize,
    wp: usize,
    stride: usize,
    /// Output rows that fit no panel: the product runs over the padded image's pitch instead
    /// of over the output pixels ([`Taps::product_pitched`]; for stride 2 [`Taps::phased`]).
    pitched: bool,
}

impl Taps {
    /// None where the geometry does not allow it (a stride other than 1 or 2; for stride 2,
    /// rows that fit a panel with an odd padded width; offsets past `u32`). Rows that fit no
    /// panel are [`Taps::pitched`] (for stride 2 over [`Taps::phased`] planes).
    fn new(g: &Geom) -> Option<Self> {
        let (hp, wp, stride) = (g.h + 2 * g.pad, g.w + 2 * g.pad, g.stride);
        let rows_fit = g.ow.is_multiple_of(NR) || (g.ow == NR / 2 && g.oh.is_multiple_of(2));
        let strided = stride == 1 || (stride == 2 && (wp.is_multiple_of(2) || !rows_fit));
        if !strided || g.l() == 0 || (!rows_fit && !pitch_enabled()) {
            return None;
        }
        let taps = Self {
            offs: vec![],
            hp,
            wp,
            stride,
            pitched: !rows_fit,
        };
        u32::try_from(g.c * taps.plane() + NR).ok()?;
        let mut offs = Vec::with_capacity(g.ckk());
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    offs.push((c * taps.plane() + taps.at(ky, kx)) as u32);
                }
            }
        }
        Some(Self { offs, ..taps })
    }

    /// Stride 2 with output rows that fit no panel (the FID Inception's stem, its reductions to
    /// 35, 17 and 8 pixels): each channel of the padded image is stored as four phase planes,
    /// its pixels `(2i + py, 2j + px)` at `(i, j)` of plane `(py, px)` (`ceil(HP / 2) x
    /// ceil(WP / 2)` each). Output pixel `(oy, ox)` reads through tap `(ky, kx)` the pixel
    /// `(oy + ky / 2, ox + kx / 2)` of plane `(ky % 2, kx % 2)`, so over a plane's pitch the
    /// positions `oy * pitch + ox` are consecutive as for stride 1 ([`Taps::product_pitched`]).
    fn phased(&self) -> bool {
        self.stride == 2 && self.pitched
    }

    /// Elements per channel of the padded image: `HP x WP`, or four [`Taps::phased`] planes.
    fn plane(&self) -> usize {
        match self.phased() {
            true => 4 * self.hp.div_ceil(2) * self.pitch(),
            false => self.hp * self.wp,
        }
    }

    /// Elements from one row of the padded image to the next as [`Taps::product_pitched`]
    /// reads it: `WP`, or a [`Taps::phased`] plane's `ceil(WP / 2)`.
    fn pitch(&self) -> usize {
        match self.phased() {
            true => self.wp.div_ceil(2),
            false => self.wp,
        }
    }

    /// Elements of the padded image, `C` times [`Taps::plane`], and for [`Taps::pitched`] the
    /// 16 zeros that its last panel reads past the image; none where it is the image itself.
    fn padded_len(&self, g: &Geom) -> usize {
        match (self.is_image(g), self.pitched) {
            (true, _) => 0,
            (false, false) => g.c * self.plane(),
            (false, true) => g.c * self.plane() + NR,
        }
    }

    /// Whether the padded image is the image itself (no padding, stride 1, rows that fit: a
    /// pointwise kernel), which is then read in place.
    fn is_image(&self, g: &Geom) -> bool {
        g.pad == 0 && self.stride == 1 && !self.pitched
    }

    /// [`Taps::pitched`] with gaps between the output rows in the pitch (`WP > OW`): the
    /// product then writes a scratch tile and copies its output pixels out.
    fn needs_tile(&self, g: &Geom) -> bool {
        self.pitched && self.pitch() > g.ow
    }

    /// The padded image of `x`: `x` itself where [`Taps::is_image`], else `buffer` after
    /// [`Taps::pad`].
    fn padded<'a, T: Copy>(&self, g: &Geom, x: &'a [T], buffer: &'a mut [T]) -> &'a [T] {
        if self.is_image(g) {
            return x;
        }
        self.pad(g, x, buffer);
        buffer
    }

    /// Stride 1: the weight gradient's pixels of `rows` output rows as one run of the padded
    /// image, `WP` apart per row, the gaps between rows (`WP - OW` pixels each) included, which
    /// [`pack_transposed`] gives a zero gradient. A tap's columns for those rows are then
    /// `span` consecutive elements from its offset, and the last row's run ends inside the
    /// padded image: `(rows - 1) * WP + OW`.
    fn row_span(&self, g: &Geom, rows: usize) -> usize {
        rows.saturating_sub(1) * self.wp + g.ow
    }

    /// Where padded pixel `(y, x)` of a channel is stored: row `y`, then by the parity of `x`
    /// for stride 2; in its [`Taps::phased`] plane.
    fn at(&self, y: usize, x: usize) -> usize {
        if self.phased() {
            let (h2, w2) = (self.hp.div_ceil(2), self.pitch());
            return (y % 2 * 2 + x % 2) * h2 * w2 + y / 2 * w2 + x / 2;
        }
        y * self.wp + x % self.stride * (self.wp / self.stride) + x / self.stride
    }

    /// Copies image `x` (`[C, H, W]`) into the interior of `padded` (`C` planes of
    /// [`Taps::plane`], stored as [`Taps::at`] says).
    fn pad<T: Copy>(&self, g: &Geom, x: &[T], padded: &mut [T]) {
        let plane = self.plane();
        for (src, dst) in x.chunks(g.h * g.w).zip(padded.chunks_mut(plane)) {
            if self.phased() {
                // per input row, its even and its odd padded columns into the two planes' rows
                for (iy, srow) in src.chunks(g.w).enumerate() {
                    let y = iy + g.pad;
                    for ix0 in 0..2.min(g.w) {
                        let x0 = ix0 + g.pad;
                        let row = &mut dst[self.at(y, x0)..];
                        for (d, &v) in row.iter_mut().zip(srow[ix0..].iter().step_by(2)) {
                            *d = v;
                        }
                    }
                }
                continue;
            }
            for (iy, srow) in src.chunks(g.w).enumerate() {
                let row = &mut dst[(iy + g.pad) * self.wp..][..self.wp];
                if self.stride == 1 {
                    row[g.pad..g.pad + g.w].copy_from_slice(srow);
                } else {
                    // stride 2: padded column x at x / 2 of its parity's half (`Taps::at`)
                    let (even, odd) = row.split_at_mut(self.wp / 2);
                    for (ix, &v) in srow.iter().enumerate() {
                        let x = ix + g.pad;
                        if x.is_multiple_of(2) {
                            even[x / 2] = v;
                        } else {
                            odd[x / 2] = v;
                        }
                    }
                }
            }
        }
    }

    /// `y += w * columns` for a whole image, panel by panel, from the padded image (`y` holds
    /// the bias; `w` is [`packed_kernel`]'s; `tile` is [`Plan::scratch`]'s for
    /// [`Taps::pitched`]).
    fn product(
        &self,
        w: &[f32],
        bias: &[f32],
        padded: &[f32],
        y: &mut [f32],
        g: &Geom,
        tile: &mut [f32],
    ) {
        if self.pitched {
            return self.product_pitched(w, bias, padded, y, g, tile);
        }
        let (ckk, l) = (g.ckk(), g.l());
        // the second half of a panel: 8 output pixels on, or the next output row
        let delta = if g.ow.is_multiple_of(NR) {
            NR / 2
        } else {
            self.stride * self.wp
        };
        let mut panel = |p: usize, (k0, kc): (usize, usize)| {
            let at = self.stride * (p / g.ow) * self.wp + p % g.ow;
            let (a, offs) = (&w[g.cout * k0..], &self.offs[k0..]);
            let b = (&padded[at..], offs, delta);
            packed_gather_product(g.cout, kc, a, b, copy_rows(g), &mut y[p..], l, NR);
        };
        // the same sums in the same order either way; only which operand stays in cache
        if g.cout * ckk > LARGE_KERNEL {
            for chunk in kernel_chunks(ckk) {
                (0..l).step_by(NR).for_each(|p| panel(p, chunk));
            }
        } else {
            for p in (0..l).step_by(NR) {
                kernel_chunks(ckk).for_each(|chunk| panel(p, chunk));
            }
        }
    }

    /// [`Taps::product`] for output rows that fit no panel: the product runs over the positions
    /// `q = oy * P + ox` of the padded image's pitch `P` ([`Taps::pitch`]: `WP`, or for stride 2
    /// a [`Taps::phased`] plane's), `ox < P`, where a panel's 16 columns of every tap are again
    /// 16 consecutive elements of the padded image; the `P - OW` positions past each output
    /// row are computed and dropped. With no such gap (`P = OW`: pointwise, or no padding
    /// across the rows) the positions are the output pixels and
    /// the product adds into `y`; otherwise into a scratch `tile` of [`pitch_tile`] positions
    /// per output channel, filled with the bias first, whose output pixels are then copied
    /// into `y`. Per output pixel the sums are those of the im2col panels, in the same order.
    fn product_pitched(
        &self,
        w: &[f32],
        bias: &[f32],
        padded: &[f32],
        y: &mut [f32],
        g: &Geom,
        tile: &mut [f32],
    ) {
        let (ckk, l, cout) = (g.ckk(), g.l(), g.cout);
        let positions = (g.oh - 1) * self.pitch() + g.ow;
        let t = pitch_tile(g);
        for q0 in (0..positions).step_by(t) {
            let n = t.min(positions - q0);
            let (c, rsc) = match self.needs_tile(g) {
                true => {
                    for (row, &b) in tile.chunks_mut(t).zip(bias) {
                        row[..n].fill(b);
                    }
                    (&mut tile[..], t)
                }
                false => (&mut y[q0..], l),
            };
            for (k0, kc) in kernel_chunks(ckk) {
                let (a, offs) = (&w[cout * k0..], &self.offs[k0..]);
                for p in (0..n).step_by(NR) {
                    let (b, lanes) = ((&padded[q0 + p..], offs, NR / 2), NR.min(n - p));
                    let c = &mut c[p..];
                    packed_gather_product(cout, kc, a, b, copy_rows(g), c, rsc, lanes);
                }
            }
            if self.needs_tile(g) {
                self.copy_out(tile, t, q0..q0 + n, y, g);
            }
        }
    }

    /// The output pixels among the pitch positions `qs` of `tile` (`t` positions per output
    /// channel) into `y` (`[Cout, OH*OW]`).
    fn copy_out(
        &self,
        tile: &[f32],
        t: usize,
        qs: std::ops::Range<usize>,
        y: &mut [f32],
        g: &Geom,
    ) {
        let (l, pitch) = (g.l(), self.pitch());
        for oy in qs.start / pitch..=(qs.end - 1) / pitch {
            let row = oy * pitch;
            let (lo, hi) = (qs.start.max(row), qs.end.min(row + g.ow));
            if lo >= hi {
                continue;
            }
            for co in 0..g.cout {
                let src = &tile[co * t + lo - qs.start..][..hi - lo];
                y[co * l + oy * g.ow + lo - row..][..hi - lo].copy_from_slice(src);
            }
        }
    }
}

/// Output channels from which a pointwise kernel's gathered rows are copied into a panel
/// before the product ([`packed_gather_product`]'s `copy`): each of its rows is a different
/// channel plane, so a chunk's rows overflow L1 and each block of six output channels re-read
/// them from L2. The FID Inception's 1x1 convolutions (64-2048 input channels, 64-448 output
/// channels) measured 4-10 % faster from 72 channels on (the sum over layers of each
/// layer's best time in 5 batches, alternated); at 32 and 64 (the 147-pixel layers) the copy
/// did not pay. Kernels wider than one tap keep the gather: neighbouring taps share lines.
const COPY_MIN_COUT: usize = 72;

/// Whether the product copies its gathered rows first ([`COPY_MIN_COUT`]).
fn copy_rows(g: &Geom) -> bool {
    g.pointwise() && g.cout >= COPY_MIN_COUT
}

/// Whether [`Taps::pitched`] is used: yes, unless the environment variable `ACPO_CONV_PITCH`
/// is `off` (the bench's A/B switch: such rows then take the im2col panels); read once per
/// process.
fn pitch_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ACPO_CONV_PITCH").map_or(true, |v| v != "off"))
}

/// Pitch positions per tile of [`Taps::product_pitched`]: a multiple of 16 with `Cout` rows of
/// them within [`TILE_ELEMS`] (at least one panel), and no more than the image has.
fn pitch_tile(g: &Geom) -> usize {
    let fit = (TILE_ELEMS / g.cout.max(1)).max(NR) / NR * NR;
    fit.min((g.oh * (g.w + 2 * g.pad)).next_multiple_of(NR))
}

/// The kernel `w [Cout, C*kh*kw]` as the panel kernel reads it ([`pack_left`]): per chunk of
/// [`panel_chunk`] kernel rows, that chunk's `Cout x kc` block, the chunk from kernel row `k0`
/// at `Cout * k0`. Packed once per call, read by every image; empty for a plan through `gemm`.
fn packed_kernel<T: 'static>(w: &[T], plan: &Plan) -> Vec<f32> {
    if plan.kernel != Kernel::Panels {
        return vec![];
    }
    let (w, ckk, cout) = (f32s(w), plan.g.ckk(), plan.g.cout);
    let mut packed = vec![0f32; packed_len(cout, ckk)];
    for (k0, kc) in kernel_chunks(ckk) {
        pack_left(cout, kc, &w[k0..], ckk, &mut packed[cout * k0..]);
    }
    packed
}

/// The forward pass over contiguous `x [B,C,H,W]`, `w [Cout,C*kh*kw]`, `bias [Cout]` as
/// `plan` says: per image, per tile, the tile's columns then one product into those output
/// columns; then `epilogue`, if any, on each image's output.
fn forward_tiled<T: WithDType>(
    x: &[T],
    w: &[T],
    bias: &[T],
    plan: &Plan,
    epilogue: Option<fn(&mut [T])>,
) -> Vec<T> {
    let g = &plan.g;
    let par = inner_parallelism(g.b);
    let packed = packed_kernel(w, plan);
    let buffers = Pool::default();
    let mut out = ParZeroed::new(g.b * g.out_len(), g.out_len());
    out.par_chunks_mut()
        .zip(x.par_chunks(g.in_len()))
        .for_each(|(y, xb)| {
            buffers.with(
                || plan.scratch(),
                |scratch| conv_image(xb, w, &packed, bias, plan, scratch, y, par),
            );
            if let Some(f) = epilogue {
                f(y);
            }
        });
    out.into_vec()
}

/// One image: `y [Cout, OH*OW] = bias + w [Cout, C*kh*kw] * columns of xb`, in the tiles of
/// `plan` through `scratch` (from [`Plan::scratch`]), or from the padded image where the plan
/// has [`Taps`]; the panel kernel reads `w` as `packed` ([`packed_kernel`]).
#[allow(clippy::too_many_arguments)] // the image, the kernel in two forms, the plan's buffers
fn conv_image<T: WithDType>(
    xb: &[T],
    w: &[T],
    packed: &[f32],
    bias: &[T],
    plan: &Plan,
    scratch: &mut Scratch<T>,
    y: &mut [T],
    par: gemm::Parallelism,
) {
    let g = &plan.g;
    let (ckk, l) = (g.ckk(), g.l());
    for (row, &bv) in y.chunks_mut(l).zip(bias) {
        row.fill(bv);
    }
    if plan.pointwise_gemm() {
        let (lhs, rhs) = (Mat::rows(w, ckk), Mat::rows(xb, l));
        matmul(MatMut::rows(y, l), true, g.cout, l, ckk, lhs, rhs, par);
        return;
    }
    if let Some(taps) = &plan.taps {
        let padded = taps.padded(g, xb, &mut scratch.padded);
        let tile = f32s_mut(&mut scratch.cols);
        taps.product(packed, f32s(bias), f32s(padded), f32s_mut(y), g, tile);
        return;
    }
    let cols = &mut scratch.cols;
    for r0 in (0..g.oh).step_by(plan.rt) {
        let rows = r0..(r0 + plan.rt).min(g.oh);
        let n = rows.len() * g.ow;
        match plan.kernel {
            Kernel::Gemm => {
                im2col_tile(xb, g, rows, ColLayout::Rows, cols);
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
            Kernel::Panels => {
                im2col_tile(xb, g, rows, ColLayout::PixelPanels, cols);
                forward_panels(packed, f32s(cols), f32s_mut(y), g, r0 * g.ow, n);
            }
        }
    }
}

/// `y[:, p0..p0 + n] += w cols` for one tile whose `n` pixels' columns are in pixel panels:
/// the kernel rows in chunks of at most [`PANEL_ROWS`], and within a chunk panel by panel
/// (`w` is [`packed_kernel`]'s).
fn forward_panels(w: &[f32], cols: &[f32], y: &mut [f32], g: &Geom, p0: usize, n: usize) {
    let ckk = g.ckk();
    for (k0, kc) in kernel_chunks(ckk) {
        for (pp, panel) in cols[..panels_len(ckk, n)].chunks(ckk * NR).enumerate() {
            let lanes = NR.min(n - pp * NR);
            let (a, b) = (&w[g.cout * k0..], &panel[k0 * NR..]);
            let c = &mut y[p0 + pp * NR..];
            packed_panel_product(g.cout, kc, a, b, c, g.l(), lanes);
        }
    }
}

/// `dW^T += cols_tile dY_tile^T` for one tile, one product per panel of 16 output channels of
/// `dyt` (the tile's `dY^T` over `span` positions, [`pack_transposed`]): `product(panel, c,
/// lanes)` adds every kernel row's columns times `panel` into `c`, the weight gradient
/// transposed (`[C*kh*kw, Cout]`) from that panel's first channel on. The panel, `span x 16`,
/// stays in L1.
fn weight_gradient_panels(
    dyt: &[f32],
    span: usize,
    cout: usize,
    gwt: &mut [f32],
    mut product: impl FnMut(&[f32], &mut [f32], usize),
) {
    for (cp, panel) in dyt[..panels_len(span, cout)].chunks(span * NR).enumerate() {
        product(panel, &mut gwt[cp * NR..], NR.min(cout - cp * NR));
    }
}

/// `dY` of `rows` output rows (`dy` from the first; channels `OH*OW` apart) transposed into
/// panels of 16 channels over `(rows - 1) * pitch + OW` positions: output pixel `(r, ox)` at
/// `r * pitch + ox`, zero at the gaps between rows (`pitch > OW`, [`Taps::row_span`]) and in a
/// last partial panel. With `pitch = OW` the positions are the tile's pixels.
fn pack_transposed(dy: &[f32], g: &Geom, rows: usize, pitch: usize, dst: &mut [f32]) {
    let span = rows.saturating_sub(1) * pitch + g.ow;
    let dst = &mut dst[..panels_len(span, g.cout)];
    if pitch > g.ow || !g.cout.is_multiple_of(NR) {
        dst.fill(0.0);
    }
    for co in 0..g.cout {
        let panel = co / NR * span * NR + co % NR;
        for r in 0..rows {
            let src = &dy[co * g.l() + r * g.ow..][..g.ow];
            let at = panel + r * pitch * NR;
            for (d, &v) in dst[at..].iter_mut().step_by(NR).zip(src) {
                *d = v;
            }
        }
    }
}

/// The `cols x rows` transpose of a row-major `rows x cols` matrix.
fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..cols * rows)
        .map(|i| m[i % rows * cols + i / rows])
        .collect()
}

/// For a stride-1 square kernel (pointwise included), the input gradient is itself a
/// convolution: `dY` correlated with the kernel flipped in space and transposed in its
/// channels, padded by `k - 1 - pad`. Returns that convolution's geometry (`dY [B, Cout, OH,
/// OW]` -> `[B, C, H, W]`) and kernel `[C, Cout*kh*kw]`; None where it does not apply.
fn input_gradient_as_conv<T: WithDType>(w: &[T], g: &Geom) -> Option<(Geom, Vec<T>)> {
    if g.stride != 1 || g.kh != g.kw || g.pad + 1 > g.kh {
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
    backward_tiled(x, w, gy, &Plan::new::<T>(*g))
}

/// [`backward`] as `plan` says (tiles as [`forward_tiled`]): per image, per tile, `dW +=
/// dY_tile cols_tile^T` (with the panel kernel as `dW^T += cols_tile dY_tile^T`, transposed
/// once at the end); `dX` as the convolution of [`input_gradient_as_conv`] where it applies
/// (no scatter, and a product over `Cout*k*k` instead of `Cout`), with the same kernel, else per
/// tile `dcols_tile = W^T dY_tile` (through `gemm`) scattered back to the image. The buffers
/// are per thread; the parameter gradients per run of images ([`run_len`]), added in order.
fn backward_tiled<T: WithDType>(
    x: &[T],
    w: &[T],
    gy: &[T],
    plan: &Plan,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let g = &plan.g;
    let (ckk, cout) = (g.ckk(), g.cout);
    let pass = Backward {
        plan,
        w,
        dx_conv: input_gradient_as_conv(w, g)
            .filter(|_| !plan.pointwise_gemm())
            .map(|(gt, flipped)| {
                let tplan = Plan::with(gt, tile_rows(&gt), plan.kernel);
                let packed = packed_kernel(&flipped, &tplan);
                (tplan, flipped, packed)
            }),
        zeros: vec![T::zero(); g.c],
        par: inner_parallelism(g.b),
    };
    let run = run_len(g.b);
    let buffers = Pool::default();
    let mut gx = ParZeroed::new(g.b * g.in_len(), run * g.in_len());
    let partial: Vec<(Vec<T>, Vec<T>)> = gx
        .par_chunks_mut()
        .zip(x.par_chunks(run * g.in_len()))
        .zip(gy.par_chunks(run * g.out_len()))
        .map(|((gxr, xr), gyr)| {
            let mut grads = (vec![T::zero(); cout * ckk], vec![T::zero(); cout]);
            let images = gxr
                .chunks_mut(g.in_len())
                .zip(xr.chunks(g.in_len()))
                .zip(gyr.chunks(g.out_len()));
            buffers.with(
                || pass.scratch(),
                |scratch| {
                    for ((gxb, xb), gyb) in images {
                        pass.image(xb, gyb, scratch, gxb, &mut grads);
                    }
                },
            );
            grads
        })
        .collect();
    let (gw, gb) = sum_runs(partial);
    let gw = match plan.kernel {
        Kernel::Panels => transpose(&gw, ckk, cout),
        Kernel::Gemm => gw,
    };
    (gx.into_vec(), gw, gb)
}

/// What every image of one backward pass shares: the plan, the kernel, the input gradient's
/// convolution (plan, flipped kernel, and that kernel [`packed_kernel`]) where it applies, its
/// zero bias, `gemm`'s threading.
struct Backward<'a, T> {
    plan: &'a Plan,
    w: &'a [T],
    dx_conv: Option<(Plan, Vec<T>, Vec<f32>)>,
    zeros: Vec<T>,
    par: gemm::Parallelism,
}

/// One thread's buffers for [`Backward::image`].
struct BackwardScratch<T> {
    /// The tile's columns of `x` (row-major; none where [`Backward::dw_taps`] applies).
    cols: Vec<T>,
    /// The zero-padded image (where [`Backward::dw_taps`] applies).
    padded: Vec<T>,
    /// The tile's `dY^T` in panels (panel kernel only).
    dyt: Vec<T>,
    /// The tile's column gradient (the scatter path only).
    gcols: Vec<T>,
    /// The input gradient's convolution's buffers (where it applies).
    dx: Option<Scratch<T>>,
}

impl<T: WithDType> Backward<'_, T> {
    /// The plan's [`Taps`] where the weight gradient reads the padded image instead of im2col
    /// columns: stride 1 (a row of output pixels is then a row of the padded image; for stride
    /// 2 the rows would be mostly gaps).
    fn dw_taps(&self) -> Option<&Taps> {
        self.plan.taps.as_ref().filter(|t| t.stride == 1)
    }

    fn scratch(&self) -> BackwardScratch<T> {
        let (g, rt) = (&self.plan.g, self.plan.rt);
        let dyt = match (self.plan.kernel, self.dw_taps()) {
            (Kernel::Gemm, _) => 0,
            (Kernel::Panels, None) => panels_len(rt * g.ow, g.cout),
            (Kernel::Panels, Some(t)) => panels_len(t.row_span(g, rt), g.cout),
        };
        let (cols, padded) = match self.dw_taps() {
            Some(t) => (0, t.padded_len(g)),
            None => (self.plan.cols_len(), 0),
        };
        let scatter = self.dx_conv.is_none();
        BackwardScratch {
            cols: vec![T::zero(); cols],
            padded: vec![T::zero(); padded],
            dyt: vec![T::zero(); dyt],
            gcols: vec![T::zero(); if scatter { g.ckk() * rt * g.ow } else { 0 }],
            dx: self.dx_conv.as_ref().map(|(p, ..)| p.scratch()),
        }
    }

    /// One image: `gxb` (zeroed) receives `dX`; `grads` accumulates `(dW, db)` (`dW^T` with the
    /// panel kernel).
    fn image(
        &self,
        xb: &[T],
        gyb: &[T],
        scratch: &mut BackwardScratch<T>,
        gxb: &mut [T],
        (gw, gb): &mut (Vec<T>, Vec<T>),
    ) {
        let (plan, w, par) = (self.plan, self.w, self.par);
        let g = &plan.g;
        let (ckk, l, cout) = (g.ckk(), g.l(), g.cout);
        for (gbv, row) in gb.iter_mut().zip(gyb.chunks(l)) {
            *gbv += T::from_f64(lane_sum(row, row, |v, _| v.to_f64()));
        }
        let wt = Mat::rows(w, ckk).t();
        if plan.pointwise_gemm() {
            // The columns are the image itself: dW += dY_b X_b^T, dX_b = W^T dY_b.
            let (dy, xt) = (Mat::rows(gyb, l), Mat::rows(xb, l).t());
            matmul(MatMut::rows(gw, ckk), true, cout, ckk, l, dy, xt, par);
            matmul(MatMut::rows(gxb, l), false, ckk, l, cout, wt, dy, par);
            return;
        }
        if let Some(taps) = self.dw_taps().filter(|t| !t.is_image(g)) {
            taps.pad(g, xb, &mut scratch.padded);
        }
        for r0 in (0..g.oh).step_by(plan.rt) {
            let rows = r0..(r0 + plan.rt).min(g.oh);
            self.weight_gradient_tile(xb, gyb, rows.clone(), scratch, gw);
            if self.dx_conv.is_none() {
                // this tile's output columns of dY_b: Cout x n, rows l apart
                let (dy, n) = (Mat::block(&gyb[r0 * g.ow..], l), rows.len() * g.ow);
                let dcols = &mut scratch.gcols[..ckk * n];
                matmul(MatMut::rows(dcols, n), false, ckk, n, cout, wt, dy, par);
                col2im_rows(dcols, g, rows, gxb);
            }
        }
        if let (Some((tplan, flipped, packed)), Some(ts)) = (&self.dx_conv, &mut scratch.dx) {
            conv_image(gyb, flipped, packed, &self.zeros, tplan, ts, gxb, par);
        }
    }

    /// `dW += dY_tile cols_tile^T` for the output rows `rows` (`dW^T` with the panel kernel):
    /// `gemm` on im2col columns, the panel kernel on im2col columns, or the panel kernel on
    /// the padded image ([`Taps::row_span`]) where [`Backward::dw_taps`] allows.
    fn weight_gradient_tile(
        &self,
        xb: &[T],
        gyb: &[T],
        rows: std::ops::Range<usize>,
        scratch: &mut BackwardScratch<T>,
        gw: &mut [T],
    ) {
        let g = &self.plan.g;
        let (ckk, l, cout) = (g.ckk(), g.l(), g.cout);
        let (r0, n) = (rows.start, rows.len() * g.ow);
        let dy = &gyb[r0 * g.ow..];
        match (self.plan.kernel, self.dw_taps()) {
            (Kernel::Gemm, _) => {
                let cols = &mut scratch.cols;
                im2col_tile(xb, g, rows, ColLayout::Rows, cols);
                let cols_t = Mat::rows(&cols[..ckk * n], n).t();
                let dy = Mat::block(dy, l);
                let par = self.par;
                matmul(MatMut::rows(gw, ckk), true, cout, ckk, n, dy, cols_t, par);
            }
            (Kernel::Panels, None) => {
                im2col_tile(xb, g, rows.clone(), ColLayout::Rows, &mut scratch.cols);
                let dyt = f32s_mut(&mut scratch.dyt);
                pack_transposed(f32s(dy), g, rows.len(), g.ow, dyt);
                let cols = f32s(&scratch.cols);
                weight_gradient_panels(dyt, n, cout, f32s_mut(gw), |panel, c, lanes| {
                    panel_product(ckk, n, cols, n, panel, c, cout, lanes)
                });
            }
            (Kernel::Panels, Some(taps)) => {
                let span = taps.row_span(g, rows.len());
                let dyt = f32s_mut(&mut scratch.dyt);
                pack_transposed(f32s(dy), g, rows.len(), taps.wp, dyt);
                let padded = match taps.is_image(g) {
                    true => f32s(xb),
                    false => f32s(&scratch.padded),
                };
                let padded = &padded[r0 * taps.wp..];
                weight_gradient_panels(dyt, span, cout, f32s_mut(gw), |panel, c, lanes| {
                    offsets_product(ckk, span, padded, &taps.offs, panel, c, cout, lanes)
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct GemmConv {
    padding: usize,
    stride: usize,
    /// ReLU on the output ([`conv2d_bias_relu`]; forward only).
    relu: bool,
}

/// `v = max(v, 0)` in place (candle's `relu`).
fn relu_in_place<T: Elem>(y: &mut [T]) {
    for v in y {
        *v = num_traits::Float::max(*v, T::zero());
    }
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
        let epilogue = self.relu.then_some(relu_in_place::<T> as fn(&mut [T]));
        forward_tiled(x, w, b, &Plan::new::<T>(g), epilogue)
    }

    fn backward<T: Elem>(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        if self.relu {
            candle_core::bail!("conv2d_bias_relu is inference-only: it has no backward pass");
        }
        let g = Geom::new(x.dims(), w.dims(), self.padding, self.stride);
        let (gx, gw, gb) = on_host([x, w, gy], |[x, w, gy]| backward::<T>(x, w, gy, &g))?;
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

    /// A batch of `b` images of `c` channels and `hw` pixels, a `cout`-output kernel of the
    /// given (size, padding, stride) and an output gradient, all deterministic and of
    /// magnitude <= 1, with their geometry.
    fn batch<T: WithDType>(
        b: usize,
        c: usize,
        cout: usize,
        hw: (usize, usize),
        (k, pad, stride): (usize, usize, usize),
    ) -> (Geom, Vec<T>, Vec<T>, Vec<T>) {
        let g = Geom::new(&[b, c, hw.0, hw.1], &[cout, c, k, k], pad, stride);
        let wave = |n: usize, f: f64, phase: f64| {
            (0..n)
                .map(|i| T::from_f64((i as f64 * f + phase).sin()))
                .collect()
        };
        let cos = std::f64::consts::FRAC_PI_2;
        (
            g,
            wave(b * g.in_len(), 0.37, 0.0),
            wave(cout * g.ckk(), 0.13, cos),
            wave(b * g.out_len(), 0.29, 0.0),
        )
    }

    /// Two 3-channel images and a 4-output kernel (the f64 tests' batch).
    fn two_images(
        h: usize,
        w: usize,
        k: usize,
        pad: usize,
        stride: usize,
    ) -> (Geom, Vec<f64>, Vec<f64>, Vec<f64>) {
        batch(2, 3, 4, (h, w), (k, pad, stride))
    }

    fn max_abs_diff<T: WithDType>(a: &[T], b: &[T]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a.to_f64() - b.to_f64()).abs())
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
            let gemm = |rt| Plan::with(g, rt, Kernel::Gemm);
            let whole = forward_tiled(&x, &wt, &bias, &gemm(g.oh), None);
            let (gx, gw, gb) = backward_tiled(&x, &wt, &gy, &gemm(g.oh));
            for rt in [1, 2, 3] {
                let at = format!("h {h} w {w} k {k} stride {stride} rows {rt}");
                let d = max_abs_diff(&whole, &forward_tiled(&x, &wt, &bias, &gemm(rt), None));
                assert!(d < 1e-12, "forward, {at}: {d}");
                let (tx, tw, tb) = backward_tiled(&x, &wt, &gy, &gemm(rt));
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
        // im2col panels take at least MIN_TILE_PIXELS pixels per tile (the Inception's
        // stride-2 kernel to 17-pixel rows: 8 rows, not 1), and no more rows than there are
        let s2 = Geom::new(&[2, 288, 35, 35], &[384, 288, 3, 3], 0, 2);
        assert_eq!((tile_rows(&s2), panel_tile_rows(&s2)), (1, 8));
        let short = Geom::new(&[2, 288, 7, 7], &[384, 288, 3, 3], 0, 2);
        assert_eq!(panel_tile_rows(&short), short.oh);
        let threads = rayon::current_num_threads();
        let plan = Plan::new::<f32>(Geom { b: threads, ..s2 });
        if plan.kernel == Kernel::Panels {
            // with the pitch on (the default) that layer reads phase planes, no im2col tiles
            let phased = plan.taps.as_ref().is_some_and(|t| t.phased());
            assert!(phased || plan.rt == 8, "{plan:?}");
        }
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

    #[test]
    fn pixel_panels_hold_the_row_major_columns() {
        // Every (kernel row, pixel) of a tile is where the panels put it, and the padding
        // lanes are zero even in a dirty buffer; odd sizes, partial panels, panels that span
        // output rows, 27 kernel rows.
        for (c, h, w, k, pad, stride) in [
            (3, 7, 6, 3, 1, 1),
            (2, 9, 5, 3, 1, 2),
            (5, 6, 11, 3, 2, 1),
            (1, 4, 4, 3, 0, 1),
        ] {
            let g = Geom::new(&[1, c, h, w], &[2, c, k, k], pad, stride);
            let x: Vec<f32> = (0..g.in_len()).map(|i| i as f32 + 1.0).collect();
            let ckk = g.ckk();
            for rows in [0..g.oh, 1..g.oh.min(3), g.oh - 1..g.oh] {
                let n = rows.len() * g.ow;
                let mut flat = vec![0f32; ckk * n];
                im2col_tile(&x, &g, rows.clone(), ColLayout::Rows, &mut flat);
                let len = ckk.next_multiple_of(NR) * n.next_multiple_of(NR);
                let mut pix = vec![-7f32; len];
                im2col_tile(&x, &g, rows.clone(), ColLayout::PixelPanels, &mut pix);
                let at = format!("c {c} h {h} w {w} stride {stride} rows {rows:?}");
                for j in 0..ckk {
                    for p in 0..n.next_multiple_of(NR) {
                        let want = if p < n { flat[j * n + p] } else { 0.0 };
                        let got = pix[p / NR * ckk * NR + j * NR + p % NR];
                        assert_eq!(got, want, "{at}, j {j} p {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_panel_kernel_computes_what_gemm_computes() {
        // Forward, dX and dW through the panel kernel (which runs its AVX2 kernel where the CPU
        // has one, else its portable loop), from im2col panels and, where the geometry allows,
        // gathered from the padded image, against the gemm path, in f32: only the order of the
        // additions differs. Output channels around the kernel's 6-row block, 27 and 288
        // kernel rows, partial panels, stride 2 (dX by the scatter), padding 0 and 2, rows of
        // 8 and 16 (gathered; for stride 2 from parity-split columns), an odd padded width,
        // batch 1, several tilings.
        let f32_sum_error = |terms: usize| 4.0 * f64::from(f32::EPSILON) * terms as f64;
        let mut gathered = 0;
        for (b, c, cout, hw, kps) in [
            (2, 3, 4, (7, 6), (3, 1, 1)),
            (1, 3, 13, (9, 9), (3, 1, 1)),
            (2, 5, 7, (7, 6), (3, 1, 2)),
            (2, 4, 6, (5, 5), (3, 0, 1)),
            (2, 6, 5, (6, 5), (3, 2, 1)),
            (1, 32, 32, (8, 8), (3, 1, 1)),
            (2, 3, 7, (16, 16), (3, 1, 1)),
            (2, 4, 7, (6, 18), (3, 0, 1)),
            (2, 3, 6, (8, 6), (3, 2, 1)),
            (2, 2, 3, (8, 32), (3, 1, 1)),
            (2, 3, 7, (32, 32), (3, 1, 2)),
            (2, 2, 5, (16, 16), (3, 1, 2)),
            (1, 2, 3, (32, 31), (3, 1, 2)),
            (2, 5, 7, (8, 8), (1, 0, 1)),
            (2, 6, 4, (16, 16), (1, 0, 1)),
            (1, 3, 5, (7, 6), (1, 0, 1)),
        ] {
            let (g, x, wt, gy) = batch::<f32>(b, c, cout, hw, kps);
            let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1 - 0.2).collect();
            let gemm = Plan::with(g, g.oh, Kernel::Gemm);
            let want = forward_tiled(&x, &wt, &bias, &gemm, None);
            let (wx, ww, wb) = backward_tiled(&x, &wt, &gy, &gemm);
            for rt in [1, 2, g.oh] {
                let with_taps = Plan::with(g, rt, Kernel::Panels);
                gathered += usize::from(with_taps.taps.is_some());
                let im2col = Plan {
                    taps: None,
                    ..with_taps.clone()
                };
                for plan in [with_taps, im2col] {
                    let at = format!(
                        "b {b} c {c} cout {cout} {hw:?} {kps:?} rows {rt} taps {}",
                        plan.taps.is_some()
                    );
                    let got = forward_tiled(&x, &wt, &bias, &plan, None);
                    let d = max_abs_diff(&want, &got);
                    assert!(d <= f32_sum_error(g.ckk()), "forward, {at}: {d}");
                    let (gx, gw, gb) = backward_tiled(&x, &wt, &gy, &plan);
                    let d = max_abs_diff(&wx, &gx);
                    assert!(d <= f32_sum_error(cout * 9), "dx, {at}: {d}");
                    let d = max_abs_diff(&ww, &gw);
                    assert!(d <= f32_sum_error(b * g.l()), "dw, {at}: {d}");
                    assert_eq!(wb, gb, "db, {at}");
                }
            }
        }
        // stride 1 always gathers (over the padded image's pitch where the rows fit no
        // panel), stride 2 with rows of 8 or 16 output pixels and an even padded width, or over
        // phase planes where the rows fit no panel: all but the 32x31 stride-2 image
        assert_eq!(gathered, 15 * 3, "gathering shapes");
    }

    #[test]
    fn the_pitched_product_computes_what_the_im2col_panels_compute() {
        // Stride 1 with rows that fit no panel (the FID Inception's 147, 71, 35 and 17 pixel
        // rows): the product over the padded image's pitch against the im2col panels, bit for
        // bit (the same sums in the same order), and against gemm within f32 rounding. Gaps
        // between rows (padding) and none (pointwise, a 7x1 kernel), a ragged last panel,
        // several tiles per image (many output channels), two chunks of kernel rows, batch 1,
        // a pointwise kernel whose gathered rows are copied into a panel (COPY_MIN_COUT).
        for (b, c, cout, hw, (kh, kw), pad) in [
            (2, 400, 80, (17, 17), (1, 1), 0),
            (2, 3, 7, (7, 6), (3, 3), 1),
            (1, 3, 13, (9, 9), (3, 3), 1),
            (2, 5, 7, (7, 6), (1, 1), 0),
            (2, 6, 5, (17, 17), (1, 1), 0),
            (2, 4, 6, (13, 17), (7, 1), 0),
            (2, 4, 6, (17, 23), (1, 7), 0),
            (1, 2, 700, (9, 9), (3, 3), 1),
            (2, 40, 9, (7, 5), (3, 3), 1),
            (2, 3, 5, (11, 10), (5, 5), 2),
        ] {
            let g = Geom::new(&[b, c, hw.0, hw.1], &[cout, c, kh, kw], pad, 1);
            let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
            let (x, wt) = (wave(b * g.in_len(), 0.37), wave(cout * g.ckk(), 0.13));
            let at = format!("b {b} c {c} cout {cout} {hw:?} {kh}x{kw} pad {pad}");
            let pitched = Plan::with(g, g.oh, Kernel::Panels);
            assert!(pitched.taps.as_ref().is_some_and(|t| t.pitched), "{at}");
            gathers_what_the_im2col_panels_compute(&pitched, &x, &wt, &at);
        }
    }

    /// `plan` (with [`Taps`]) computes what its im2col panels compute, bit for bit, and what
    /// gemm computes within f32 rounding; `at` names the case.
    fn gathers_what_the_im2col_panels_compute(plan: &Plan, x: &[f32], wt: &[f32], at: &str) {
        let g = plan.g;
        let f32_sum_error = |terms: usize| 4.0 * f64::from(f32::EPSILON) * terms as f64;
        let bias: Vec<f32> = (0..g.cout).map(|i| i as f32 * 0.1 - 0.2).collect();
        let im2col = Plan {
            taps: None,
            ..plan.clone()
        };
        let got = forward_tiled(x, wt, &bias, plan, None);
        assert_eq!(got, forward_tiled(x, wt, &bias, &im2col, None), "{at}");
        let want = forward_tiled(x, wt, &bias, &Plan::with(g, g.oh, Kernel::Gemm), None);
        let d = max_abs_diff(&want, &got);
        assert!(d <= f32_sum_error(g.ckk()), "{at}: {d}");
    }

    #[test]
    fn stride_two_over_phase_planes_computes_what_the_im2col_panels_compute() {
        // Stride 2 with rows that fit no panel (the FID Inception's stem, 299 -> 149, and its
        // reductions to 35, 17, 8): the pitched product over the four phase planes against the
        // im2col panels, bit for bit, and against gemm within f32 rounding. Odd and even padded
        // sizes, padding, 1x1 and 5x5 kernels, several tiles, many output channels, batch 1.
        for (b, c, cout, hw, k, pad) in [
            (2, 3, 32, (19, 19), 3, 0),
            (1, 5, 7, (15, 14), 3, 1),
            (2, 4, 9, (11, 13), 3, 0),
            (2, 6, 5, (9, 12), 1, 0),
            (1, 3, 6, (17, 15), 5, 2),
            (2, 2, 700, (13, 13), 3, 1),
            (2, 8, 80, (21, 21), 1, 0),
        ] {
            let (g, x, wt, _) = batch::<f32>(b, c, cout, hw, (k, pad, 2));
            let at = format!("b {b} c {c} cout {cout} {hw:?} {k}x{k} pad {pad}");
            let phased = Plan::with(g, g.oh, Kernel::Panels);
            assert!(phased.taps.as_ref().is_some_and(|t| t.phased()), "{at}");
            gathers_what_the_im2col_panels_compute(&phased, &x, &wt, &at);
        }
    }

    #[test]
    fn large_kernels_gather_chunk_by_chunk_to_the_same_bits() {
        // Kernels past LARGE_KERNEL run the gathered product in the other loop order: the
        // same sums in the same order as the im2col panels, rows of 8 (two-row panels) and 16
        // (pointwise, 256 output channels: its gathered rows copied into a panel first).
        for (c, cout, hw, k, pad) in [(64, 256, (8, 8), 3, 1), (600, 256, (4, 16), 1, 0)] {
            let (g, x, wt, _) = batch::<f32>(2, c, cout, hw, (k, pad, 1));
            assert!(g.cout * g.ckk() > LARGE_KERNEL);
            let gathered = Plan::with(g, g.oh, Kernel::Panels);
            assert!(gathered.taps.as_ref().is_some_and(|t| !t.pitched));
            gathers_what_the_im2col_panels_compute(&gathered, &x, &wt, &format!("c {c} {hw:?}"));
        }
    }

    #[test]
    fn the_fused_relu_is_the_relu_of_the_convolution() {
        // Bit for bit, on the panel path (batch 2) and gemm (f64, batch 1), with a pitched
        // width; and the fused op refuses a backward pass instead of returning a wrong one.
        for (dtype, b) in [(DType::F32, 2), (DType::F64, 1)] {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (b, 3, 7, 9), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.5, (5, 3, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 0.5, 5, &dev).unwrap();
            let [x, w, bias] = [x, w, bias].map(|t| t.to_dtype(dtype).unwrap());
            let fused = conv2d_bias_relu(&x, &w, &bias, 1, 1).unwrap();
            let plain = conv2d_bias(&x, &w, &bias, 1, 1).unwrap().relu().unwrap();
            let v = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            assert_eq!(v(&fused), v(&plain), "{dtype:?}");
            assert!(v(&fused).contains(&0.0) && v(&fused).iter().any(|&e| e > 0.0));
        }
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 7, 9), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.5, (5, 3, 3, 3), &Device::Cpu).unwrap();
        let bias = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        let y = conv2d_bias_relu(x.as_tensor(), &w, &bias, 1, 1).unwrap();
        let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(err.contains("inference-only"), "{err}");
    }

    #[test]
    fn the_plan_uses_panels_only_where_they_apply() {
        let g = |b, k| Geom::new(&[b, 8, 8, 8], &[8, 8, k, k], 0, 1);
        let threads = rayon::current_num_threads();
        assert_eq!(Plan::new::<f32>(g(threads, 3)).kernel, Kernel::detect());
        assert_eq!(Plan::new::<f64>(g(threads, 3)).kernel, Kernel::Gemm);
        assert_eq!(Plan::new::<f32>(g(threads, 1)).kernel, Kernel::detect());
        // a pointwise kernel whose rows fit no panel runs over the pitch (a copy of the image)
        let pointwise_7x6 = Geom::new(&[threads, 8, 7, 6], &[8, 8, 1, 1], 0, 1);
        assert_eq!(Plan::new::<f32>(pointwise_7x6).kernel, Kernel::detect());
        if threads > 1 {
            assert_eq!(Plan::new::<f32>(g(1, 3)).kernel, Kernel::Gemm);
        }
        let inside = crate::reference_ops(|| Plan::new::<f32>(g(threads, 3)).kernel);
        assert_eq!(inside, Kernel::Gemm);
        assert_eq!(Plan::new::<f32>(g(threads, 3)).kernel, Kernel::detect());
    }
}
