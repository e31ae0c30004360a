//! Judge sanity check: every judge should rank synthetically degraded images as worse. On real
//! images, each of blur, noise and JPEG is applied at three increasing levels (level 0 = the
//! image itself); the Spearman correlation between level and raw score is reported per judge and
//! distortion, with the sign a working judge should show (+1 when higher = worse).

use std::path::Path;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{IqaError, Result};
use crate::imageio::RgbImage;
use crate::registry::{judge_images, Registry};
use crate::stats::spearman;

/// Parameters of the sanity stage (`iqa.sanity` in params.yaml).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanityConfig {
    /// Number of test images (evenly spaced over the split).
    pub samples: usize,
    /// Seed of the noise.
    pub seed: u64,
    /// Judge names from the registry.
    pub judges: Vec<String>,
    /// Gaussian blur sigmas (pixels), increasing.
    pub blur_sigma: Vec<f64>,
    /// Additive Gaussian noise sigmas (8-bit units), increasing.
    pub noise_sigma: Vec<f64>,
    /// JPEG qualities, decreasing (= increasing distortion).
    pub jpeg_quality: Vec<u8>,
}

impl Default for SanityConfig {
    fn default() -> Self {
        Self {
            samples: 100,
            seed: 0,
            judges: vec![
                "cnniqa".into(),
                "cnniqa-onnx".into(),
                "brisque".into(),
                "niqe".into(),
            ],
            blur_sigma: vec![0.6, 1.2, 2.0],
            noise_sigma: vec![5.0, 15.0, 30.0],
            jpeg_quality: vec![50, 20, 5],
        }
    }
}

/// A synthetic distortion at one level.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Distortion {
    Blur(f64),
    Noise(f64),
    Jpeg(u8),
}

impl Distortion {
    pub fn family(&self) -> &'static str {
        match self {
            Distortion::Blur(_) => "blur",
            Distortion::Noise(_) => "noise",
            Distortion::Jpeg(_) => "jpeg",
        }
    }
    pub fn parameter(&self) -> f64 {
        match *self {
            Distortion::Blur(s) | Distortion::Noise(s) => s,
            Distortion::Jpeg(q) => q as f64,
        }
    }

    /// Applies the distortion (`rng` drives the noise).
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> Result<RgbImage> {
        Ok(match *self {
            Distortion::Blur(sigma) => {
                RgbImage::from_image(image::imageops::blur(&img.to_image(), sigma as f32))
            }
            Distortion::Noise(sigma) => {
                let data = img
                    .data
                    .iter()
                    .map(|&v| {
                        // Box-Muller
                        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                        let u2: f64 = rng.random();
                        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                        (v as f64 + sigma * z).round().clamp(0.0, 255.0) as u8
                    })
                    .collect();
                RgbImage::new(img.width, img.height, data)?
            }
            Distortion::Jpeg(q) => {
                let mut buf = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q)
                    .encode_image(&img.to_image())
                    .map_err(|e| IqaError::Input(format!("JPEG encode: {e}")))?;
                let dec = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)
                    .map_err(|e| IqaError::Input(format!("JPEG decode: {e}")))?;
                RgbImage::from_image(dec.to_rgb8())
            }
        })
    }
}

/// One row of `sanity.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct SanityRow {
    pub judge: String,
    pub higher_is_better: bool,
    pub distortion: String,
    /// "0/p1/p2/p3" (level 0 = undistorted)
    pub parameters: String,
    pub n_images: usize,
    /// Mean raw score at levels 0..=3.
    pub mean_scores: Vec<f64>,
    /// Spearman correlation of level (0..=3) and raw score over all image-level pairs.
    pub spearman: f64,
    /// +1 when a working judge's score rises with distortion (higher = worse), else -1.
    pub expected_sign: i32,
    /// `spearman * expected_sign`: > 0 means the judge ranks distortion as worse.
    pub quality_spearman: f64,
    pub seconds: f64,
}

