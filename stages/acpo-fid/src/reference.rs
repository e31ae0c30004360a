//! Reference statistics of a dataset split (the `fid-ref@<dataset>` stage), and
//! comparisons of image sets against them (FID, KID, diversity).

use crate::error::{FidError, Result};
use crate::inception::{InceptionV3, FEATURE_DIM};
use crate::io::{self, ImageSet};
use crate::stats::{self, Diversity, GaussianStats, Kid, KidConfig};
use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, DVector};
// ChaCha12 named explicitly (rand 0.9's StdRng, which promises no algorithm across versions).
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng as StdRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Format tag of reference statistics files.
pub const REF_FORMAT: &str = "acpo-fid-ref/1";

/// Which images of a set are used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// How many images (a seeded random subset, in file order); 0 means all.
    /// Default 2000: Inception-v3 costs about 5.7 GFLOP per image, a few images per
    /// second on two CPU cores.
    pub samples: usize,
    /// Seed of the subset draw (default 0).
    pub seed: u64,
    /// Images per Inception forward (default 16).
    pub batch_size: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            samples: 2000,
            seed: 0,
            batch_size: 16,
        }
    }
}

impl SampleConfig {
    /// The sorted indices of the images to use out of `n`.
    pub fn indices(&self, n: usize) -> Vec<usize> {
        if self.samples == 0 || self.samples >= n {
            return (0..n).collect();
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut ix = rand::seq::index::sample(&mut rng, n, self.samples).into_vec();
        ix.sort_unstable();
        ix
    }
}

/// The params `fid.ref` of `params.yaml` (the reference statistics stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefParams {
    /// Test images used (seeded random subset); 0 means all. Default 2000.
    pub samples: usize,
    /// Seed of the subset (default 0).
    pub seed: u64,
    /// Images per Inception forward (default 16).
    pub batch_size: usize,
    /// How many of them keep their features for KID; 0 means all. Default 2000.
    pub kid_features: usize,
}

impl Default for RefParams {
    fn default() -> Self {
        Self {
            samples: 2000,
            seed: 0,
            batch_size: 16,
            kid_features: 2000,
        }
    }
}

impl RefParams {
    pub fn into_config(self, dataset: &str, images: PathBuf, weights: PathBuf) -> RefConfig {
        RefConfig {
            dataset: dataset.to_string(),
            images,
            weights,
            sample: SampleConfig {
                samples: self.samples,
                seed: self.seed,
                batch_size: self.batch_size,
            },
            kid_features: self.kid_features,
        }
    }
}

/// The params `fid.compare` of `params.yaml` (image set against reference statistics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareParams {
    /// Images used (seeded random subset); 0 means all. Default 2000.
    pub samples: usize,
    /// Seed of the subset (default 1, so that a split compared with itself would
    /// not reuse the reference's draw).
    pub seed: u64,
    /// Images per Inception forward (default 16).
    pub batch_size: usize,
    pub kid: KidConfig,
}

impl Default for CompareParams {
    fn default() -> Self {
        Self {
            samples: 2000,
            seed: 1,
            batch_size: 16,
            kid: KidConfig::default(),
        }
    }
}

impl CompareParams {
    pub fn into_config(
        self,
        images: PathBuf,
        reference: PathBuf,
        weights: PathBuf,
    ) -> CompareConfig {
        CompareConfig {
            images,
            reference,
            weights,
            sample: SampleConfig {
                samples: self.samples,
                seed: self.seed,
                batch_size: self.batch_size,
            },
            kid: self.kid,
        }
    }
}

/// Configuration of the `fid-ref@<dataset>` stage (saved as its config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefConfig {
    /// Dataset name (the `@<dataset>` of the stage).
    pub dataset: String,
    /// Input images: `data/prepared/<dataset>/test.safetensors` (or an image tar).
    pub images: PathBuf,
    /// Converted Inception weights (default `results/fid/inception-fid.safetensors`).
    pub weights: PathBuf,
    /// Which images are used.
    pub sample: SampleConfig,
    /// How many of the used images keep their features for KID (default 2000;
    /// 0 means all of them).
    pub kid_features: usize,
}

impl Default for RefConfig {
    fn default() -> Self {
        Self {
            dataset: String::new(),
            images: PathBuf::new(),
            weights: PathBuf::from("results/fid/inception-fid.safetensors"),
            sample: SampleConfig::default(),
            kid_features: 2000,
        }
    }
}

/// Cached statistics of a reference image set.
#[derive(Debug, Clone)]
pub struct RefStats {
    pub stats: GaussianStats,
    /// `stats.sigma^(1/2)`, cached so that each FID needs one eigendecomposition.
    pub sqrt_sigma: DMatrix<f64>,
    /// Features kept for KID, F32 `[k, 2048]` on the CPU.
    pub kid_features: Tensor,
    /// Indices (into the source file) of the images the statistics use.
    pub indices: Vec<usize>,
    /// Free-form provenance (dataset, source file hash, weights hash, ...).
    pub meta: HashMap<String, String>,
}

