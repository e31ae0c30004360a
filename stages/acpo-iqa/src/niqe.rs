//! NIQE (Mittal et al. 2013) as implemented by PyPI `iqa-torch==1.2.1` (a port of BasicSR's
//! MATLAB-faithful NIQE), with the MATLAB pristine model shipped in that wheel
//! (`niqe_pris_params.npz`: `mu_pris_param` [1,36], `cov_pris_param` [36,36],
//! `gaussian_window` [7,7]), unpacked by `scripts/setup.sh` into `$ACPO_ASSETS/niqe/`.
//!
//! * gray: `0.299 R + 0.587 G + 0.114 B` on values in [0, 1] (float32), rounded to 8 bits;
//! * the image is cropped to whole 96x96 blocks;
//! * per scale: MSCN with the pristine Gaussian window (replicate padding, C = 1), 18 AGGD
//!   features per block (alpha by grid search over 0.2:0.001:10, right side `x > 0`, neighbour
//!   products by circular shifts inside the block);
//! * the second scale is MATLAB `imresize(img, 0.5)` (bicubic with antialiasing) of the first;
//! * `sqrt((mu_p - mu_d)ᵀ pinv((C_p + C_d)/2) (mu_p - mu_d))`.
//!
//! **Higher = worse.** The image needs at least two blocks (96x192) for a covariance.

use std::path::Path;

use nalgebra::{DMatrix, DVector};

use crate::error::{IqaError, Result};
use crate::imageio::RgbImage;
use crate::npy::read_npz;
use crate::stats::{aggd_moments, gamma, AlphaGrid, RightSide};

pub const BLOCK: usize = 96;

/// NIQE with the pristine MVG model.
pub struct Niqe {
    mu: DVector<f64>,
    cov: DMatrix<f64>,
    window: [[f64; 7]; 7],
    grid: AlphaGrid,
}

