//! IQA throughput on the CPU: images/s of every built-in judge on 32x32 and 256x256 images, and
//! CNNIQA's candle forward and forward+backward against its ONNX Runtime forward.
//! Run by `scripts/bench/iqa.sh`; prints a Markdown table and writes JSON to the path in argv[1].

use std::path::PathBuf;
use std::time::Instant;

use acpo_iqa::imageio::images_to_tensor;
use acpo_iqa::onnx::{export_cnniqa, init_ort, OnnxModel};
use acpo_iqa::{judge_images, Cnniqa, PatchMode, Registry, RgbImage};
use candle_core::{Device, Var};

fn images(size: usize, n: usize) -> Vec<RgbImage> {
    let mirror = std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let tar = mirror.join("cifar10/cifar10-jpeg-test.tar");
    let base = acpo_iqa::cifar::load_tar(&tar, n).expect("CIFAR-10 test tar");
    base.iter()
        .map(|i| i.resize(size, size, image::imageops::FilterType::CatmullRom))
        .collect()
}

/// Runs `f` until at least `min_secs` have passed (after one warm-up); returns seconds per call.
fn time(min_secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    let mut calls = 0;
    while t0.elapsed().as_secs_f64() < min_secs || calls == 0 {
        f();
        calls += 1;
    }
    t0.elapsed().as_secs_f64() / calls as f64
}

fn main() {
    let out = std::env::args().nth(1).map(PathBuf::from);
    init_ort(None).expect("ONNX Runtime (run `just setup`, set ORT_DYLIB_PATH)");
    let reg = Registry::load("judges.yaml").expect("judges.yaml");
    let mut rows = Vec::new();
    println!("| what | size | batch | images/s |");
    println!("|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    for size in [32usize, 256] {
        let n = if size == 32 { 64 } else { 8 };
        let imgs = images(size, n);
        // judges from the registry (the onnx judge is CNNIQA exported for this size)
        let cnniqa = Cnniqa::load_cpu(reg.resolve(&reg.get("cnniqa").unwrap().model)).unwrap();
        let onnx_path = dir.path().join(format!("cnniqa_{size}.onnx"));
        export_cnniqa(&cnniqa, size, size, &onnx_path).unwrap();
        for name in ["cnniqa", "brisque", "niqe"] {
            let judge = reg.load_judge(name).unwrap();
            let secs = time(2.0, || {
                judge_images(&judge, &imgs).unwrap();
            });
            let ips = n as f64 / secs;
            println!("| judge {name} | {size} | {n} | {ips:.1} |");
            rows.push(serde_json::json!({"what": format!("judge {name}"), "size": size, "batch": n, "images_per_s": ips}));
        }
        // CNNIQA: candle forward, candle forward+backward (w.r.t. the image), ort forward
        let t = images_to_tensor(&imgs, &Device::Cpu).unwrap();
        let fwd = time(2.0, || {
            cnniqa.score(&t, PatchMode::Inclusive).unwrap();
        });
        let var = Var::from_tensor(&t).unwrap();
        let bwd = time(2.0, || {
            let s = cnniqa.score(var.as_tensor(), PatchMode::Inclusive).unwrap();
            let g = s.sum_all().unwrap().backward().unwrap();
            assert!(g.get(var.as_tensor()).is_some());
        });
        let ort = OnnxModel::load(&onnx_path, 0).unwrap();
        let data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let ofwd = time(2.0, || {
            ort.run(data.clone(), &[n, 3, size, size]).unwrap();
        });
        for (what, secs) in [
            ("cnniqa candle forward", fwd),
            ("cnniqa candle forward+backward", bwd),
            ("cnniqa ort forward", ofwd),
        ] {
            let ips = n as f64 / secs;
            println!("| {what} | {size} | {n} | {ips:.1} |");
            rows.push(serde_json::json!({"what": what, "size": size, "batch": n, "images_per_s": ips, "seconds_per_batch": secs}));
        }
    }
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    }
}
