//! The f32 matrix product of the convolution's tiles, on a right operand packed in 16-wide
//! panels, with a hand-written AVX2+FMA register kernel.
//!
//! Why hand-written: `gemm` (what candle's matmul runs) packs both operands of every call into
//! its own blocked layout. The convolution's products at the UNet's 32x32 level are only 32 rows
//! (output channels) tall, so that packing, of an operand the size of the tile's im2col columns,
//! is not paid back, and they ran at about half of one core's peak (`examples/gemm_shapes.rs`,
//! bench/README "Roofline"). Here the kernel reads its operands where they already are: panels
//! that the im2col writes in the kernel's layout (`conv`'s `ColLayout`), or rows of a padded
//! image at tap offsets, with no im2col at all ([`packed_gather_product`], [`offsets_product`]).
//! Each entry point describes its operands (`Left`, `Right`); one `product` checks every bound
//! and runs the kernel or the portable loop.
//!
//! **The panel layout.** A `k x n` right operand `B` is stored as `ceil(n / 16)` panels of 16
//! columns; panel `p` holds `B[kk][16 p + l]` at `p * k * 16 + kk * 16 + l`, zero past column
//! `n`. [`panel_product`] multiplies one panel: `C[i][l] += sum_kk A[i][kk] B[kk][l]` for the
//! `m` rows of `A`, six rows at a time (the 6x16 kernel of BLIS's Haswell port: twelve
//! accumulators, two panel loads and six broadcasts per `kk`, which fits AVX2's sixteen
//! registers), then the rows left over.
//!
//! The AVX2+FMA kernel runs only where the CPU reports both features at run time; elsewhere a
//! portable loop computes the same sums (the tests run both). [`Kernel::detect`] picks which
//! implementation the convolution uses.

use crate::cpu_op::avx2_fma;
use std::any::TypeId;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Columns per panel: two AVX2 registers of f32.
pub(crate) const NR: usize = 16;

/// Rows of `A` the kernel keeps in registers at a time, and the height of a block of a packed
/// left operand ([`pack_left`]).
const MR: usize = 6;

/// Which implementation runs the convolution's tile products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Row-major im2col columns multiplied by `gemm` (every dtype, every CPU).
    Gemm,
    /// Columns packed in panels, multiplied by [`panel_product`] (f32).
    Panels,
}

impl Kernel {
    /// [`Kernel::Panels`] when this CPU has AVX2 and FMA, unless the environment variable
    /// `ACPO_CONV_KERNEL` is `gemm` (the bench's A/B switch); detected once per process.
    pub(crate) fn detect() -> Self {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let forced_gemm = std::env::var("ACPO_CONV_KERNEL").is_ok_and(|v| v == "gemm");
            if avx2_fma() && !forced_gemm {
                Kernel::Panels
            } else {
                Kernel::Gemm
            }
        })
    }
}

/// `s` as the f32 slice it is; panics for any other element type (the panel path is chosen
/// for f32 only).
pub(crate) fn f32s<T: 'static>(s: &[T]) -> &[f32] {
    assert_eq!(
        TypeId::of::<T>(),
        TypeId::of::<f32>(),
        "panel kernel: f32 only"
    );
    // SAFETY: T is f32 (checked above), so the slice is reinterpreted as itself.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// [`f32s`] for a mutable slice.
pub(crate) fn f32s_mut<T: 'static>(s: &mut [T]) -> &mut [f32] {
    assert_eq!(
        TypeId::of::<T>(),
        TypeId::of::<f32>(),
        "panel kernel: f32 only"
    );
    // SAFETY: as in `f32s`; the borrow of `s` moves into the result.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// Elements of `n` columns of a `k`-row operand in panels (the last panel padded to 16).
pub(crate) fn panels_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// `c[i * rsc + l] += sum over kk < k of a[i * rsa + kk] * b[kk * 16 + l]` for every row `i <
/// m` and lane `l < lanes`: `m` rows of a row-major `A` (rows `rsa` apart) times one panel `b`
/// (`k x 16`, [module docs](self)), added to the first `lanes` columns of `m` rows of `C` (rows
/// `rsc` apart). Lanes of the panel past `lanes` are read but their sums are dropped.
///
/// Panics when an operand is too short for the shape, or `lanes > 16`.
#[allow(clippy::too_many_arguments)] // the shape, two strided operands and a strided result
pub(crate) fn panel_product(
    m: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    b: &[f32],
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    product(m, k, Strided { a, rsa }, Panel(b), c, rsc, lanes);
}

