//! What the hand-written CPU ops ([`crate::conv`], [`crate::norm`], [`crate::attention`]) share:
//! the f32/f64 dispatch from candle's storage to typed slices, their [`crate::timing`] spans,
//! and the fixed-order gradient reduction over the batch that keeps their gradients
//! bit-identical whatever the thread count.

use crate::timing::{span, OpClass};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The element types the CPU ops run on (f32, f64): candle's dtype plus float math.
pub(crate) trait Elem: WithDType + num_traits::Float {
    /// `e^self`: [`exp_f32`] for f32 (which vectorises; libm's `expf` is a call per element),
    /// the exact `exp` for f64.
    fn exp_fast(self) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 within 2 ulp over the whole range (Cephes' `expf`: `x = n ln 2 + r`, `|r| <=
/// ln 2 / 2`, a degree-6 polynomial for `e^r`, `2^n` from the exponent bits), in plain
/// arithmetic so that a loop of it vectorises. Inputs are clamped to [-87.3, 88.3], where
/// `2^n` stays a normal float: below, the result is about 1.2e-38 instead of rounding to 0 (or
/// a subnormal); above, about 2.1e38 instead of infinity. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer n in SSE2 arithmetic, and leaves n in the
    // sum's low mantissa bits: integer arithmetic on the bits, which vectorises (a float to int
    // cast with Rust's saturating semantics does not).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits((ni.wrapping_add(127) as u32) << 23)
}

thread_local! {
    /// Set inside [`reference_ops`] on this thread.
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the ops this thread starts computed as every result before 2026-12-03 was:
/// convolutions multiplied by `gemm` instead of the panel kernel (which adds the same products
/// in another order), and SiLU's `exp` from libm instead of [`exp_f32`]. The default ops
/// differ from these in the last bits; this reproduces digests pinned before (the sampler's
/// test) and compares the two in one process.
pub fn reference_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE.set(self.0);
        }
    }
    let _restore = Restore(REFERENCE.replace(true));
    f()
}

/// Whether this thread is inside [`reference_ops`] (read by an op on the thread that starts it,
/// before it fans out).
pub(crate) fn in_reference_ops() -> bool {
    REFERENCE.get()
}

/// Whether this CPU runs AVX2 and FMA (the panel kernel's, and the vectorised op loops', run
/// time dispatch).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A three-input CPU op written once for every [`Elem`]; [`forward`] and [`backward`] pick the
/// element type from the inputs' dtype, and [`Op3`] makes it a candle op.
pub(crate) trait TypedOp3 {
    /// Names the op to candle and in error messages.
    const NAME: &'static str;
    /// What its forward and its backward pass count as in [`crate::timing`].
    const TIMING: [OpClass; 2];
    /// The output's shape for inputs of these layouts.
    fn out_shape(&self, layouts: [&Layout; 3]) -> Shape;
    /// The output, from the three inputs as contiguous slices, and their layouts.
    fn forward<T: Elem>(&self, a: &[T], b: &[T], c: &[T], layouts: [&Layout; 3]) -> Vec<T>;
    /// The gradients of the three inputs, from the inputs and the output's gradient `gy`.
    fn backward<T: Elem>(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)>;
}

/// `CustomOp3::cpu_fwd` for a [`TypedOp3`]: the storage of its output.
pub(crate) fn forward<O: TypedOp3>(
    op: &O,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> candle_core::Result<CpuStorage> {
    fn typed<O: TypedOp3, T: Elem>(
        op: &O,
        (a, b, c): (&[T], &[T], &[T]),
        layouts: [&Layout; 3],
    ) -> candle_core::Result<Vec<T>> {
        let [l1, l2, l3] = layouts;
        Ok(op.forward(
            contiguous_slice(a, l1, O::NAME)?,
            contiguous_slice(b, l2, O::NAME)?,
            contiguous_slice(c, l3, O::NAME)?,
            layouts,
        ))
    }
    let layouts = [l1, l2, l3];
    let _span = span(O::TIMING[0]);
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => {
            CpuStorage::F32(typed(op, (a, b, c), layouts)?)
        }
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => {
            CpuStorage::F64(typed(op, (a, b, c), layouts)?)
        }
        _ => candle_core::bail!("{}: the three inputs must all be f32 or all f64", O::NAME),
    })
}

/// `CustomOp3::bwd` for a [`TypedOp3`]: every input gets a gradient.
#[allow(clippy::type_complexity)] // CustomOp3::bwd's own return type
pub(crate) fn backward<O: TypedOp3>(
    op: &O,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    gy: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let _span = span(O::TIMING[1]);
    let (ga, gb, gc) = match a.dtype() {
        DType::F32 => op.backward::<f32>(a, b, c, gy)?,
        DType::F64 => op.backward::<f64>(a, b, c, gy)?,
        d => candle_core::bail!("{}: unsupported dtype {d:?}", O::NAME),
    };
    Ok((Some(ga), Some(gb), Some(gc)))
}

