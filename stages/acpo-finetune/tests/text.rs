//! Fine-tuning on prompts end to end: a tiny prompt-conditioned UNet, tiny captioned data
//! and prompt sets made here, the real CNNIQA weights from the mirror.

mod common;

use acpo_core::BadInput;
use acpo_diffusion::{ClassContexts, UNetConfig};
use acpo_finetune::draws::{self, Stream};
use acpo_finetune::run::{run_finetune, DrawSource, FinetuneConfig, FinetunePaths, RunOptions};
use acpo_finetune::text::{TextConfig, TextInputs};
use acpo_finetune::Method;
use acpo_text::{PromptRecord, PromptTable};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

const D: usize = 8;

fn normal(seed: u64, dims: &[usize]) -> Tensor {
    draws::normal(&mut draws::rng(seed, Stream::Probe, 11), dims, &Device::Cpu).unwrap()
}

/// A split of `n` 32x32 images (CNNIQA judges 32x32 patches), labels alternating 0, 1.
fn write_split(path: &Path, n: usize, seed: u64) {
    let z: Vec<f32> = normal(seed, &[n * 32 * 32 * 3]).to_vec1().unwrap();
    let px: Vec<u8> = z
        .iter()
        .map(|v| (128.0 + 50.0 * v).clamp(0.0, 255.0) as u8)
        .collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    let m = HashMap::from([
        (
            "images".to_string(),
            Tensor::from_vec(px, (n, 32, 32, 3), &Device::Cpu).unwrap(),
        ),
        (
            "labels".to_string(),
            Tensor::from_vec(labels, n, &Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&m, path).unwrap();
}

/// A prompt set of `lengths.len()` prompts with random token states (zero past each length).
fn prompt_table(dir: &Path, lengths: &[usize], seed: u64) -> PromptTable {
    std::fs::create_dir_all(dir).unwrap();
    let l = *lengths.iter().max().unwrap();
    let n = lengths.len();
    let mut v: Vec<f32> = normal(seed, &[n * l * D]).to_vec1().unwrap();
    for (i, &len) in lengths.iter().enumerate() {
        for p in len..l {
            v[(i * l + p) * D..(i * l + p + 1) * D].fill(0.0);
        }
    }
    let records: Vec<PromptRecord> = lengths
        .iter()
        .enumerate()
        .map(|(i, &tokens)| PromptRecord {
            set: "diffusiondb".into(),
            split: "train".into(),
            id: i.to_string(),
            prompt: format!("prompt {i}"),
            category: String::new(),
            tokens,
            truncated: false,
        })
        .collect();
    let tokens = Tensor::from_vec(v, (n, l, D), &Device::Cpu).unwrap();
    PromptTable { records, tokens }.save(dir).unwrap();
    PromptTable::load(dir, &Device::Cpu).unwrap()
}

fn model_config(context_dim: Option<usize>) -> UNetConfig {
    UNetConfig {
        image_size: 32,
        in_channels: 3,
        channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![8],
        num_heads: 1,
        dropout: 0.0,
        norm_groups: 4,
        context_dim,
    }
}

/// A tiny base (conditional unless `context_dim` is None), data and prompt sets in `dir`.
fn setup(dir: &Path, run: &str, context_dim: Option<usize>, prompt_seed: u64) -> FinetunePaths {
    let base_dir = dir.join("base");
    let data_dir = dir.join("data");
    if !base_dir.exists() {
        std::fs::create_dir_all(&base_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let model = model_config(context_dim);
        common::run_fixture::write_base(&base_dir, &model);
        write_split(&data_dir.join("train.safetensors"), 12, 1);
        write_split(&data_dir.join("val.safetensors"), 6, 2);
        common::run_fixture::write_judges(dir);
    }
    let prompts = dir.join(format!("prompts-{prompt_seed}"));
    let train = prompt_table(&prompts.join("train"), &[3, 5, 2, 4, 6, 3], prompt_seed);
    let probe = prompt_table(&prompts.join("probe"), &[4, 2], prompt_seed + 100);
    // 2 classes x 2 captions, 3 tokens each
    let captions = ClassContexts::new(normal(7, &[4, 3, D]), &[0, 0, 1, 1]).expect("caption table");
    FinetunePaths {
        base_dir,
        data_dir,
        out_dir: dir.join(run),
        guidance: common::run_fixture::cnniqa(),
        judges: dir.join("judges.yaml"),
        base_eval: None,
        text: Some(TextInputs {
            train,
            probe,
            captions,
        }),
    }
}

fn cfg(method: Method) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        steps: 4,
        batch_size: 3,
        checkpoint_every: 2,
        draws: DrawSource::OnPolicy,
        text: Some(TextConfig { guidance: 2.0 }),
        ..Default::default()
    };
    c.objective.method = method;
    c.objective.t_min = 5;
    c.objective.t_max = 60;
    c.objective.q_scale = 10.0;
    c.on_policy.sample_steps = 5;
    c.optim.lr = 1e-3;
    c.probe.every = 2;
    c.probe.draws = 6;
    c.probe.batch_size = 6;
    c.probe.samples = 3;
    c.probe.sample_steps = 3;
    c.probe.judges = vec!["cnniqa".into()];
    c
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn loss_column(out: &Path, col: usize) -> Vec<String> {
    String::from_utf8(read(&out.join("loss.csv")))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().to_string())
        .collect()
}

#[test]
fn every_method_runs_on_prompts_and_a_resumed_run_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    for method in Method::ALL {
        let p = setup(dir.path(), &format!("m-{method}"), Some(D), 0);
        let out = run_finetune(&cfg(method), &p, &RunOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(out.steps, 4, "{method}");
        // l_simple (column 5) exactly where the method has a data term
        let simple = loss_column(&p.out_dir, 5);
        assert_eq!(
            simple.iter().all(|s| !s.is_empty()),
            method.uses_data(),
            "{method}: {simple:?}"
        );
        assert!(out.last.guidance_samples.n == 3 && out.last.heldout_mse.n == 6);
        assert_eq!(out.base.anchor_distance.mean, 0.0);
        let resolved: serde_json::Value =
            serde_json::from_slice(&read(&p.out_dir.join("config.json"))).unwrap();
        assert_eq!(resolved["prompts"], serde_json::json!([6, 2]));
        assert_eq!(resolved["finetune"]["text"]["guidance"], 2.0);
    }
    let c = cfg(Method::AcpoData);
    let b = setup(dir.path(), "resumed", Some(D), 0);
    let stopped = run_finetune(
        &c,
        &b,
        &RunOptions {
            fresh: false,
            stop_after: Some(2),
        },
    )
    .unwrap();
    assert!(stopped.is_none());
    run_finetune(&c, &b, &RunOptions::default())
        .unwrap()
        .unwrap();
    let a = dir.path().join("m-acpo+data");
    for f in [
        "model.safetensors",
        "loss.csv",
        "curve.csv",
        "config.json",
        "metrics.json",
    ] {
        assert!(
            read(&a.join(f)) == read(&b.out_dir.join(f)),
            "{f} differs after resume"
        );
    }
}

#[test]
fn the_prompts_drive_the_training() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(Method::Acpo);
    let one = setup(dir.path(), "one", Some(D), 0);
    let other = setup(dir.path(), "other", Some(D), 5);
    let again = setup(dir.path(), "again", Some(D), 0);
    for p in [&one, &other, &again] {
        run_finetune(&c, p, &RunOptions::default())
            .unwrap()
            .unwrap();
    }
    let model = |p: &FinetunePaths| read(&p.out_dir.join("model.safetensors"));
    assert!(model(&one) == model(&again), "same prompts, same seed");
    assert!(model(&one) != model(&other), "other prompts, same model");
}

#[test]
fn bad_inputs_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // forward draws: prompts have no images
    let p = setup(dir.path(), "fwd", Some(D), 0);
    let mut c = cfg(Method::Acpo);
    c.draws = DrawSource::Forward;
    let e = run_finetune(&c, &p, &RunOptions::default()).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("on-policy"),
        "{e}"
    );
    // a guidance scale below 1
    let mut c = cfg(Method::Acpo);
    c.text = Some(TextConfig { guidance: 0.5 });
    let e = run_finetune(&c, &p, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("text.guidance"), "{e}");
    // prompt states of another width than the model's context
    let mut wide = setup(dir.path(), "wide", Some(D), 0);
    let t = wide.text.as_mut().unwrap();
    t.train = prompt_table(&dir.path().join("wide-prompts"), &[2, 3], 1);
    t.train.tokens = t.train.tokens.pad_with_zeros(2, 0, 1).unwrap();
    let e = run_finetune(&cfg(Method::Acpo), &wide, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("9 wide"), "{e}");
    // an unconditional base
    let udir = tempfile::tempdir().unwrap();
    let u = setup(udir.path(), "u", None, 0);
    let e = run_finetune(&cfg(Method::Acpo), &u, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("context_dim"), "{e}");
}
