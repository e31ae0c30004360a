//! BRISQUE (Mittal et al. 2012) as implemented by PyPI `image-quality==1.2.7` (`imquality`), whose
//! model files `brisque_svm.txt` (libsvm epsilon-SVR, RBF) and `normalize.pickle` (feature ranges)
//! `scripts/setup.sh` unpacks into `$ACPO_ASSETS/brisque/`. The model was trained on features
//! computed exactly this way, so the port follows that package, not the LIVE MATLAB release:
//!
//! * gray = `skimage.color.rgb2gray` (0.2125 R + 0.7154 G + 0.0721 B on values in [0, 1]);
//! * local mean / deviation with a normalised 7x7 Gaussian (sigma 7/6), `convolve2d(..., 'same')`
//!   with zero padding; MSCN = (I - mu) / (sigma + 1/255);
//! * AGGD fits (right side `x >= 0`, alpha solved continuously) of the MSCN map and of its four
//!   neighbour products (cropped, not rolled); 18 features per scale;
//! * second scale: `skimage.transform.rescale(gray, 1/2, order=2, mode='constant',
//!   anti_aliasing=False)`, i.e. quadratic B-spline interpolation at `2o + 0.5` (SciPy's
//!   `grid-constant` boundary: zeros outside; output clipped to the input range);
//! * features scaled to [-1, 1] with the pickle's `min_`/`max_`, then the SVR:
//!   `sum_i coef_i exp(-gamma |x - sv_i|²) - rho`.
//!
//! Scores are roughly 0 (best) to 100+ (worst): **higher = worse**.

use std::path::{Path, PathBuf};

use crate::error::{IqaError, Result};
use crate::imageio::RgbImage;
use crate::stats::{aggd_moments, gamma, solve_alpha_continuous, RightSide};

/// Number of features (18 per scale, two scales).
pub const N_FEATURES: usize = 36;
/// Smallest side BRISQUE accepts (the half-scale map must still hold a 7x7 window).
pub const MIN_SIDE: usize = 16;

/// The BRISQUE SVR and its feature scaling.
#[derive(Clone, Debug)]
pub struct Brisque {
    gamma: f64,
    rho: f64,
    coef: Vec<f64>,
    /// support vectors, row-major `[n_sv, 36]`
    sv: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    kernel: [[f64; 7]; 7],
}

