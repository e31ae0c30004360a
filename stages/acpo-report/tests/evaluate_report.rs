//! Evaluation and aggregation on a tiny (untrained) UNet and a small real image set: the
//! pairing of seeds and draws, the improvement statistics, the report files, and the errors
//! for bad input. Real judges (CNNIQA weights from the mirror, BRISQUE from the assets of
//! `just setup`).

mod common;

use acpo_core::layout::{Artifact, Layout};
use acpo_diffusion::{BenchmarkParams, NoiseSchedule, UNet};
use acpo_report::{
    aggregate, evaluate, evaluate_step_study, read_metrics, BenchmarkSpec, EvalConfig, EvalPaths,
    Provenance, ReportError, ReportSpec, StepStudy,
};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_dir(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default));
    std::fs::canonicalize(&p)
        .unwrap_or_else(|e| panic!("{var} {}: {e} (run `just setup`)", p.display()))
}

fn params() -> BenchmarkParams {
    let mut p = BenchmarkParams::default();
    p.model.channels = 8;
    p.model.channel_mult = vec![1, 2];
    p.model.attention_resolutions = vec![];
    p.model.norm_groups = 4;
    p.schedule.timesteps = 50;
    p
}

/// A tiny benchmark `tiny` in `root`: test split, base model, judge registry.
fn fixture(root: &Path) -> BenchmarkParams {
    let dev = Device::Cpu;
    let p = params();
    // 24 real CIFAR-like images would need the prepared data; a smooth synthetic set is enough
    // for the pairing checks (the judges only need 32x32 RGB).
    let n = 24;
    let mut px = Vec::with_capacity(n * 32 * 32 * 3);
    for i in 0..n {
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    px.push(((x * 7 + y * 3 + i * 11 + c * 40) % 256) as u8);
                }
            }
        }
    }
    let data = root.join("data/prepared/tiny");
    std::fs::create_dir_all(&data).unwrap();
    let mut m = HashMap::new();
    m.insert(
        "images".to_string(),
        Tensor::from_vec(px, (n, 32, 32, 3), &dev).unwrap(),
    );
    m.insert(
        "labels".to_string(),
        Tensor::zeros(n, candle_core::DType::I64, &dev).unwrap(),
    );
    candle_core::safetensors::save(&m, data.join("test.safetensors")).unwrap();

    let base = root.join("results/base/tiny");
    std::fs::create_dir_all(&base).unwrap();
    let vm = VarMap::new();
    UNet::new_trainable(&p.model, &vm, 7, &dev)
        .unwrap()
        .save(&base.join("model.safetensors"))
        .unwrap();
    std::fs::write(base.join("config.json"), serde_json::to_string(&p).unwrap()).unwrap();
    std::fs::write(
        base.join("loss.csv"),
        "step,loss,lr,grad_norm\n0,1.0,0.1,1\n1,0.8,0.1,1\n2,0.7,0.1,1\n",
    )
    .unwrap();

    let mirror = env_dir("ACPO_MIRROR", "../shared/data");
    let assets = env_dir("ACPO_ASSETS", ".cache/assets");
    std::fs::write(
        root.join("judges.yaml"),
        format!(
            "judges:\n  - name: cnniqa\n    kind: cnniqa\n    model: {}\n    higher_is_better: false\n  - name: brisque\n    kind: brisque\n    model: {}\n    higher_is_better: false\n",
            mirror.join("iqa/CNNIQA-LIVE.safetensors").display(),
            assets.join("brisque").display()
        ),
    )
    .unwrap();
    p
}

/// A "fine-tuned" run: the base weights plus `shift` (0: identical weights; a fresh UNet's
/// output convolution is zero-initialised, so scaling alone would change nothing).
fn fake_run(root: &Path, run: &str, scale: f64, lambda_a: f64) {
    let base = root.join("results/base/tiny/model.safetensors");
    let t = candle_core::safetensors::load(&base, &Device::Cpu).unwrap();
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| (k, (v + scale).unwrap()))
        .collect();
    let d = root.join("results/finetune/tiny").join(run);
    std::fs::create_dir_all(&d).unwrap();
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("metrics.json"),
        format!(r#"{{"method": "acpo", "lambda_p": 1.0, "lambda_a": {lambda_a}, "lambda_d": 0.0, "steps": 3}}"#),
    )
    .unwrap();
    std::fs::write(
        d.join("loss.csv"),
        "step,loss,l_perc,q_batch,l_anchor,l_simple,grad_norm\n0,1,1,1,0,0,1\n1,0.9,1,1,0,0,1\n",
    )
    .unwrap();
    std::fs::write(
        d.join("curve.csv"),
        "step,anchor_distance,anchor_distance_ci95,heldout_mse,heldout_mse_ci95,probe_draws,guidance_x0hat,guidance_x0hat_ci95,guidance_x0hat_n,guidance_samples,guidance_samples_ci95,sample_pixel_drift,sample_pixel_drift_ci95,samples,judge_brisque,judge_brisque_ci95\n\
         0,0,0,1.0,0.1,8,-30,1,8,-31,1,0,0,4,50,2\n2,0.01,0.001,1.01,0.1,8,-29,1,8,-30,1,0.01,0.001,4,49,2\n",
    )
    .unwrap();
}

