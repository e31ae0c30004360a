//! The artifact layout: where every artifact of a run lives (relative to the pipeline
//! directory) and which `acpo repro` stage makes it.
//!
//! The command glue takes its default paths from here, the evaluation and the report find
//! their inputs here, and every "run this to make it" message is [`Artifact::fix`] of the
//! artifact that was missing. pipeline.yaml spells the same paths, because it is declarative;
//! the workspace test `tests/layout.rs` expands every stage of every profile and checks its
//! outputs and its name against this module, so the two cannot drift apart.
//!
//! Models come in three kinds ([`Model`]): an unconditional benchmark (`cifar10`), the
//! prompt-conditioned model of a text dataset (`anime32` -> `anime32-text`) and a linked
//! Stable Diffusion model. Their runs are named `<method>-s<seed>` (a replicate of the
//! fine-tuning matrix), `sweep-la<x>-s<seed>` (the anchor-weight sweep) or `variant-<name>`.

use std::path::{Path, PathBuf};

/// One artifact: its path and the stage that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Where it lives (under the layout's root).
    pub path: PathBuf,
    /// The pipeline stage that writes it (`train-base@cifar10`).
    pub stage: String,
    /// The profile the stage exists in, when the default profiles do not have it.
    pub profile: Option<&'static str>,
}

impl Artifact {
    /// The command that makes it: `acpo repro [--profile P] <stage>`.
    pub fn fix(&self) -> String {
        match self.profile {
            Some(p) => format!("acpo repro --profile {p} {}", self.stage),
            None => format!("acpo repro {}", self.stage),
        }
    }

    /// A file inside this artifact's folder, made by the same stage.
    pub fn file(&self, name: &str) -> Artifact {
        Artifact {
            path: self.path.join(name),
            ..self.clone()
        }
    }
}

