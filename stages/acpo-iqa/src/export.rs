//! CNNIQA's ONNX export with its parity check against candle (stage `export-cnniqa`); the
//! CLI glue in the binary only reads params and paths and calls [`run_export`].

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::cnniqa::{Cnniqa, PatchMode};
use crate::error::{IqaError, Result};
use crate::imageio::{images_to_tensor, RgbImage};
use crate::onnx::{export_cnniqa, OnnxModel};

/// Parameters of `export-cnniqa` (`iqa.export` in params.yaml).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Input side of `results/iqa/cnniqa.onnx` (square; 32 for CIFAR-10).
    pub size: usize,
    /// Further square sizes, written as `<out_dir>/cnniqa_<s>x<s>.onnx`.
    pub extra_sizes: Vec<usize>,
    /// Real images on which candle and ONNX Runtime must agree within `tolerance`.
    pub check_images: usize,
    /// Largest allowed |candle - ort| score difference.
    pub tolerance: f64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            size: 32,
            extra_sizes: vec![64, 256],
            check_images: 32,
            tolerance: 1e-4,
        }
    }
}

/// Result of one exported size.
#[derive(Clone, Debug, Serialize)]
pub struct ExportCheck {
    pub file: String,
    pub size: usize,
    pub patches_per_image: usize,
    pub images_checked: usize,
    pub max_abs_diff: f64,
    pub mean_score: f64,
}

/// Exports CNNIQA for every configured size and checks ort against candle on `images`
/// (resized with Catmull-Rom to each size). Writes `main_onnx` (the `cfg.size` model) and the
/// extra sizes plus `metrics.json`/`config.json` into `out_dir`.
pub fn run_export(
    cfg: &ExportConfig,
    model: &Cnniqa,
    images: &[RgbImage],
    main_onnx: &Path,
    out_dir: &Path,
) -> Result<Vec<ExportCheck>> {
    std::fs::create_dir_all(out_dir).map_err(|e| IqaError::io(out_dir, e))?;
    let mut checks = Vec::new();
    let mut targets: Vec<(usize, PathBuf)> = vec![(cfg.size, main_onnx.to_path_buf())];
    for &s in &cfg.extra_sizes {
        targets.push((s, out_dir.join(format!("cnniqa_{s}x{s}.onnx"))));
    }
    for (size, path) in targets {
        let tmp = path.with_extension("onnx.partial");
        let info = export_cnniqa(model, size, size, &tmp)?;
        let ort = OnnxModel::load(&tmp, 0)?;
        let imgs: Vec<RgbImage> = images
            .iter()
            .map(|i| i.resize(size, size, image::imageops::FilterType::CatmullRom))
            .collect();
        let mut max_diff: f64 = 0.0;
        let mut sum = 0.0;
        for chunk in imgs.chunks(16) {
            let t = images_to_tensor(chunk, &Device::Cpu)?;
            let want: Vec<f32> = model.score(&t, PatchMode::Inclusive)?.to_vec1()?;
            let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let got = ort.run(data, &[chunk.len(), 3, size, size])?;
            for (g, w) in got.iter().zip(&want) {
                max_diff = max_diff.max((*g as f64 - *w as f64).abs());
                sum += *w as f64;
            }
        }
        if max_diff > cfg.tolerance {
            return Err(IqaError::Input(format!(
                "exported CNNIQA ({size}x{size}) disagrees with candle: max |diff| {max_diff:e} > {:e}",
                cfg.tolerance
            )));
        }
        std::fs::rename(&tmp, &path).map_err(|e| IqaError::io(&path, e))?;
        checks.push(ExportCheck {
            file: path.display().to_string(),
            size,
            patches_per_image: info.patch_rows * info.patch_cols,
            images_checked: imgs.len(),
            max_abs_diff: max_diff,
            mean_score: sum / imgs.len().max(1) as f64,
        });
    }
    let metrics = serde_json::json!({ "exports": checks });
    let config = serde_json::json!({ "iqa.export": cfg });
    for (name, v) in [("metrics.json", metrics), ("config.json", config)] {
        let tmp = out_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&v).expect("json"))
            .map_err(|e| IqaError::io(&tmp, e))?;
        std::fs::rename(&tmp, out_dir.join(name))
            .map_err(|e| IqaError::io(out_dir.join(name), e))?;
    }
    Ok(checks)
}