/// Runs the sanity check of `cfg.judges` on `images`.
pub fn run_sanity(
    cfg: &SanityConfig,
    registry: &Registry,
    images: &[RgbImage],
) -> Result<Vec<SanityRow>> {
    let progress = acpo_core::progress::bar(0, "judge sanity");
    let families: Vec<Vec<Distortion>> = vec![
        cfg.blur_sigma
            .iter()
            .map(|&s| Distortion::Blur(s))
            .collect(),
        cfg.noise_sigma
            .iter()
            .map(|&s| Distortion::Noise(s))
            .collect(),
        cfg.jpeg_quality
            .iter()
            .map(|&q| Distortion::Jpeg(q))
            .collect(),
    ];
    // distorted sets, computed once: sets[f][l] for level l+1
    let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(cfg.seed);
    let mut sets: Vec<Vec<Vec<RgbImage>>> = Vec::new();
    for fam in &families {
        let mut levels = Vec::new();
        for d in fam {
            levels.push(
                images
                    .iter()
                    .map(|i| d.apply(i, &mut rng))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        sets.push(levels);
    }
    let mut rows = Vec::new();
    progress.set_length((cfg.judges.len() * (1 + 3 * 3)) as u64);
    for name in &cfg.judges {
        let judge = registry.load_judge(name)?;
        let t0 = std::time::Instant::now();
        let clean = judge_images(&judge, images)?;
        progress.inc(1);
        for (fam, levels) in families.iter().zip(&sets) {
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            let mut means = vec![mean(&clean)];
            xs.extend(std::iter::repeat_n(0.0, clean.len()));
            ys.extend(&clean);
            for (l, set) in levels.iter().enumerate() {
                let s = judge_images(&judge, set)?;
                progress.inc(1);
                means.push(mean(&s));
                xs.extend(std::iter::repeat_n((l + 1) as f64, s.len()));
                ys.extend(s);
            }
            let rho = spearman(&xs, &ys);
            let sign = if judge.spec.higher_is_better { -1 } else { 1 };
            let params = std::iter::once("0".to_string())
                .chain(fam.iter().map(|d| format!("{}", d.parameter())))
                .collect::<Vec<_>>()
                .join("/");
            rows.push(SanityRow {
                judge: name.clone(),
                higher_is_better: judge.spec.higher_is_better,
                distortion: fam[0].family().into(),
                parameters: params,
                n_images: images.len(),
                mean_scores: means,
                spearman: rho,
                expected_sign: sign,
                quality_spearman: rho * sign as f64,
                seconds: 0.0,
            });
        }
        let secs = t0.elapsed().as_secs_f64();
        let k = rows.len();
        for r in &mut rows[k - families.len()..] {
            r.seconds = secs;
        }
    }
    progress.finish_and_clear();
    Ok(rows)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Writes `sanity.csv` and `metrics.json` into `dir` (temporary names, then renamed).
pub fn write_outputs(
    rows: &[SanityRow],
    cfg: &SanityConfig,
    source: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| IqaError::io(dir, e))?;
    let mut csv = String::from(
        "judge,higher_is_better,distortion,parameters,n_images,mean_level0,mean_level1,mean_level2,mean_level3,spearman,expected_sign,quality_spearman\n",
    );
    for r in rows {
        let m = |i: usize| r.mean_scores.get(i).copied().unwrap_or(f64::NAN);
        csv.push_str(&format!(
            "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.4},{},{:.4}\n",
            r.judge,
            r.higher_is_better,
            r.distortion,
            r.parameters,
            r.n_images,
            m(0),
            m(1),
            m(2),
            m(3),
            r.spearman,
            r.expected_sign,
            r.quality_spearman
        ));
    }
    let mut metrics = serde_json::Map::new();
    for r in rows {
        let entry = metrics
            .entry(r.judge.clone())
            .or_insert_with(|| serde_json::json!({}));
        entry[r.distortion.as_str()] = serde_json::json!({
            "spearman": r.spearman,
            "quality_spearman": r.quality_spearman,
            "n": r.n_images * r.mean_scores.len(),
            "mean_scores": r.mean_scores,
        });
    }
    let metrics = serde_json::json!({
        "source": source,
        "n_images": rows.first().map(|r| r.n_images).unwrap_or(0),
        "levels": 3,
        "judges": metrics,
    });
    let config = serde_json::json!({ "iqa.sanity": cfg, "source": source });
    for (name, text) in [
        ("sanity.csv", csv),
        (
            "metrics.json",
            serde_json::to_string_pretty(&metrics).expect("json"),
        ),
        (
            "config.json",
            serde_json::to_string_pretty(&config).expect("json"),
        ),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| IqaError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| IqaError::io(dir.join(name), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distortions_change_images_monotonically() {
        let data: Vec<u8> = (0..32 * 32 * 3).map(|i| ((i * 31) % 256) as u8).collect();
        let img = RgbImage::new(32, 32, data).unwrap();
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let mse = |a: &RgbImage, b: &RgbImage| {
            a.data
                .iter()
                .zip(&b.data)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum::<f64>()
        };
        for fam in [
            vec![
                Distortion::Blur(0.6),
                Distortion::Blur(1.2),
                Distortion::Blur(2.0),
            ],
            vec![
                Distortion::Noise(5.0),
                Distortion::Noise(15.0),
                Distortion::Noise(30.0),
            ],
            vec![
                Distortion::Jpeg(50),
                Distortion::Jpeg(20),
                Distortion::Jpeg(5),
            ],
        ] {
            let errs: Vec<f64> = fam
                .iter()
                .map(|d| mse(&img, &d.apply(&img, &mut rng).unwrap()))
                .collect();
            assert!(
                errs[0] > 0.0 && errs[0] < errs[1] && errs[1] < errs[2],
                "{fam:?}: {errs:?}"
            );
        }
    }
}