/// [`panel_product`] with the left operand's rows at offsets in one slice: `A[i][kk] =
/// x[offs[i] + kk]`. This is the weight gradient without its im2col: `x` a zero-padded image,
/// `offs` where each kernel tap's row of columns starts.
///
/// Panics when `offs` has fewer than `m` entries, a row would read past `x`, the panel or the
/// result is too short, or `lanes > 16`.
#[allow(clippy::too_many_arguments)] // as panel_product, the left operand as slice and offsets
pub(crate) fn offsets_product(
    m: usize,
    k: usize,
    x: &[f32],
    offs: &[u32],
    b: &[f32],
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    product(m, k, RowOffsets { x, offs }, Panel(b), c, rsc, lanes);
}

/// Elements of an `m x k` left operand packed by [`pack_left`].
pub(crate) fn packed_len(m: usize, k: usize) -> usize {
    m * k
}

/// The `m x k` left operand `A[i][kk] = a[i * rsa + kk]` packed into `dst` for the kernel:
/// blocks of six rows (the last one `m % 6` rows where that is not zero), the block from row
/// `i0` at `i0 * k`, and within a block of `h` rows element `(i0 + i, kk)` at `kk * h + i`. The
/// kernel then reads a block's `h` values for one `kk` from one address, consecutively,
/// instead of from `h` rows `rsa` apart.
///
/// Panics when `a` is too short for the shape or `dst` shorter than [`packed_len`].
pub(crate) fn pack_left(m: usize, k: usize, a: &[f32], rsa: usize, dst: &mut [f32]) {
    Strided { a, rsa }.check(m, k);
    for i0 in (0..m).step_by(MR) {
        let h = MR.min(m - i0);
        let block = &mut dst[i0 * k..][..h * k];
        for (kk, col) in block.chunks_exact_mut(h).enumerate() {
            for (i, v) in col.iter_mut().enumerate() {
                *v = a[(i0 + i) * rsa + kk];
            }
        }
    }
}

/// [`panel_product`] with the left operand packed by [`pack_left`] (`a` holds its `m x k`
/// elements): the same sums in the same order, so the same result, bit for bit.
pub(crate) fn packed_panel_product(
    m: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    product(m, k, Packed { a, m, k }, Panel(b), c, rsc, lanes);
}

/// [`packed_panel_product`] with the right operand's rows gathered from an image instead of a
/// panel: `B[kk][l] = x[offs[kk] + l]` for `l < 8` and `x[offs[kk] + delta + l - 8]` for the
/// second half (`delta` is 8 where a row's 16 lanes are contiguous, an image row's pitch where
/// they are two image rows of 8). This is the convolution without its im2col: `x` a
/// zero-padded image, `offs` where each kernel tap reads, relative to the output pixels' first
/// input pixel; `a` the kernel, packed by [`pack_left`].
///
/// With `copy` (and `k <= COPY_ROWS`) the gathered rows are first copied into a panel on the
/// stack, which every block of six rows then reads: worth it where many blocks read the panel
/// and its rows lie in distinct cache lines (a pointwise kernel's rows are a channel plane
/// apart: 320 unaligned rows touch up to 640 lines, more than L1 holds, and each block re-read
/// them). The same sums in the same order either way.
///
/// Panics when an operand is too short, `offs` has fewer than `k` entries, a gathered row
/// would read past `x`, or `lanes > 16`.
#[allow(clippy::too_many_arguments)] // the shape, the packed kernel, the gather, the result
pub(crate) fn packed_gather_product(
    m: usize,
    k: usize,
    a: &[f32],
    (x, offs, delta): (&[f32], &[u32], usize),
    copy: bool,
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    let b = Gather { x, offs, delta };
    if copy && k <= COPY_ROWS {
        b.check(k);
        // not zeroed first: only the k rows written below are read (20 KiB per call otherwise)
        let mut panel = [MaybeUninit::<f32>::uninit(); COPY_ROWS * NR];
        for (row, &o) in panel.chunks_exact_mut(NR).zip(&offs[..k]) {
            let (lo, hi) = row.split_at_mut(NR / 2);
            let o = o as usize;
            for (half, src) in [(lo, &x[o..o + NR / 2]), (hi, &x[o + delta..][..NR / 2])] {
                for (d, &v) in half.iter_mut().zip(src) {
                    d.write(v);
                }
            }
        }
        // SAFETY: the first k rows of 16, all that this slice covers, were written above.
        let panel = unsafe { std::slice::from_raw_parts(panel.as_ptr().cast::<f32>(), k * NR) };
        return product(m, k, Packed { a, m, k }, Panel(panel), c, rsc, lanes);
    }
    product(m, k, Packed { a, m, k }, b, c, rsc, lanes);
}

