//! `pipeline.yaml`: DVC-style stages, `foreach`/`do` and `matrix` expansion, `${...}`
//! interpolation, and the stage graph (cycles, overlapping outputs, selection).

mod expand;
mod graph;
mod spec;

pub use expand::CRATE_DEP_PREFIX;
use expand::{mask_braces, Ctx};
use spec::RawFile;

use crate::error::{Error, Result};
use crate::params::Params;
use crate::yaml;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The pipeline file next to `params.yaml`.
pub const PIPELINE_FILE: &str = "pipeline.yaml";
/// The pipeline file read when there is no `pipeline.yaml`: DVC's.
pub const DVC_FILE: &str = "dvc.yaml";

/// The pipeline file of `root`: `explicit` (a file name in `root`), else `pipeline.yaml`, else
/// `dvc.yaml` when only that exists.
pub fn pipeline_file(root: &Path, explicit: Option<&str>) -> Result<String> {
    match explicit {
        Some(f) => {
            if f.is_empty() || f.contains('/') || f == "." || f == ".." {
                return Err(Error::Usage(format!(
                    "--file `{f}`: expected a file name in the pipeline directory (use -C DIR for \
                     another directory)"
                )));
            }
            Ok(f.to_string())
        }
        None if !root.join(PIPELINE_FILE).exists() && root.join(DVC_FILE).exists() => {
            Ok(DVC_FILE.to_string())
        }
        None => Ok(PIPELINE_FILE.to_string()),
    }
}

/// The most stages a pipeline may expand to unless `ACPO_MAX_STAGES` says otherwise.
pub const DEFAULT_MAX_STAGES: usize = 10_000;

/// The environment variable that sets the most stages a pipeline may expand to.
pub const MAX_STAGES_ENV: &str = "ACPO_MAX_STAGES";

/// The limit on expanded stages: `ACPO_MAX_STAGES` (a positive whole number) or
/// [`DEFAULT_MAX_STAGES`].
pub fn max_stages() -> Result<usize> {
    match std::env::var(MAX_STAGES_ENV) {
        Err(_) => Ok(DEFAULT_MAX_STAGES),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{MAX_STAGES_ENV}={v:?}: expected a positive whole number (the most stages \
                 `foreach` and `matrix` may expand to)"
                ))
            }),
    }
}

/// Scheduling resources a stage declares (`resources: {cpus, gpus, mem_gb}`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU cores the stage keeps busy (default 0: only `-j` limits it).
    pub cpus: f64,
    /// GPUs the stage needs (default 0).
    pub gpus: f64,
    /// Peak memory in GiB (default 0: unknown, not limited).
    pub mem_gb: f64,
    /// Time limit in minutes for a cluster executor (default 0: the executor's default).
    pub time_min: f64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 0.0,
            gpus: 0.0,
            mem_gb: 0.0,
            time_min: 0.0,
        }
    }
}