impl Brisque {
    /// Loads `brisque_svm.txt` and `normalize.pickle` from a directory.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load(dir.join("brisque_svm.txt"), dir.join("normalize.pickle"))
    }

    pub fn load(svm_path: impl AsRef<Path>, scale_path: impl AsRef<Path>) -> Result<Self> {
        let svm_path = svm_path.as_ref();
        let text =
            std::fs::read_to_string(svm_path).map_err(|e| IqaError::model_io(svm_path, e))?;
        let (gamma, rho, coef, sv) = parse_libsvm(&text, svm_path)?;
        let (min, max) = load_scaling(scale_path.as_ref())?;
        Ok(Self {
            gamma,
            rho,
            coef,
            sv,
            min,
            max,
            kernel: gaussian_kernel(),
        })
    }

    /// BRISQUE score of an 8-bit RGB image (higher = worse).
    pub fn score(&self, img: &RgbImage) -> Result<f64> {
        if img.width < MIN_SIDE || img.height < MIN_SIDE {
            return Err(IqaError::Input(format!(
                "BRISQUE needs at least {MIN_SIDE}x{MIN_SIDE} pixels, got {}x{}",
                img.width, img.height
            )));
        }
        let feats = self.features(img);
        Ok(self.predict(&feats))
    }

    /// The 36 raw (unscaled) features.
    pub fn features(&self, img: &RgbImage) -> Vec<f64> {
        let gray = img.luma_f64([0.2125, 0.7154, 0.0721]);
        let (h, w) = (img.height, img.width);
        let mut f = self.scale_features(&gray, h, w);
        let (half, h2, w2) = rescale_half_quadratic(&gray, h, w);
        f.extend(self.scale_features(&half, h2, w2));
        f
    }

    /// SVR prediction from raw features (scaling applied here).
    pub fn predict(&self, feats: &[f64]) -> f64 {
        let x: Vec<f64> = feats
            .iter()
            .enumerate()
            .map(|(i, &f)| -1.0 + 2.0 / (self.max[i] - self.min[i]) * (f - self.min[i]))
            .collect();
        let mut s = 0.0;
        for (c, sv) in self.coef.iter().zip(self.sv.chunks_exact(N_FEATURES)) {
            let d: f64 = sv.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum();
            s += c * (-self.gamma * d).exp();
        }
        s - self.rho
    }

    fn scale_features(&self, img: &[f64], h: usize, w: usize) -> Vec<f64> {
        let sq: Vec<f64> = img.iter().map(|v| v * v).collect();
        let mu = conv_same_zero(img, h, w, &self.kernel);
        let s2 = conv_same_zero(&sq, h, w, &self.kernel);
        let mscn: Vec<f64> = (0..h * w)
            .map(|i| {
                let dev = (mu[i] * mu[i] - s2[i]).abs().sqrt();
                (img[i] - mu[i]) / (dev + 1.0 / 255.0)
            })
            .collect();
        let at = |r: usize, c: usize| mscn[r * w + c];
        let mut out = Vec::with_capacity(18);
        // MSCN itself: [alpha, mean(sl², sr²)]
        let m = aggd_moments(mscn.iter().copied(), RightSide::NonNegative);
        let a = solve_alpha_continuous(m.r_hat_norm);
        out.push(a);
        out.push(0.5 * (m.sigma_left.powi(2) + m.sigma_right.powi(2)));
        // horizontal, vertical, main diagonal, secondary diagonal products
        type Pair = (usize, usize, usize, usize, usize, usize); // rows, cols, (r0,c0), (r1,c1)
        let pairs: [Pair; 4] = [
            (h, w - 1, 0, 0, 0, 1),
            (h - 1, w, 0, 0, 1, 0),
            (h - 1, w - 1, 0, 0, 1, 1),
            (h - 1, w - 1, 1, 0, 0, 1),
        ];
        for (rows, cols, r0, c0, r1, c1) in pairs {
            let prod: Vec<f64> = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r, c)))
                .map(|(r, c)| at(r + r0, c + c0) * at(r + r1, c + c1))
                .collect();
            let m = aggd_moments(prod.iter().copied(), RightSide::NonNegative);
            let a = solve_alpha_continuous(m.r_hat_norm);
            let mean = (m.sigma_right - m.sigma_left)
                * (gamma(1.0 / a) / gamma(3.0 / a)).sqrt()
                * (gamma(2.0 / a) / gamma(1.0 / a));
            out.extend([a, mean, m.sigma_left.powi(2), m.sigma_right.powi(2)]);
        }
        out
    }
}

fn gaussian_kernel() -> [[f64; 7]; 7] {
    let sigma: f64 = 7.0 / 6.0;
    let mut k = [[0.0; 7]; 7];
    let mut sum = 0.0;
    for (y, row) in k.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            let (dy, dx) = (y as f64 - 3.0, x as f64 - 3.0);
            *v = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
            sum += *v;
        }
    }
    for row in k.iter_mut() {
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    k
}

/// `scipy.signal.convolve2d(img, k, 'same')` with zero fill (k is symmetric).
fn conv_same_zero(img: &[f64], h: usize, w: usize, k: &[[f64; 7]; 7]) -> Vec<f64> {
    let mut out = vec![0.0; h * w];
    for r in 0..h {
        for c in 0..w {
            let mut s = 0.0;
            for (u, krow) in k.iter().enumerate() {
                let rr = r as isize + u as isize - 3;
                if rr < 0 || rr >= h as isize {
                    continue;
                }
                let row = &img[rr as usize * w..rr as usize * w + w];
                for (v, kv) in krow.iter().enumerate() {
                    let cc = c as isize + v as isize - 3;
                    if cc >= 0 && cc < w as isize {
                        s += kv * row[cc as usize];
                    }
                }
            }
            out[r * w + c] = s;
        }
    }
    out
}

/// Mirror index (`scipy.ndimage` mode 'mirror': -1 -> 1, n -> n-2).
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as isize {
        i = period - i;
    }
    i as usize
}