/// Gathered rows at most that [`packed_gather_product`] copies into a panel (20 KiB): the
/// convolution's chunks of kernel rows are no longer (its `PANEL_ROWS`).
const COPY_ROWS: usize = 320;

/// `C += A B` for `m` rows of `A`, `k` products per element and the first `lanes` columns of
/// `C` (rows `rsc` apart): every bound checked here, then the AVX2+FMA kernel where the CPU has
/// it, else the portable loop on the same operands.
fn product<A: Left, B: Right>(
    m: usize,
    k: usize,
    a: A,
    b: B,
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    if m == 0 || lanes == 0 {
        return;
    }
    assert!(
        lanes <= NR,
        "panel product: {lanes} lanes in a {NR}-wide panel"
    );
    assert!(
        (m - 1) * rsc + lanes <= c.len(),
        "panel product: result too short for {m}x{lanes}"
    );
    a.check(m, k);
    b.check(k);
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the checks above keep every address the kernel forms inside its slice (`c`
        // up to `(m-1) rsc + lanes`, `A`'s `m` rows of `k` and `B`'s `k` rows of 16 by their
        // `check`), `c` is the only mutable one, and the CPU reports the kernel's features.
        unsafe { avx2::product(m, k, a.raw(), b.raw(), c.as_mut_ptr(), rsc, lanes) };
        return;
    }
    portable_product(
        m,
        k,
        |i, kk| a.at(i, kk),
        |kk, l| b.at(kk, l),
        c,
        rsc,
        lanes,
    );
}

/// A left operand: `m` rows of `k` consecutive elements each.
trait Left: Copy {
    /// Panics unless rows `0..m`, each `k` long, lie within the operand's slice.
    fn check(self, m: usize, k: usize);
    /// Element `kk` of row `i`.
    fn at(self, i: usize, kk: usize) -> f32;
    /// The raw form the AVX2 kernel reads.
    #[cfg(target_arch = "x86_64")]
    type Raw: avx2::Lhs;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> Self::Raw;
}

/// A right operand: `k` rows of 16 lanes.
trait Right: Copy {
    /// Panics unless rows `0..k`, all 16 lanes, lie within the operand's slice.
    fn check(self, k: usize);
    /// Lane `l` of row `kk`.
    fn at(self, kk: usize, l: usize) -> f32;
    /// The raw form the AVX2 kernel reads.
    #[cfg(target_arch = "x86_64")]
    type Raw: avx2::Rhs;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> Self::Raw;
}

/// Rows `rsa` apart in `a`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    a: &'a [f32],
    rsa: usize,
}

impl Left for Strided<'_> {
    fn check(self, m: usize, k: usize) {
        assert!(
            k == 0 || (m - 1) * self.rsa + k <= self.a.len(),
            "panel product: left operand too short for {m}x{k}"
        );
    }
    fn at(self, i: usize, kk: usize) -> f32 {
        self.a[i * self.rsa + kk]
    }
    #[cfg(target_arch = "x86_64")]
    type Raw = avx2::Strided;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> avx2::Strided {
        avx2::Strided {
            a: self.a.as_ptr(),
            rsa: self.rsa,
        }
    }
}