fn to_row_major(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().as_slice().to_vec()
}

impl RefStats {
    /// Statistics of `features` `[N, 2048]`; `kid_features` rows (all if 0), a
    /// random subset drawn with `seed`, are kept for KID.
    pub fn from_features(
        features: &Tensor,
        indices: Vec<usize>,
        kid_features: usize,
        seed: u64,
        meta: HashMap<String, String>,
    ) -> Result<Self> {
        let stats = GaussianStats::from_features(features)?;
        let sqrt_sigma = stats.sqrt_sigma()?;
        let n = features.dim(0)?;
        let kid_rows = SampleConfig {
            samples: kid_features,
            seed,
            batch_size: 1,
        }
        .indices(n);
        let kid_rows = Tensor::from_vec(
            kid_rows.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            kid_rows.len(),
            features.device(),
        )?;
        let kid_features = features
            .index_select(&kid_rows, 0)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?;
        Ok(Self {
            stats,
            sqrt_sigma,
            kid_features,
            indices,
            meta,
        })
    }

    /// Write as safetensors (`mu`, `sigma`, `sqrt_sigma` F64, `kid_features` F32,
    /// `indices` I64) with the provenance as metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.stats.dim();
        let cpu = Device::Cpu;
        let mut t: Vec<(String, Tensor)> = vec![
            (
                "mu".into(),
                Tensor::from_slice(self.stats.mu.as_slice(), d, &cpu)?,
            ),
            (
                "sigma".into(),
                Tensor::from_vec(to_row_major(&self.stats.sigma), (d, d), &cpu)?,
            ),
            (
                "sqrt_sigma".into(),
                Tensor::from_vec(to_row_major(&self.sqrt_sigma), (d, d), &cpu)?,
            ),
            ("kid_features".into(), self.kid_features.clone()),
            (
                "indices".into(),
                Tensor::from_vec(
                    self.indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    self.indices.len(),
                    &cpu,
                )?,
            ),
        ];
        t.sort_by(|a, b| a.0.cmp(&b.0));
        let mut meta = self.meta.clone();
        meta.insert("format".into(), REF_FORMAT.into());
        meta.insert("n".into(), self.stats.n.to_string());
        io::write_safetensors(path, t.iter().map(|(k, v)| (k, v)), Some(meta))
    }

    /// Read a file written by [`RefStats::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| FidError::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| FidError::data(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(REF_FORMAT) {
            return Err(FidError::data(
                path,
                format!(
                    "metadata `format` is {:?}, expected {REF_FORMAT:?} (written by the fid-ref stage)",
                    meta.get("format")
                ),
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| FidError::data(path, e.to_string()))?;
        let mu = io::get_tensor(&tensors, path, "mu", DType::F64)?;
        let d = mu.dim(0)?;
        let mat = |name: &str| -> Result<DMatrix<f64>> {
            let t = io::get_tensor(&tensors, path, name, DType::F64)?;
            if t.dims() != [d, d] {
                return Err(FidError::data(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected [{d}, {d}]",
                        t.dims()
                    ),
                ));
            }
            Ok(DMatrix::from_row_slice(
                d,
                d,
                &t.flatten_all()?.to_vec1::<f64>()?,
            ))
        };
        let sigma = mat("sigma")?;
        let sqrt_sigma = mat("sqrt_sigma")?;
        let kid_features = io::get_tensor(&tensors, path, "kid_features", DType::F32)?;
        if kid_features.rank() != 2 || kid_features.dim(1)? != d {
            return Err(FidError::data(
                path,
                format!(
                    "tensor `kid_features` has shape {:?}, expected [k, {d}]",
                    kid_features.dims()
                ),
            ));
        }
        let indices: Vec<usize> = io::get_tensor(&tensors, path, "indices", DType::I64)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let n = meta
            .get("n")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| FidError::data(path, "metadata `n` missing or not an integer"))?;
        Ok(Self {
            stats: GaussianStats::new(n, DVector::from_vec(mu.to_vec1::<f64>()?), sigma)?,
            sqrt_sigma,
            kid_features,
            indices,
            meta,
        })
    }
}

/// FID and KID of a feature set against reference statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FidKid {
    pub fid: f64,
    pub kid_mean: f64,
    pub kid_std: f64,
    /// Samples in the evaluated set and in the reference.
    pub n: usize,
    pub n_ref: usize,
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
}

/// FID and KID of `features` `[N, 2048]` (e.g. of generated samples) against
/// `reference`.
pub fn fid_kid(features: &Tensor, reference: &RefStats, kid: &KidConfig) -> Result<FidKid> {
    let s = GaussianStats::from_features(features)?;
    let fid = stats::frechet_distance(&s, &reference.stats, &reference.sqrt_sigma)?;
    let Kid {
        mean,
        std,
        subsets,
        subset_size,
    } = stats::kid(features, &reference.kid_features, kid)?;
    Ok(FidKid {
        fid,
        kid_mean: mean,
        kid_std: std,
        n: s.n,
        n_ref: reference.stats.n,
        kid_subsets: subsets,
        kid_subset_size: subset_size,
    })
}

