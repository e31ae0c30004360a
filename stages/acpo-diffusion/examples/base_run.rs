//! Runs `train-base` and then `sample` on one prepared dataset without the engine (for
//! measurements; the pipeline uses `acpo stage diffusion ...`).
//!
//! Usage: `base_run PARAMS_JSON DATA_DIR OUT_DIR` where PARAMS_JSON is a `BenchmarkParams`
//! object; writes OUT_DIR/base and OUT_DIR/samples.

use std::path::Path;

use acpo_diffusion::{sample_to_dir, train_base, BenchmarkParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    acpo_diffusion::startup::tune_cpu_process();
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        return Err("usage: base_run PARAMS_JSON DATA_DIR OUT_DIR".into());
    }
    let p: BenchmarkParams = serde_json::from_str(&a[1])?;
    let out = Path::new(&a[3]);
    let o = train_base(&p, Path::new(&a[2]), &out.join("base"), false)?;
    println!("{}", serde_json::to_string(&o)?);
    sample_to_dir(&p, &out.join("base"), &out.join("samples"))?;
    Ok(())
}
