//! Every stage's key covers the code it runs: the real pipeline.yaml's `crate:` dependencies
//! expand to the sources of the crate a stage runs and of every workspace crate that crate
//! calls, so editing the guidance model (acpo-iqa) or the sampler (acpo-diffusion) makes the
//! fine-tuning and evaluation stages stale, while plotting code (acpo-report) does not reach
//! fine-tuning or base training.

mod common;

use acpo_pipeline::params::Params;
use acpo_pipeline::pipeline::Pipeline;
use std::path::Path;

fn pipeline(profile: &str) -> Pipeline {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::default_locations();
    let params = Params::load(root, profile, &[]).unwrap();
    Pipeline::load(root, &params).unwrap()
}

fn deps<'a>(p: &'a Pipeline, stage: &str) -> &'a [String] {
    let i = p
        .index_of(stage)
        .unwrap_or_else(|| panic!("no stage {stage}"));
    &p.stages[i].deps
}

fn has(d: &[String], path: &str) -> bool {
    d.iter().any(|x| x == path)
}

#[test]
fn stage_keys_cover_the_code_they_run() {
    let p = pipeline("cpu");
    let ft = deps(&p, "finetune@cifar10-acpo-0");
    for code in [
        "stages/acpo-finetune/src",
        "stages/acpo-iqa/src",
        "stages/acpo-diffusion/src",
        "src/glue/finetune.rs",
    ] {
        assert!(has(ft, code), "finetune misses {code}: {ft:?}");
    }
    // The versions of the external crates it runs: its part of Cargo.lock, not the whole file.
    let ft_stage = p
        .stages
        .iter()
        .find(|s| s.name == "finetune@cifar10-acpo-0")
        .unwrap();
    assert!(!has(ft, "Cargo.lock"), "{ft:?}");
    let part = &ft_stage.lock_parts["Cargo.lock#acpo-finetune"];
    assert!(
        part.members["acpo-finetune"].contains("candle-core"),
        "{part:?}"
    );
    assert!(part.members.contains_key("acpo-iqa"), "{part:?}");
    assert!(
        !ft.iter().any(|d| d.starts_with("stages/acpo-report")),
        "{ft:?}"
    );

    let ev = deps(&p, "evaluate@cifar10-acpo-s0");
    for code in [
        "stages/acpo-report/src",
        "src/glue/eval.rs",
        "stages/acpo-diffusion/src",
        "stages/acpo-iqa/src",
        "stages/acpo-fid/src",
    ] {
        assert!(has(ev, code), "evaluate misses {code}: {ev:?}");
    }
    // The aggregate's glue is not evaluation's: editing how tables are assembled does not
    // rerun every evaluation.
    assert!(!has(ev, "src/glue/report.rs"), "{ev:?}");
    let agg = deps(&p, "aggregate");
    for code in ["stages/acpo-report/src", "src/glue/report.rs"] {
        assert!(has(agg, code), "aggregate misses {code}: {agg:?}");
    }
    let base = deps(&p, "train-base@cifar10");
    assert!(has(base, "stages/acpo-diffusion/src"), "{base:?}");
    assert!(
        !base.iter().any(|d| d.starts_with("stages/acpo-report")
            || d.starts_with("stages/acpo-iqa")
            || d.starts_with("stages/acpo-finetune")),
        "{base:?}"
    );
    // Every stage that runs acpo code names its crate: no stage lists a crate's sources by hand
    // without the closure (a hand-written `stages/<crate>/src` would miss what it calls).
    for s in &p.stages {
        if s.cmd.starts_with("acpo stage") {
            assert!(
                s.lock_parts.keys().any(|k| k.starts_with("Cargo.lock#")),
                "{} has no crate: dependency",
                s.name
            );
        }
    }
}

#[test]
fn the_study_profile_expands_its_stages_and_the_cpu_profile_has_none() {
    let cpu = pipeline("cpu");
    assert!(!cpu
        .stages
        .iter()
        .any(|s| s.name.starts_with("base-study") || s.name.starts_with("study-report")));
    let study = pipeline("study");
    let d = deps(&study, "base-study@anime32-ddpm");
    assert!(
        has(d, "stages/acpo-diffusion/src") && has(d, "data/prepared/anime32"),
        "{d:?}"
    );
    assert!(study.index_of("study-report@anime32").is_some());
}