/// One expanded stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Full name (`train`, `train@cifar10`, `finetune@cifar10-acpo`).
    pub name: String,
    /// Name before `@` (what `foreach`/`matrix` expanded).
    pub base: String,
    /// Line of the stage's entry in `pipeline.yaml`.
    pub line: u64,
    pub desc: Option<String>,
    /// The shell command (after interpolation).
    pub cmd: String,
    /// Dependencies, relative to the pipeline directory.
    pub deps: Vec<String>,
    /// Declared param keys plus params used through `${...}`, sorted.
    pub params: Vec<String>,
    /// Outputs (including metrics/plots files not inside an out), relative paths.
    pub outs: Vec<String>,
    pub metrics: Vec<String>,
    pub plots: Vec<String>,
    /// Environment variables whose values are part of the stage key.
    pub env: Vec<String>,
    pub resources: Resources,
    /// `persist: true`: when the command fails or is interrupted, its partial outputs are kept
    /// (in `.acpo/partial/<stage>/`) and put back in place before the next run with the same
    /// stage key, so a command that resumes from its own checkpoint continues where it stopped.
    /// Not part of the stage key.
    pub persist: bool,
    /// DVC `wdir`: the command runs in this directory (relative to the pipeline directory);
    /// every path above is already relative to the pipeline directory.
    pub wdir: Option<String>,
    /// DVC `frozen`: never run nor checked; `status` says frozen.
    pub frozen: bool,
    /// DVC `always_changed`: always runs, never restored from the run cache.
    pub always_changed: bool,
    /// Outputs marked `cache: false`: the stage is neither stored in nor restored from the
    /// run cache.
    pub uncached: Vec<String>,
    /// Values of declared params that do not come from `params.yaml`: `vars` used through
    /// `${...}`, and params of other files (`file.yaml:key`).
    pub extra_params: BTreeMap<String, Value>,
    /// What the stage sets that acpo reads but does not act on (listed by `acpo dag`).
    pub ignored: Vec<String>,
    /// Dependencies written with `${env.NAME}`: path here -> the name the key records (the
    /// variable kept as written), so moving what the variable points to changes no key when
    /// the bytes are the same.
    pub dep_names: BTreeMap<String, String>,
    /// Dependencies on a part of `Cargo.lock` (`Cargo.lock#<crate>`, from `crate:<crate>`):
    /// name -> what it covers; hashed with the other dependencies.
    pub lock_parts: BTreeMap<String, crate::crates::LockPart>,
    /// The command with `${env.NAME}` kept as written, when it has any: what the key records.
    pub cmd_key: Option<String>,
    /// `executor: local | slurm`: where this stage runs, whatever `--executor` says.
    pub executor: Option<String>,
    /// `timing:`: how `acpo times` divides the stage's recorded wall time into phases. Not
    /// part of the stage key.
    pub timing: Timing,
}

/// How a stage's wall time divides into phases (`timing: {phase, from, phases}`), for
/// [`crate::timing`].
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// The phase of the wall time that `from` does not account for (default `other`).
    pub phase: String,
    /// A JSON/YAML/CSV metrics file among the stage's outputs that records seconds per part.
    pub from: Option<String>,
    /// Dotted key in `from` (`seconds.sampling`) -> the phase those seconds count for.
    pub phases: BTreeMap<String, String>,
    /// Keys of `phases` whose seconds are part of another key's (inner -> outer): they are
    /// taken out of the outer one, so no second counts twice.
    pub within: BTreeMap<String, String>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            phase: "other".into(),
            from: None,
            phases: BTreeMap::new(),
            within: BTreeMap::new(),
        }
    }
}

/// A loaded, expanded and checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Directory of `pipeline.yaml`; commands run here.
    pub root: PathBuf,
    /// Path of `pipeline.yaml`.
    pub file: PathBuf,
    /// Stages in file order (expansions in item order).
    pub stages: Vec<Stage>,
    /// For each stage, the stages whose outputs it depends on.
    pub upstream: Vec<Vec<usize>>,
    /// For each stage, the stages that depend on it.
    pub downstream: Vec<Vec<usize>>,
    /// Top-level `metrics` files (DVC), shown with the stages' own.
    pub metrics: Vec<String>,
    /// Top-level fields read but not acted on (DVC `artifacts`, `plots`, `params`).
    pub ignored: Vec<String>,
    index: HashMap<String, usize>,
}

impl Pipeline {
    /// Loads `root/pipeline.yaml` with the resolved `params`.
    pub fn load(root: &Path, params: &Params) -> Result<Pipeline> {
        Self::load_file(root, PIPELINE_FILE, params)
    }

    /// Loads the pipeline file `name` of `root` with the resolved `params`.
    pub fn load_file(root: &Path, name: &str, params: &Params) -> Result<Pipeline> {
        let file = root.join(name);
        let text = yaml::read_text(&file, Path::new(name))?;
        Self::from_str(root, &file, &text, params)
    }

    /// Parses pipeline text (the contents of `file`), expanding to at most [`max_stages`].
    pub fn from_str(root: &Path, file: &Path, text: &str, params: &Params) -> Result<Pipeline> {
        Self::from_str_limited(root, file, text, params, max_stages()?)
    }

