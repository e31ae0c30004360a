//! Strided matrix views over slices and the one call into `gemm` that the ops share.
//!
//! A view addresses element `(i, j)` at `i * rs + j * cs` of the slice it was made from and
//! remembers that slice's length, so [`matmul`] checks every view against its slice before
//! handing raw pointers to `gemm`: a wrong shape at a call site panics instead of reading or
//! writing out of bounds.

use candle_core::WithDType;
use gemm::Parallelism;

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    ptr: *const T,
    len: usize,
    rs: usize,
    cs: usize,
}

impl<T> Mat<T> {
    /// The row-major matrix with `cols` columns stored contiguously in `s`.
    pub(crate) fn rows(s: &[T], cols: usize) -> Self {
        Self::block(s, cols)
    }

    /// Rows that start `stride` elements apart in `s`, from `s[0]`: a block of columns of a
    /// wider row-major matrix (one attention head's columns of a token matrix), or a
    /// contiguous matrix when `stride` is its width.
    pub(crate) fn block(s: &[T], stride: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
            rs: stride,
            cs: 1,
        }
    }

    /// The transposed view of the same elements.
    pub(crate) fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether a `rows x cols` matrix through this view stays inside its slice.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.len
    }
}

/// A writable strided matrix view.
pub(crate) struct MatMut<T> {
    ptr: *mut T,
    len: usize,
    rs: usize,
    cs: usize,
}

impl<T> MatMut<T> {
    /// The row-major matrix with `cols` columns stored contiguously in `s`.
    pub(crate) fn rows(s: &mut [T], cols: usize) -> Self {
        Self::block(s, cols)
    }

    /// Rows that start `stride` elements apart in `s`, from `s[0]` (see [`Mat::block`]).
    pub(crate) fn block(s: &mut [T], stride: usize) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            rs: stride,
            cs: 1,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.len
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`; `accumulate` adds to what `dst` holds.
///
/// Panics when a view does not fit its slice. `T` must be f32 or f64 (the ops dispatch only
/// those: `cpu_op::Elem`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: WithDType>(
    dst: MatMut<T>,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: Parallelism,
) {
    assert!(dst.fits(m, n), "gemm destination too small for {m}x{n}");
    assert!(lhs.fits(m, k), "gemm left operand too small for {m}x{k}");
    assert!(rhs.fits(k, n), "gemm right operand too small for {k}x{n}");
    // SAFETY: the three asserts above keep every element `gemm` addresses inside the slice its
    // view was made from; `dst` is the only view made from a `&mut` slice, so it aliases no
    // operand; `gemm` supports f32 and f64, the only element types that reach here.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Threading of the matrix products of a batch split over rayon: inside `gemm` only when the
/// batch has fewer items than threads (e.g. sampling one image), otherwise one item per task.
pub(crate) fn inner_parallelism(batch: usize) -> Parallelism {
    if batch >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
        (0..m * n)
            .map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum())
            .collect()
    }

    #[test]
    fn blocks_and_transposes_address_the_right_elements() {
        // A 3x5 matrix; the block of its columns 2..4 times a 2x2 matrix, written into the
        // columns 1..3 of a 3x4 destination that keeps its other columns.
        let a: Vec<f64> = (0..15).map(|i| i as f64).collect();
        let b = [1.0, 2.0, 3.0, 4.0];
        let mut dst = [-1.0; 12];
        matmul(
            MatMut::block(&mut dst[1..], 4),
            false,
            3,
            2,
            2,
            Mat::block(&a[2..], 5),
            Mat::rows(&b, 2),
            Parallelism::None,
        );
        let sub: Vec<f64> = (0..3).flat_map(|i| [a[i * 5 + 2], a[i * 5 + 3]]).collect();
        let want = naive(&sub, &b, 3, 2, 2);
        for i in 0..3 {
            assert_eq!(dst[i * 4], -1.0);
            assert_eq!(&dst[i * 4 + 1..i * 4 + 3], &want[i * 2..i * 2 + 2]);
            assert_eq!(dst[i * 4 + 3], -1.0);
        }
        // Transposed operand: (a_block)^T (2x3) times a 3x1 vector.
        let v = [1.0, 10.0, 100.0];
        let mut out = vec![0.0; 2];
        matmul(
            MatMut::rows(&mut out, 1),
            false,
            2,
            1,
            3,
            Mat::block(&a[2..], 5).t(),
            Mat::rows(&v, 1),
            Parallelism::None,
        );
        assert_eq!(out, vec![2.0 + 70.0 + 1200.0, 3.0 + 80.0 + 1300.0]);
    }

    #[test]
    #[should_panic(expected = "left operand too small")]
    fn a_view_past_its_slice_panics() {
        let a = vec![0.0f32; 5];
        let b = vec![0.0f32; 4];
        let mut d = vec![0.0f32; 6];
        matmul(
            MatMut::rows(&mut d, 2),
            false,
            3,
            2,
            2,
            Mat::rows(&a, 2),
            Mat::rows(&b, 2),
            Parallelism::None,
        );
    }
}
