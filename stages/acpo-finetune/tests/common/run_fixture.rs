//! What the stage tests share: the mirror, a tiny untrained base model with its
//! `config.json`, and a judge registry with the real CNNIQA weights.

use acpo_diffusion::config::ScheduleConfig;
use acpo_diffusion::{BenchmarkParams, UNet, UNetConfig};
use candle_core::Device;
use candle_nn::VarMap;
use std::path::{Path, PathBuf};

pub fn mirror() -> PathBuf {
    std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// The CNNIQA weights (the guidance).
pub fn cnniqa() -> PathBuf {
    mirror().join("iqa/CNNIQA-LIVE.safetensors")
}

/// An untrained `model` (seed 3) over a 100-step schedule in `base_dir`, as train-base leaves it.
pub fn write_base(base_dir: &Path, model: &UNetConfig) {
    std::fs::create_dir_all(base_dir).unwrap();
    let bp = BenchmarkParams {
        model: model.clone(),
        schedule: ScheduleConfig {
            timesteps: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let vm = VarMap::new();
    let unet = UNet::new_trainable(model, &vm, 3, &Device::Cpu).unwrap();
    unet.save(&base_dir.join("model.safetensors")).unwrap();
    std::fs::write(
        base_dir.join("config.json"),
        serde_json::to_string_pretty(&bp).unwrap(),
    )
    .unwrap();
}

/// `dir/judges.yaml` with the one judge `cnniqa`.
pub fn write_judges(dir: &Path) {
    std::fs::write(
        dir.join("judges.yaml"),
        format!(
            "judges:\n  - name: cnniqa\n    kind: cnniqa\n    model: {}\n    higher_is_better: false\n",
            cnniqa().display()
        ),
    )
    .unwrap();
}
