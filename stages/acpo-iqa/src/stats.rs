//! Statistics shared by BRISQUE, NIQE and the sanity stage: (asymmetric) generalised Gaussian
//! fits and Spearman's rank correlation.

/// `ln Γ(x)`.
fn lgamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// `Γ(x)`.
pub fn gamma(x: f64) -> f64 {
    libm::tgamma(x)
}

/// `phi(a) = Γ(2/a)² / (Γ(1/a) Γ(3/a))`, increasing from 0 (a -> 0) to 0.75 (a -> inf).
pub fn phi(alpha: f64) -> f64 {
    (2.0 * lgamma(2.0 / alpha) - lgamma(1.0 / alpha) - lgamma(3.0 / alpha)).exp()
}

/// Moments an AGGD fit needs.
#[derive(Clone, Copy, Debug)]
pub struct AggdMoments {
    /// sqrt(mean(x² | x on the left side))
    pub sigma_left: f64,
    /// sqrt(mean(x² | x on the right side))
    pub sigma_right: f64,
    /// r_hat normalised by the asymmetry (`R_hat` in the BRISQUE paper)
    pub r_hat_norm: f64,
}

/// Which samples count as "right": `x >= 0` (image-quality 1.2.7) or `x > 0` (NIQE, MATLAB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RightSide {
    NonNegative,
    Positive,
}

/// AGGD moments of `x`: left side is `x < 0`, right side per `right`.
pub fn aggd_moments(x: impl Iterator<Item = f64> + Clone, right: RightSide) -> AggdMoments {
    let (mut sl, mut nl, mut sr, mut nr, mut sabs, mut s2, mut n) =
        (0.0, 0usize, 0.0, 0usize, 0.0, 0.0, 0usize);
    for v in x {
        let v2 = v * v;
        if v < 0.0 {
            sl += v2;
            nl += 1;
        } else if v > 0.0 || right == RightSide::NonNegative {
            sr += v2;
            nr += 1;
        }
        sabs += v.abs();
        s2 += v2;
        n += 1;
    }
    // mean of an empty set is NaN, as in NumPy
    let sigma_left = (sl / nl as f64).sqrt();
    let sigma_right = (sr / nr as f64).sqrt();
    let g = sigma_left / sigma_right;
    let r_hat = (sabs / n as f64).powi(2) / (s2 / n as f64);
    let r_hat_norm = r_hat * (g.powi(3) + 1.0) * (g + 1.0) / (g * g + 1.0).powi(2);
    AggdMoments {
        sigma_left,
        sigma_right,
        r_hat_norm,
    }
}

/// Solves `phi(alpha) = r` continuously (image-quality 1.2.7 uses `scipy.optimize.root`; `phi`
/// is monotone, so the root is unique and bisection finds the same one). Returns NaN for NaN
/// input and the bracket end when `r` is outside `phi`'s range.
pub fn solve_alpha_continuous(r: f64) -> f64 {
    if !r.is_finite() {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (1e-3f64.ln(), 1e3f64.ln());
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if phi(mid.exp()) < r {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// MATLAB/BasicSR grid search: `alpha` in `0.2:0.001:10` minimising `(phi(alpha) - r)²`.
pub struct AlphaGrid {
    alphas: Vec<f64>,
    phis: Vec<f64>,
}

impl Default for AlphaGrid {
    fn default() -> Self {
        // np.arange(0.2, 10.001, 0.001): 9801 values start + k * step
        let alphas: Vec<f64> = (0..9801).map(|k| 0.2 + k as f64 * 0.001).collect();
        let phis = alphas
            .iter()
            .map(|&a| gamma(2.0 / a).powi(2) / (gamma(1.0 / a) * gamma(3.0 / a)))
            .collect();
        Self { alphas, phis }
    }
}

impl AlphaGrid {
    /// First grid alpha with the least squared distance (NaN in -> the first alpha, as `argmin`
    /// over an all-NaN array returns 0).
    pub fn solve(&self, r: f64) -> f64 {
        if r.is_nan() {
            return self.alphas[0];
        }
        let mut best = 0;
        let mut best_d = f64::INFINITY;
        for (i, p) in self.phis.iter().enumerate() {
            let d = (p - r) * (p - r);
            if d < best_d {
                best_d = d;
                best = i;
            }
        }
        self.alphas[best]
    }
}

/// Average ranks (1-based) with ties sharing their mean rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation (Pearson on average ranks, as `scipy.stats.spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_known_values() {
        // Gaussian: phi(2) = 2/pi; Laplacian: phi(1) = 1/2.
        assert!((phi(2.0) - 2.0 / std::f64::consts::PI).abs() < 1e-12);
        assert!((phi(1.0) - 0.5).abs() < 1e-12);
        assert!((solve_alpha_continuous(0.5) - 1.0).abs() < 1e-9);
        let g = AlphaGrid::default();
        assert!((g.solve(2.0 / std::f64::consts::PI) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn spearman_ties_and_sign() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // ranks [1.5,1.5,3.5,3.5,5.5,5.5] vs [1,2,3,4,6,5]: sxy = 16, sxx = 16, syy = 17.5
        let r = spearman(
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            &[1.0, 2.0, 3.0, 4.0, 6.0, 5.0],
        );
        assert!((r - 16.0 / 280f64.sqrt()).abs() < 1e-12, "{r}");
    }
}
