//! What the hand-written CPU ops ([`crate::conv`], [`crate::norm`], [`crate::attention`]) share:
//! the f32/f64 dispatch from candle's storage to typed slices, their [`crate::timing`] spans,
//! and the fixed-order gradient reduction over the batch that keeps their gradients
//! bit-identical whatever the thread count.

use crate::timing::{span, OpClass};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};

/// The element types the CPU ops run on (f32, f64): candle's dtype plus float math.
pub(crate) trait Elem: WithDType + num_traits::Float {}
impl Elem for f32 {}
impl Elem for f64 {}

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
            slice::<O, _>(a, l1)?,
            slice::<O, _>(b, l2)?,
            slice::<O, _>(c, l3)?,
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

/// The elements a contiguous layout addresses.
fn slice<'a, O: TypedOp3, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{}: non-contiguous input", O::NAME)))?;
    Ok(&v[a..b])
}

/// A tensor's elements, row-major, on the host.
pub(crate) fn host_vec<T: WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
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
}