/// What the reference stage reports (its metrics.json).
#[derive(Debug, Clone, Serialize)]
pub struct RefMetrics {
    pub dataset: String,
    pub images_total: usize,
    pub images_used: usize,
    pub kid_features: usize,
    pub image_size: [usize; 2],
    pub trace_sigma: f64,
    pub mu_norm: f64,
    pub feature_diversity: Diversity,
    pub feature_seconds: f64,
    pub images_per_second: f64,
}

/// Compute reference statistics of `cfg.images` with `model`.
pub fn compute_reference(cfg: &RefConfig, model: &InceptionV3) -> Result<(RefStats, RefMetrics)> {
    let set = io::read_images(&cfg.images)?;
    let indices = cfg.sample.indices(set.n);
    if indices.len() < 2 {
        return Err(FidError::data(
            &cfg.images,
            format!("{} images, need at least 2 for statistics", indices.len()),
        ));
    }
    let t0 = Instant::now();
    let feats = model.features_of_set(
        &set,
        &indices,
        cfg.sample.batch_size,
        &format!("fid-ref {}", cfg.dataset),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let mut meta = HashMap::new();
    meta.insert("dataset".into(), cfg.dataset.clone());
    meta.insert("images".into(), cfg.images.display().to_string());
    meta.insert(
        "images_sha256".into(),
        crate::torchscript::file_sha256(&cfg.images)?,
    );
    meta.insert(
        "weights_sha256".into(),
        crate::torchscript::file_sha256(&cfg.weights)?,
    );
    // A different stream from the image subset's.
    let kid_seed = cfg.sample.seed ^ 0x6b69_645f_7375_6273;
    let r = RefStats::from_features(&feats, indices.clone(), cfg.kid_features, kid_seed, meta)?;
    let metrics = RefMetrics {
        dataset: cfg.dataset.clone(),
        images_total: set.n,
        images_used: indices.len(),
        kid_features: r.kid_features.dim(0)?,
        image_size: [set.height, set.width],
        trace_sigma: r.stats.sigma.trace(),
        mu_norm: r.stats.mu.norm(),
        feature_diversity: stats::feature_diversity(&feats)?,
        feature_seconds: secs,
        images_per_second: indices.len() as f64 / secs,
    };
    Ok((r, metrics))
}

/// Configuration of a comparison of an image set against reference statistics
/// (the `fid-compare` command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareConfig {
    /// Images to evaluate (prepared `.safetensors` or an image `.tar`).
    pub images: PathBuf,
    /// Reference statistics written by `fid-ref`.
    pub reference: PathBuf,
    /// Converted Inception weights.
    pub weights: PathBuf,
    pub sample: SampleConfig,
    pub kid: KidConfig,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            images: PathBuf::new(),
            reference: PathBuf::new(),
            weights: PathBuf::from("results/fid/inception-fid.safetensors"),
            sample: SampleConfig::default(),
            kid: KidConfig::default(),
        }
    }
}

/// Result of [`compare`].
#[derive(Debug, Clone, Serialize)]
pub struct CompareMetrics {
    pub images: String,
    pub reference: String,
    pub images_total: usize,
    pub images_used: usize,
    #[serde(flatten)]
    pub fid_kid: FidKid,
    pub feature_diversity: Diversity,
    pub pixel_diversity: Diversity,
    pub feature_seconds: f64,
    pub images_per_second: f64,
}

/// FID, KID and diversity of `cfg.images` against `cfg.reference`.
pub fn compare(cfg: &CompareConfig, model: &InceptionV3) -> Result<CompareMetrics> {
    let reference = RefStats::load(&cfg.reference)?;
    if reference.stats.dim() != FEATURE_DIM {
        return Err(FidError::data(
            &cfg.reference,
            format!(
                "statistics of dimension {}, expected {FEATURE_DIM}",
                reference.stats.dim()
            ),
        ));
    }
    let set = io::read_images(&cfg.images)?;
    let indices = cfg.sample.indices(set.n);
    let t0 = Instant::now();
    let feats = model.features_of_set(&set, &indices, cfg.sample.batch_size, "fid-compare")?;
    let secs = t0.elapsed().as_secs_f64();
    let fk = fid_kid(&feats, &reference, &cfg.kid)?;
    let subset: ImageSet = set.select(&indices)?;
    let (n_sub, len) = (subset.n, subset.image_len());
    let pix = Tensor::from_vec(subset.data, (n_sub, len), &Device::Cpu)?;
    Ok(CompareMetrics {
        images: cfg.images.display().to_string(),
        reference: cfg.reference.display().to_string(),
        images_total: set.n,
        images_used: indices.len(),
        fid_kid: fk,
        feature_diversity: stats::feature_diversity(&feats)?,
        pixel_diversity: stats::pixel_diversity(&pix)?,
        feature_seconds: secs,
        images_per_second: indices.len() as f64 / secs,
    })
}