    /// [`Pipeline::from_str`] with an explicit limit on the number of expanded stages: a
    /// `foreach` or `matrix` that would pass it is an error naming the stage, found before
    /// its stages are built.
    pub fn from_str_limited(
        root: &Path,
        file: &Path,
        text: &str,
        params: &Params,
        max_stages: usize,
    ) -> Result<Pipeline> {
        let mut display = file.strip_prefix(root).unwrap_or(file).to_path_buf();
        if display.as_os_str().is_empty() {
            display = PathBuf::from(PIPELINE_FILE);
        }
        let raw: RawFile = if yaml::is_blank(text) {
            RawFile::default()
        } else {
            yaml::from_str(&display, &mask_braces(text))?
        };
        let top_err = |message: String| Error::Pipeline {
            file: display.clone(),
            message,
        };
        let vars =
            crate::dvc::vars(root, &raw.vars, &|k| params.get(k).is_some()).map_err(top_err)?;
        let mut ignored = Vec::new();
        if let Some(Value::Object(a)) = &raw.artifacts {
            let names: Vec<&str> = a.keys().map(String::as_str).collect();
            ignored.push(format!("artifacts: {}", names.join(", ")));
        }
        if !raw.plots.is_empty() {
            ignored.push(format!("plots: {} top-level plot(s)", raw.plots.len()));
        }
        if !raw.params.is_empty() {
            ignored.push(format!(
                "params: {} top-level params file(s) (stages declare theirs)",
                raw.params.len()
            ));
        }
        let mut metrics = Vec::new();
        for m in &raw.metrics {
            let n = normalize(m).ok_or_else(|| top_err("metrics: an empty path".into()))?;
            metrics.push(n);
        }
        let mut stages = Vec::new();
        let ctx = Ctx {
            file: display,
            params,
            root,
            crates: std::cell::OnceCell::new(),
            max_stages,
            vars,
        };
        for (name, line, stage) in raw.stages.unwrap_or_default().0 {
            ctx.expand(&name, line, stage, &mut stages)?;
        }
        let mut p = Pipeline {
            root: root.to_path_buf(),
            file: file.to_path_buf(),
            stages,
            upstream: Vec::new(),
            downstream: Vec::new(),
            metrics,
            ignored,
            index: HashMap::new(),
        };
        p.link(&ctx)?;
        Ok(p)
    }

    /// Index of a full stage name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// `file:line` of a stage, for messages.
    pub fn location(&self, i: usize) -> String {
        format!("{}:{}", self.display_file(), self.stages[i].line)
    }

    fn display_file(&self) -> String {
        self.file
            .strip_prefix(&self.root)
            .unwrap_or(&self.file)
            .display()
            .to_string()
    }
}

/// Whether `path` is one of `targets` or lies inside one (a trailing `/` ignored); every path
/// when `targets` is empty (`metrics show -t`, `plots -t`).
pub fn under_targets(path: &str, targets: &[String]) -> bool {
    targets.is_empty()
        || targets.iter().any(|t| {
            let t = t.trim_end_matches('/');
            path == t || is_within(path, t)
        })
}

/// True when `path` lies strictly inside the directory `dir` (both normalised).
pub fn is_within(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Normalises a relative path: `./a//b/` -> `a/b`; `None` when empty.
pub fn normalize(p: &str) -> Option<String> {
    let path = Path::new(p.trim());
    let mut parts: Vec<String> = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.last().is_some_and(|l| l != "..") {
                    parts.pop();
                } else {
                    parts.push("..".into());
                }
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::Prefix(_) => {}
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => Some(format!("/{joined}")),
        (false, true) => {
            if p.trim().is_empty() {
                None
            } else {
                Some(".".into())
            }
        }
        (false, false) => Some(joined),
    }
}

