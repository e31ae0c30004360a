//! Single-thread GFLOP/s of `gemm` on the matrix products of the cpu-profile UNet's
//! convolutions, each in both orientations (`C = A B` and `C^T = B^T A^T`, the same products):
//! the forward pass (`W cols`), the input gradient's columns (`W^T dY`) and the weight gradient
//! (`dY cols^T`). On the 2-core AMD EPYC of 2026-12-03 the two orientations were within the
//! run-to-run noise of each other (about 10 %) for every product, so `conv.rs` keeps the
//! orientation as written; the small widths at 32x32 reach about half of one core's AVX2 peak.
//!
//! Usage: `cargo run --release -p acpo-ops --example gemm_shapes` (set `RAYON_NUM_THREADS=1`).

use gemm::Parallelism;
use std::time::Instant;

/// A row-major view: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View {
    rs: isize,
    cs: isize,
}

/// `dst (m x n) = a (m x k) b (k x n)` through the views.
#[allow(clippy::too_many_arguments)]
fn product(
    dims: (usize, usize, usize),
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    d: &mut [f32],
    dv: View,
) {
    let (m, n, k) = dims;
    let last = |v: View, r: usize, c: usize| (r - 1) as isize * v.rs + (c - 1) as isize * v.cs;
    assert!(last(av, m, k) < a.len() as isize && last(bv, k, n) < b.len() as isize);
    assert!(last(dv, m, n) < d.len() as isize);
    // SAFETY: the asserts keep every addressed element inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d.as_mut_ptr(),
            dv.cs,
            dv.rs,
            false,
            a.as_ptr(),
            av.cs,
            av.rs,
            b.as_ptr(),
            bv.cs,
            bv.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// GFLOP/s of `f`, a product of `flops`, repeated for about 2 GFLOP after a warm-up.
fn rate(flops: usize, mut f: impl FnMut()) -> f64 {
    let reps = 2_000_000_000 / flops + 1;
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    (flops * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let rows = |cols: usize| View {
        rs: cols as isize,
        cs: 1,
    };
    let cols_of = |rows: usize| View {
        rs: 1,
        cs: rows as isize,
    };
    // (what, output channels, C*kh*kw, output pixels)
    let shapes = [
        ("32x32, 32 -> 32", 32, 288, 1024),
        ("32x32, 64 -> 32", 32, 576, 1024),
        ("16x16, 64 -> 64", 64, 576, 256),
        ("8x8, 64 -> 64", 64, 576, 64),
    ];
    for (name, co, kk, l) in shapes {
        let w: Vec<f32> = (0..co * kk).map(|i| (i as f32 * 0.1).sin()).collect();
        let cols: Vec<f32> = (0..kk * l).map(|i| (i as f32 * 0.3).cos()).collect();
        let gy: Vec<f32> = (0..co * l).map(|i| (i as f32 * 0.7).sin()).collect();
        let (mut y, mut dc, mut dw) = (vec![0f32; co * l], vec![0f32; kk * l], vec![0f32; co * kk]);
        let flops = 2 * co * kk * l;
        let fwd = [
            rate(flops, || {
                product((co, l, kk), &w, rows(kk), &cols, rows(l), &mut y, rows(l))
            }),
            rate(flops, || {
                product(
                    (l, co, kk),
                    &cols,
                    cols_of(l),
                    &w,
                    cols_of(kk),
                    &mut y,
                    cols_of(l),
                )
            }),
        ];
        let dcols = [
            rate(flops, || {
                product((kk, l, co), &w, cols_of(kk), &gy, rows(l), &mut dc, rows(l))
            }),
            rate(flops, || {
                product(
                    (l, kk, co),
                    &gy,
                    cols_of(l),
                    &w,
                    rows(kk),
                    &mut dc,
                    cols_of(l),
                )
            }),
        ];
        let dweight = [
            rate(flops, || {
                product(
                    (co, kk, l),
                    &gy,
                    rows(l),
                    &cols,
                    cols_of(l),
                    &mut dw,
                    rows(kk),
                )
            }),
            rate(flops, || {
                product(
                    (kk, co, l),
                    &cols,
                    rows(l),
                    &gy,
                    cols_of(l),
                    &mut dw,
                    cols_of(kk),
                )
            }),
        ];
        println!(
            "{name}: forward {:.1} / {:.1}, W^T dY {:.1} / {:.1}, dY cols^T {:.1} / {:.1} GFLOP/s (as written / transposed)",
            fwd[0], fwd[1], dcols[0], dcols[1], dweight[0], dweight[1]
        );
    }
}