impl Niqe {
    /// Loads `niqe_pris_params.npz`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let arrays = read_npz(path)?;
        let get = |name: &str, shape: &[usize]| {
            let a = arrays
                .get(name)
                .ok_or_else(|| IqaError::bad_model(path, format!("array `{name}` is missing")))?;
            if a.shape != shape {
                return Err(IqaError::bad_model(
                    path,
                    format!("array `{name}` has shape {:?}, expected {shape:?}", a.shape),
                ));
            }
            Ok(a.data.clone())
        };
        let mu = DVector::from_vec(get("mu_pris_param", &[1, 36])?);
        let cov = DMatrix::from_row_slice(36, 36, &get("cov_pris_param", &[36, 36])?);
        let wv = get("gaussian_window", &[7, 7])?;
        let mut window = [[0.0; 7]; 7];
        for (r, row) in window.iter_mut().enumerate() {
            row.copy_from_slice(&wv[r * 7..r * 7 + 7]);
        }
        Ok(Self {
            mu,
            cov,
            window,
            grid: AlphaGrid::default(),
        })
    }

    /// Smallest accepted image (two 96x96 blocks; either orientation).
    pub fn accepts(width: usize, height: usize) -> bool {
        (width / BLOCK) * (height / BLOCK) >= 2
    }

    /// NIQE of an 8-bit RGB image (higher = worse).
    pub fn score(&self, img: &RgbImage) -> Result<f64> {
        if !Self::accepts(img.width, img.height) {
            return Err(IqaError::Input(format!(
                "NIQE needs at least two {BLOCK}x{BLOCK} blocks, got a {}x{} image",
                img.width, img.height
            )));
        }
        let gray: Vec<f64> = img
            .data
            .chunks_exact(3)
            .map(|p| {
                let (r, g, b) = (
                    p[0] as f32 / 255.0,
                    p[1] as f32 / 255.0,
                    p[2] as f32 / 255.0,
                );
                let y = r * 0.299f32 + g * 0.587f32 + b * 0.114f32;
                (y.clamp(0.0, 1.0) * 255.0).round() as f64
            })
            .collect();
        self.score_gray255(&gray, img.height, img.width)
    }

    /// NIQE of a gray image with values in [0, 255] (`h x w`, row-major).
    pub fn score_gray255(&self, gray: &[f64], h: usize, w: usize) -> Result<f64> {
        let (nbh, nbw) = (h / BLOCK, w / BLOCK);
        let (ch, cw) = (nbh * BLOCK, nbw * BLOCK);
        let mut img: Vec<f64> = (0..ch)
            .flat_map(|r| gray[r * w..r * w + cw].iter().copied())
            .collect();
        let mut feats: Vec<Vec<f64>> = vec![Vec::with_capacity(36); nbh * nbw];
        let (mut ih, mut iw) = (ch, cw);
        for scale in [1usize, 2] {
            let norm = self.mscn(&img, ih, iw);
            let bs = BLOCK / scale;
            for bw in 0..nbw {
                for bh in 0..nbh {
                    let block: Vec<f64> = (bh * bs..(bh + 1) * bs)
                        .flat_map(|r| {
                            norm[r * iw + bw * bs..r * iw + (bw + 1) * bs]
                                .iter()
                                .copied()
                        })
                        .collect();
                    feats[bw * nbh + bh].extend(self.block_features(&block, bs));
                }
            }
            if scale == 1 {
                let scaled: Vec<f64> = img.iter().map(|v| v / 255.0).collect();
                let (out, oh, ow) = imresize_half(&scaled, ih, iw);
                img = out.into_iter().map(|v| v * 255.0).collect();
                ih = oh;
                iw = ow;
            }
        }
        // nanmean over blocks; covariance over blocks without NaN
        let mut mu_d = DVector::zeros(36);
        for j in 0..36 {
            let vals: Vec<f64> = feats.iter().map(|f| f[j]).filter(|v| !v.is_nan()).collect();
            mu_d[j] = vals.iter().sum::<f64>() / vals.len() as f64;
        }
        let rows: Vec<&Vec<f64>> = feats
            .iter()
            .filter(|f| f.iter().all(|v| !v.is_nan()))
            .collect();
        let n = rows.len();
        let mut cov_d = DMatrix::zeros(36, 36);
        if n >= 2 {
            let mean: Vec<f64> = (0..36)
                .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64)
                .collect();
            for r in &rows {
                for a in 0..36 {
                    for b in 0..36 {
                        cov_d[(a, b)] += (r[a] - mean[a]) * (r[b] - mean[b]);
                    }
                }
            }
            cov_d /= (n - 1) as f64;
        } else {
            cov_d.fill(f64::NAN);
        }
        let m = (&self.cov + cov_d) / 2.0;
        if m.iter().any(|v| !v.is_finite()) || mu_d.iter().any(|v| !v.is_finite()) {
            return Ok(f64::NAN);
        }
        let inv = pinv(&m);
        let d = &self.mu - mu_d;
        let q = (d.transpose() * inv * &d)[(0, 0)];
        Ok(q.sqrt())
    }

    fn mscn(&self, img: &[f64], h: usize, w: usize) -> Vec<f64> {
        let mut out = vec![0.0; h * w];
        let clampi = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
        for r in 0..h {
            for c in 0..w {
                let (mut m, mut s2) = (0.0, 0.0);
                for (u, krow) in self.window.iter().enumerate() {
                    let rr = clampi(r as isize + u as isize - 3, h);
                    for (v, k) in krow.iter().enumerate() {
                        let x = img[rr * w + clampi(c as isize + v as isize - 3, w)];
                        m += k * x;
                        s2 += k * x * x;
                    }
                }
                let sigma = (s2 - m * m).abs().sqrt();
                out[r * w + c] = (img[r * w + c] - m) / (sigma + 1.0);
            }
        }
        out
    }

    fn aggd(&self, x: &[f64]) -> (f64, f64, f64) {
        let m = aggd_moments(x.iter().copied(), RightSide::Positive);
        let a = self.grid.solve(m.r_hat_norm);
        let k = (gamma(1.0 / a) / gamma(3.0 / a)).sqrt();
        (a, m.sigma_left * k, m.sigma_right * k)
    }

    fn block_features(&self, b: &[f64], n: usize) -> Vec<f64> {
        let mut f = Vec::with_capacity(18);
        let (a, bl, br) = self.aggd(b);
        f.extend([a, (bl + br) / 2.0]);
        // torch.roll(block, (s0, s1)): rolled[i, j] = block[(i - s0) mod n, (j - s1) mod n]
        for (s0, s1) in [(0isize, 1isize), (1, 0), (1, 1), (1, -1)] {
            let prod: Vec<f64> = (0..n)
                .flat_map(|i| (0..n).map(move |j| (i, j)))
                .map(|(i, j)| {
                    let ri = (i as isize - s0).rem_euclid(n as isize) as usize;
                    let rj = (j as isize - s1).rem_euclid(n as isize) as usize;
                    b[i * n + j] * b[ri * n + rj]
                })
                .collect();
            let (a, bl, br) = self.aggd(&prod);
            let mean = (br - bl) * (gamma(2.0 / a) / gamma(1.0 / a));
            f.extend([a, mean, bl, br]);
        }
        f
    }
}

