//! The Stable Diffusion stages end to end through the CLI on a tiny random SD folder the test
//! writes (acpo-sd's `write_tiny`): link-sd, embed-prompts-sd, one fine-tuning step, the
//! base's and the run's text evaluation; and the bad inputs (a missing weight file, a changed
//! one, a method with a data term) with exit 2.

mod common;

use std::path::{Path, PathBuf};

use acpo_sd::config::Prediction;
use acpo_sd::tiny::{tiny_architecture, write_tiny};
use acpo_text::{PromptRecord, PromptTable};
use candle_core::{DType, Device, Tensor};
use common::run_stage_in;
use serde_json::json;

fn cnniqa() -> PathBuf {
    std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
        .join("iqa/CNNIQA-LIVE.safetensors")
}

/// A prompt set as embed-prompts leaves it (the MiniLM states are not read by SD).
fn write_set(dir: &Path, prompts: &[&str], category: &str) {
    let records = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| PromptRecord {
            set: "drawbench".into(),
            split: "test".into(),
            id: i.to_string(),
            prompt: p.to_string(),
            category: category.into(),
            tokens: 1,
            truncated: false,
        })
        .collect();
    let tokens = Tensor::zeros((prompts.len(), 1, 4), DType::F32, &Device::Cpu).unwrap();
    PromptTable { records, tokens }.save(dir).unwrap();
}

fn params(weights: &serde_json::Value) -> serde_json::Value {
    json!({
        "stable_diffusion": { "models": { "tiny": weights } },
        "finetune": {
            "defaults": { "objective": { "normalize": "base",
                                          "calibration_draws": 2 } },
            "sd": {
                "draws": "on-policy", "base_max_kid": null, "text": {"guidance": 3.0},
                "steps": 1, "batch_size": 2, "optim": {"lr": 1e-3},
                "on_policy": {"sample_steps": 3},
                "probe": {"every": 1, "draws": 2, "batch_size": 2, "samples": 2,
                          "sample_steps": 2, "judges": ["cnniqa"]}
            }
        },
        "report": { "sd_evaluate": {
            "sets": ["drawbench"], "images_per_prompt": 2, "steps": 2, "guidance_scale": 3.0,
            "batch_size": 4, "guidance": "cnniqa", "judges": ["cnniqa"], "bootstrap": 50
        } }
    })
}

#[test]
fn link_prompts_finetune_and_evaluate_a_tiny_sd() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let sd = write_tiny(
        &root.join("weights"),
        &tiny_architecture(false, Prediction::Epsilon),
        5,
    )
    .unwrap();
    let weights = serde_json::to_value(&sd).unwrap();
    std::fs::write(
        root.join("judges.yaml"),
        format!(
            "judges:\n  - name: cnniqa\n    kind: cnniqa\n    model: {}\n    higher_is_better: false\n",
            cnniqa().display()
        ),
    )
    .unwrap();
    let src = root.join("data/prepared/prompt-embeddings");
    write_set(
        &src.join("train"),
        &["a red car", "a blue sky", "a cat"],
        "",
    );
    write_set(&src.join("probe"), &["a tree", "the house"], "");
    write_set(
        &src.join("drawbench"),
        &[
            "a photo of a dog",
            "a red house under the blue sky",
            "a cat",
        ],
        "colors",
    );
    let p = params(&weights);
    let run = |p: &serde_json::Value, stage: &str, args: &[&str]| {
        let (code, err) = run_stage_in(root, p, stage, args);
        (code, err)
    };

    let (code, err) = run(&p, "link-sd@tiny", &["sd", "link", "tiny"]);
    assert_eq!(code, Some(0), "{err}");
    let link: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("results/base/tiny/sd.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        link["stable_diffusion"]["sha256"]
            .as_object()
            .unwrap()
            .len(),
        4
    );

    let (code, err) = run(&p, "embed-prompts-sd@tiny", &["sd", "prompts", "tiny"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("drawbench: 3 prompts, 1 cut to the 8-token context"),
        "{err}"
    );
    let enc = root.join("data/prepared/prompt-embeddings-tiny");
    assert!(enc.join("null.safetensors").is_file());

    let ft = [
        "finetune",
        "--sd",
        "--benchmark",
        "sd",
        "--base-dir",
        "results/base/tiny",
        "--prompts",
        "data/prepared/prompt-embeddings-tiny",
        "--method",
        "acpo",
        "--seed",
        "0",
        "--out",
        "results/finetune/tiny/acpo-s0",
        "--judges",
        "judges.yaml",
    ];
    let cnn = cnniqa();
    let mut ft_args: Vec<&str> = ft.to_vec();
    ft_args.extend(["--guidance", cnn.to_str().unwrap()]);
    let (code, err) = run(&p, "finetune-sd@tiny-acpo-0", &ft_args);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 steps"), "{err}");
    assert!(root
        .join("results/finetune/tiny/acpo-s0/model.safetensors")
        .is_file());

    let eval = |run_name: &str| {
        run(
            &p,
            "evaluate-sd@tiny",
            &[
                "eval",
                "evaluate-text",
                "--sd",
                "--data",
                "tiny",
                "--run",
                run_name,
                "--prompts",
                "data/prepared/prompt-embeddings-tiny",
            ],
        )
    };
    let (code, err) = eval("base");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = eval("acpo-s0");
    assert_eq!(code, Some(0), "{err}");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("results/eval-text/tiny/acpo-s0/metrics.json")).unwrap(),
    )
    .unwrap();
    let set = &m["sets"]["drawbench"];
    assert_eq!(set["prompts"], 3, "{set}");
    assert!(
        set["improvement"]["guidance"]["win_rate_pct"]["mean"].is_number(),
        "{set}"
    );
    assert!(set["pixel_drift"]["mean"].as_f64().unwrap() > 0.0, "{set}");

    // a method with a data term: exit 2 naming the field
    let da: Vec<&str> = ft_args
        .iter()
        .map(|a| if *a == "acpo" { "data-anchor" } else { a })
        .collect();
    let (code, err) = run(&p, "finetune-sd@tiny-data-anchor-0", &da);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("data term"), "{err}");

    // a weight file changed after linking: exit 2 naming it
    let vae = root.join("weights/vae/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&vae).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&vae, bytes).unwrap();
    let (code, err) = eval("base");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("vae/diffusion_pytorch_model.safetensors") && err.contains("SHA-256"),
        "{err}"
    );

    // a missing weight file at linking: exit 2 naming the file and the params key
    std::fs::remove_file(root.join("weights/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let (code, err) = run(&p, "link-sd@tiny", &["sd", "link", "tiny"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unet/diffusion_pytorch_model.safetensors")
            && err.contains("stable_diffusion.files.unet"),
        "{err}"
    );
}