/// A [`TypedOp3`] as candle's `CustomOp3` (through this local wrapper: the trait is candle's):
/// `x.apply_op3(&y, &z, Op3(op))`.
pub(crate) struct Op3<O>(pub O);

impl<O: TypedOp3 + Send + Sync> CustomOp3 for Op3<O> {
    fn name(&self) -> &'static str {
        O::NAME
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
        let storage = forward(&self.0, (s1, l1), (s2, l2), (s3, l3))?;
        Ok((storage, self.0.out_shape([l1, l2, l3])))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(&self.0, a, b, c, gy)
    }
}

/// The elements of a CPU storage's slice `v` that a contiguous layout addresses; an error
/// naming op `name` for any other layout.
pub(crate) fn contiguous_slice<'a, T>(
    v: &'a [T],
    l: &Layout,
    name: &str,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: non-contiguous input")))?;
    Ok(&v[a..b])
}

/// Runs `f` on the tensors' elements, row-major, on the host: borrowed from the storage of a
/// contiguous CPU tensor (the backward passes' inputs, activation-sized: a copy of each cost a
/// few percent of a training step), copied for any other.
pub fn on_host<T: WithDType, R, const N: usize>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[T]; N]) -> R,
) -> candle_core::Result<R> {
    on_host_all(&ts, |slices| f(std::array::from_fn(|i| slices[i])))
}

