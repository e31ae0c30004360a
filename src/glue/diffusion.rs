//! `acpo stage diffusion ...`: base-model training and sampling (crate `acpo-diffusion`).

use std::path::PathBuf;

use acpo_core::layout::{Layout, Model};
use acpo_diffusion::{
    sample_to_dir, sample_to_dir_conditional, train_base, train_base_conditional, BenchmarkParams,
    ClassContexts,
};
use anyhow::Context;
use clap::Subcommand;

use super::params::stage_param;

#[derive(Debug, Subcommand)]
pub enum DiffusionCommand {
    /// Train a benchmark's base UNet (params `diffusion.<benchmark>`) on
    /// `data/prepared/<benchmark>`, resuming from its checkpoint when one exists.
    TrainBase {
        /// cifar10, anime64 or church256-standin.
        benchmark: String,
        /// Prepared dataset folder (default `data/prepared/<benchmark>`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output folder (default `results/base/<benchmark>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Ignore an existing checkpoint and start from step 0.
        #[arg(long)]
        fresh: bool,
        /// Also write this invocation's resume point and speed here (JSON). Kept out of the
        /// model folder, which every later stage depends on.
        #[arg(long)]
        timing: Option<PathBuf>,
        /// Encoded captions (`embed-captions`, e.g. `data/prepared/cifar10-captions`): train a
        /// prompt-conditioned model (params `model.context_dim` set).
        #[arg(long)]
        captions: Option<PathBuf>,
    },
    /// Draw `sample.num_images` images from fixed seeds with the EMA weights.
    Sample {
        /// cifar10, anime64 or church256-standin.
        benchmark: String,
        /// Trained model folder (default `results/base/<benchmark>`).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Output folder (default `results/samples/<benchmark>/base`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Encoded captions: a prompt-conditioned model draws image `i` from class
        /// `i mod classes`'s first caption.
        #[arg(long)]
        captions: Option<PathBuf>,
    },
}

/// Params of `benchmark`: the model and schedule, plus the train or the sample section
/// (each stage declares exactly the keys it reads, so sampling settings do not invalidate a
/// trained model).
fn params(benchmark: &str, train: bool) -> anyhow::Result<BenchmarkParams> {
    let key = |k: &str| format!("diffusion.{benchmark}.{k}");
    let mut p = BenchmarkParams {
        model: stage_param(&key("model"))?,
        schedule: stage_param(&key("schedule"))?,
        ..Default::default()
    };
    if train {
        p.train = stage_param(&key("train"))?;
    } else {
        p.sample = stage_param(&key("sample"))?;
    }
    p.validate()
        .with_context(|| format!("params `diffusion.{benchmark}`"))?;
    Ok(p)
}

pub fn run(cmd: DiffusionCommand) -> anyhow::Result<()> {
    match cmd {
        DiffusionCommand::TrainBase {
            benchmark,
            data,
            out,
            fresh,
            timing,
            captions,
        } => {
            let p = params(&benchmark, true)?;
            let l = Layout::default();
            let data = data.unwrap_or_else(|| l.prepared(&benchmark).path);
            let out = out.unwrap_or_else(|| l.base(Model::Bench(&benchmark)).path);
            let o = match &captions {
                None => train_base(&p, &data, &out, fresh),
                Some(dir) => train_base_conditional(&p, &data, &class_contexts(dir)?, &out, fresh),
            }
            .with_context(|| format!("train-base {benchmark} into {}", out.display()))?;
            if let Some(path) = &timing {
                super::write_timing(path, &o.invocation)?;
            }
            eprintln!(
                "train-base {benchmark}: {} steps ({} params, {} images), final train loss {:.4}, held-out MSE {:.4} ± {:.4} (n={}), {:.2} images/s",
                o.steps,
                o.num_params,
                o.train_images,
                o.final_train_loss,
                o.heldout_mse.mean,
                o.heldout_mse.ci95,
                o.heldout_mse.n,
                o.invocation.images_per_s
            );
            if let Some(c) = &o.conditioning {
                eprintln!(
                    "train-base {benchmark}: held-out MSE with the null condition {:+.4} ± {:.4}, with another class's caption {:+.4} ± {:.4} (paired, vs the image's caption)",
                    c.null_minus_caption.mean,
                    c.null_minus_caption.ci95,
                    c.other_class_minus_caption.mean,
                    c.other_class_minus_caption.ci95
                );
            }
            Ok(())
        }
        DiffusionCommand::Sample {
            benchmark,
            model_dir,
            out,
            captions,
        } => {
            let p = params(&benchmark, false)?;
            let l = Layout::default();
            let model = Model::Bench(&benchmark);
            let model_dir = model_dir.unwrap_or_else(|| l.base(model).path);
            let out = out.unwrap_or_else(|| l.base_samples(model).path);
            match &captions {
                None => sample_to_dir(&p, &model_dir, &out),
                Some(dir) => sample_to_dir_conditional(&p, &model_dir, &class_contexts(dir)?, &out),
            }
            .with_context(|| format!("sample {benchmark} into {}", out.display()))?;
            eprintln!(
                "sample {benchmark}: {} images -> {}",
                p.sample.num_images,
                out.display()
            );
            Ok(())
        }
    }
}

/// The caption contexts of an `embed-captions` folder, grouped by class.
fn class_contexts(dir: &std::path::Path) -> anyhow::Result<ClassContexts> {
    let e = acpo_text::CaptionEmbeddings::load(dir, &candle_core::Device::Cpu)?;
    Ok(ClassContexts::new(e.tokens.clone(), &e.labels())?)
}
