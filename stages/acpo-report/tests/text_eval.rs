//! The text-to-image evaluation and report on a tiny (untrained) prompt-conditioned UNet and
//! prompt sets made here: pairing of prompts and noise with the base, per-category splits,
//! the report's tables, and the errors for bad input. Real CNNIQA weights from the mirror.

use acpo_core::layout::{Layout, Model};
use acpo_diffusion::{BenchmarkParams, UNet};
use acpo_report::text_eval::read_text_metrics;
use acpo_report::{evaluate_text, text_report, TextEvalConfig, TextEvalPaths, TextReportSpec};
use acpo_text::{PromptRecord, PromptTable};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const D: usize = 6;

fn mirror() -> PathBuf {
    std::env::var_os("ACPO_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// A prompt set: prompt `i` has `lengths[i]` tokens whose states are `(i + 1) * 0.3` shifted per
/// position, zero past its length.
fn prompt_set(dir: &Path, set: &str, lengths: &[usize], categories: &[&str]) {
    let l = *lengths.iter().max().unwrap();
    let mut v = vec![0f32; lengths.len() * l * D];
    for (i, &len) in lengths.iter().enumerate() {
        for p in 0..len {
            for d in 0..D {
                v[(i * l + p) * D + d] = ((i + 1) as f32 * 0.3) * ((p + d) as f32).sin();
            }
        }
    }
    let records = lengths
        .iter()
        .enumerate()
        .map(|(i, &tokens)| PromptRecord {
            set: set.into(),
            split: "test".into(),
            id: i.to_string(),
            prompt: format!("{set} prompt {i}"),
            category: categories.get(i).unwrap_or(&"").to_string(),
            tokens,
            truncated: i == 0,
        })
        .collect();
    let tokens = Tensor::from_vec(v, (lengths.len(), l, D), &Device::Cpu).unwrap();
    PromptTable { records, tokens }.save(dir).unwrap();
}

fn fixture(root: &Path) {
    let mut p = BenchmarkParams::default();
    p.model.channels = 8;
    p.model.channel_mult = vec![1, 2];
    p.model.attention_resolutions = vec![16];
    p.model.norm_groups = 4;
    p.model.context_dim = Some(D);
    p.schedule.timesteps = 50;
    let base = root.join("results/base/tiny-text");
    std::fs::create_dir_all(&base).unwrap();
    let vm = VarMap::new();
    UNet::new_trainable(&p.model, &vm, 7, &Device::Cpu)
        .unwrap()
        .save(&base.join("model.safetensors"))
        .unwrap();
    std::fs::write(base.join("config.json"), serde_json::to_string(&p).unwrap()).unwrap();
    std::fs::write(
        base.join("metrics.json"),
        r#"{"conditioning": {"caption": {"mean": 0.06}, "null_minus_caption": {"mean": 0.0002}, "other_class_minus_caption": {"mean": 0.0004}}}"#,
    )
    .unwrap();
    let prompts = root.join("data/prepared/prompt-embeddings");
    prompt_set(
        &prompts.join("diffusiondb-test"),
        "diffusiondb",
        &[3, 5, 2],
        &[],
    );
    prompt_set(
        &prompts.join("drawbench"),
        "drawbench",
        &[4, 2, 3, 6],
        &["Colors", "Colors", "Counting", "Colors"],
    );
    std::fs::write(
        root.join("judges.yaml"),
        format!(
            "judges:\n  - name: cnniqa\n    kind: cnniqa\n    model: {}\n    higher_is_better: false\n",
            mirror().join("iqa/CNNIQA-LIVE.safetensors").display()
        ),
    )
    .unwrap();
}

/// A "fine-tuned" run: the base weights plus `shift`, with the probe rows the report reads.
fn fake_run(root: &Path, run: &str, shift: f64) {
    let base = root.join("results/base/tiny-text/model.safetensors");
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(&base, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, (v + shift).unwrap()))
        .collect();
    let d = root.join("results/finetune/tiny-text").join(run);
    std::fs::create_dir_all(&d).unwrap();
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("metrics.json"),
        r#"{"method": "acpo", "lambda_p": 1.0, "lambda_a": 1.0, "lambda_d": 0.0, "steps": 3,
            "base": {"anchor_distance": {"mean": 0.0}, "heldout_mse": {"mean": 0.06}},
            "final": {"anchor_distance": {"mean": 0.001}, "heldout_mse": {"mean": 0.061}}}"#,
    )
    .unwrap();
}

fn cfg() -> TextEvalConfig {
    TextEvalConfig {
        sets: vec!["diffusiondb-test".into(), "drawbench".into()],
        steps: 3,
        batch_size: 4,
        judges: vec![],
        bootstrap: 100,
        ..Default::default()
    }
}

fn paths(root: &Path, run: &str) -> TextEvalPaths {
    TextEvalPaths::new(
        &Layout::new(root),
        Model::Text("tiny"),
        run,
        root.join("judges.yaml"),
    )
}