/// Row `i` at `offs[i]` in `x`.
#[derive(Clone, Copy)]
struct RowOffsets<'a> {
    x: &'a [f32],
    offs: &'a [u32],
}

impl Left for RowOffsets<'_> {
    fn check(self, m: usize, k: usize) {
        let reach = self.offs[..m].iter().max().map_or(0, |&o| o as usize + k);
        assert!(
            reach <= self.x.len(),
            "offsets product: a row reads past the image"
        );
    }
    fn at(self, i: usize, kk: usize) -> f32 {
        self.x[self.offs[i] as usize + kk]
    }
    #[cfg(target_arch = "x86_64")]
    type Raw = avx2::RowOffsets;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> avx2::RowOffsets {
        avx2::RowOffsets {
            base: self.x.as_ptr(),
            offs: self.offs.as_ptr(),
        }
    }
}

/// `m x k` rows packed by [`pack_left`].
#[derive(Clone, Copy)]
struct Packed<'a> {
    a: &'a [f32],
    m: usize,
    k: usize,
}

impl Left for Packed<'_> {
    fn check(self, m: usize, k: usize) {
        assert!(
            m == self.m && k == self.k && packed_len(m, k) <= self.a.len(),
            "packed product: left operand too short for {m}x{k}"
        );
    }
    fn at(self, i: usize, kk: usize) -> f32 {
        let i0 = i / MR * MR;
        let h = MR.min(self.m - i0);
        self.a[i0 * self.k + kk * h + i - i0]
    }
    #[cfg(target_arch = "x86_64")]
    type Raw = avx2::Packed;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> avx2::Packed {
        avx2::Packed {
            a: self.a.as_ptr(),
            k: self.k,
        }
    }
}

/// A panel: row `kk` at `kk * 16`.
#[derive(Clone, Copy)]
struct Panel<'a>(&'a [f32]);

impl Right for Panel<'_> {
    fn check(self, k: usize) {
        assert!(
            k * NR <= self.0.len(),
            "panel product: panel too short for {k} rows"
        );
    }
    fn at(self, kk: usize, l: usize) -> f32 {
        self.0[kk * NR + l]
    }
    #[cfg(target_arch = "x86_64")]
    type Raw = avx2::Panel;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> avx2::Panel {
        avx2::Panel(self.0.as_ptr())
    }
}

/// Row `kk` gathered from `x`: lanes 0..8 at `offs[kk]`, lanes 8..16 `delta` further.
#[derive(Clone, Copy)]
struct Gather<'a> {
    x: &'a [f32],
    offs: &'a [u32],
    delta: usize,
}

impl Right for Gather<'_> {
    fn check(self, k: usize) {
        // a row's furthest lane is `offs[kk] + max(delta, 8) + 7`
        let reach = self.offs[..k]
            .iter()
            .max()
            .map_or(0, |&o| o as usize + self.delta.max(8) + 8);
        assert!(
            reach <= self.x.len(),
            "gather product: a gathered row reads past the image"
        );
    }
    fn at(self, kk: usize, l: usize) -> f32 {
        let o = self.offs[kk] as usize;
        if l < 8 {
            self.x[o + l]
        } else {
            self.x[o + self.delta + l - 8]
        }
    }
    #[cfg(target_arch = "x86_64")]
    type Raw = avx2::Gather;
    #[cfg(target_arch = "x86_64")]
    fn raw(self) -> avx2::Gather {
        avx2::Gather {
            base: self.x.as_ptr(),
            offs: self.offs.as_ptr(),
            delta: self.delta,
        }
    }
}