/// `numpy.linalg.pinv` (rcond 1e-15 relative to the largest singular value).
fn pinv(m: &DMatrix<f64>) -> DMatrix<f64> {
    let svd = m.clone().svd(true, true);
    let smax = svd.singular_values.max();
    svd.pseudo_inverse(1e-15 * smax)
        .expect("SVD computed with U and V")
}

/// MATLAB's bicubic kernel (a = -0.5).
fn cubic(x: f64) -> f64 {
    let a = x.abs();
    if a <= 1.0 {
        1.5 * a.powi(3) - 2.5 * a * a + 1.0
    } else if a <= 2.0 {
        -0.5 * a.powi(3) + 2.5 * a * a - 4.0 * a + 2.0
    } else {
        0.0
    }
}

/// MATLAB `imresize(x, 0.5)` weights along one axis: for each output, (input index, weight),
/// with symmetric (edge-repeating) padding folded into the indices.
fn resize_taps(n_in: usize, n_out: usize, scale: f64) -> Vec<Vec<(usize, f64)>> {
    let kernel_width = 4.0 / scale; // antialiasing when shrinking
    let p = kernel_width.ceil() as isize + 2;
    (1..=n_out)
        .map(|x| {
            let u = x as f64 / scale + 0.5 * (1.0 - 1.0 / scale);
            let left = (u - kernel_width / 2.0).floor() as isize;
            let mut taps: Vec<(isize, f64)> = (0..p)
                .map(|k| {
                    let idx = left + k; // 1-based
                    (idx, scale * cubic((u - idx as f64) * scale))
                })
                .collect();
            let sum: f64 = taps.iter().map(|t| t.1).sum();
            for t in taps.iter_mut() {
                t.1 /= sum;
            }
            taps.into_iter()
                .map(|(idx, w)| {
                    let j = idx - 1; // 0-based
                    let n = n_in as isize;
                    let j = if j < 0 {
                        -j - 1
                    } else if j >= n {
                        2 * n - 1 - j
                    } else {
                        j
                    };
                    (j.clamp(0, n - 1) as usize, w)
                })
                .collect()
        })
        .collect()
}

/// MATLAB-style bicubic `imresize(img, 0.5)` with antialiasing; output `ceil(h/2) x ceil(w/2)`.
fn imresize_half(img: &[f64], h: usize, w: usize) -> (Vec<f64>, usize, usize) {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let th = resize_taps(h, oh, 0.5);
    let tw = resize_taps(w, ow, 0.5);
    let mut tmp = vec![0.0; oh * w];
    for (o, taps) in th.iter().enumerate() {
        for c in 0..w {
            tmp[o * w + c] = taps.iter().map(|&(i, wt)| wt * img[i * w + c]).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for r in 0..oh {
        for (o, taps) in tw.iter().enumerate() {
            out[r * ow + o] = taps.iter().map(|&(i, wt)| wt * tmp[r * w + i]).sum();
        }
    }
    (out, oh, ow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imresize_keeps_constants_and_weights_sum_to_one() {
        let img = vec![7.0; 10 * 12];
        let (out, oh, ow) = imresize_half(&img, 10, 12);
        assert_eq!((oh, ow), (5, 6));
        assert!(out.iter().all(|v| (v - 7.0).abs() < 1e-12));
        for taps in resize_taps(96, 48, 0.5) {
            let s: f64 = taps.iter().map(|t| t.1).sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }
}
