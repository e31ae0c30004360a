//! FID, KID and diversity on feature matrices.
//!
//! - FID (Heusel et al. 2017): `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`
//!   with the unbiased covariance (`np.cov(rowvar=False)`). The trace of the square
//!   root is computed in f64 as `sum_i sqrt(lambda_i)` over the eigenvalues of the
//!   symmetric PSD matrix `S_b^(1/2) S_a S_b^(1/2)`, which is similar to `S_a S_b`
//!   (same eigenvalues), with `S_b^(1/2)` from a symmetric eigendecomposition.
//!   This avoids `scipy.linalg.sqrtm`'s trouble with the singular covariances of
//!   fewer than 2048 samples; tiny negative eigenvalues (rounding) count as 0.
//! - KID (Binkowski et al. 2018), as torch-fidelity / clean-fid compute it:
//!   cubic polynomial kernel `k(x, y) = (x.y / d + 1)^3`, the unbiased MMD^2
//!   estimator
//!   `(sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)) / (m(m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2`
//!   on `subsets` random subsets of
//!   `m = min(subset_size, n_a, n_b)` rows drawn without replacement from each
//!   set; reported as the mean and the (population) standard deviation over subsets.
//! - Diversity: the mean Euclidean distance over all pairs of rows, with an
//!   approximate 95% interval from the U-statistic variance `4 Var(h_i) / n`,
//!   where `h_i` is row `i`'s mean distance to the others.

use crate::error::{FidError, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, DVector};
// ChaCha12 named explicitly: `StdRng` promises no algorithm across rand versions (it is
// ChaCha12 in rand 0.9, so the KID subsets are those drawn before this was spelled out).
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng as StdRng;
use serde::{Deserialize, Serialize};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone)]
pub struct GaussianStats {
    /// Number of samples the statistics were computed from.
    pub n: usize,
    pub mu: DVector<f64>,
    pub sigma: DMatrix<f64>,
    /// When `n <= d`: the centred samples divided by `sqrt(n - 1)` (`[n, d]`, so
    /// `sigma = factor^T factor`). The Fréchet distance then needs the eigenvalues
    /// of an `n x n` matrix instead of a `d x d` one.
    factor: Option<DMatrix<f64>>,
}

// The large products below (2048 x 2048 and n x 2048 operands) go through candle's
// multi-threaded f64 GEMM: nalgebra's own product is single-threaded and was
// several times slower here. Eigendecompositions stay in nalgebra.

/// A column-major nalgebra matrix as a (strided) candle tensor, without reordering.
fn to_tensor(m: &DMatrix<f64>) -> Result<Tensor> {
    let (r, c) = m.shape();
    Ok(Tensor::from_slice(m.as_slice(), (c, r), &Device::Cpu)?.t()?)
}

fn from_tensor(t: &Tensor) -> Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    Ok(DMatrix::from_row_slice(
        r,
        c,
        &t.contiguous()?.flatten_all()?.to_vec1::<f64>()?,
    ))
}

