//! Run the `finetune` stage library directly (without the engine): `finetune_dir BASE_DIR
//! DATA_DIR OUT_DIR [CONFIG_JSON] [JUDGES_YAML]`. CONFIG_JSON is a (partial) `FinetuneConfig`.
//! With `ACPO_FT_INIT_BASE=<UNetConfig JSON>` and no `BASE_DIR/model.safetensors`, a seeded
//! random-init base is written first (a plumbing check on real data, not a result).

use std::path::PathBuf;

use acpo_diffusion::config::ScheduleConfig;
use acpo_diffusion::{BenchmarkParams, UNet, UNetConfig};
use acpo_finetune::run::{run_finetune, FinetuneConfig, FinetunePaths, RunOptions};
use candle_core::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    acpo_diffusion::startup::tune_cpu_process();
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        return Err(
            "usage: finetune_dir BASE_DIR DATA_DIR OUT_DIR [CONFIG_JSON] [JUDGES_YAML]".into(),
        );
    }
    let base_dir = PathBuf::from(&a[1]);
    if let Ok(m) = std::env::var("ACPO_FT_INIT_BASE") {
        if !base_dir.join("model.safetensors").exists() {
            let model: UNetConfig = serde_json::from_str(&m)?;
            std::fs::create_dir_all(&base_dir)?;
            let vm = candle_nn::VarMap::new();
            UNet::new_trainable(&model, &vm, 0, &Device::Cpu)?
                .save(&base_dir.join("model.safetensors"))?;
            let bp = BenchmarkParams {
                model,
                schedule: ScheduleConfig::default(),
                ..Default::default()
            };
            std::fs::write(
                base_dir.join("config.json"),
                serde_json::to_string_pretty(&bp)?,
            )?;
        }
    }
    let cfg: FinetuneConfig = serde_json::from_str(a.get(4).map(String::as_str).unwrap_or("{}"))?;
    let mirror = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let paths = FinetunePaths {
        base_dir,
        data_dir: PathBuf::from(&a[2]),
        out_dir: PathBuf::from(&a[3]),
        guidance: mirror.join("iqa/CNNIQA-LIVE.safetensors"),
        judges: PathBuf::from(a.get(5).map(String::as_str).unwrap_or("judges.yaml")),
        base_eval: None,
        text: None,
    };
    let out = run_finetune(&cfg, &paths, &RunOptions::default())?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
