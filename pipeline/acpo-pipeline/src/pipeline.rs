//! `pipeline.yaml`: DVC-style stages, `foreach`/`do` and `matrix` expansion, `${...}`
//! interpolation, and the stage graph (cycles, overlapping outputs, selection).

use crate::crates::CrateGraph;
use crate::dvc::{RawOut, RawParam};
use crate::error::{Error, Result};
use crate::params::{Params, PARAMS_FILE};
use crate::yaml;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
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

/// The fields of one stage as written (also the body of `foreach`/`do`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawBody {
    desc: Option<String>,
    cmd: Option<Value>,
    deps: Vec<String>,
    params: Vec<RawParam>,
    outs: Vec<RawOut>,
    metrics: Vec<RawOut>,
    plots: Vec<RawOut>,
    env: Vec<String>,
    resources: Option<Resources>,
    persist: bool,
    wdir: Option<String>,
    frozen: bool,
    always_changed: bool,
    meta: Option<Value>,
    vars: Vec<Value>,
}

/// A stage entry: plain, `foreach`/`do`, or `matrix`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStage {
    desc: Option<String>,
    cmd: Option<Value>,
    deps: Vec<String>,
    params: Vec<RawParam>,
    outs: Vec<RawOut>,
    metrics: Vec<RawOut>,
    plots: Vec<RawOut>,
    env: Vec<String>,
    resources: Option<Resources>,
    persist: bool,
    wdir: Option<String>,
    frozen: bool,
    always_changed: bool,
    meta: Option<Value>,
    vars: Vec<Value>,
    foreach: Option<Value>,
    #[serde(rename = "do")]
    do_: Option<RawBody>,
    matrix: Option<Ordered<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFile {
    stages: Option<Ordered<RawStage>>,
    /// DVC: values for `${...}` (files or mappings).
    vars: Vec<Value>,
    /// DVC: metrics files of the project (shown by `metrics show`/`diff`).
    metrics: Vec<String>,
    /// DVC: kept, listed by `acpo dag` as not acted on.
    plots: Vec<Value>,
    params: Vec<Value>,
    artifacts: Option<Value>,
}