/// [`on_host`] for any number of tensors: `f` gets one slice per tensor, in order.
pub(crate) fn on_host_all<T: WithDType, R>(
    ts: &[&Tensor],
    f: impl FnOnce(&[&[T]]) -> R,
) -> candle_core::Result<R> {
    let borrowable = |t: &Tensor| t.is_contiguous() && t.device().is_cpu();
    // copies first, under no lock of ours
    let copies = ts
        .iter()
        .map(|t| match borrowable(t) {
            true => Ok(None),
            false => t.flatten_all()?.to_vec1::<T>().map(Some),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[T]> = Vec::with_capacity(ts.len());
    for (copy, (storage, layout)) in copies.iter().zip(&guards) {
        slices.push(match (copy, &**storage) {
            (Some(v), _) => v,
            (None, Storage::Cpu(cpu)) => {
                let (a, b) = layout.contiguous_offsets().expect("checked contiguous");
                &cpu.as_slice::<T>()?[a..b]
            }
            (None, _) => candle_core::bail!("on_host: a CPU tensor's storage is not on the CPU"),
        });
    }
    Ok(f(&slices))
}

/// Buffers that the tasks of one parallel loop reuse: a task takes one (or makes one when all
/// are in use) and puts it back. So a loop makes as many as run at once (about the thread
/// count), where rayon's `for_each_init` / `map_init` make one per split of the work, several
/// times that, each a few hundred KB to allocate and zero. Every task must overwrite what it
/// reads from its buffers (the ops' buffers are written before they are read).
pub(crate) struct Pool<S>(Mutex<Vec<S>>);

impl<S> Default for Pool<S> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<S> Pool<S> {
    /// Runs `f` on a free buffer, made by `make` if none is free.
    pub(crate) fn with<R>(&self, make: impl FnOnce() -> S, f: impl FnOnce(&mut S) -> R) -> R {
        let free = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buffer = free.unwrap_or_else(make);
        let out = f(&mut buffer);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
        out
    }
}

/// Independent partial sums that [`lane_sum`] keeps: one f64 chain is bound by the add's
/// latency (about 4 cycles per element: most of GroupNorm's time in `perf` once, and about 2 %
/// of a training step in the convolution's bias gradient, a single f32 chain per channel);
/// eight independent chains overlap. They are added in a fixed order, so a sum does not depend
/// on threads.
const LANES: usize = 8;

/// `sum_i f(xs[i], ys[i])` in f64 over [`LANES`] interleaved chains (element `i` in chain
/// `i % LANES`, the tail past the last full round in its own), added in a fixed order. Over
/// whole chunks of `LANES`, so that the chains become vector registers.
#[inline(always)]
pub(crate) fn lane_sum<T: Copy>(xs: &[T], ys: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let tail: f64 = (xc.remainder().iter().zip(yc.remainder()))
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (xb, yb) in xc.zip(yc) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(xb[l], yb[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// An op's output, `n` elements that the tasks of a parallel loop write chunk by chunk: the
/// task that takes a chunk zeroes it first, in its own cache and on every thread at once.
/// `vec![0; n]` instead has the calling thread zero the whole output (a `memset` of megabytes)
/// while the other threads wait: about 4 % of a sampling step of the cpu-profile UNet (`perf`).
pub(crate) struct ParZeroed<T> {
    v: Vec<T>,
    n: usize,
    chunk: usize,
    zeroed: AtomicUsize,
}

impl<T: WithDType> ParZeroed<T> {
    /// `n` elements in chunks of `chunk` (the last may be shorter).
    pub(crate) fn new(n: usize, chunk: usize) -> Self {
        Self {
            v: Vec::with_capacity(n),
            n,
            chunk: chunk.max(1),
            zeroed: AtomicUsize::new(0),
        }
    }

    /// The chunks in order, each zeroed by the task that takes it.
    pub(crate) fn par_chunks_mut(&mut self) -> impl IndexedParallelIterator<Item = &mut [T]> {
        let Self {
            v,
            n,
            chunk,
            zeroed,
        } = self;
        let zeroed = &*zeroed;
        v.spare_capacity_mut()[..*n]
            .par_chunks_mut(*chunk)
            .map(move |c| {
                for e in c.iter_mut() {
                    e.write(T::zero());
                }
                zeroed.fetch_add(1, Ordering::Relaxed);
                // SAFETY: every element of `c` was written just above.
                unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) }
            })
    }

    /// The output. Panics unless every chunk was handed out, and so written.
    pub(crate) fn into_vec(mut self) -> Vec<T> {
        let chunks = self.n.div_ceil(self.chunk);
        assert_eq!(
            self.zeroed.load(Ordering::Relaxed),
            chunks,
            "ParZeroed: a loop wrote only some of the output's chunks"
        );
        // SAFETY: all `n` elements were initialised, chunk by chunk (counted above).
        unsafe { self.v.set_len(self.n) };
        self.v
    }
}

/// The batch is split into at most this many fixed runs of consecutive images for a backward
/// pass; each run sums its images' parameter gradients in order, and the runs' sums are added
/// in order ([`sum_runs`]). The split depends on the batch size only, never on the thread count
/// or on scheduling, so the gradients (and training) are bit-reproducible.
pub(crate) const REDUCTION_RUNS: usize = 16;

/// Images per run for a batch of `b` (see [`REDUCTION_RUNS`]).
pub(crate) fn run_len(b: usize) -> usize {
    b.div_ceil(REDUCTION_RUNS).max(1)
}

/// Adds up the runs' two parameter-gradient accumulators, in run order.
pub(crate) fn sum_runs<U>(runs: Vec<(Vec<U>, Vec<U>)>) -> (Vec<U>, Vec<U>)
where
    U: Copy + std::ops::AddAssign,
{
    let mut it = runs.into_iter();
    let (mut p, mut q) = it.next().expect("a batch has at least one run");
    for (p2, q2) in it {
        p.iter_mut().zip(&p2).for_each(|(a, &b)| *a += b);
        q.iter_mut().zip(&q2).for_each(|(a, &b)| *a += b);
    }
    (p, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_the_batch_in_at_most_reduction_runs() {
        for b in 1..100 {
            let run = run_len(b);
            assert!(b.div_ceil(run) <= REDUCTION_RUNS, "batch {b}");
        }
    }

    #[test]
    fn sum_runs_adds_in_run_order() {
        let runs = vec![
            (vec![1.0f32, 1e8], vec![1.0]),
            (vec![2.0, -1e8], vec![2.0]),
            (vec![3.0, 1.0], vec![3.0]),
        ];
        let (p, q) = sum_runs(runs);
        // (1e8 + -1e8) + 1 = 1 in f32; any other order loses the 1.
        assert_eq!(p, vec![6.0, 1.0]);
        assert_eq!(q, vec![6.0]);
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_exp() {
        // every 97th float bit pattern in [-87.3, 88.3], against f64's exp rounded to f32
        let (lo, hi) = ((-87.3f32).to_bits(), 88.3f32.to_bits());
        let mut worst = 0u32;
        let negatives = (0x8000_0000u32..=lo).step_by(97);
        let positives = (0u32..=hi).step_by(97);
        for bits in negatives.chain(positives) {
            let x = f32::from_bits(bits);
            let want = (x as f64).exp() as f32;
            let ulps = want.to_bits().abs_diff(exp_f32(x).to_bits());
            worst = worst.max(ulps);
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1000.0) < 1.3e-38 && exp_f32(-1000.0) > 0.0);
        assert!(exp_f32(1000.0).is_finite() && exp_f32(1000.0) > 2e38);
    }

    #[test]
    fn par_zeroed_hands_out_zeroed_chunks_and_checks_it_wrote_them_all() {
        let mut out = ParZeroed::<f32>::new(10, 4);
        out.par_chunks_mut().enumerate().for_each(|(i, c)| {
            assert!(c.iter().all(|&v| v == 0.0));
            c[0] = i as f32 + 1.0;
        });
        assert_eq!(
            out.into_vec(),
            [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]
        );
        assert!(ParZeroed::<f64>::new(0, 0).into_vec().is_empty());
        let partial = std::panic::catch_unwind(|| {
            let mut out = ParZeroed::<f32>::new(10, 4);
            out.par_chunks_mut().take(2).for_each(|c| c[0] = 1.0);
            out.into_vec()
        });
        assert!(partial.is_err(), "two of three chunks written");
    }

    #[test]
    fn a_pool_reuses_its_buffers() {
        let pool = Pool::default();
        let mut made = 0;
        for _ in 0..3 {
            pool.with(
                || {
                    made += 1;
                    vec![0u8; 4]
                },
                |b| b[0] += 1,
            );
        }
        assert_eq!(made, 1);
        assert_eq!(pool.with(Vec::new, |b| b[0]), 3);
    }
}