/// The kind and name of a diffusion model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model<'a> {
    /// The unconditional model of a benchmark (`diffusion.<benchmark>`).
    Bench(&'a str),
    /// The prompt-conditioned model of a text dataset (folder `<data>-text`).
    Text(&'a str),
    /// A linked Stable Diffusion model (`stable_diffusion.<name>`).
    Sd(&'a str),
}

impl Model<'_> {
    /// Its folder name under `results/base/` and `results/finetune/`.
    pub fn dir_name(&self) -> String {
        match self {
            Model::Bench(b) | Model::Sd(b) => b.to_string(),
            Model::Text(d) => format!("{d}-text"),
        }
    }

    /// Its name in the evaluation folders (`results/eval-text/<data>/`).
    fn eval_name(&self) -> &str {
        match self {
            Model::Bench(n) | Model::Text(n) | Model::Sd(n) => n,
        }
    }
}

/// What a run name says: `<group>-s<seed>` (a replicate) or `variant-<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunName<'a> {
    /// A seed of a replicate group: the fine-tuning matrix's `<method>`, or `sweep-la<x>`.
    Replicate { group: &'a str, seed: &'a str },
    /// `variant-<name>`: one seed of a method variant.
    Variant(&'a str),
    /// Anything else (a run made by hand).
    Other(&'a str),
}

impl<'a> RunName<'a> {
    pub fn parse(run: &'a str) -> RunName<'a> {
        if let Some(v) = run.strip_prefix("variant-") {
            return RunName::Variant(v);
        }
        match replicate_group(run) {
            Some(group) => RunName::Replicate {
                group,
                seed: &run[group.len() + 2..],
            },
            None => RunName::Other(run),
        }
    }
}

/// The replicate group of a run named `<group>-s<seed>` (seed all digits), else None.
pub fn replicate_group(run: &str) -> Option<&str> {
    let (group, seed) = run.rsplit_once("-s")?;
    (!group.is_empty() && !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()))
        .then_some(group)
}

/// The layout under one pipeline directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`; `Layout::default()` is relative to the working directory, as
    /// every stage command runs in the pipeline directory.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, rel: impl AsRef<Path>, stage: impl Into<String>) -> Artifact {
        Artifact {
            path: self.root.join(rel),
            stage: stage.into(),
            profile: None,
        }
    }

    // --- data ---

    /// `data/prepared/<dataset>/` (`train.safetensors`, `test.safetensors`, `manifest.json`).
    pub fn prepared(&self, dataset: &str) -> Artifact {
        self.at(
            Path::new("data/prepared").join(dataset),
            format!("prepare-{dataset}"),
        )
    }

    /// `data/prepared/<dataset>/<split>.safetensors`.
    pub fn split(&self, dataset: &str, split: &str) -> Artifact {
        self.prepared(dataset).file(&format!("{split}.safetensors"))
    }

    /// `data/prepared/<dataset>-captions/`: the dataset's caption embeddings.
    pub fn captions(&self, dataset: &str) -> Artifact {
        self.at(
            format!("data/prepared/{dataset}-captions"),
            format!("embed-captions@{dataset}"),
        )
    }

    /// `data/prepared/prompts/prompts.parquet`: the held-out prompt table.
    pub fn prompt_table(&self) -> Artifact {
        self.at("data/prepared/prompts", "prepare-prompts")
            .file("prompts.parquet")
    }

    /// `data/prepared/prompt-embeddings/`: the prompt sets in the text models' encoder.
    pub fn prompt_embeddings(&self) -> Artifact {
        self.at("data/prepared/prompt-embeddings", "embed-prompts")
    }

    /// `data/prepared/prompt-embeddings-<model>/`: the prompt sets in a linked Stable
    /// Diffusion model's own text encoder.
    pub fn sd_prompt_embeddings(&self, model: &str) -> Artifact {
        self.at(
            format!("data/prepared/prompt-embeddings-{model}"),
            format!("embed-prompts-sd@{model}"),
        )
    }

    // --- judges and the FID network ---

    /// `results/iqa/cnniqa.onnx`: the guidance network exported for ONNX Runtime.
    pub fn cnniqa_onnx(&self) -> Artifact {
        self.at("results/iqa/cnniqa.onnx", "export-cnniqa")
    }

    /// `results/iqa/export/`: the export's parity record.
    pub fn cnniqa_export(&self) -> Artifact {
        self.at("results/iqa/export", "export-cnniqa")
    }

    /// `results/iqa/sanity/`: the judges' sanity checks on real and degraded images.
    pub fn judge_sanity(&self) -> Artifact {
        self.at("results/iqa/sanity", "judge-sanity")
    }

    /// `results/fid/inception-fid.safetensors`: the FID Inception's weights.
    pub fn inception_weights(&self) -> Artifact {
        self.at("results/fid/inception-fid.safetensors", "fid-weights")
    }

    /// `results/fid/inception-fid.onnx`: the same network exported to ONNX.
    pub fn inception_onnx(&self) -> Artifact {
        self.at("results/fid/inception-fid.onnx", "fid-onnx")
    }

    /// `results/fid/ref/<dataset>.safetensors`: Inception statistics of the test split.
    pub fn fid_ref(&self, dataset: &str) -> Artifact {
        self.at(
            format!("results/fid/ref/{dataset}.safetensors"),
            format!("fid-ref@{dataset}"),
        )
    }

    /// `results/fid/train-vs-test/<dataset>/`: FID/KID of real train images against the test
    /// reference, the floor a generator is compared with.
    pub fn fid_floor(&self, dataset: &str) -> Artifact {
        self.at(
            Path::new("results/fid/train-vs-test").join(dataset),
            format!("fid-train-vs-test@{dataset}"),
        )
    }

    // --- models ---

    /// `results/base/<model>/`: a trained (or linked) base model.
    pub fn base(&self, model: Model) -> Artifact {
        let stage = match model {
            Model::Bench(b) => format!("train-base@{b}"),
            Model::Text(d) => format!("train-base-text@{d}"),
            Model::Sd(m) => format!("link-sd@{m}"),
        };
        self.at(Path::new("results/base").join(model.dir_name()), stage)
    }

    /// `results/timing/base/<model>.json`: where base training spent its time.
    pub fn base_timing(&self, model: Model) -> Artifact {
        let base = self.base(model);
        self.at(
            format!("results/timing/base/{}.json", model.dir_name()),
            base.stage,
        )
    }

    /// `results/samples/<model>/base/`: the base's sample grid.
    pub fn base_samples(&self, model: Model) -> Artifact {
        let stage = match model {
            Model::Text(d) => format!("sample-text@{d}"),
            Model::Bench(n) | Model::Sd(n) => format!("sample@{n}"),
        };
        self.at(
            Path::new("results/samples")
                .join(model.dir_name())
                .join("base"),
            stage,
        )
    }

    /// `results/finetune/<model>/<run>/`: one fine-tuning run.
    pub fn finetune(&self, model: Model, run: &str) -> Artifact {
        let stage = match (model, RunName::parse(run)) {
            (Model::Bench(b), RunName::Variant(v)) => format!("finetune-variant@{b}-{v}"),
            (Model::Bench(b), RunName::Replicate { group, seed }) => {
                match group.strip_prefix("sweep-la") {
                    Some(la) => format!("finetune-sweep@{b}-{la}-{seed}"),
                    None => format!("finetune@{b}-{group}-{seed}"),
                }
            }
            (Model::Text(d), RunName::Replicate { group, seed }) => {
                match group.strip_prefix("sweep-la") {
                    Some(la) => format!("finetune-text-sweep@{d}-{la}-{seed}"),
                    None => format!("finetune-text@{d}-{group}-{seed}"),
                }
            }
            (Model::Sd(m), RunName::Replicate { group, seed }) => {
                format!("finetune-sd@{m}-{group}-{seed}")
            }
            (Model::Bench(n) | Model::Text(n) | Model::Sd(n), _) => format!("finetune@{n}-{run}"),
        };
        self.at(
            Path::new("results/finetune")
                .join(model.dir_name())
                .join(run),
            stage,
        )
    }

    /// `results/timing/finetune/<model>/<run>.json`.
    pub fn finetune_timing(&self, model: Model, run: &str) -> Artifact {
        let stage = self.finetune(model, run).stage;
        self.at(
            format!("results/timing/finetune/{}/{run}.json", model.dir_name()),
            stage,
        )
    }

    /// The evaluation of `run` (`base`, or a fine-tuning run): `results/eval/<benchmark>/<run>/`
    /// for an unconditional model, `results/eval-text/<name>/<run>/` for the prompt-conditioned
    /// and Stable Diffusion models.
    pub fn eval(&self, model: Model, run: &str) -> Artifact {
        let (prefix, family) = match model {
            Model::Bench(_) => ("results/eval", "evaluate"),
            Model::Text(_) => ("results/eval-text", "evaluate-text"),
            Model::Sd(_) => ("results/eval-text", "evaluate-sd"),
        };
        let n = model.eval_name();
        let stage = match (model, RunName::parse(run)) {
            _ if run == "base" => format!("{family}-base@{n}"),
            (Model::Bench(_), _) => format!("evaluate@{n}-{run}"),
            (_, RunName::Replicate { group, seed }) => match group.strip_prefix("sweep-la") {
                Some(la) => format!("{family}-sweep@{n}-{la}-{seed}"),
                None => format!("{family}@{n}-{group}-{seed}"),
            },
            _ => format!("{family}@{n}-{run}"),
        };
        self.at(Path::new(prefix).join(n).join(run), stage)
    }

    /// `results/eval-steps/<study>/`: a sampler-steps study's evaluations.
    pub fn step_eval(&self, study: &str) -> Artifact {
        self.at(
            Path::new("results/eval-steps").join(study),
            format!("evaluate-steps@{study}"),
        )
    }

    /// `results/study/<config>/`: one configuration of the base-training study.
    pub fn study(&self, config: &str) -> Artifact {
        Artifact {
            profile: Some("study"),
            ..self.at(
                Path::new("results/study").join(config),
                format!("base-study@{config}"),
            )
        }
    }

    // --- reports ---

    /// `reports/`: the aggregate report (one folder per benchmark, index.html).
    pub fn reports(&self) -> Artifact {
        self.at("reports", "aggregate")
    }

    /// `reports/<data>-text/`: the text-to-image rows of a text dataset.
    pub fn text_report(&self, data: &str) -> Artifact {
        self.at(
            format!("reports/{data}-text"),
            format!("text-report@{data}"),
        )
    }

    /// `reports/study/<benchmark>/`: the base-training study's report.
    pub fn study_report(&self, benchmark: &str) -> Artifact {
        Artifact {
            profile: Some("study"),
            ..self.at(
                Path::new("reports/study").join(benchmark),
                format!("study-report@{benchmark}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_parse_into_group_and_seed() {
        assert_eq!(
            RunName::parse("acpo-data-s12"),
            RunName::Replicate {
                group: "acpo-data",
                seed: "12"
            }
        );
        assert_eq!(RunName::parse("variant-t300"), RunName::Variant("t300"));
        assert_eq!(RunName::parse("acpo-sx"), RunName::Other("acpo-sx"));
        assert_eq!(RunName::parse("-s1"), RunName::Other("-s1"));
        assert_eq!(replicate_group("sweep-la0.1-s0"), Some("sweep-la0.1"));
    }

    #[test]
    fn artifacts_name_the_stage_that_makes_them() {
        let l = Layout::new("/p");
        let ft = l.finetune(Model::Bench("cifar10"), "sweep-la0.1-s2");
        assert_eq!(
            ft.path,
            Path::new("/p/results/finetune/cifar10/sweep-la0.1-s2")
        );
        assert_eq!(ft.fix(), "acpo repro finetune-sweep@cifar10-0.1-2");
        let t = l.eval(Model::Text("anime32"), "sweep-la10-s1");
        assert_eq!(
            t.path,
            Path::new("/p/results/eval-text/anime32/sweep-la10-s1")
        );
        assert_eq!(t.stage, "evaluate-text-sweep@anime32-10-1");
        assert_eq!(
            l.finetune(Model::Text("anime32"), "acpo-s0").path,
            Path::new("/p/results/finetune/anime32-text/acpo-s0")
        );
        assert_eq!(
            l.eval(Model::Sd("sd15"), "base").stage,
            "evaluate-sd-base@sd15"
        );
        assert_eq!(
            l.study("c1").file("metrics.json").fix(),
            "acpo repro --profile study base-study@c1"
        );
        assert_eq!(
            Layout::default().split("cifar10", "test").path,
            Path::new("data/prepared/cifar10/test.safetensors")
        );
    }
}