#[test]
fn runs_are_paired_with_the_base_per_set_and_category_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture(root);
    let base = evaluate_text(&cfg(), &paths(root, "base")).unwrap();
    let db = &base.sets["drawbench"];
    assert_eq!((db.prompts, db.images, db.truncated), (4, 8, 1));
    assert_eq!(db.categories["Colors"].prompts, 3);
    assert_eq!(db.categories["Counting"].images, 2);
    assert!(db.improvement.is_none() && db.pixel_drift.is_none());
    assert_eq!(db.diversity_per_prompt.n, 4);
    assert!(
        db.diversity_per_prompt.mean > 0.0,
        "two seeds per prompt differ"
    );
    assert_eq!(base.sets["diffusiondb-test"].categories.len(), 1);
    assert!(base.alignment.starts_with("not measured"));

    // identical weights: the same images, so no change at all
    fake_run(root, "acpo-s0", 0.0);
    let same = evaluate_text(&cfg(), &paths(root, "acpo-s0")).unwrap();
    for s in same.sets.values() {
        let g = &s.improvement.as_ref().unwrap()["guidance"];
        assert_eq!((g.absolute.mean, g.win_rate_pct.mean), (0.0, 0.0));
        assert_eq!(s.pixel_drift.as_ref().unwrap().mean, 0.0);
    }
    // other weights: other images from the same prompts and noise
    fake_run(root, "acpo-s1", 0.01);
    let other = evaluate_text(&cfg(), &paths(root, "acpo-s1")).unwrap();
    let s = &other.sets["drawbench"];
    assert!(s.pixel_drift.as_ref().unwrap().mean > 0.0);
    let colors = &s.categories["Colors"].improvement.as_ref().unwrap()["guidance"];
    assert_eq!(colors.absolute.n, 6);
    let reread = read_text_metrics(
        &root.join("results/eval-text/tiny/acpo-s1/metrics.json"),
        "fix",
    )
    .unwrap();
    // (serde_json's default parser may miss the last bit of an f64)
    assert_eq!(
        reread.sets.keys().collect::<Vec<_>>(),
        other.sets.keys().collect::<Vec<_>>()
    );
    let g = |m: &acpo_report::TextEvalMetrics| m.sets["drawbench"].scores["guidance"].value.mean;
    assert!((g(&reread) - g(&other)).abs() <= 1e-12 * g(&other).abs());
    for f in [
        "scores.csv",
        "samples.safetensors",
        "grid.png",
        "prompts.json",
    ] {
        assert!(
            root.join("results/eval-text/tiny/acpo-s1/drawbench")
                .join(f)
                .exists(),
            "{f}"
        );
    }

    let spec = TextReportSpec {
        data: "tiny".into(),
        layout: Layout::new(root),
        runs: vec!["acpo-s0".into(), "acpo-s1".into()],
        out_dir: root.join("reports/tiny-text"),
        revision: "test".into(),
        headline: Default::default(),
    };
    let md = std::fs::read_to_string(text_report(&spec).unwrap()).unwrap();
    // The verdict comes first. This evaluation has no held-out judge (only the guidance), so
    // nothing confirms quality; the probe's drift (0.001 against the base's 0.06) is within
    // both tolerances (5% and 0.1x of 0.06).
    let verdict_at = md
        .find("## Does ACPO raise quality without drift, on prompts?")
        .unwrap();
    assert!(verdict_at < md.find("## Improvement over the base").unwrap());
    assert!(
        md.contains("| acpo | 2 | the claim fails on quality (all 2 sets) |"),
        "{md}"
    );
    assert!(md.contains("none among this evaluation's scores"), "{md}");
    assert!(md.contains("(0.00300)") && md.contains("(0.00600)"), "{md}");
    assert!(md.contains("| acpo | drawbench | 2 |"), "{md}");
    assert!(md.contains("IPCE: not defined"), "{md}");
    assert!(md.contains("| acpo | Counting | 1 |"), "{md}");
    assert!(root
        .join("reports/tiny-text/drawbench-acpo-s0.png")
        .exists());
    // the probe's held-out MSE change, 0.061 - 0.06, in the method row
    assert!(md.contains("0.0010"), "{md}");

    // a sweep point on prompts not evaluated yet: the error names its stage
    let spec = TextReportSpec {
        runs: vec!["acpo-s0".into(), "sweep-la10-s2".into()],
        ..spec
    };
    let e = text_report(&spec).unwrap_err().to_string();
    assert!(
        e.contains("acpo repro evaluate-text-sweep@tiny-10-2"),
        "{e}"
    );
}

#[test]
fn missing_inputs_name_the_command_that_makes_them() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fixture(root);
    fake_run(root, "acpo-s0", 0.0);
    let e = evaluate_text(&cfg(), &paths(root, "acpo-s0")).unwrap_err();
    assert!(e.to_string().contains("evaluate-text-base@tiny"), "{e}");
    let mut c = cfg();
    c.sets.push("partiprompts".into());
    let e = evaluate_text(&c, &paths(root, "base")).unwrap_err();
    assert!(e.to_string().contains("embed-prompts"), "{e}");
    assert!(
        !root.join("results/eval-text/tiny/base").exists(),
        "nothing half-written"
    );
    // a run evaluated against a base of other seeds
    evaluate_text(&cfg(), &paths(root, "base")).unwrap();
    let mut c = cfg();
    c.seed += 1;
    let e = evaluate_text(&c, &paths(root, "acpo-s0")).unwrap_err();
    assert!(e.to_string().contains("other seeds"), "{e}");
}
