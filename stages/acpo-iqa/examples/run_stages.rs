//! Runs the `export-cnniqa` and `judge-sanity` stage work with the default params, exactly as the
//! `acpo stage iqa ...` commands do (for use before the `acpo` binary is built).
//! Usage (repository root): `cargo run --release -p acpo-iqa --example run_stages [samples]`.

use std::path::{Path, PathBuf};

use acpo_iqa::cifar::cifar_test_images;
use acpo_iqa::export::{run_export, ExportConfig};
use acpo_iqa::sanity::{run_sanity, write_outputs, SanityConfig};
use acpo_iqa::{Cnniqa, Registry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mirror = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let prepared = Path::new("data/prepared/cifar10/test.safetensors");
    acpo_iqa::onnx::init_ort(None)?;
    let ecfg = ExportConfig::default();
    let model = Cnniqa::load_cpu(mirror.join("iqa/CNNIQA-LIVE.safetensors"))?;
    let (images, source) = cifar_test_images(prepared, &mirror, ecfg.check_images)?;
    for c in run_export(
        &ecfg,
        &model,
        &images,
        Path::new("results/iqa/cnniqa.onnx"),
        Path::new("results/iqa/export"),
    )? {
        println!(
            "export {} ({}x{}): max |ort - candle| {:.2e} on {} images from {source}",
            c.file, c.size, c.size, c.max_abs_diff, c.images_checked
        );
    }
    let mut cfg = SanityConfig::default();
    if let Some(n) = std::env::args().nth(1) {
        cfg.samples = n.parse()?;
    }
    let reg = Registry::load("judges.yaml")?;
    let (images, source) = cifar_test_images(prepared, &mirror, cfg.samples)?;
    let t0 = std::time::Instant::now();
    let rows = run_sanity(&cfg, &reg, &images)?;
    write_outputs(&rows, &cfg, &source, Path::new("results/iqa/sanity"))?;
    println!(
        "sanity on {} images from {source} in {:.1}s",
        images.len(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        std::fs::read_to_string("results/iqa/sanity/sanity.csv")?
    );
    Ok(())
}