/// In-place quadratic B-spline prefilter of one line (`scipy.ndimage.spline_filter1d`, order 2,
/// mirror boundary).
fn spline2_filter_line(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = 8f64.sqrt() - 3.0;
    let lambda = (1.0 - z) * (1.0 - 1.0 / z);
    for v in c.iter_mut() {
        *v *= lambda;
    }
    // causal initialisation, mirror boundary, truncated where z^k < 1e-16
    let horizon = ((1e-16f64).ln() / z.abs().ln()).ceil() as isize;
    let mut sum = 0.0;
    let mut zk = 1.0;
    for k in 0..=horizon.max(0) {
        sum += zk * c[mirror(k, n)];
        zk *= z;
    }
    c[0] = sum;
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (z * c[n - 2] + c[n - 1]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

fn bspline2(t: f64) -> f64 {
    let t = t.abs();
    if t < 0.5 {
        0.75 - t * t
    } else if t < 1.5 {
        0.5 * (t - 1.5) * (t - 1.5)
    } else {
        0.0
    }
}

/// Weights and mirrored indices of the order-2 spline at coordinate `x`.
fn spline2_taps(x: f64, n: usize) -> [(usize, f64); 3] {
    let i0 = (x + 0.5).floor() as isize - 1;
    let mut taps = [(0usize, 0.0f64); 3];
    for (k, tap) in taps.iter_mut().enumerate() {
        let j = i0 + k as isize;
        *tap = (mirror(j, n), bspline2(x - j as f64));
    }
    taps
}

/// Zero padding scipy adds before prefiltering in `grid-constant` mode.
const NPAD: usize = 12;

/// `skimage.transform.rescale(img, 0.5, order=2, mode='constant', anti_aliasing=False)` as run
/// by current scikit-image (>= 0.19) and SciPy (>= 1.6): `ndimage.map_coordinates(order=2,
/// mode='grid-constant')`, i.e. the image is zero-padded by 12 pixels, prefiltered with mirror
/// boundaries, sampled at `f (o + 0.5) - 0.5`, then clipped to the input range. (Stacks older
/// than that used mirror boundaries instead; only border pixels differ.)
fn rescale_half_quadratic(img: &[f64], h: usize, w: usize) -> (Vec<f64>, usize, usize) {
    // output shape: np.round(shape * 0.5) (round half to even), at least 1
    let half = |n: usize| -> usize {
        let v = n as f64 * 0.5;
        let r = v.round();
        let r = if (v - v.trunc() - 0.5).abs() < 1e-12 && (r as usize) % 2 == 1 {
            r - 1.0
        } else {
            r
        };
        (r as usize).max(1)
    };
    let (h2, w2) = (half(h), half(w));
    let (ph, pw) = (h + 2 * NPAD, w + 2 * NPAD);
    let mut coef = vec![0.0; ph * pw];
    for r in 0..h {
        coef[(r + NPAD) * pw + NPAD..(r + NPAD) * pw + NPAD + w]
            .copy_from_slice(&img[r * w..(r + 1) * w]);
    }
    // prefilter along rows then columns (mirror boundary on the padded array)
    for r in 0..ph {
        spline2_filter_line(&mut coef[r * pw..(r + 1) * pw]);
    }
    let mut col = vec![0.0; ph];
    for c in 0..pw {
        for r in 0..ph {
            col[r] = coef[r * pw + c];
        }
        spline2_filter_line(&mut col);
        for r in 0..ph {
            coef[r * pw + c] = col[r];
        }
    }
    let (fy, fx) = (h as f64 / h2 as f64, w as f64 / w2 as f64);
    let p = NPAD as f64;
    let ty: Vec<_> = (0..h2)
        .map(|o| spline2_taps(fy * (o as f64 + 0.5) - 0.5 + p, ph))
        .collect();
    let tx: Vec<_> = (0..w2)
        .map(|o| spline2_taps(fx * (o as f64 + 0.5) - 0.5 + p, pw))
        .collect();
    let (lo, hi) = img
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut out = vec![0.0; h2 * w2];
    for (oy, tyy) in ty.iter().enumerate() {
        for (ox, txx) in tx.iter().enumerate() {
            let mut s = 0.0;
            for &(iy, wy) in tyy {
                for &(ix, wx) in txx {
                    s += wy * wx * coef[iy * pw + ix];
                }
            }
            out[oy * w2 + ox] = s.clamp(lo, hi);
        }
    }
    (out, h2, w2)
}

type Svm = (f64, f64, Vec<f64>, Vec<f64>);

/// Parses a libsvm model file (epsilon-SVR, RBF kernel, 36 features).
fn parse_libsvm(text: &str, path: &Path) -> Result<Svm> {
    let bad = |line: usize, why: String| IqaError::bad_model(path, format!("line {line}: {why}"));
    let mut lines = text.lines().enumerate();
    let (mut gamma, mut rho, mut kernel, mut svm_type) = (None, None, None, None);
    for (i, line) in lines.by_ref() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("SV"), _) => break,
            (Some("svm_type"), Some(v)) => svm_type = Some(v.to_string()),
            (Some("kernel_type"), Some(v)) => kernel = Some(v.to_string()),
            (Some("gamma"), Some(v)) => {
                gamma = Some(
                    v.parse::<f64>()
                        .map_err(|e| bad(i + 1, format!("gamma: {e}")))?,
                )
            }
            (Some("rho"), Some(v)) => {
                rho = Some(
                    v.parse::<f64>()
                        .map_err(|e| bad(i + 1, format!("rho: {e}")))?,
                )
            }
            _ => {}
        }
    }
    if svm_type.as_deref() != Some("epsilon_svr") || kernel.as_deref() != Some("rbf") {
        return Err(IqaError::bad_model(
            path,
            format!("expected an epsilon_svr model with an rbf kernel, got svm_type {svm_type:?}, kernel_type {kernel:?}"),
        ));
    }
    let gamma = gamma.ok_or_else(|| IqaError::bad_model(path, "no `gamma` line"))?;
    let rho = rho.ok_or_else(|| IqaError::bad_model(path, "no `rho` line"))?;
    let (mut coef, mut sv) = (Vec::new(), Vec::new());
    for (i, line) in lines {
        let mut it = line.split_whitespace();
        let Some(c) = it.next() else { continue };
        coef.push(
            c.parse::<f64>()
                .map_err(|e| bad(i + 1, format!("coefficient: {e}")))?,
        );
        let mut row = [0.0; N_FEATURES];
        for pair in it {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| bad(i + 1, format!("expected index:value, got `{pair}`")))?;
            let k: usize = k.parse().map_err(|e| bad(i + 1, format!("index: {e}")))?;
            if k == 0 || k > N_FEATURES {
                return Err(bad(
                    i + 1,
                    format!("feature index {k} outside 1..={N_FEATURES}"),
                ));
            }
            row[k - 1] = v.parse().map_err(|e| bad(i + 1, format!("value: {e}")))?;
        }
        sv.extend(row);
    }
    if coef.is_empty() {
        return Err(IqaError::bad_model(path, "no support vectors after `SV`"));
    }
    Ok((gamma, rho, coef, sv))
}

