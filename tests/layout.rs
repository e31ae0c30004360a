//! pipeline.yaml and `acpo_core::layout` describe the same artifacts: every output of every
//! expanded stage in every profile is where the layout puts it, and the layout names that
//! stage as its maker, so the "run this to make it" commands in error messages name real
//! stages.

mod common;

use acpo_core::layout::{Artifact, Layout, Model};
use acpo_pipeline::params::Params;
use acpo_pipeline::pipeline::{Pipeline, Stage};
use std::path::Path;

/// The model kind a stage family works on (the path alone cannot tell a linked Stable
/// Diffusion model from a benchmark).
fn model<'a>(family: &str, name: &'a str) -> Model<'a> {
    if family.ends_with("-sd") || family.contains("-sd-") {
        Model::Sd(name)
    } else if family.contains("-text") {
        Model::Text(name.strip_suffix("-text").unwrap_or(name))
    } else {
        Model::Bench(name)
    }
}

/// The layout's artifact for output `out` of a stage of `family`; None for a path the
/// layout does not know.
fn artifact(l: &Layout, family: &str, out: &str) -> Option<Artifact> {
    let parts: Vec<&str> = out.split('/').collect();
    let m = |n| model(family, n);
    Some(match parts.as_slice() {
        ["data", "prepared", "prompts"] => {
            let t = l.prompt_table();
            Artifact {
                path: t.path.parent().unwrap().to_path_buf(),
                ..t
            }
        }
        ["data", "prepared", "prompt-embeddings"] => l.prompt_embeddings(),
        ["data", "prepared", x] => match x.strip_prefix("prompt-embeddings-") {
            Some(sd) => l.sd_prompt_embeddings(sd),
            None => match x.strip_suffix("-captions") {
                Some(d) => l.captions(d),
                None => l.prepared(x),
            },
        },
        ["results", "iqa", "cnniqa.onnx"] => l.cnniqa_onnx(),
        ["results", "iqa", "export"] => l.cnniqa_export(),
        ["results", "iqa", "sanity"] => l.judge_sanity(),
        ["results", "fid", "inception-fid.safetensors"] => l.inception_weights(),
        ["results", "fid", "inception-fid.onnx"] => l.inception_onnx(),
        ["results", "fid", "ref", f] => l.fid_ref(f.strip_suffix(".safetensors")?),
        ["results", "fid", "train-vs-test", d] => l.fid_floor(d),
        ["results", "base", n] => l.base(m(n)),
        ["results", "timing", "base", f] => l.base_timing(m(f.strip_suffix(".json")?)),
        ["results", "samples", n, "base"] => l.base_samples(m(n)),
        ["results", "finetune", n, run] => l.finetune(m(n), run),
        ["results", "timing", "finetune", n, f] => {
            l.finetune_timing(m(n), f.strip_suffix(".json")?)
        }
        ["results", "eval" | "eval-text", n, run] => l.eval(m(n), run),
        ["results", "eval-steps", s] => l.step_eval(s),
        ["results", "study", c] => l.study(c),
        ["reports", "study", b] => l.study_report(b),
        ["reports", x] if family == "text-report" => l.text_report(x.strip_suffix("-text")?),
        ["reports", ..] if family == "aggregate" => Artifact {
            path: out.into(),
            ..l.reports()
        },
        _ => return None,
    })
}

/// A file the layout leaves to the artifact it sits beside (the resolved config and the
/// metrics written next to the FID network and references).
fn is_sidecar(out: &str) -> bool {
    out.ends_with(".config.json") || out.ends_with(".metrics.json")
}

/// Outputs listed beside the folder that holds them (a stage's metrics file).
fn inside_another(stage: &Stage, out: &str) -> bool {
    stage
        .outs
        .iter()
        .any(|o| o != out && Path::new(out).starts_with(o))
}

#[test]
fn every_stage_output_is_where_the_layout_says_and_names_its_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::default_locations();
    let l = Layout::default();
    let mut checked = 0;
    let mut wrong = Vec::new();
    // The profiles, and the cpu profile with a linked Stable Diffusion model (no profile
    // runs one by default).
    let sd = ["stable_diffusion.run=[sd15]".to_string()];
    let cases: [(&str, &[String]); 5] = [
        ("cpu", &[]),
        ("smoke", &[]),
        ("paper", &[]),
        ("study", &[]),
        ("cpu", &sd),
    ];
    let mut families = std::collections::BTreeSet::new();
    for (profile, overrides) in cases {
        let params = Params::load(root, profile, overrides).unwrap();
        let p = Pipeline::load(root, &params).unwrap();
        for s in &p.stages {
            for out in &s.outs {
                if is_sidecar(out) || inside_another(s, out) {
                    continue;
                }
                checked += 1;
                families.insert(s.base.clone());
                let Some(a) = artifact(&l, &s.base, out) else {
                    wrong.push(format!(
                        "{profile}: {} writes {out}, unknown to the layout",
                        s.name
                    ));
                    continue;
                };
                if a.path != Path::new(out) || a.stage != s.name {
                    wrong.push(format!(
                        "{profile}: {} writes {out}; the layout has {} made by {}",
                        s.name,
                        a.path.display(),
                        a.stage
                    ));
                }
                if a.profile.is_some_and(|only| only != profile) {
                    wrong.push(format!("{profile}: {out} says {}", a.fix()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 100, "only {checked} outputs checked");
    for f in [
        "finetune-sd",
        "evaluate-sd",
        "finetune-text-sweep",
        "base-study",
        "link-sd",
    ] {
        assert!(families.contains(f), "no {f} stage checked: {families:?}");
    }
}