fn cfg() -> EvalConfig {
    EvalConfig {
        samples: 6,
        steps: 3,
        batch_size: 6,
        judges: vec!["brisque".into()],
        heldout_images: 24,
        heldout_draws: 2,
        heldout_t_bins: vec![0, 10, 25, 50],
        bootstrap: 200,
        ..EvalConfig::default()
    }
}

fn paths(root: &Path, run: &str) -> EvalPaths {
    EvalPaths::new(
        &Layout::new(root),
        "tiny",
        None,
        run,
        root.join("judges.yaml"),
    )
}

/// The report of the `tiny` benchmark with these runs and sampler-steps studies.
fn report_spec(
    root: &Path,
    runs: &[&str],
    step_studies: std::collections::BTreeMap<String, StepStudy>,
) -> ReportSpec {
    ReportSpec {
        root: root.to_path_buf(),
        out_dir: root.join("reports"),
        benchmarks: vec![BenchmarkSpec {
            name: "tiny".into(),
            dataset: "tiny".into(),
            runs: runs.iter().map(|r| r.to_string()).collect(),
            step_studies,
        }],
        provenance: Provenance {
            git_revision: "test".into(),
            acpo_version: "0".into(),
            profile: "test".into(),
            lock: "pipeline.lock".into(),
            params: serde_json::json!({}),
        },
        font: env_dir("ACPO_ASSETS", ".cache/assets").join("fonts/DejaVuSans.ttf"),
        headline: Default::default(),
    }
}