/// The products as plain loops, the right operand's element `(kk, l)` from `b`: the fallback,
/// and the tests' second implementation.
#[allow(clippy::too_many_arguments)]
fn portable_product(
    m: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    c: &mut [f32],
    rsc: usize,
    lanes: usize,
) {
    for i in 0..m {
        let mut acc = [0f32; NR];
        for kk in 0..k {
            let av = a(i, kk);
            for (l, s) in acc.iter_mut().enumerate() {
                *s = av.mul_add(b(kk, l), *s);
            }
        }
        for (d, s) in c[i * rsc..][..lanes].iter_mut().zip(acc) {
            *d += s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Where the kernel finds row `i` of the left operand: its element `kk` at `row(i) + kk *
    /// STEP`, for a block of `M` rows from the operand's start (after a `skip`).
    pub(super) trait Lhs: Copy {
        /// Whether a block's elements of one `kk` are consecutive ([`Packed`]): the step from
        /// one `kk` to the next is then the block's height; else 1.
        const PACKED: bool = false;
        /// The address of row `i`'s first element.
        unsafe fn row(self, i: usize) -> *const f32;
        /// The operand from its row `i` on.
        unsafe fn skip(self, i: usize) -> Self;
    }

    /// Rows `rsa` apart.
    #[derive(Clone, Copy)]
    pub(super) struct Strided {
        pub(super) a: *const f32,
        pub(super) rsa: usize,
    }

    impl Lhs for Strided {
        #[inline(always)]
        unsafe fn row(self, i: usize) -> *const f32 {
            self.a.add(i * self.rsa)
        }
        #[inline(always)]
        unsafe fn skip(self, i: usize) -> Self {
            Self {
                a: self.row(i),
                ..self
            }
        }
    }

    /// Row `i` at `offs[i]` from `base`.
    #[derive(Clone, Copy)]
    pub(super) struct RowOffsets {
        pub(super) base: *const f32,
        pub(super) offs: *const u32,
    }

    impl Lhs for RowOffsets {
        #[inline(always)]
        unsafe fn row(self, i: usize) -> *const f32 {
            self.base.add(*self.offs.add(i) as usize)
        }
        #[inline(always)]
        unsafe fn skip(self, i: usize) -> Self {
            Self {
                offs: self.offs.add(i),
                ..self
            }
        }
    }

    /// Blocks of rows packed by [`super::pack_left`]: the block from row `i` at `i * k`.
    #[derive(Clone, Copy)]
    pub(super) struct Packed {
        pub(super) a: *const f32,
        pub(super) k: usize,
    }

    impl Lhs for Packed {
        const PACKED: bool = true;
        #[inline(always)]
        unsafe fn row(self, i: usize) -> *const f32 {
            self.a.add(i)
        }
        #[inline(always)]
        unsafe fn skip(self, i: usize) -> Self {
            Self {
                a: self.a.add(i * self.k),
                ..self
            }
        }
    }

    /// Where the kernel finds row `kk` of the right operand: two 8-float vectors.
    pub(super) trait Rhs: Copy {
        /// The addresses of lanes 0..8 and 8..16 of row `kk`.
        unsafe fn row(self, kk: usize) -> (*const f32, *const f32);
    }

    /// A panel: row `kk` at `kk * 16`.
    #[derive(Clone, Copy)]
    pub(super) struct Panel(pub(super) *const f32);

    impl Rhs for Panel {
        #[inline(always)]
        unsafe fn row(self, kk: usize) -> (*const f32, *const f32) {
            let p = self.0.add(kk * NR);
            (p, p.add(8))
        }
    }

    /// Rows gathered from an image: row `kk` at `offs[kk]`, its second half `delta` further.
    #[derive(Clone, Copy)]
    pub(super) struct Gather {
        pub(super) base: *const f32,
        pub(super) offs: *const u32,
        pub(super) delta: usize,
    }

    impl Rhs for Gather {
        #[inline(always)]
        unsafe fn row(self, kk: usize) -> (*const f32, *const f32) {
            let p = self.base.add(*self.offs.add(kk) as usize);
            (p, p.add(self.delta))
        }
    }

    /// [`super::panel_product`] on raw pointers: blocks of six rows, then one block of the
    /// rest. Callers check the bounds and the CPU features.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product<A: Lhs, B: Rhs>(
        m: usize,
        k: usize,
        a: A,
        b: B,
        c: *mut f32,
        rsc: usize,
        lanes: usize,
    ) {
        let mut i = 0;
        while i + MR <= m {
            rows::<MR, A, B>(k, a.skip(i), b, c.add(i * rsc), rsc, lanes);
            i += MR;
        }
        let (a, c) = (a.skip(i), c.add(i * rsc));
        match m - i {
            0 => {}
            1 => rows::<1, A, B>(k, a, b, c, rsc, lanes),
            2 => rows::<2, A, B>(k, a, b, c, rsc, lanes),
            3 => rows::<3, A, B>(k, a, b, c, rsc, lanes),
            4 => rows::<4, A, B>(k, a, b, c, rsc, lanes),
            _ => rows::<5, A, B>(k, a, b, c, rsc, lanes),
        }
    }

    /// `M` rows (`M <= 6`) times the right operand, the sums in `2 M` registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const M: usize, A: Lhs, B: Rhs>(
        k: usize,
        a: A,
        b: B,
        c: *mut f32,
        rsc: usize,
        lanes: usize,
    ) {
        let step = if A::PACKED { M } else { 1 };
        let a: [*const f32; M] = std::array::from_fn(|i| a.row(i));
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for kk in 0..k {
            let (p0, p1) = b.row(kk);
            let b0 = _mm256_loadu_ps(p0);
            let b1 = _mm256_loadu_ps(p1);
            for (i, s) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a[i].add(kk * step));
                s[0] = _mm256_fmadd_ps(av, b0, s[0]);
                s[1] = _mm256_fmadd_ps(av, b1, s[1]);
            }
        }
        for (i, s) in acc.iter().enumerate() {
            let row = c.add(i * rsc);
            if lanes == NR {
                _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), s[0]));
                _mm256_storeu_ps(row.add(8), _mm256_add_ps(_mm256_loadu_ps(row.add(8)), s[1]));
            } else {
                let mut sums = [0f32; NR];
                _mm256_storeu_ps(sums.as_mut_ptr(), s[0]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), s[1]);
                for (l, v) in sums.iter().take(lanes).enumerate() {
                    *row.add(l) += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C += A B` in f64 from the definition, for the same strided operands.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        k: usize,
        a: &[f32],
        rsa: usize,
        b: &[f32],
        c: &[f32],
        rsc: usize,
        lanes: usize,
    ) -> Vec<f64> {
        let mut out: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        for i in 0..m {
            for l in 0..lanes {
                let s: f64 = (0..k)
                    .map(|kk| a[i * rsa + kk] as f64 * b[kk * NR + l] as f64)
                    .sum();
                out[i * rsc + l] += s;
            }
        }
        out
    }

    fn wave(n: usize, f: f64) -> Vec<f32> {
        (0..n).map(|i| ((i as f64 * f).sin()) as f32).collect()
    }

    #[test]
    fn both_implementations_compute_the_definition() {
        // Row counts around the six-row block (remainders 1..5, several blocks), short and
        // long products, full and partial panels, operands with row gaps; the elements of C
        // outside the product must stay as they were.
        for m in [1, 2, 5, 6, 7, 12, 13, 32] {
            for k in [0, 1, 3, 27, 64, 300] {
                for lanes in [1, 7, 15, 16] {
                    let (rsa, rsc) = (k + 3, lanes + 5);
                    let a = wave(m * rsa, 0.37);
                    let b = wave(k * NR, 0.11);
                    let c0 = wave(m * rsc, 0.23);
                    let want = reference(m, k, &a, rsa, &b, &c0, rsc, lanes);
                    let mut fast = c0.clone();
                    panel_product(m, k, &a, rsa, &b, &mut fast, rsc, lanes);
                    let mut plain = c0.clone();
                    let bv = |kk: usize, l: usize| b[kk * NR + l];
                    let av = |i: usize, kk: usize| a[i * rsa + kk];
                    portable_product(m, k, av, bv, &mut plain, rsc, lanes);
                    for (what, got) in [("dispatched", &fast), ("portable", &plain)] {
                        for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            // f32 sums of k products of magnitude <= 1
                            let tol = 1e-6 * (k as f64 + 1.0);
                            assert!(
                                (g as f64 - w).abs() <= tol,
                                "{what}: m {m} k {k} lanes {lanes} at {idx}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_packed_left_operand_gives_the_strided_products_bit_for_bit() {
        // row counts around the six-row blocks, rows with gaps (rsa > k), partial panels
        for m in [1, 5, 6, 7, 13, 32] {
            for k in [1, 9, 64] {
                for lanes in [3, 16] {
                    let rsa = k + 2;
                    let a = wave(m * rsa, 0.37);
                    let mut packed = vec![f32::NAN; packed_len(m, k)];
                    pack_left(m, k, &a, rsa, &mut packed);
                    assert!(packed.iter().all(|v| !v.is_nan()), "every element packed");
                    let b = wave(k * NR, 0.11);
                    let c0 = wave(m * NR, 0.23);
                    let mut want = c0.clone();
                    panel_product(m, k, &a, rsa, &b, &mut want, NR, lanes);
                    let mut got = c0.clone();
                    packed_panel_product(m, k, &packed, &b, &mut got, NR, lanes);
                    assert_eq!(got, want, "m {m} k {k} lanes {lanes}");
                    let mut plain = c0.clone();
                    let p = Packed { a: &packed, m, k };
                    portable_product(
                        m,
                        k,
                        |i, kk| p.at(i, kk),
                        |kk, l| b[kk * NR + l],
                        &mut plain,
                        NR,
                        lanes,
                    );
                    for (g, w) in plain.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-5, "portable on packed: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn gathered_rows_are_the_rows_of_a_panel() {
        // The same product with the right operand gathered from an "image" and packed as a
        // panel: contiguous rows (delta 8) and rows split over two image rows (delta 11).
        let x = wave(600, 0.19);
        for delta in [8, 11] {
            for (m, k) in [(6, 9), (13, 27), (3, 1)] {
                let offs: Vec<u32> = (0..k as u32).map(|kk| (kk * 37) % 500).collect();
                let mut panel = vec![0f32; k * NR];
                for (kk, &o) in offs.iter().enumerate() {
                    for l in 0..NR {
                        let at = o as usize + if l < 8 { l } else { delta + l - 8 };
                        panel[kk * NR + l] = x[at];
                    }
                }
                let a = wave(m * k, 0.41);
                let mut packed = vec![0f32; packed_len(m, k)];
                pack_left(m, k, &a, k, &mut packed);
                let c0 = wave(m * NR, 0.23);
                let mut want = c0.clone();
                panel_product(m, k, &a, k, &panel, &mut want, NR, NR);
                for copy in [false, true] {
                    let mut got = c0.clone();
                    let b = (&x[..], &offs[..], delta);
                    packed_gather_product(m, k, &packed, b, copy, &mut got, NR, NR);
                    assert_eq!(got, want, "m {m} k {k} delta {delta} copy {copy}");
                }
            }
        }
    }

    #[test]
    fn rows_at_offsets_are_the_rows_of_a_matrix() {
        // The same product with the left operand's rows at scattered offsets of one slice and
        // copied into a row-major matrix; remainder rows included.
        let x = wave(900, 0.19);
        for (m, k) in [(6, 9), (13, 40), (5, 1)] {
            let offs: Vec<u32> = (0..m as u32).map(|i| (i * 61) % 800).collect();
            let a: Vec<f32> = offs
                .iter()
                .flat_map(|&o| x[o as usize..][..k].to_vec())
                .collect();
            let b = wave(k * NR, 0.11);
            let c0 = wave(m * NR, 0.23);
            let mut want = c0.clone();
            panel_product(m, k, &a, k, &b, &mut want, NR, NR);
            let mut got = c0.clone();
            offsets_product(m, k, &x, &offs, &b, &mut got, NR, NR);
            assert_eq!(got, want, "m {m} k {k}");
        }
    }

    #[test]
    #[should_panic(expected = "reads past the image")]
    fn a_gather_past_the_image_panics() {
        // the second half of row 1 would read x[23..31] of 30
        let (a, x) = (vec![0f32; 2], vec![0f32; 30]);
        let mut c = vec![0f32; NR];
        packed_gather_product(1, 2, &a, (&x, &[0, 15], 8), true, &mut c, NR, NR);
    }

    #[test]
    #[should_panic(expected = "left operand too short")]
    fn a_short_operand_panics() {
        let a = vec![0f32; 10];
        let b = vec![0f32; 4 * NR];
        let mut c = vec![0f32; 2 * NR];
        panel_product(2, 4, &a, 8, &b, &mut c, NR, NR);
    }
}
