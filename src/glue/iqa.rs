//! `acpo stage iqa ...`: CNNIQA export to ONNX and the judge sanity check (crate `acpo-iqa`).

use std::path::PathBuf;

use acpo_core::layout::Layout;
use acpo_iqa::cifar::cifar_test_images;
use acpo_iqa::export::{run_export, ExportConfig};
use acpo_iqa::sanity::{run_sanity, write_outputs, SanityConfig};
use acpo_iqa::{Cnniqa, Registry};
use anyhow::Context;
use clap::Subcommand;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum IqaCommand {
    /// Export CNNIQA-LIVE to ONNX (inclusive grid) and check ONNX Runtime against candle
    /// on real CIFAR-10 test images (params `iqa.export`).
    ExportCnniqa {
        /// The main model (input `iqa.export.size`).
        #[arg(long, default_value_os_t = Layout::default().cnniqa_onnx().path)]
        out: PathBuf,
        /// Extra sizes, metrics.json and config.json go here.
        #[arg(long, default_value_os_t = Layout::default().cnniqa_export().path)]
        out_dir: PathBuf,
    },
    /// Spearman correlation of distortion level and score per judge on CIFAR-10 test images
    /// with blur, noise and JPEG at three levels (params `iqa.sanity`).
    JudgeSanity {
        #[arg(long, default_value_os_t = Layout::default().judge_sanity().path)]
        out_dir: PathBuf,
        #[arg(long, default_value = "judges.yaml")]
        registry: PathBuf,
    },
}

/// The real images both commands score: CIFAR-10's prepared test split.
fn prepared_test() -> PathBuf {
    Layout::default().split("cifar10", "test").path
}

pub fn run(cmd: IqaCommand) -> anyhow::Result<()> {
    match cmd {
        IqaCommand::ExportCnniqa { out, out_dir } => {
            let cfg: ExportConfig = stage_param("iqa.export")?;
            acpo_iqa::onnx::init_ort(None)?;
            let weights = super::mirror().join("iqa/CNNIQA-LIVE.safetensors");
            let model = Cnniqa::load_cpu(&weights)?;
            let (images, source) =
                cifar_test_images(&prepared_test(), &super::mirror(), cfg.check_images)?;
            let checks = run_export(&cfg, &model, &images, &out, &out_dir)
                .with_context(|| format!("exporting CNNIQA from {}", weights.display()))?;
            for c in &checks {
                eprintln!(
                    "export-cnniqa: {} ({}x{}, {} patches): max |ort - candle| = {:.2e} on {} images from {source}",
                    c.file, c.size, c.size, c.patches_per_image, c.max_abs_diff, c.images_checked
                );
            }
            Ok(())
        }
        IqaCommand::JudgeSanity { out_dir, registry } => {
            let cfg: SanityConfig = stage_param("iqa.sanity")?;
            let reg = Registry::load(&registry)?;
            let (images, source) =
                cifar_test_images(&prepared_test(), &super::mirror(), cfg.samples)?;
            let rows = run_sanity(&cfg, &reg, &images)?;
            write_outputs(&rows, &cfg, &source, &out_dir)?;
            for r in &rows {
                eprintln!(
                    "judge-sanity: {:<12} {:<6} spearman {:+.3} (quality-oriented {:+.3})",
                    r.judge, r.distortion, r.spearman, r.quality_spearman
                );
            }
            Ok(())
        }
    }
}