#[test]
fn evaluate_pairs_seeds_and_aggregate_reports_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p = fixture(root);
    let c = cfg();

    // Bad input first: a run that was never trained, a judge not in the registry.
    let e = evaluate(&c, &paths(root, "acpo")).unwrap_err();
    assert!(matches!(e, ReportError::NotTrained { .. }), "{e}");
    assert!(
        e.to_string().contains("acpo repro finetune@tiny-acpo"),
        "{e}"
    );
    let bad = EvalConfig {
        judges: vec!["musiq".into()],
        ..cfg()
    };
    let e = evaluate(&bad, &paths(root, "base"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`musiq`") && e.contains("judges.yaml") && e.contains("report.evaluate.judges"),
        "{e}"
    );

    let base = evaluate(&c, &paths(root, "base")).unwrap();
    assert_eq!(base.schema, 1);
    assert_eq!(base.scores["guidance"].value.n, 6);
    assert!(base.scores["guidance"].value.lo.is_some());
    assert_eq!(base.anchor_distance.mean, 0.0);
    assert!(base.improvement.is_empty());
    // Held-out MSE uses acpo-diffusion's draws: the same number as its heldout_mse.
    let dev = Device::Cpu;
    let model = UNet::load(
        &p.model,
        &root.join("results/base/tiny/model.safetensors"),
        &dev,
    )
    .unwrap();
    let test =
        acpo_diffusion::data::ImageSet::load(&root.join("data/prepared/tiny/test.safetensors"))
            .unwrap();
    let sched = NoiseSchedule::from_config(&p.schedule).unwrap();
    let want = acpo_diffusion::heldout_mse(
        &model,
        &sched,
        &test.all(&dev).unwrap(),
        c.heldout_seed,
        2,
        None,
    )
    .unwrap();
    assert_eq!(base.heldout_mse.n, want.n);
    assert!(
        (base.heldout_mse.mean - want.mean).abs() < 1e-6 * want.mean,
        "{} vs {}",
        base.heldout_mse.mean,
        want.mean
    );

    // Identical weights: zero drift and no wins, exactly (same seeds, same noise).
    fake_run(root, "same", 0.0, 1.0);
    let same = evaluate(&c, &paths(root, "same")).unwrap();
    assert_eq!(same.pixel_drift.mean, 0.0);
    assert_eq!(same.anchor_distance.mean, 0.0);
    assert_eq!(same.improvement["guidance"].absolute.mean, 0.0);
    assert_eq!(same.improvement["brisque"].win_rate_pct.mean, 0.0);
    assert_eq!(same.scores["guidance"].value, base.scores["guidance"].value);

    // Perturbed weights drift (two replicates of a method: `<method>-s<seed>`).
    fake_run(root, "acpo-s0", 0.05, 0.1);
    let tuned = evaluate(&c, &paths(root, "acpo-s0")).unwrap();
    fake_run(root, "acpo-s1", 0.03, 0.1);
    let tuned1 = evaluate(&c, &paths(root, "acpo-s1")).unwrap();
    // Held-out MSE is paired with the base on the same draws: the mean difference is the
    // difference of the means, overall and per timestep bin.
    let delta = tuned.heldout_mse_delta.as_ref().unwrap();
    assert!((delta.mean - (tuned.heldout_mse.mean - base.heldout_mse.mean)).abs() < 1e-9);
    assert!(base.heldout_mse_delta.is_none() && !base.by_t.is_empty());
    let drawn: usize = tuned.by_t.iter().map(|b| b.heldout_mse.n).sum();
    assert_eq!(drawn, tuned.heldout_mse.n);
    assert!(tuned.by_t.iter().all(|b| b.anchor_distance.is_some()));
    assert!(tuned1.anchor_distance.mean < tuned.anchor_distance.mean);
    assert!(tuned.pixel_drift.mean > 0.0 && tuned.anchor_distance.mean > 0.0);
    assert_eq!(tuned.info.lambda_a, Some(0.1));
    let imp = &tuned.improvement["guidance"];
    let diff = tuned.scores["guidance"].value.mean - base.scores["guidance"].value.mean;
    assert!((imp.absolute.mean - diff).abs() < 1e-9);
    assert!((0.0..=100.0).contains(&imp.win_rate_pct.mean));

    // A sampler-steps study: the same models with 2 DDIM steps instead of 3, each run against
    // the study's own base.
    let study = StepStudy {
        benchmark: "tiny".into(),
        steps: 2,
        runs: vec!["same".into(), "acpo-s0".into()],
        samples: None,
    };
    let study_dir = Layout::new(root).step_eval("tiny-few");
    let paths_for = |run: &str| paths(root, run);
    let ddpm = EvalConfig {
        sampler: acpo_diffusion::config::SamplerKind::Ddpm,
        ..cfg()
    };
    let e = evaluate_step_study(&ddpm, &study, &study_dir, &paths_for).unwrap_err();
    assert!(e.to_string().contains("ddim"), "{e}");
    let with_base = StepStudy {
        runs: vec!["base".into()],
        ..study.clone()
    };
    let e = evaluate_step_study(&c, &with_base, &study_dir, &paths_for).unwrap_err();
    assert!(e.to_string().contains("`base`"), "{e}");
    let few = evaluate_step_study(&c, &study, &study_dir, &paths_for).unwrap();
    assert_eq!(few.len(), 3);
    assert!(few
        .iter()
        .all(|m| m.sampling.steps == 2 && m.fid_kid.is_none()));
    assert_eq!((few[0].run.as_str(), few[1].run.as_str()), ("base", "same"));
    // Identical weights are still identical at 2 steps; the other run is compared with the
    // 2-step base, not the 3-step one.
    assert_eq!(few[1].pixel_drift.mean, 0.0);
    assert_ne!(
        few[0].scores["guidance"].value.mean,
        base.scores["guidance"].value.mean
    );
    let d = few[2].scores["guidance"].value.mean - few[0].scores["guidance"].value.mean;
    assert!((few[2].improvement["guidance"].absolute.mean - d).abs() < 1e-9);
    assert!(study_dir.path.join("acpo-s0/metrics.json").is_file());
    // A study may use fewer images than the main evaluation: the first seeds of it.
    let fewer = StepStudy {
        samples: Some(4),
        ..study.clone()
    };
    let four =
        evaluate_step_study(&c, &fewer, &Layout::new(root).step_eval("four"), &paths_for).unwrap();
    assert!(four.iter().all(|m| m.sampling.samples == 4));

    // The report.
    let spec = report_spec(
        root,
        &["same", "acpo-s0", "acpo-s1"],
        [("tiny-few".to_string(), study.clone())].into(),
    );
    let out = aggregate(&spec).unwrap();
    assert_eq!(out.evals["tiny"].len(), 4);
    let r = root.join("reports");
    for f in [
        "index.html",
        "paper_comparison.md",
        "paper_comparison.csv",
        "metrics.parquet",
        "tiny/summary.csv",
        "tiny/summary.md",
        "tiny/train_base.png",
        "tiny/train_base.svg",
        "tiny/finetune_loss.png",
        "tiny/guidance_vs_judges.svg",
        "tiny/quality_vs_drift.png",
        "tiny/finetune_drift.png",
        "tiny/samples_base.png",
        "tiny/samples_acpo-s0.png",
        "tiny/headline.json",
        "tiny/methods.md",
        "tiny/methods.csv",
        "tiny/drift_by_t.md",
        "tiny/pareto.png",
        "tiny/pareto.svg",
    ] {
        assert!(r.join(f).is_file(), "missing {f}");
    }
    let csv = std::fs::read_to_string(r.join("tiny/summary.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "heldout_mse").unwrap();
    let acpo_row: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("acpo-s0,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(
        acpo_row[col].parse::<f64>().unwrap(),
        tuned.heldout_mse.mean
    );
    let html = std::fs::read_to_string(r.join("index.html")).unwrap();
    assert!(html.contains("tiny/samples_acpo-s0.png") && html.contains("0.0267"));
    // The generated headline opens the page and summary.md, from the across-seed numbers.
    let hl: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("tiny/headline.json")).unwrap())
            .unwrap();
    let text = hl["text"].as_str().unwrap();
    assert!(
        text.starts_with("tiny: the claim ") && text.contains("acpo (2 seeds)"),
        "{text}"
    );
    assert_eq!(hl["seeds"], 2);
    let headline_at = html.find("id=\"headline\"").unwrap();
    assert!(headline_at < html.find("id=\"base\"").unwrap());
    assert!(html.contains(
        &text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    ));
    let summary = std::fs::read_to_string(r.join("tiny/summary.md")).unwrap();
    assert!(summary.contains(text), "{summary}");
    let methods = std::fs::read_to_string(r.join("tiny/methods.csv")).unwrap();
    assert!(
        methods.lines().nth(1).unwrap().starts_with("acpo,2,"),
        "{methods}"
    );
    // The page opens with the base: its table comes before the paper comparison, with its
    // samples beside real test images; without FID inputs it says so instead of a number.
    let base_at = html.find("<h2 id=\"base\">Base models</h2>").unwrap();
    assert!(base_at < html.find("<h2 id=\"paper\">").unwrap());
    assert!(html.contains("tiny/base_samples.png") && html.contains("tiny/real_test.png"));
    for f in [
        "tiny/base.md",
        "tiny/base_samples.png",
        "tiny/real_test.png",
    ] {
        assert!(r.join(f).is_file(), "missing {f}");
    }
    let base_md = std::fs::read_to_string(r.join("tiny/base.md")).unwrap();
    assert!(
        base_md.contains("not computed") && base_md.contains("fid-train-vs-test@tiny"),
        "{base_md}"
    );
    let svg = std::fs::read_to_string(r.join("tiny/train_base.svg")).unwrap();
    assert!(svg.contains("base training loss"));

    // The sampler-steps table: each run at 3 steps (main) then at 2 (study), same numbers.
    // The real-test-images reference row appears once, unsuffixed (real images have no
    // sampler), from the main evaluation of the base.
    let steps_csv = std::fs::read_to_string(r.join("tiny/sampler_steps.csv")).unwrap();
    let runs: Vec<&str> = steps_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(
        runs,
        [
            "base @3 steps",
            "real test images",
            "base @2 steps",
            "same @3 steps",
            "same @2 steps",
            "acpo-s0 @3 steps",
            "acpo-s0 @2 steps"
        ]
    );
    let header: Vec<&str> = steps_csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "score.guidance").unwrap();
    let row = |name: &str| -> f64 {
        steps_csv
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split(',')
            .nth(col)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        row("acpo-s0 @2 steps"),
        few[2].scores["guidance"].value.mean
    );
    assert_eq!(row("acpo-s0 @3 steps"), tuned.scores["guidance"].value.mean);
    assert!(!header.contains(&"heldout_mse"));
    assert!(html.contains("Sampler steps") && html.contains("tiny/sampler_steps.csv"));
    assert!(html.contains("tiny/sampler_steps.png"));
    let svg = std::fs::read_to_string(r.join("tiny/sampler_steps.svg")).unwrap();
    assert!(svg.contains("guidance against sampler steps") && svg.contains("DDIM steps"));

    // The page as a reader sees it: a browser loads it at a laptop's width; the contents'
    // links resolve, every image loads, no rendered table is wider than the window.
    assert!(html.contains("<nav id=\"contents\">"));
    let scratch = root.join("browser");
    std::fs::create_dir_all(&scratch).unwrap();
    let check = acpo_report::browser::check_page(&r.join("index.html"), 1280, &scratch).unwrap();
    assert!(check.problems().is_empty(), "{:?}", check.problems());
    // The full tables are folded; a note every model shares is listed once.
    assert!(html.contains("<details><summary>Every run and metric ("));
    assert_eq!(
        html.matches("Inception weights not given").count(),
        1,
        "the shared note is not merged"
    );
    assert!(html.contains("every model (4): Inception weights not given"));
    // A study whose files say another number of steps: named, with the command that remakes them.
    let mut other = spec.clone();
    other.benchmarks[0]
        .step_studies
        .get_mut("tiny-few")
        .unwrap()
        .steps = 4;
    let e = aggregate(&other).unwrap_err().to_string();
    assert!(
        e.contains("tiny-few/base/metrics.json")
            && e.contains("at 2 steps, expected tiny/base at 4"),
        "{e}"
    );

    // An old metrics file: a clear error with the command that regenerates it.
    let mp = root.join("results/eval/tiny/same/metrics.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    v["schema"] = 0.into();
    std::fs::write(&mp, v.to_string()).unwrap();
    let e = aggregate(&spec).unwrap_err().to_string();
    assert!(
        e.contains("schema 0") && e.contains("acpo repro evaluate@tiny-same"),
        "{e}"
    );
    // The base's: the command names the stage that evaluates the base (the report's template
    // used to name `evaluate@tiny-base`, which no pipeline has).
    let bp = root.join("results/eval/tiny/base/metrics.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bp).unwrap()).unwrap();
    v["schema"] = 0.into();
    std::fs::write(&bp, v.to_string()).unwrap();
    let e = aggregate(&spec).unwrap_err().to_string();
    assert!(
        e.contains("acpo repro evaluate-base@tiny") && !e.contains("evaluate@tiny-base"),
        "{e}"
    );
    assert!(read_metrics(&root.join("results/eval/tiny/acpo-s0/metrics.json"), "x").is_ok());
}

/// The base's FID/KID on more images than are judged (`base_fid_samples`): the judged samples
/// stay the first seeds, the larger set adds the next ones, and the report shows the larger
/// one beside the real-data floor.
#[test]
fn the_base_is_also_scored_on_more_samples_beside_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture(root);
    let (inception, fid_ref) = common::fid_inputs(root);
    let l = Layout::new(root);
    let with_fid = |run: &str| EvalPaths {
        inception: Some(Artifact {
            path: inception.clone(),
            ..l.inception_weights()
        }),
        fid_ref: Some(Artifact {
            path: fid_ref.clone(),
            ..l.fid_ref("tiny")
        }),
        ..paths(root, run)
    };
    let c = EvalConfig {
        base_fid_samples: 9,
        kid_subset_size: 6,
        ..cfg()
    };
    let base = evaluate(&c, &with_fid("base")).unwrap();
    let small = base.fid_kid.as_ref().unwrap();
    let large = base.base_quality.as_ref().unwrap();
    assert_eq!((small.fid.n, large.fid.n), (6, 9));
    assert_ne!(small.fid.mean, large.fid.mean);
    assert_eq!(base.sampling.samples, 6);
    // Without the option (or for a run) there is no second score.
    let plain = evaluate(&cfg(), &with_fid("base")).unwrap();
    assert!(plain.base_quality.is_none());
    assert_eq!(plain.fid_kid.as_ref().unwrap().fid.mean, small.fid.mean);
    // The base's evaluation as the report reads it (the plain one replaced it).
    evaluate(&c, &with_fid("base")).unwrap();
    for (run, scale) in [("acpo-s0", 0.05), ("acpo-s1", 0.03)] {
        fake_run(root, run, scale, 0.1);
        let tuned = evaluate(&c, &with_fid(run)).unwrap();
        assert!(tuned.base_quality.is_none() && tuned.fid_kid.is_some());
    }

    let floor = root.join("results/fid/train-vs-test/tiny");
    std::fs::create_dir_all(&floor).unwrap();
    std::fs::write(
        floor.join("metrics.json"),
        r#"{"fid": 12.5, "kid_mean": 0.0003, "n": 9}"#,
    )
    .unwrap();
    let spec = report_spec(root, &["acpo-s0", "acpo-s1"], Default::default());
    aggregate(&spec).unwrap();
    let md = std::fs::read_to_string(root.join("reports/tiny/base.md")).unwrap();
    let shown = acpo_report::tables::fmt_num(large.fid.mean);
    assert!(md.contains(&format!("{shown} n=9")), "{md}");
    assert!(
        md.contains("12.50 n=9") && md.contains("3.000e-4 n=9"),
        "{md}"
    );
    assert!(!md.contains("biased by n"), "{md}");
}
