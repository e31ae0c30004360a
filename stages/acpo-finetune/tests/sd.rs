//! Fine-tuning Stable Diffusion end to end on a tiny random SD folder the test writes
//! (acpo-sd's `write_tiny`), linked and with prompt sets encoded by its CLIP, and the real
//! CNNIQA weights from the mirror.

mod common;

use acpo_core::BadInput;
use std::path::Path;

use acpo_finetune::run::{DrawSource, FinetuneConfig, RunOptions};
use acpo_finetune::sd::{run_finetune_sd, SdPaths};
use acpo_finetune::text::TextConfig;
use acpo_finetune::{Method, Normalize};
use acpo_sd::config::Prediction;
use acpo_sd::tiny::{tiny_architecture, write_tiny};
use acpo_sd::SdLink;
use acpo_text::{PromptRecord, PromptTable};
use candle_core::{Device, Tensor};

fn records(prompts: &[&str]) -> PromptTable {
    let records = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| PromptRecord {
            set: "diffusiondb".into(),
            split: "train".into(),
            id: i.to_string(),
            prompt: p.to_string(),
            category: String::new(),
            tokens: 1,
            truncated: false,
        })
        .collect();
    let tokens = Tensor::zeros((prompts.len(), 1, 4), candle_core::DType::F32, &Device::Cpu);
    PromptTable {
        records,
        tokens: tokens.unwrap(),
    }
}

/// The tiny SD linked into `dir/base`, prompt sets encoded into `dir/prompts`.
fn setup(dir: &Path, run: &str) -> SdPaths {
    let base_dir = dir.join("base");
    let prompts_dir = dir.join("prompts");
    if !base_dir.exists() {
        let arch = tiny_architecture(false, Prediction::Epsilon);
        let cfg = write_tiny(&dir.join("weights"), &arch, 3).unwrap();
        SdLink::create(&cfg).unwrap().write(&base_dir).unwrap();
        // the sets as embed-prompts leaves them (MiniLM states are not read)
        let src = dir.join("minilm");
        records(&[
            "a red car",
            "a blue sky",
            "photo of a cat",
            "the dog",
            "a tree",
        ])
        .save(&src.join("train"))
        .unwrap();
        records(&[
            "a house",
            "a red tree under the blue sky with a cat and a dog",
        ])
        .save(&src.join("probe"))
        .unwrap();
        let w = SdLink::read(&base_dir).unwrap().open().unwrap();
        let enc = w.text_encoder(&Device::Cpu).unwrap();
        for set in ["train", "probe"] {
            let s = acpo_sd::prompts::encode_set(
                &enc,
                &src.join(set),
                &prompts_dir.join(set),
                2,
                &Device::Cpu,
                |_| {},
            )
            .unwrap();
            assert_eq!(s.context, 8);
        }
        acpo_sd::prompts::write_null_context(&enc, &prompts_dir, &Device::Cpu).unwrap();
        common::run_fixture::write_judges(dir);
    }
    SdPaths {
        base_dir,
        prompts_dir,
        out_dir: dir.join(run),
        guidance: common::run_fixture::cnniqa(),
        judges: dir.join("judges.yaml"),
    }
}

fn cfg(method: Method) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        steps: 2,
        batch_size: 2,
        checkpoint_every: 1,
        draws: DrawSource::OnPolicy,
        text: Some(TextConfig { guidance: 3.0 }),
        ..Default::default()
    };
    c.objective.method = method;
    c.objective.t_min = 50;
    c.objective.t_max = 600;
    c.objective.normalize = Normalize::Base;
    c.objective.calibration_draws = 4;
    c.on_policy.sample_steps = 4;
    c.optim.lr = 1e-3;
    c.probe.every = 1;
    c.probe.draws = 4;
    c.probe.batch_size = 4;
    c.probe.samples = 3;
    c.probe.sample_steps = 3;
    c.probe.judges = vec!["cnniqa".into()];
    c
}

#[test]
fn an_sd_run_trains_probes_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let whole = setup(dir.path(), "whole");
    let c = cfg(Method::Acpo);
    let out = run_finetune_sd(&c, &whole, &RunOptions::default())
        .unwrap()
        .expect("finished");
    assert_eq!(out.steps, 2);
    assert!(
        out.calibration.is_some(),
        "normalize: base measured on the base's samples"
    );
    assert!(out.final_train_loss.is_finite());
    assert_eq!(out.base.anchor_distance.mean, 0.0, "step 0 is the base");
    assert!(out.last.anchor_distance.mean > 0.0, "the tuned UNet moved");
    assert!(out.last.heldout_mse.mean.is_finite());
    assert_eq!(out.last.judges.len(), 1);
    assert!(out.last.sample_pixel_drift.mean > 0.0);
    let tuned =
        candle_core::safetensors::load(whole.out_dir.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(tuned.contains_key("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"));

    // stopped after step 1 and resumed: the same bytes
    let parts = setup(dir.path(), "parts");
    let stop = RunOptions {
        fresh: false,
        stop_after: Some(1),
    };
    assert!(run_finetune_sd(&c, &parts, &stop).unwrap().is_none());
    run_finetune_sd(&c, &parts, &RunOptions::default())
        .unwrap()
        .unwrap();
    for f in ["model.safetensors", "loss.csv", "curve.csv"] {
        assert_eq!(
            std::fs::read(whole.out_dir.join(f)).unwrap(),
            std::fs::read(parts.out_dir.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn methods_with_a_data_term_and_forward_draws_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path(), "bad");
    let e = run_finetune_sd(&cfg(Method::DataAnchor), &p, &RunOptions::default()).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("data term"),
        "{e}"
    );
    let mut c = cfg(Method::Acpo);
    c.draws = DrawSource::Forward;
    let e = run_finetune_sd(&c, &p, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("on-policy"), "{e}");
}

#[test]
fn weights_changed_after_linking_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path(), "changed");
    let vae = dir
        .path()
        .join("weights/vae/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&vae).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(&vae, bytes).unwrap();
    let e = run_finetune_sd(&cfg(Method::Acpo), &p, &RunOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("SHA-256") && msg.contains("vae"), "{msg}");
}
