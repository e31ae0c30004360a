//! Trains the cpu-profile CIFAR-10 UNet for a few hundred steps on one device and prints the
//! loss curve as CSV (used by `just gpu-check` to compare a CUDA build with the CPU).
//!
//! Usage: `loss_curve DEVICE DATA_DIR STEPS PARAMS_JSON OUT_DIR`; DEVICE is `cpu` or `cuda`
//! (the latter needs the `cuda` feature); PARAMS_JSON is a `BenchmarkParams` JSON object.

use std::path::Path;

use acpo_diffusion::data::ImageSet;
use acpo_diffusion::train::train_loop;
use acpo_diffusion::BenchmarkParams;
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    acpo_diffusion::startup::tune_cpu_process();
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        return Err("usage: loss_curve cpu|cuda DATA_DIR STEPS PARAMS_JSON OUT_DIR".into());
    }
    let device = match a[1].as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        d => return Err(format!("unknown device {d}").into()),
    };
    let mut p: BenchmarkParams = serde_json::from_str(&a[4])?;
    p.train.steps = a[3].parse()?;
    p.train.checkpoint_every = p.train.steps;
    let mut data = ImageSet::load(&Path::new(&a[2]).join("train.safetensors"))?;
    data.truncate(p.train.train_subset);
    let out = Path::new(&a[5]);
    std::fs::create_dir_all(out)?;
    let (_, o) = train_loop(&p, &data, None, out, true, &device)?;
    eprintln!(
        "{}: {} steps, {:.2} images/s",
        a[1], o.steps, o.invocation.images_per_s
    );
    print!("{}", std::fs::read_to_string(out.join("loss.csv"))?);
    Ok(())
}