/// Reads `normalize.pickle`: a dict `{"min_": [36 floats], "max_": [36 floats]}`.
fn load_scaling(path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let bytes = std::fs::read(path).map_err(|e| IqaError::model_io(path, e))?;
    #[derive(serde::Deserialize)]
    struct Scale {
        min_: Vec<f64>,
        max_: Vec<f64>,
    }
    let s: Scale = serde_pickle::from_slice(&bytes, Default::default()).map_err(|e| {
        IqaError::bad_model(
            path,
            format!("expected a pickled dict with min_/max_ lists: {e}"),
        )
    })?;
    for (name, v) in [("min_", &s.min_), ("max_", &s.max_)] {
        if v.len() != N_FEATURES {
            return Err(IqaError::bad_model(
                path,
                format!("`{name}` has {} values, expected {N_FEATURES}", v.len()),
            ));
        }
    }
    Ok((s.min_, s.max_))
}

/// Default location of the BRISQUE files inside `$ACPO_ASSETS`.
pub fn default_dir(assets: &Path) -> PathBuf {
    assets.join("brisque")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_indices() {
        assert_eq!(mirror(-1, 5), 1);
        assert_eq!(mirror(5, 5), 3);
        assert_eq!(mirror(0, 5), 0);
        assert_eq!(mirror(-5, 5), 3);
    }

    #[test]
    fn spline_prefilter_interpolates_samples() {
        // After prefiltering, evaluating the spline at integer positions returns the samples.
        let s: Vec<f64> = (0..20).map(|i| ((i * 7) % 11) as f64).collect();
        let mut c = s.clone();
        spline2_filter_line(&mut c);
        for (i, &want) in s.iter().enumerate() {
            let got: f64 = spline2_taps(i as f64, s.len())
                .iter()
                .map(|&(j, w)| w * c[j])
                .sum();
            assert!((got - want).abs() < 1e-9, "{i}: {got} vs {want}");
        }
    }
}
