//! Throughput of ACPO fine-tuning steps (tuned UNet + frozen anchor + CNNIQA guidance with its
//! gradient), on the CPU and, built with `--features cuda`, on the GPU: the fine-tuning part of
//! `just gpu-check`, and the measurement behind the cpu profile's step counts.
//!
//! Usage: `acpo_steps [MODEL_JSON] [BATCH] [STEPS] [DEVICE]`; MODEL_JSON is acpo-diffusion's
//! `UNetConfig` as JSON (default `{}`), DEVICE is `cpu` or `cuda` (default: cuda when built
//! with the feature and a GPU is present). The base weights are a seeded random init and the
//! images seeded noise: this measures speed, not quality. CNNIQA comes from
//! `$ACPO_MIRROR/iqa/CNNIQA-LIVE.safetensors` (default `../shared/data`). Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use acpo_diffusion::{UNet, UNetConfig};
use acpo_finetune::draws::{self, Stream};
use acpo_finetune::run::CnniqaGuidance;
use acpo_finetune::{
    data_batch, train_step, AdamW, AdamWConfig, Method, ObjectiveConfig, Schedule,
};
use acpo_iqa::PatchMode;
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    acpo_diffusion::startup::tune_cpu_process();
    let args: Vec<String> = std::env::args().collect();
    let cfg: UNetConfig = serde_json::from_str(args.get(1).map(String::as_str).unwrap_or("{}"))?;
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let device = match args.get(4).map(String::as_str) {
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::new_cuda(0)?,
        _ => Device::cuda_if_available(0)?,
    };
    let mirror = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let vm = candle_nn::VarMap::new();
    let model = UNet::new_trainable(&cfg, &vm, 0, &device)?;
    let reference = model.frozen_copy()?;
    let guidance = CnniqaGuidance::load(
        &mirror.join("iqa/CNNIQA-LIVE.safetensors"),
        PatchMode::Inclusive,
        &device,
    )?;
    let schedule = Schedule::linear(1000, 1e-4, 0.02)?;
    let obj = ObjectiveConfig {
        method: Method::Acpo,
        ..Default::default()
    };
    let mut opt = AdamW::new(model.vars()?, AdamWConfig::default())?;
    let s = cfg.image_size;
    let mut rng = draws::rng(0, Stream::Train, 12345);
    let images = (draws::normal(&mut rng, &[64, cfg.in_channels, s, s], &device)? * 0.5)?;
    let mut total = 0.0;
    for step in 0..=steps {
        let b = data_batch(&images, &schedule, &obj, batch, 0, step as u64)?;
        let t0 = Instant::now();
        let st = train_step(
            &model, &reference, &guidance, &schedule, &obj, &b, &mut opt, 1.0,
        )?;
        if step > 0 {
            total += t0.elapsed().as_secs_f64();
        }
        if !st.loss.is_finite() {
            return Err(format!("non-finite loss at step {step}").into());
        }
    }
    println!(
        "{{\"device\":\"{:?}\",\"params\":{},\"batch\":{batch},\"steps\":{steps},\"s_per_step\":{:.4},\"steps_per_s\":{:.3}}}",
        device,
        model.num_params(),
        total / steps as f64,
        steps as f64 / total
    );
    Ok(())
}