/// Every profile of the repository loads into a pipeline whose every fine-tuned benchmark has
/// a trained base and an evaluated one (the base-quality gate reads it), and the report owns
/// one folder per reported benchmark. The paper profile once failed to load because its
/// 256x256 stand-in was fine-tuned but never evaluated.
#[test]
fn every_profile_loads_and_gates_every_fine_tuned_base() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut profiles: Vec<String> = std::fs::read_dir(root.join("profiles"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    profiles.push("cpu".into());
    for profile in &profiles {
        let p = pipeline(profile);
        // Everything a stage reads from the pipeline's own outputs some stage writes: a run
        // that no stage trains would stop `repro` at its evaluation (the paper profile
        // evaluated variant runs on anime64 and church256-standin that it never trained).
        for (i, s) in p.stages.iter().enumerate() {
            for d in s
                .deps
                .iter()
                .filter(|d| d.starts_with("results/") || d.starts_with("data/prepared/"))
            {
                assert!(
                    p.produced_by_upstream(i, d),
                    "{profile}: {} reads {d}, which no stage produces",
                    s.name
                );
            }
        }
        // (The runs on prompts and on Stable Diffusion have no KID gate: their bases have no
        // reference statistics for prompts, so the params overlay they read must turn the gate
        // off, or the run would refuse for want of an evaluation no stage writes.)
        const NO_GATE: [&str; 3] = ["finetune-text", "finetune-text-sweep", "finetune-sd"];
        let params = Params::load(root, profile, &[]).unwrap();
        for s in p
            .stages
            .iter()
            .filter(|s| NO_GATE.contains(&s.base.as_str()))
        {
            let overlay = s
                .params
                .iter()
                .rfind(|k| k.starts_with("finetune.") && *k != "finetune.defaults")
                .unwrap_or_else(|| panic!("{profile}: {} reads no finetune overlay", s.name));
            let key = format!("{overlay}.base_max_kid");
            assert_eq!(
                params.get(&key),
                Some(&serde_json::Value::Null),
                "{profile}: {} needs {key}: null",
                s.name
            );
        }
        for s in p
            .stages
            .iter()
            .filter(|s| s.base.starts_with("finetune") && !NO_GATE.contains(&s.base.as_str()))
        {
            let bench = s
                .deps
                .iter()
                .find_map(|d| d.strip_prefix("results/base/"))
                .unwrap_or_else(|| panic!("{profile}: {} has no base", s.name));
            let gate = format!("results/eval/{bench}/base/quality.json");
            assert!(has(&s.deps, &gate), "{profile}: {} lacks {gate}", s.name);
            assert!(
                p.index_of(&format!("evaluate-base@{bench}")).is_some(),
                "{profile}: {bench}"
            );
        }
        if let Some(i) = p.index_of("aggregate") {
            let outs = &p.stages[i].outs;
            for s in p.stages.iter().filter(|s| s.base == "evaluate-base") {
                let bench = &s.name["evaluate-base@".len()..];
                assert!(
                    has(outs, &format!("reports/{bench}")),
                    "{profile}: {outs:?}"
                );
            }
        }
    }
}

/// A fine-tuning variant reads `finetune.variants.<name>`, so its stage must declare that
/// param (the engine refuses an undeclared read at run time; this finds it without a run).
/// The first run of the variants failed so: the stage declared another key.
#[test]
fn every_variant_stage_declares_the_params_it_reads() {
    for profile in ["cpu", "smoke", "paper"] {
        let p = pipeline(profile);
        let variants: Vec<_> = p
            .stages
            .iter()
            .filter(|s| s.cmd.contains("--variant "))
            .collect();
        assert!(!variants.is_empty(), "{profile}: no variant stages");
        for s in variants {
            let name = s
                .cmd
                .split("--variant ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let key = format!("finetune.variants.{name}");
            assert!(
                s.params.contains(&key),
                "{profile}: {} does not declare {key}: {:?}",
                s.name,
                s.params
            );
            let bench = s
                .cmd
                .split("--benchmark ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            for k in ["finetune.defaults".to_string(), format!("finetune.{bench}")] {
                assert!(
                    s.params.contains(&k),
                    "{profile}: {} does not declare {k}",
                    s.name
                );
            }
        }
    }
}

#[test]
fn the_unconditional_report_does_not_wait_for_the_text_rows() {
    // aggregate once depended on all of results/base and results/finetune, so
    // `acpo repro aggregate` trained the prompt-conditioned base and every text fine-tuning run.
    let p = pipeline("cpu");
    let upstream = p.select(&["aggregate".to_string()], false, false).unwrap();
    let names: Vec<&str> = upstream
        .iter()
        .map(|&i| p.stages[i].name.as_str())
        .collect();
    assert!(names.contains(&"train-base@cifar10") && names.contains(&"evaluate@anime32-acpo-s0"));
    let text: Vec<&&str> = names.iter().filter(|n| n.contains("text")).collect();
    assert!(text.is_empty(), "aggregate waits for {text:?}");
}