/// `a * b` in f64 with candle's GEMM.
pub fn matmul(a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    if a.ncols() != b.nrows() {
        return Err(FidError::Input(format!(
            "matrix product of {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    from_tensor(&to_tensor(a)?.matmul(&to_tensor(b)?)?)
}

impl GaussianStats {
    /// Mean and unbiased covariance (divisor `n - 1`, as `np.cov(rowvar=False)`) of
    /// `features` `[N, D]`, in f64.
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let (n, d) = features.dims2().map_err(|_| {
            FidError::Input(format!(
                "features must be [N, D], got shape {:?}",
                features.dims()
            ))
        })?;
        if n < 2 {
            return Err(FidError::Input(format!(
                "a covariance needs at least 2 samples, got {n}"
            )));
        }
        let x = features
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .contiguous()?;
        let mean = x.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&mean)?;
        let sigma_t = (xc.t()?.matmul(&xc)? / (n as f64 - 1.0))?;
        let sigma = from_tensor(&sigma_t)?;
        if sigma.iter().any(|v| !v.is_finite()) {
            return Err(FidError::Numerical(
                "features contain NaN or infinity".into(),
            ));
        }
        let mu = DVector::from_vec(mean.flatten_all()?.to_vec1::<f64>()?);
        let factor = if n <= d {
            Some(from_tensor(&(xc / (n as f64 - 1.0).sqrt())?)?)
        } else {
            None
        };
        Ok(Self {
            n,
            mu,
            sigma,
            factor,
        })
    }

    /// Statistics given directly (no sample factor is kept).
    pub fn new(n: usize, mu: DVector<f64>, sigma: DMatrix<f64>) -> Result<Self> {
        if sigma.shape() != (mu.len(), mu.len()) {
            return Err(FidError::Input(format!(
                "mean of length {} with a covariance of shape {:?}",
                mu.len(),
                sigma.shape()
            )));
        }
        Ok(Self {
            n,
            mu,
            sigma,
            factor: None,
        })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// `sigma^(1/2)`. With the sample factor `F` (`sigma = F^T F`, `n <= d`) this is
    /// `F^T U diag(lambda^(-1/2)) U^T F` from the eigendecomposition `F F^T = U diag(lambda) U^T`
    /// of an `n x n` matrix (eigenvalues below `1e-12 lambda_max` are null space);
    /// otherwise [`sqrt_psd`] of the `d x d` covariance.
    pub fn sqrt_sigma(&self) -> Result<DMatrix<f64>> {
        let Some(f) = &self.factor else {
            return sqrt_psd(&self.sigma);
        };
        let g = matmul(f, &f.transpose())?;
        let g = (&g + g.transpose()) * 0.5;
        if g.iter().any(|x| !x.is_finite()) {
            return Err(FidError::Numerical("features are not finite".into()));
        }
        let eig = g.symmetric_eigen();
        let max = eig.eigenvalues.iter().fold(0f64, |a, &l| a.max(l));
        let mut u = eig.eigenvectors.clone();
        for (j, mut col) in u.column_iter_mut().enumerate() {
            let l = eig.eigenvalues[j];
            col *= if l > 1e-12 * max { l.powf(-0.25) } else { 0.0 };
        }
        // W = U diag(lambda^(-1/4)); sqrt = (F^T W)(F^T W)^T.
        let ftw = matmul(&f.transpose(), &u)?;
        matmul(&ftw, &ftw.transpose())
    }

    /// The same statistics without the sample factor (forces the `d x d` path).
    pub fn without_factor(&self) -> Self {
        Self {
            factor: None,
            ..self.clone()
        }
    }
}

/// The symmetric PSD square root `V diag(sqrt(max(lambda, 0))) V^T` of a symmetric
/// matrix.
pub fn sqrt_psd(m: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    if !m.is_square() {
        return Err(FidError::Input(format!(
            "matrix square root of a non-square {}x{} matrix",
            m.nrows(),
            m.ncols()
        )));
    }
    if m.iter().any(|x| !x.is_finite()) {
        return Err(FidError::Numerical(
            "matrix contains NaN or infinity".into(),
        ));
    }
    let sym = (m + m.transpose()) * 0.5;
    let eig = sym.symmetric_eigen();
    let mut vs = eig.eigenvectors.clone();
    for (j, mut col) in vs.column_iter_mut().enumerate() {
        col *= eig.eigenvalues[j].max(0.0).sqrt();
    }
    matmul(&vs, &eig.eigenvectors.transpose())
}

/// `tr((S_a S_b)^(1/2))` given `sqrt_b = S_b^(1/2)`: the sum of the square roots of
/// the eigenvalues of `sqrt_b S_a sqrt_b`, or, when `a` keeps its sample factor
/// `F` (`S_a = F^T F`, fewer samples than dimensions), of `(F sqrt_b)(F sqrt_b)^T`,
/// which has the same non-zero eigenvalues.
pub fn trace_sqrt_product(a: &GaussianStats, sqrt_b: &DMatrix<f64>) -> Result<f64> {
    if a.sigma.shape() != sqrt_b.shape() {
        return Err(FidError::Input(format!(
            "covariances of different shapes {:?} and {:?}",
            a.sigma.shape(),
            sqrt_b.shape()
        )));
    }
    let m = match &a.factor {
        Some(f) => {
            let y = matmul(f, sqrt_b)?;
            matmul(&y, &y.transpose())?
        }
        None => matmul(&matmul(sqrt_b, &a.sigma)?, sqrt_b)?,
    };
    let m = (&m + m.transpose()) * 0.5;
    if m.iter().any(|x| !x.is_finite()) {
        return Err(FidError::Numerical(
            "covariance product is not finite".into(),
        ));
    }
    let eig = m.symmetric_eigenvalues();
    Ok(eig.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// Fréchet distance between two Gaussians; `sqrt_b` is `b.sigma^(1/2)` (cached
/// with reference statistics; compute it with [`sqrt_psd`]).
pub fn frechet_distance(
    a: &GaussianStats,
    b: &GaussianStats,
    sqrt_b: &DMatrix<f64>,
) -> Result<f64> {
    if a.dim() != b.dim() {
        return Err(FidError::Input(format!(
            "feature dimensions differ: {} and {}",
            a.dim(),
            b.dim()
        )));
    }
    let diff = (&a.mu - &b.mu).norm_squared();
    let tr = a.sigma.trace() + b.sigma.trace() - 2.0 * trace_sqrt_product(a, sqrt_b)?;
    Ok(diff + tr)
}

/// How KID subsets are drawn. Defaults are torch-fidelity's and clean-fid's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KidConfig {
    /// Number of random subsets (default 100).
    pub subsets: usize,
    /// Rows per subset; the smaller set's size when that is smaller (default 1000).
    pub subset_size: usize,
    /// Seed of the subset draws (default 0).
    pub seed: u64,
}

impl Default for KidConfig {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// KID estimate: mean and standard deviation of the unbiased MMD^2 over subsets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// Above this many Gram entries (f32) the grams are computed per subset instead of
/// once for the whole sets (256 MiB).
const FULL_GRAM_LIMIT: usize = 64 << 20;

/// KID between feature sets `a` `[n_a, d]` and `b` `[n_b, d]`.
pub fn kid(a: &Tensor, b: &Tensor, cfg: &KidConfig) -> Result<Kid> {
    let (n_a, d) = a
        .dims2()
        .map_err(|_| FidError::Input("KID features must be [N, D]".into()))?;
    let (n_b, d_b) = b
        .dims2()
        .map_err(|_| FidError::Input("KID features must be [N, D]".into()))?;
    if d != d_b {
        return Err(FidError::Input(format!(
            "KID feature dimensions differ: {d} and {d_b}"
        )));
    }
    if cfg.subsets == 0 {
        return Err(FidError::Input("KID needs at least one subset".into()));
    }
    let m = cfg.subset_size.min(n_a).min(n_b);
    if m < 2 {
        return Err(FidError::Input(format!(
            "KID needs at least 2 samples per set, got {n_a} and {n_b}"
        )));
    }
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let kern = |g: f32| -> f64 { (g as f64 / d as f64 + 1.0).powi(3) };
    let full = n_a * n_a + n_b * n_b + n_a * n_b <= FULL_GRAM_LIMIT;
    let grams = if full {
        Some((gram(&a, &a)?, gram(&b, &b)?, gram(&a, &b)?))
    } else {
        None
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut values = Vec::with_capacity(cfg.subsets);
    for _ in 0..cfg.subsets {
        let ix = rand::seq::index::sample(&mut rng, n_a, m).into_vec();
        let iy = rand::seq::index::sample(&mut rng, n_b, m).into_vec();
        let (sxx, syy, sxy) = match &grams {
            Some((gaa, gbb, gab)) => {
                let mut sxx = 0.0;
                let mut syy = 0.0;
                let mut sxy = 0.0;
                for (p, &i) in ix.iter().enumerate() {
                    for (q, &j) in ix.iter().enumerate() {
                        if p != q {
                            sxx += kern(gaa[i * n_a + j]);
                        }
                    }
                    for &j in &iy {
                        sxy += kern(gab[i * n_b + j]);
                    }
                }
                for (p, &i) in iy.iter().enumerate() {
                    for (q, &j) in iy.iter().enumerate() {
                        if p != q {
                            syy += kern(gbb[i * n_b + j]);
                        }
                    }
                }
                (sxx, syy, sxy)
            }
            None => {
                let to_idx = |v: &[usize]| {
                    Tensor::from_vec(
                        v.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        v.len(),
                        &Device::Cpu,
                    )
                };
                let x = a.index_select(&to_idx(&ix)?, 0)?;
                let y = b.index_select(&to_idx(&iy)?, 0)?;
                let (gxx, gyy, gxy) = (gram(&x, &x)?, gram(&y, &y)?, gram(&x, &y)?);
                let off_diag = |g: &[f32]| -> f64 {
                    let mut s = 0.0;
                    for p in 0..m {
                        for q in 0..m {
                            if p != q {
                                s += kern(g[p * m + q]);
                            }
                        }
                    }
                    s
                };
                (
                    off_diag(&gxx),
                    off_diag(&gyy),
                    gxy.iter().map(|&g| kern(g)).sum(),
                )
            }
        };
        let mf = m as f64;
        values.push((sxx + syy) / (mf * (mf - 1.0)) - 2.0 * sxy / (mf * mf));
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Ok(Kid {
        mean,
        std: var.sqrt(),
        subsets: cfg.subsets,
        subset_size: m,
    })
}

/// `x y^T` as row-major f32.
fn gram(x: &Tensor, y: &Tensor) -> Result<Vec<f32>> {
    Ok(x.matmul(&y.t()?)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Mean pairwise distance with an approximate 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Diversity {
    /// Mean Euclidean distance over all `n (n - 1) / 2` pairs.
    pub mean: f64,
    /// Half-width of the approximate 95% interval (`1.96 * 2 sd(h_i) / sqrt(n)`).
    pub ci95: f64,
    pub n: usize,
}

/// Rows per block in [`mean_pairwise_distance`] (bounds the memory of one block).
const PAIR_BLOCK: usize = 512;

/// Mean Euclidean distance between all pairs of rows of `x` `[N, D]`, divided by
/// `scale` (1 for plain distances).
pub fn mean_pairwise_distance(x: &Tensor, scale: f64) -> Result<Diversity> {
    let (n, _d) = x
        .dims2()
        .map_err(|_| FidError::Input(format!("rows must be [N, D], got {:?}", x.dims())))?;
    if n < 2 {
        return Err(FidError::Input(format!(
            "pairwise distances need at least 2 rows, got {n}"
        )));
    }
    let x = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let norms: Vec<f64> = x
        .sqr()?
        .sum(1)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as f64)
        .collect();
    // Per-row sums of the distances to the other rows.
    let mut row_sums = vec![0f64; n];
    let xt = x.t()?;
    for start in (0..n).step_by(PAIR_BLOCK) {
        let len = PAIR_BLOCK.min(n - start);
        let g = x
            .narrow(0, start, len)?
            .matmul(&xt)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for r in 0..len {
            let i = start + r;
            let mut s = 0.0;
            for j in 0..n {
                if j != i {
                    let d2 = norms[i] + norms[j] - 2.0 * g[r * n + j] as f64;
                    s += d2.max(0.0).sqrt();
                }
            }
            row_sums[i] = s;
        }
    }
    let h: Vec<f64> = row_sums
        .iter()
        .map(|s| s / (n as f64 - 1.0) / scale)
        .collect();
    let mean = h.iter().sum::<f64>() / n as f64;
    let var_h = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0).max(1.0);
    Ok(Diversity {
        mean,
        ci95: 1.96 * 2.0 * (var_h / n as f64).sqrt(),
        n,
    })
}

/// Diversity in pixel space of images `[N, 3, H, W]` or `[N, H, W, 3]` (U8, or
/// float in [0, 1]): the mean pairwise root-mean-square difference per value,
/// in [0, 1] units (the Euclidean distance divided by `sqrt(3 H W)`, so that it
/// does not grow with the resolution).
pub fn pixel_diversity(images: &Tensor) -> Result<Diversity> {
    let n = images.dim(0)?;
    let x = match images.dtype() {
        DType::U8 => images.to_dtype(DType::F32)?.affine(1.0 / 255.0, 0.0)?,
        _ => images.to_dtype(DType::F32)?,
    };
    let x = x.reshape((n, ()))?;
    let d = x.dim(1)?;
    mean_pairwise_distance(&x, (d as f64).sqrt())
}

/// Diversity in Inception pool3 space: the mean pairwise Euclidean distance of
/// `features` `[N, 2048]`.
pub fn feature_diversity(features: &Tensor) -> Result<Diversity> {
    mean_pairwise_distance(features, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mu: Vec<f64>, sigma: Vec<f64>) -> GaussianStats {
        let d = mu.len();
        GaussianStats::new(
            100,
            DVector::from_vec(mu),
            DMatrix::from_row_slice(d, d, &sigma),
        )
        .unwrap()
    }

    #[test]
    fn low_rank_path_equals_full_path() {
        // 20 samples in 50 dimensions: the n x n route must give the d x d route's FID.
        let mut rng = StdRng::seed_from_u64(11);
        let mut feats = |shift: f32, n: usize| {
            let v: Vec<f32> = (0..n * 50)
                .map(|i| {
                    rand::Rng::random_range(&mut rng, 0.0f32..1.0) * (1.0 + (i % 50) as f32 / 25.0)
                        + shift
                })
                .collect();
            Tensor::from_vec(v, (n, 50), &Device::Cpu).unwrap()
        };
        let a = GaussianStats::from_features(&feats(0.0, 20)).unwrap();
        let b = GaussianStats::from_features(&feats(0.2, 80)).unwrap();
        assert!(a.factor.is_some() && b.factor.is_none());
        let r = sqrt_psd(&b.sigma).unwrap();
        // The n x n square root equals the d x d one.
        let ra = a.sqrt_sigma().unwrap();
        let ra_full = sqrt_psd(&a.sigma).unwrap();
        let err = (&ra - &ra_full).abs().max();
        assert!(err < 1e-6 * ra_full.abs().max(), "sqrt error {err}");
        let back = matmul(&ra, &ra).unwrap();
        assert!((&back - &a.sigma).abs().max() < 1e-10 * a.sigma.abs().max().max(1e-300) + 1e-12);
        let low = frechet_distance(&a, &b, &r).unwrap();
        let full = frechet_distance(&a.without_factor(), &b, &r).unwrap();
        // The d x d route clamps rounding-level eigenvalues (~1e-16) of the singular
        // product and adds their square roots (~1e-8 each): equal to ~1e-7 only.
        assert!(
            (low - full).abs() < 1e-6 * full.abs().max(1.0),
            "{low} vs {full}"
        );
        assert!(full > 0.0);
    }

    #[test]
    fn fid_of_identical_gaussians_is_zero() {
        let a = stats(
            vec![1.0, -2.0, 0.5],
            vec![2.0, 0.3, 0.1, 0.3, 1.0, -0.2, 0.1, -0.2, 0.5],
        );
        let r = sqrt_psd(&a.sigma).unwrap();
        let fid = frechet_distance(&a, &a, &r).unwrap();
        assert!(fid.abs() < 1e-12, "fid {fid}");
    }

    #[test]
    fn fid_of_diagonal_gaussians_has_closed_form() {
        // |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
        let a = stats(vec![0.0, 0.0], vec![4.0, 0.0, 0.0, 9.0]);
        let b = stats(vec![3.0, 4.0], vec![1.0, 0.0, 0.0, 16.0]);
        let r = sqrt_psd(&b.sigma).unwrap();
        let fid = frechet_distance(&a, &b, &r).unwrap();
        let expect = 25.0 + (2.0f64 - 1.0).powi(2) + (3.0f64 - 4.0).powi(2);
        assert!((fid - expect).abs() < 1e-12, "fid {fid} expected {expect}");
    }

    #[test]
    fn fid_of_non_commuting_2x2_gaussians_has_closed_form() {
        // For 2x2 PSD A, B: tr sqrt(AB) = sqrt(tr(AB) + 2 sqrt(det A det B)).
        let sa = [2.0, 0.8, 0.8, 1.0];
        let sb = [1.5, -0.6, -0.6, 0.7];
        let a = stats(vec![0.5, 0.0], sa.to_vec());
        let b = stats(vec![0.0, -1.0], sb.to_vec());
        let (ma, mb) = (&a.sigma, &b.sigma);
        let tr_ab = (ma * mb).trace();
        let tr_sqrt = (tr_ab + 2.0 * (ma.determinant() * mb.determinant()).sqrt()).sqrt();
        let expect = 0.25 + 1.0 + ma.trace() + mb.trace() - 2.0 * tr_sqrt;
        let fid = frechet_distance(&a, &b, &sqrt_psd(mb).unwrap()).unwrap();
        assert!((fid - expect).abs() < 1e-12, "fid {fid} expected {expect}");
        // Symmetric in its arguments.
        let fid_ba = frechet_distance(&b, &a, &sqrt_psd(ma).unwrap()).unwrap();
        assert!((fid - fid_ba).abs() < 1e-12);
    }

    #[test]
    fn fid_handles_singular_covariances() {
        // Rank-1 covariances (fewer samples than dimensions): no NaN, and the
        // closed form for diagonal matrices still holds.
        let a = stats(
            vec![0.0; 3],
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        );
        let b = stats(
            vec![0.0; 3],
            vec![0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0],
        );
        let fid = frechet_distance(&a, &b, &sqrt_psd(&b.sigma).unwrap()).unwrap();
        assert!((fid - 5.0).abs() < 1e-12, "fid {fid}");
    }

    #[test]
    fn covariance_matches_numpy_definition() {
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 5.0], [4.0, 4.0]], &Device::Cpu).unwrap();
        let s = GaussianStats::from_features(&x).unwrap();
        // np.mean / np.cov(rowvar=False) of the same rows.
        assert!((s.mu[0] - 8.0 / 3.0).abs() < 1e-12);
        assert!((s.mu[1] - 11.0 / 3.0).abs() < 1e-12);
        let expect = [7.0 / 3.0, 11.0 / 6.0, 11.0 / 6.0, 7.0 / 3.0];
        for (g, e) in s.sigma.transpose().iter().zip(expect) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
        assert!(GaussianStats::from_features(&x.narrow(0, 0, 1).unwrap()).is_err());
    }

    #[test]
    fn fid_from_samples_matches_the_population_value() {
        // Two 2-D Gaussians with known parameters, sampled with 20,000 points each.
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let normal = |rng: &mut StdRng| -> f64 {
            // Box-Muller
            let u1: f64 = rand::Rng::random_range(rng, 1e-12..1.0);
            let u2: f64 = rand::Rng::random_range(rng, 0.0..1.0);
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let mut xa = Vec::new();
        let mut xb = Vec::new();
        for _ in 0..n {
            let (z1, z2) = (normal(&mut rng), normal(&mut rng));
            xa.extend([z1 as f32, (0.5 * z1 + z2) as f32]); // cov [[1, .5], [.5, 1.25]]
            let (z1, z2) = (normal(&mut rng), normal(&mut rng));
            xb.extend([(2.0 * z1 + 1.0) as f32, (z2 - 1.0) as f32]); // cov diag(4, 1), mean (1, -1)
        }
        let ta = Tensor::from_vec(xa, (n, 2), &Device::Cpu).unwrap();
        let tb = Tensor::from_vec(xb, (n, 2), &Device::Cpu).unwrap();
        let sa = GaussianStats::from_features(&ta).unwrap();
        let sb = GaussianStats::from_features(&tb).unwrap();
        let fid = frechet_distance(&sa, &sb, &sqrt_psd(&sb.sigma).unwrap()).unwrap();
        let pa = stats(vec![0.0, 0.0], vec![1.0, 0.5, 0.5, 1.25]);
        let pb = stats(vec![1.0, -1.0], vec![4.0, 0.0, 0.0, 1.0]);
        let expect = frechet_distance(&pa, &pb, &sqrt_psd(&pb.sigma).unwrap()).unwrap();
        assert!(
            (fid - expect).abs() < 0.1,
            "sample FID {fid}, population {expect}"
        );
    }

    /// Direct evaluation of the unbiased MMD^2 with the cubic kernel.
    fn naive_mmd(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
        let d = x[0].len() as f64;
        let k = |a: &Vec<f64>, b: &Vec<f64>| {
            (a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>() / d + 1.0).powi(3)
        };
        let m = x.len() as f64;
        let mut sxx = 0.0;
        let mut syy = 0.0;
        let mut sxy = 0.0;
        for i in 0..x.len() {
            for j in 0..x.len() {
                if i != j {
                    sxx += k(&x[i], &x[j]);
                    syy += k(&y[i], &y[j]);
                }
                sxy += k(&x[i], &y[j]);
            }
        }
        (sxx + syy) / (m * (m - 1.0)) - 2.0 * sxy / (m * m)
    }

    #[test]
    fn kid_with_one_full_subset_equals_the_direct_formula() {
        let x: Vec<Vec<f64>> = (0..5)
            .map(|i| (0..3).map(|j| ((i * 3 + j) as f64 * 0.37).sin()).collect())
            .collect();
        let y: Vec<Vec<f64>> = (0..5)
            .map(|i| {
                (0..3)
                    .map(|j| ((i * 3 + j) as f64 * 0.11).cos() + 0.3)
                    .collect()
            })
            .collect();
        let t = |v: &Vec<Vec<f64>>| {
            let flat: Vec<f32> = v.iter().flatten().map(|&a| a as f32).collect();
            Tensor::from_vec(flat, (5, 3), &Device::Cpu).unwrap()
        };
        let cfg = KidConfig {
            subsets: 3,
            subset_size: 5,
            seed: 1,
        };
        let got = kid(&t(&x), &t(&y), &cfg).unwrap();
        let expect = naive_mmd(&x, &y);
        assert_eq!(got.subset_size, 5);
        // Every subset is the whole set (in another order): same value, std 0.
        assert!(
            (got.mean - expect).abs() < 1e-6 * expect.abs().max(1.0),
            "{got:?} vs {expect}"
        );
        assert!(got.std < 1e-9);
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_positive_for_two() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut sample = |shift: f32| -> Tensor {
            let v: Vec<f32> = (0..400 * 8)
                .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0) + shift)
                .collect();
            Tensor::from_vec(v, (400, 8), &Device::Cpu).unwrap()
        };
        let (a, b, c) = (sample(0.0), sample(0.0), sample(0.5));
        let cfg = KidConfig {
            subsets: 20,
            subset_size: 200,
            seed: 0,
        };
        let same = kid(&a, &b, &cfg).unwrap();
        let diff = kid(&a, &c, &cfg).unwrap();
        assert!(same.mean.abs() < 3.0 * same.std.max(1e-4), "{same:?}");
        assert!(
            diff.mean > 10.0 * same.mean.abs().max(diff.std),
            "{diff:?} vs {same:?}"
        );
        // Deterministic given the seed.
        assert_eq!(kid(&a, &c, &cfg).unwrap(), diff);
    }

    #[test]
    fn pairwise_distance_of_a_unit_square() {
        let x = Tensor::new(
            &[[0f32, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let d = feature_diversity(&x).unwrap();
        let expect = (4.0 + 2.0 * 2f64.sqrt()) / 6.0;
        assert!((d.mean - expect).abs() < 1e-6, "{d:?}");
        // By symmetry every point has the same mean distance: zero-width interval.
        assert!(d.ci95 < 1e-6);
        assert_eq!(d.n, 4);
    }

    #[test]
    fn pixel_diversity_is_rms_difference() {
        // Two 1x1 RGB images, black and white: RMS difference 1.
        let x = Tensor::new(&[[[[0u8, 0, 0]]], [[[255u8, 255, 255]]]], &Device::Cpu).unwrap();
        let d = pixel_diversity(&x).unwrap();
        assert!((d.mean - 1.0).abs() < 1e-6, "{d:?}");
        assert!(pixel_diversity(&x.narrow(0, 0, 1).unwrap()).is_err());
    }
}