/// Param values of a stage, `{ dotted key: value }`.
pub fn stage_params(stage: &Stage, params: &Params) -> BTreeMap<String, Value> {
    stage
        .params
        .iter()
        .map(|k| {
            let v = params.get(k).or_else(|| stage.extra_params.get(k));
            (k.clone(), v.cloned().unwrap_or(Value::Null))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(text: &str, params: Value) -> Result<Pipeline> {
        let p = Params::from_value(params, "cpu");
        Pipeline::from_str(Path::new("/r"), Path::new("/r/pipeline.yaml"), text, &p)
    }

    #[test]
    fn timing_is_checked_and_not_part_of_the_key_inputs() {
        let stage = |timing: &str| {
            format!(
                "stages:\n  eval:\n    foreach: [a]\n    do:\n      cmd: run ${{item}}\n      \
                 outs: [res/${{item}}]\n      timing: {timing}\n"
            )
        };
        let p = load(
            &stage("{phase: sampling, from: res/${item}/m.json, phases: {seconds.fid: fid}}"),
            json!({}),
        )
        .unwrap();
        let t = &p.stages[0].timing;
        assert_eq!(t.phase, "sampling");
        assert_eq!(t.from.as_deref(), Some("res/a/m.json"));
        assert_eq!(t.phases.get("seconds.fid").map(String::as_str), Some("fid"));
        assert!(p.stages[0].params.is_empty());
        assert_eq!(
            load("stages:\n  s:\n    cmd: x\n", json!({}))
                .unwrap()
                .stages[0]
                .timing,
            Timing::default()
        );
        for (timing, says) in [
            (
                "{from: elsewhere/m.json}",
                "must be one of the stage's outputs",
            ),
            ("{phases: {a: b}}", "`phases` needs `from`"),
            ("{phase: ' '}", "a phase name is empty"),
            (
                "{from: res/${item}/m.json, phases: {a: x}, within: {a: b}}",
                "`within: {a: b}`: both must be keys of `phases`",
            ),
            ("{phse: x}", "phse"),
        ] {
            let e = load(&stage(timing), json!({})).unwrap_err().to_string();
            assert!(e.contains(says), "{timing}: {e}");
        }
    }

    #[test]
    fn a_path_naming_a_list_param_is_one_path_per_element() {
        let text = "stages:\n  report:\n    cmd: make\n    deps:\n      - data/${b}/test.bin\n    outs:\n      - reports/index.html\n      - reports/${b}\n";
        let p = load(text, json!({"b": ["anime32", "cifar10"]})).unwrap();
        let s = &p.stages[0];
        assert_eq!(
            s.outs,
            ["reports/index.html", "reports/anime32", "reports/cifar10"]
        );
        assert_eq!(s.deps, ["data/anime32/test.bin", "data/cifar10/test.bin"]);
        assert_eq!(s.params, ["b"], "the list is part of the stage key");
        // An empty list is no path; a list of mappings is not a path list.
        let p = load(text, json!({"b": []})).unwrap();
        assert_eq!(p.stages[0].outs, ["reports/index.html"]);
        let e = load(text, json!({"b": [{"x": 1}]}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`data/${b}/test.bin`") && e.contains("not all strings"),
            "{e}"
        );
    }

    #[test]
    fn foreach_over_a_null_param_has_no_stages() {
        let text = "stages:\n  s:\n    foreach: ${study.configs}\n    do:\n      cmd: echo ${key}\n  t:\n    cmd: echo t\n";
        let p = load(text, json!({"study": {"configs": null}})).unwrap();
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["t"]);
        let e = load(text, json!({"study": {"configs": 3}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a list, a mapping or null"), "{e}");
    }

    #[test]
    fn a_matrix_with_an_empty_or_null_axis_has_no_stages() {
        let text = "stages:\n  s:\n    matrix:\n      m: ${sd.run}\n      k: [a, b]\n    cmd: echo ${item.m} ${item.k}\n  t:\n    cmd: echo t\n";
        for run in [json!([]), json!(null)] {
            let p = load(text, json!({"sd": {"run": run}})).unwrap();
            let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["t"]);
        }
        let p = load(text, json!({"sd": {"run": ["x"]}})).unwrap();
        assert_eq!(p.stages.len(), 3);
    }

    #[test]
    fn foreach_and_matrix_expand_like_dvc() {
        let text = r#"
stages:
  prep:
    foreach: ${data.sets}
    do:
      cmd: echo ${item} ${train.lr} > out/${item}.txt
      outs:
        - out/${item}.txt
  ft:
    matrix:
      ds: [a, b]
      m: [acpo, base]
    cmd: cat out/${item.ds}.txt > ft/${item.ds}-${item.m}
    deps:
      - out/${item.ds}.txt
    outs:
      - ft/${item.ds}-${item.m}
"#;
        let p = load(
            text,
            json!({"data": {"sets": ["a", "b"]}, "train": {"lr": 0.1}}),
        )
        .unwrap();
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prep@a",
                "prep@b",
                "ft@a-acpo",
                "ft@a-base",
                "ft@b-acpo",
                "ft@b-base"
            ]
        );
        assert_eq!(p.stages[0].cmd, "echo a 0.1 > out/a.txt");
        assert_eq!(p.stages[0].params, ["train.lr"]);
        let ft = p.index_of("ft@b-base").unwrap();
        assert_eq!(p.upstream[ft], [p.index_of("prep@b").unwrap()]);
        assert_eq!(p.select(&["ft".into()], false, true).unwrap().len(), 4);
        assert_eq!(
            p.select(&["ft@a-acpo".into()], false, false).unwrap().len(),
            2
        );
    }

    #[test]
    fn interpolation_inside_flow_lists() {
        let text = "stages:\n  g:\n    foreach: [a, b]\n    do:\n      cmd: touch o/${item}\n      outs: [o/${item}, \"q/${item}\"]\n";
        let p = load(text, json!({})).unwrap();
        assert_eq!(p.stages[1].outs, ["o/b", "q/b"]);
        assert_eq!(
            mask_braces("a ${x} ${y\n}"),
            format!("a ${}x{} ${{y\n}}", expand::OPEN, expand::CLOSE)
        );
    }

    #[test]
    fn expansion_is_limited_before_stages_are_built() {
        // The issue's 297-byte file: 8 axes of 10 values, 10^8 stages. It must fail at once.
        let axis = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
        let mut text = String::from("stages:\n  big:\n    matrix:\n");
        for a in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            text.push_str(&format!("      {a}: {axis}\n"));
        }
        text.push_str("    cmd: echo ${item.a}\n");
        let started = std::time::Instant::now();
        let e = load(&text, json!({})).unwrap_err();
        assert!(started.elapsed().as_secs() < 2);
        assert_eq!(e.kind(), crate::ErrorKind::BadInput);
        let msg = e.to_string();
        assert!(
            msg.contains("stage `big`: matrix a x b x c x d x e x f x g x h")
                && msg.contains("100000000 stages")
                && msg.contains("10000")
                && msg.contains(MAX_STAGES_ENV),
            "{msg}"
        );
        // The limit counts every stage, and foreach too.
        let p = Params::from_value(json!({"xs": [1, 2, 3]}), "cpu");
        let text = "stages:\n  one:\n    cmd: echo\n  f:\n    foreach: ${xs}\n    do:\n      cmd: echo ${item}\n";
        let lim = |n| {
            Pipeline::from_str_limited(Path::new("/r"), Path::new("/r/pipeline.yaml"), text, &p, n)
        };
        assert_eq!(lim(4).unwrap().stages.len(), 4);
        let msg = lim(3).unwrap_err().to_string();
        assert!(
            msg.contains("stage `f`: `foreach` over 3 item(s) expands to 3 stages (after 1"),
            "{msg}"
        );
        let msg = lim(1).unwrap_err().to_string();
        assert!(msg.contains("stage `f`"), "{msg}");
        let text = "stages:\n  one:\n    cmd: echo\n  two:\n    cmd: echo\n";
        let msg = Pipeline::from_str_limited(Path::new("/r"), Path::new("/r/p.yaml"), text, &p, 1)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("stage `two` would be stage 2"), "{msg}");
    }

    #[test]
    fn git_and_engine_paths_are_not_outputs() {
        for out in [
            ".git",
            ".git/hooks/pre-commit",
            ".acpo",
            "pipeline.lock",
            "results",
        ] {
            let text = format!("stages:\n  s:\n    cmd: echo\n    outs: [\"{out}\"]\n");
            let e = load(&text, json!({})).unwrap_err().to_string();
            assert!(e.contains(out) && e.contains("engine's own"), "{e}");
        }
        assert!(load(
            "stages:\n  s:\n    cmd: echo\n    outs: [.gitignore, results/x]\n",
            json!({})
        )
        .is_ok());
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("./a//b/").unwrap(), "a/b");
        assert_eq!(normalize("../x").unwrap(), "../x");
        assert_eq!(normalize("a/../b").unwrap(), "b");
        assert!(normalize(" ").is_none());
    }
}