/// A mapping that keeps the order of the file (stage order, matrix axes) and the line
/// of each key.
#[derive(Debug, Clone)]
struct Ordered<T>(Vec<(String, u64, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Spanned<String>, T>()? {
                    out.push((k.value, k.referenced.line(), v));
                }
                Ok(Ordered(out))
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered<T>, E> {
                Ok(Ordered(Vec::new()))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
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

    fn link(&mut self, ctx: &Ctx) -> Result<()> {
        let n = self.stages.len();
        for (i, s) in self.stages.iter().enumerate() {
            if let Some(j) = self.index.insert(s.name.clone(), i) {
                return Err(ctx.err(
                    s.line,
                    format!(
                        "stage `{}` is defined twice (also at line {})",
                        s.name, self.stages[j].line
                    ),
                ));
            }
        }
        // Outputs: no two stages may write the same path or paths inside each other.
        let mut outs: Vec<(&str, usize)> = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            for o in &s.outs {
                outs.push((o.as_str(), i));
            }
        }
        outs.sort();
        for w in outs.windows(2) {
            let ((a, i), (b, j)) = (w[0], w[1]);
            if a == b || is_within(b, a) {
                let (si, sj) = (&self.stages[i], &self.stages[j]);
                let what = if a == b {
                    format!("output `{a}`")
                } else {
                    format!("overlapping outputs `{a}` and `{b}`")
                };
                let msg = if i == j {
                    format!("stage `{}` declares {what} twice", si.name)
                } else {
                    format!(
                        "stages `{}` (line {}) and `{}` (line {}) both declare {what}",
                        si.name, si.line, sj.name, sj.line
                    )
                };
                return Err(ctx.err(si.line.min(sj.line), msg));
            }
        }
        let mut upstream = vec![Vec::new(); n];
        for (i, s) in self.stages.iter().enumerate() {
            let mut ups = BTreeSet::new();
            for d in &s.deps {
                for (o, j) in &outs {
                    if *j != i && (d == o || is_within(d, o) || is_within(o, d)) {
                        ups.insert(*j);
                    }
                }
            }
            upstream[i] = ups.into_iter().collect();
        }
        let mut downstream = vec![Vec::new(); n];
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                downstream[u].push(i);
            }
        }
        self.upstream = upstream;
        self.downstream = downstream;
        if let Some(cycle) = self.find_cycle() {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| self.stages[i].name.as_str())
                .collect();
            return Err(Error::Cycle {
                file: ctx.file.clone(),
                cycle: names.join(" -> "),
            });
        }
        Ok(())
    }

    /// A cycle as a list of stages `a, b, ..., a`, if there is one.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        // Iterative DFS with colours: 0 new, 1 on stack, 2 done.
        let n = self.stages.len();
        let mut colour = vec![0u8; n];
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            stack.push((start, 0));
            colour[start] = 1;
            while let Some(&mut (v, ref mut k)) = stack.last_mut() {
                if *k < self.upstream[v].len() {
                    let u = self.upstream[v][*k];
                    *k += 1;
                    match colour[u] {
                        0 => {
                            colour[u] = 1;
                            stack.push((u, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|&(x, _)| x == u).unwrap_or(0);
                            // The stack runs from a stage to what it depends on; print
                            // the cycle in execution order (producer first).
                            let mut cyc: Vec<usize> =
                                stack[pos..].iter().map(|&(x, _)| x).collect();
                            cyc.reverse();
                            cyc.push(cyc[0]);
                            return Some(cyc);
                        }
                        _ => {}
                    }
                } else {
                    colour[v] = 2;
                    stack.pop();
                }
            }
        }
        None
    }

    /// All stages in a topological order (producers first; file order breaks ties).
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.stages.len();
        let mut indeg: Vec<usize> = self.upstream.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in &self.downstream[i] {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        order
    }

    /// Resolves command-line stage names (full names or base names) to indices.
    pub fn resolve_names(&self, names: &[String]) -> Result<Vec<usize>> {
        let mut out = BTreeSet::new();
        for name in names {
            if let Some(i) = self.index_of(name) {
                out.insert(i);
                continue;
            }
            let matches: Vec<usize> = (0..self.stages.len())
                .filter(|&i| self.stages[i].base == *name)
                .collect();
            if matches.is_empty() {
                let mut bases: Vec<&str> = self.stages.iter().map(|s| s.base.as_str()).collect();
                bases.dedup();
                return Err(Error::Usage(format!(
                    "unknown stage `{name}` in {} (stages: {})",
                    self.display_file(),
                    if bases.is_empty() {
                        "none".to_string()
                    } else {
                        bases.join(", ")
                    }
                )));
            }
            out.extend(matches);
        }
        Ok(out.into_iter().collect())
    }

    /// The stages a command works on, in topological order: the targets (all when empty)
    /// plus everything upstream (unless `single`) and downstream (if `downstream`).
    pub fn select(&self, targets: &[String], downstream: bool, single: bool) -> Result<Vec<usize>> {
        let n = self.stages.len();
        let roots = if targets.is_empty() {
            (0..n).collect()
        } else {
            self.resolve_names(targets)?
        };
        let mut keep = vec![false; n];
        for &r in &roots {
            keep[r] = true;
        }
        if downstream {
            self.close(&mut keep, &roots, &self.downstream);
        }
        if !single {
            let cur: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
            self.close(&mut keep, &cur, &self.upstream);
        }
        Ok(self.topo_order().into_iter().filter(|&i| keep[i]).collect())
    }

    fn close(&self, keep: &mut [bool], from: &[usize], edges: &[Vec<usize>]) {
        let mut stack: Vec<usize> = from.to_vec();
        while let Some(v) = stack.pop() {
            for &u in &edges[v] {
                if !keep[u] {
                    keep[u] = true;
                    stack.push(u);
                }
            }
        }
    }

    /// Whether `dep` of stage `i` is produced by one of its upstream stages.
    pub fn produced_by_upstream(&self, i: usize, dep: &str) -> bool {
        self.upstream[i].iter().any(|&u| {
            self.stages[u]
                .outs
                .iter()
                .any(|o| dep == o || is_within(dep, o) || is_within(o, dep))
        })
    }

    /// An error about stage `i` that names the file and line.
    pub fn stage_error(&self, i: usize, message: String) -> Error {
        Error::Pipeline {
            file: PathBuf::from(self.location(i)),
            message,
        }
    }
}

/// True when `path` lies strictly inside the directory `dir` (both normalised).
pub fn is_within(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

struct Ctx<'a> {
    file: PathBuf,
    params: &'a Params,
    root: &'a Path,
    /// The Cargo workspace's crates, read on the first `crate:` dependency.
    crates: std::cell::OnceCell<std::result::Result<CrateGraph, String>>,
    /// The most stages the pipeline may expand to.
    max_stages: usize,
    /// Top-level `vars` (DVC): values for `${...}` besides params.
    vars: serde_json::Map<String, Value>,
}

/// A dependency `crate:<name>` stands for the sources of a workspace crate (module `crates`).
pub const CRATE_DEP_PREFIX: &str = "crate:";

/// The values `${...}` can refer to besides params.
#[derive(Default)]
struct Scope {
    item: Option<Value>,
    key: Option<String>,
    /// The stage's own `vars` (DVC), looked up before the top-level ones.
    vars: serde_json::Map<String, Value>,
}

impl Ctx<'_> {
    /// The paths `crate:<name>` stands for.
    fn crate_deps(&self, name: &str) -> std::result::Result<Vec<String>, String> {
        self.crates
            .get_or_init(|| CrateGraph::load(self.root))
            .as_ref()
            .map_err(|e| e.clone())?
            .expand(name)
    }

    fn err(&self, line: u64, message: String) -> Error {
        Error::Pipeline {
            file: PathBuf::from(format!("{}:{line}", self.file.display())),
            message,
        }
    }

    /// Fails when `adding` more stages after the `before` already expanded pass the limit.
    fn check_limit(
        &self,
        name: &str,
        line: u64,
        what: &str,
        adding: usize,
        before: usize,
    ) -> Result<()> {
        if adding.saturating_add(before) <= self.max_stages {
            return Ok(());
        }
        if what.is_empty() {
            return Err(self.err(
                line,
                format!(
                    "stage `{name}` would be stage {}, more than the limit of {} stages \
                     (set {MAX_STAGES_ENV} to change it)",
                    before.saturating_add(1),
                    self.max_stages
                ),
            ));
        }
        let with = if before > 0 {
            format!(" (after {before} stage(s) before it)")
        } else {
            String::new()
        };
        Err(self.err(
            line,
            format!(
                "stage `{name}`: {what} expands to {adding} stages{with}, more than the limit \
                 of {} stages (set {MAX_STAGES_ENV} to change it)",
                self.max_stages
            ),
        ))
    }

    fn expand(&self, name: &str, line: u64, raw: RawStage, out: &mut Vec<Stage>) -> Result<()> {
        if !valid_name(name) {
            return Err(self.err(
                line,
                format!("stage name `{name}` may only use letters, digits, `_`, `-` and `.`"),
            ));
        }
        let body = RawBody {
            desc: raw.desc,
            cmd: raw.cmd,
            deps: raw.deps,
            params: raw.params,
            outs: raw.outs,
            metrics: raw.metrics,
            plots: raw.plots,
            env: raw.env,
            resources: raw.resources,
            persist: raw.persist,
            wdir: raw.wdir,
            frozen: raw.frozen,
            always_changed: raw.always_changed,
            meta: raw.meta,
            vars: raw.vars,
        };
        match (raw.foreach, raw.do_, raw.matrix) {
            (None, None, None) => {
                self.check_limit(name, line, "", 1, out.len())?;
                out.push(self.build(name, name, line, &body, &Scope::default())?);
            }
            (Some(fe), Some(do_), None) => {
                if body.cmd.is_some() || !body.deps.is_empty() || !body.outs.is_empty() {
                    return Err(self.err(
                        line,
                        format!("stage `{name}`: with `foreach`, put the stage fields under `do`"),
                    ));
                }
                let items = self.collection(name, line, "foreach", fe)?;
                let what = format!("`foreach` over {} item(s)", items.len());
                self.check_limit(name, line, &what, items.len(), out.len())?;
                for (suffix, key, item) in items {
                    let scope = Scope {
                        item: Some(item),
                        key,
                        ..Scope::default()
                    };
                    let mut do_ = do_.clone();
                    do_.persist |= body.persist;
                    out.push(self.build(&format!("{name}@{suffix}"), name, line, &do_, &scope)?);
                }
            }
            (Some(_), None, _) => {
                return Err(self.err(line, format!("stage `{name}`: `foreach` needs a `do`")))
            }
            (None, Some(_), _) => {
                return Err(self.err(line, format!("stage `{name}`: `do` needs a `foreach`")))
            }
            (None, None, Some(matrix)) => {
                let mut axes = Vec::new();
                for (axis, _, v) in matrix.0 {
                    let items = self.collection(name, line, &format!("matrix.{axis}"), v)?;
                    if items.is_empty() {
                        return Err(self.err(
                            line,
                            format!("stage `{name}`: matrix axis `{axis}` is empty"),
                        ));
                    }
                    axes.push((axis, items));
                }
                // Counted before any combination is built: 8 axes of 10 values must fail
                // here, not on the way to 10^8 stages.
                let total = axes
                    .iter()
                    .fold(1usize, |n, (_, items)| n.saturating_mul(items.len()));
                let what = format!(
                    "matrix {} ({})",
                    axes.iter()
                        .map(|(a, _)| a.as_str())
                        .collect::<Vec<_>>()
                        .join(" x "),
                    axes.iter()
                        .map(|(_, items)| items.len().to_string())
                        .collect::<Vec<_>>()
                        .join(" x ")
                );
                self.check_limit(name, line, &what, total, out.len())?;
                let mut combos: Vec<(Vec<String>, serde_json::Map<String, Value>)> =
                    vec![(Vec::new(), serde_json::Map::new())];
                for (axis, items) in &axes {
                    let mut next = Vec::new();
                    for (names, obj) in &combos {
                        for (idx, (suffix, _, item)) in items.iter().enumerate() {
                            let mut names = names.clone();
                            names.push(if is_scalar(item) {
                                suffix.clone()
                            } else {
                                format!("{axis}{idx}")
                            });
                            let mut obj = obj.clone();
                            obj.insert(axis.clone(), item.clone());
                            next.push((names, obj));
                        }
                    }
                    combos = next;
                }
                for (names, obj) in combos {
                    let scope = Scope {
                        item: Some(Value::Object(obj)),
                        key: None,
                        ..Scope::default()
                    };
                    let full = format!("{name}@{}", names.join("-"));
                    out.push(self.build(&full, name, line, &body, &scope)?);
                }
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(self.err(
                    line,
                    format!("stage `{name}`: use either `foreach`/`do` or `matrix`, not both"),
                ))
            }
        }
        Ok(())
    }

    /// The items of a `foreach` or matrix axis: (name suffix, dict key, item).
    fn collection(
        &self,
        stage: &str,
        line: u64,
        what: &str,
        v: Value,
    ) -> Result<Vec<(String, Option<String>, Value)>> {
        let v = match v {
            Value::String(s) => match whole_reference(&unmask_braces(&s)) {
                Some(key) => self
                    .params
                    .get(key)
                    .or_else(|| crate::params::lookup_map(&self.vars, key))
                    .cloned()
                    .ok_or_else(|| {
                        self.err(
                            line,
                            format!(
                                "stage `{stage}`: {what} refers to `${{{key}}}`, which is not \
                             defined in {PARAMS_FILE} (profile `{}`)",
                                self.params.profile()
                            ),
                        )
                    })?,
                None => {
                    return Err(self.err(
                        line,
                        format!(
                            "stage `{stage}`: {what} must be a list, a mapping or `${{param}}`"
                        ),
                    ))
                }
            },
            other => other,
        };
        match v {
            Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let suffix = scalar_text(&item).unwrap_or_else(|| i.to_string());
                    (suffix, None, item)
                })
                .collect()),
            Value::Object(m) => Ok(m
                .into_iter()
                .map(|(k, item)| (k.clone(), Some(k), item))
                .collect()),
            // A param left null (for a profile to set: profiles may replace a null with a
            // mapping, but not add keys to one) expands to no stages.
            Value::Null => Ok(Vec::new()),
            _ => Err(self.err(
                line,
                format!("stage `{stage}`: {what} must be a list, a mapping or null"),
            )),
        }
    }

    fn build(
        &self,
        name: &str,
        base: &str,
        line: u64,
        b: &RawBody,
        scope: &Scope,
    ) -> Result<Stage> {
        let mut stage_vars = scope.vars.clone();
        if !b.vars.is_empty() {
            let own = crate::dvc::vars(self.root, &b.vars, &|k| {
                self.params.get(k).is_some() || self.vars.contains_key(k)
            })
            .map_err(|m| self.err(line, format!("stage `{name}`: {m}")))?;
            stage_vars.extend(own);
        }
        let scope = &Scope {
            item: scope.item.clone(),
            key: scope.key.clone(),
            vars: stage_vars,
        };
        let mut used = BTreeSet::new();
        let mut interp = |s: &str| self.interpolate(name, line, s, scope, &mut used);
        let cmd = match &b.cmd {
            Some(Value::String(s)) => interp(s)?,
            Some(Value::Array(parts)) if !parts.is_empty() => {
                let mut cmds = Vec::new();
                for p in parts {
                    match p {
                        Value::String(s) => cmds.push(interp(s)?),
                        _ => {
                            return Err(self.err(
                                line,
                                format!("stage `{name}`: `cmd` list entries must be strings"),
                            ))
                        }
                    }
                }
                cmds.join(" && ")
            }
            Some(_) => {
                return Err(self.err(
                    line,
                    format!("stage `{name}`: `cmd` must be a string or a list of strings"),
                ))
            }
            None => return Err(self.err(line, format!("stage `{name}` has no `cmd`"))),
        };
        if cmd.trim().is_empty() {
            return Err(self.err(line, format!("stage `{name}` has an empty `cmd`")));
        }
        let wdir = match &b.wdir {
            None => None,
            Some(w) => {
                let w = interp(w)?;
                match normalize(&w) {
                    Some(n) if n == "." => None,
                    Some(n) if !(n.starts_with("../") || n == ".." || n.starts_with('/')) => {
                        Some(n)
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            format!(
                                "stage `{name}`: wdir `{w}` must be a directory inside the \
                                 pipeline directory"
                            ),
                        ))
                    }
                }
            }
        };
        // A path of the stage, relative to its wdir, as a path of the pipeline directory.
        let in_wdir = |p: String| match &wdir {
            Some(w) if !p.starts_with('/') && !p.starts_with(CRATE_DEP_PREFIX) => {
                format!("{w}/{p}")
            }
            _ => p,
        };
        let mut ignored = Vec::new();
        let mut uncached = Vec::new();
        let mut split = |list: &[RawOut], what: &str| -> Result<Vec<String>> {
            let o = crate::dvc::outs(list, what)
                .map_err(|m| self.err(line, format!("stage `{name}`: {m}")))?;
            ignored.extend(o.ignored);
            uncached.extend(o.uncached);
            Ok(o.paths)
        };
        let (outs_raw, metrics_raw, plots_raw) = (
            split(&b.outs, "outs")?,
            split(&b.metrics, "metrics")?,
            split(&b.plots, "plots")?,
        );
        if b.meta.is_some() {
            ignored.push("meta".into());
        }
        let mut list_params = BTreeSet::new();
        let mut paths = |list: &[String], what: &str, is_out: bool| -> Result<Vec<String>> {
            let mut v = Vec::new();
            let mut each = Vec::new();
            for p in list {
                match self.list_reference(name, line, p)? {
                    Some((key, expanded)) => {
                        list_params.insert(key);
                        each.extend(expanded);
                    }
                    None => each.push(p.clone()),
                }
            }
            for p in &each {
                let s = in_wdir(interp(p)?);
                if let (false, Some(krate)) = (is_out, s.strip_prefix(CRATE_DEP_PREFIX)) {
                    let expanded = self.crate_deps(krate).map_err(|m| {
                        self.err(line, format!("stage `{name}`: dependency `{s}`: {m}"))
                    })?;
                    for e in expanded {
                        if !v.contains(&e) {
                            v.push(e);
                        }
                    }
                    continue;
                }
                let n = normalize(&s).ok_or_else(|| {
                    self.err(line, format!("stage `{name}`: {what} path `{s}` is empty"))
                })?;
                if is_out && (n.starts_with("../") || n == ".." || Path::new(&n).is_absolute()) {
                    return Err(self.err(
                        line,
                        format!(
                            "stage `{name}`: output `{s}` must be inside the pipeline directory"
                        ),
                    ));
                }
                if is_out
                    && (n == "." || crate::confine::is_reserved(&n) || Path::new(&n) == self.file)
                {
                    return Err(self.err(
                        line,
                        format!(
                            "stage `{name}`: output `{s}` is or would contain one of the engine's own \
                             paths (.git, .acpo, the run cache, {PIPELINE_FILE}, {PARAMS_FILE}, \
                             pipeline.lock)"
                        ),
                    ));
                }
                if !v.contains(&n) {
                    v.push(n);
                }
            }
            Ok(v)
        };
        let deps = paths(&b.deps, "dependency", false)?;
        let mut outs = paths(&outs_raw, "output", true)?;
        let metrics = paths(&metrics_raw, "metrics", true)?;
        let plots = paths(&plots_raw, "plots", true)?;
        let uncached: Vec<String> = uncached
            .into_iter()
            .filter_map(|u| interp(&u).ok().map(in_wdir).and_then(|u| normalize(&u)))
            .collect();
        // Metrics and plots outside every declared out are outputs too (as in DVC).
        for m in metrics.iter().chain(&plots) {
            if !outs.iter().any(|o| o == m || is_within(m, o)) {
                outs.push(m.clone());
            }
        }
        let mut params = BTreeSet::new();
        let mut extra_params = BTreeMap::new();
        for p in &b.params {
            match p {
                RawParam::Key(k) => {
                    params.insert(interp(k)?);
                }
                RawParam::File(files) => {
                    for (file, keys) in files {
                        let rel = normalize(&in_wdir(interp(file)?)).unwrap_or_default();
                        if rel == PARAMS_FILE {
                            // `- params.yaml: [a]` is the plain form's file.
                            for k in keys.iter().flatten() {
                                params.insert(interp(k)?);
                            }
                            continue;
                        }
                        let values = crate::dvc::file_params(self.root, &rel, keys.as_deref())
                            .map_err(|m| self.err(line, format!("stage `{name}`: {m}")))?;
                        params.extend(values.keys().cloned());
                        extra_params.extend(values);
                    }
                }
            }
        }
        let desc = b.desc.as_ref().map(|d| interp(d)).transpose()?;
        params.extend(used);
        params.extend(list_params);
        for key in &params {
            if extra_params.contains_key(key) {
                continue;
            }
            if let Some(v) = crate::params::lookup_map(&scope.vars, key)
                .or_else(|| crate::params::lookup_map(&self.vars, key))
                .filter(|_| self.params.get(key).is_none())
            {
                extra_params.insert(key.clone(), v.clone());
                continue;
            }
            if self.params.get(key).is_none() {
                return Err(self.err(
                    line,
                    format!(
                        "stage `{name}` declares param `{key}`, which is not defined in \
                         {PARAMS_FILE} (profile `{}`)",
                        self.params.profile()
                    ),
                ));
            }
        }
        let mut env: Vec<String> = b.env.clone();
        env.sort();
        env.dedup();
        let resources = b.resources.unwrap_or_default();
        if resources.cpus < 0.0
            || resources.gpus < 0.0
            || resources.mem_gb < 0.0
            || resources.time_min < 0.0
        {
            return Err(self.err(line, format!("stage `{name}`: resources must be >= 0")));
        }
        Ok(Stage {
            name: name.to_string(),
            base: base.to_string(),
            line,
            desc,
            cmd,
            deps,
            params: params.into_iter().collect(),
            outs,
            metrics,
            plots,
            env,
            resources,
            persist: b.persist,
            wdir,
            frozen: b.frozen,
            always_changed: b.always_changed,
            uncached,
            extra_params,
            ignored,
        })
    }

    /// A path naming a list param (`reports/${report.benchmarks}`) stands for one path per
    /// element (`reports/anime32`, `reports/cifar10`): the param's key and those paths, with
    /// the reference replaced by each element's text. `None` when the path has no reference to
    /// a list param (then it is interpolated as usual); an error when the list's items are not
    /// strings or numbers.
    fn list_reference(
        &self,
        stage: &str,
        line: u64,
        path: &str,
    ) -> Result<Option<(String, Vec<String>)>> {
        let s = unmask_braces(path);
        let Some(start) = s.find("${") else {
            return Ok(None);
        };
        let Some(end) = s[start..].find('}').map(|e| start + e) else {
            return Ok(None);
        };
        let key = s[start + 2..end].trim();
        if key == "key" || key == "item" || key.starts_with("item.") {
            return Ok(None);
        }
        let Some(Value::Array(items)) = self.params.get(key) else {
            return Ok(None);
        };
        let texts = items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                self.err(
                    line,
                    format!(
                        "stage `{stage}`: path `{s}` refers to `${{{key}}}`, a list whose \
                         items are not all strings or numbers"
                    ),
                )
            })?;
        let (head, tail) = (&s[..start], &s[end + 1..]);
        Ok(Some((
            key.to_string(),
            texts.iter().map(|t| format!("{head}{t}{tail}")).collect(),
        )))
    }

    /// Replaces `${item}`, `${item.a.b}`, `${key}` and `${param.key}`; `\${` stays literal.
    fn interpolate(
        &self,
        stage: &str,
        line: u64,
        s: &str,
        scope: &Scope,
        used: &mut BTreeSet<String>,
    ) -> Result<String> {
        let s = &unmask_braces(s);
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'\\' {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after.find('}').ok_or_else(|| {
                self.err(line, format!("stage `{stage}`: unclosed `${{` in `{s}`"))
            })?;
            let expr = after[..end].trim();
            let value = self.resolve(stage, line, expr, scope, used)?;
            out.push_str(&render(&value));
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn resolve(
        &self,
        stage: &str,
        line: u64,
        expr: &str,
        scope: &Scope,
        used: &mut BTreeSet<String>,
    ) -> Result<Value> {
        let (head, tail) = match expr.split_once('.') {
            Some((h, t)) => (h, Some(t)),
            None => (expr, None),
        };
        if head == "item" {
            let item = scope.item.as_ref().ok_or_else(|| {
                self.err(
                    line,
                    format!("stage `{stage}`: `${{{expr}}}` outside `foreach`/`matrix`"),
                )
            })?;
            return match tail {
                None => Ok(item.clone()),
                Some(t) => crate::params::lookup(item, t).cloned().ok_or_else(|| {
                    self.err(
                        line,
                        format!("stage `{stage}`: item has no `{t}` (in `${{{expr}}}`)"),
                    )
                }),
            };
        }
        if expr == "key" {
            if let Some(k) = &scope.key {
                return Ok(Value::String(k.clone()));
            }
        }
        let from_vars = || {
            crate::params::lookup_map(&scope.vars, expr)
                .or_else(|| crate::params::lookup_map(&self.vars, expr))
        };
        match self.params.get(expr).or_else(from_vars) {
            Some(v) => {
                used.insert(expr.to_string());
                Ok(v.clone())
            }
            None => Err(self.err(
                line,
                format!(
                    "stage `{stage}`: `${{{expr}}}` is not defined in {PARAMS_FILE} (profile `{}`)",
                    self.params.profile()
                ),
            )),
        }
    }
}

const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Hides the braces of `${...}` (same line) from the YAML parser, so `outs: [a/${item}]`
/// parses as in a block list: in a flow sequence `{` and `}` are indicators. Each brace is
/// replaced by one private-use character, so lines and columns stay the same.
fn mask_braces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        out.push_str(&rest[..pos + 1]);
        let after = &rest[pos + 2..];
        let end = after.find(['}', '\n', '{']);
        match end {
            Some(e) if after.as_bytes()[e] == b'}' => {
                out.push(OPEN);
                out.push_str(&after[..e]);
                out.push(CLOSE);
                rest = &after[e + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Undoes [`mask_braces`] in one parsed string.
fn unmask_braces(s: &str) -> String {
    if s.contains(OPEN) || s.contains(CLOSE) {
        s.replace(OPEN, "{").replace(CLOSE, "}")
    } else {
        s.to_string()
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn whole_reference(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains("${")).then_some(inner.trim())
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn render(v: &Value) -> String {
    scalar_text(v).unwrap_or_else(|| match v {
        Value::Null => "null".into(),
        other => crate::params::canonical_json(other),
    })
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
            format!("a ${OPEN}x{CLOSE} ${{y\n}}")
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
