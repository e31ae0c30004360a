//! Expansion of the raw stages into [`Stage`]s: `foreach`/`do` and `matrix`, `${...}`
//! interpolation of params, items, keys and DVC `vars`, `crate:` dependencies, DVC's forms
//! (wdir, output flags, params of other files), the limit on the number of stages.

use super::spec::{RawBody, RawStage, RawTiming};
use super::{is_within, normalize, Stage, Timing, MAX_STAGES_ENV, PIPELINE_FILE};
use crate::crates::{CrateGraph, LockPart};
use crate::dvc::{RawOut, RawParam};
use crate::error::{Error, Result};
use crate::params::{Params, PARAMS_FILE};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub(super) struct Ctx<'a> {
    pub(super) file: PathBuf,
    pub(super) params: &'a Params,
    pub(super) root: &'a Path,
    /// The Cargo workspace's crates, read on the first `crate:` dependency.
    pub(super) crates: std::cell::OnceCell<std::result::Result<CrateGraph, String>>,
    /// The most stages the pipeline may expand to.
    pub(super) max_stages: usize,
    /// Top-level `vars` (DVC): values for `${...}` besides params.
    pub(super) vars: serde_json::Map<String, Value>,
}

/// What `crate:<name>` stands for: paths, and its part of `Cargo.lock` (name, what it covers).
type CrateDeps = (Vec<String>, Option<(String, LockPart)>);

/// A dependency `crate:<name>` stands for the sources of a workspace crate (module `crates`).
pub const CRATE_DEP_PREFIX: &str = "crate:";

/// The values `${...}` can refer to besides params.
#[derive(Default, Clone)]
struct Scope {
    item: Option<Value>,
    key: Option<String>,
    /// The stage's own `vars` (DVC), looked up before the top-level ones.
    vars: serde_json::Map<String, Value>,
    /// Interpolating for the stage key: `${env.NAME}` stays as written, so where a location
    /// variable points is not part of the key (the content of what it names is).
    env_literal: bool,
}

/// The prefix of `${env.NAME}`: a path (or any text) from an environment variable.
pub(super) const ENV_PREFIX: &str = "env.";

impl Ctx<'_> {
    /// The paths `crate:<name>` stands for, and its part of `Cargo.lock`.
    fn crate_deps(&self, name: &str) -> std::result::Result<CrateDeps, String> {
        let g = self
            .crates
            .get_or_init(|| CrateGraph::load(self.root))
            .as_ref()
            .map_err(|e| e.clone())?;
        Ok((g.expand(name)?, g.lock_part(name)?))
    }

    pub(super) fn err(&self, line: u64, message: String) -> Error {
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

    pub(super) fn expand(
        &self,
        name: &str,
        line: u64,
        raw: RawStage,
        out: &mut Vec<Stage>,
    ) -> Result<()> {
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
            executor: raw.executor,
            timing: raw.timing,
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
                    axes.push((axis, items));
                }
                // An empty (or null) axis has no combinations: no stages, as an empty
                // `foreach` (a params switch such as `stable_diffusion.run: []`).
                if axes.iter().any(|(_, items)| items.is_empty()) {
                    return Ok(());
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
            env_literal: false,
        };
        // The same interpolation with `${env.NAME}` kept as written: the names the key uses.
        let key_scope = &Scope {
            env_literal: true,
            ..scope.clone()
        };
        let mut key_text =
            |s: &str| self.interpolate(name, line, s, key_scope, &mut BTreeSet::new());
        let mentions_env = |s: &str| unmask_braces(s).contains(&format!("${{{ENV_PREFIX}"));
        let cmd_key = match &b.cmd {
            Some(Value::String(s)) if mentions_env(s) => {
                Some(self.cmd_of(name, line, &b.cmd, &mut key_text)?)
            }
            Some(Value::Array(p)) if p.iter().any(|x| x.as_str().is_some_and(mentions_env)) => {
                Some(self.cmd_of(name, line, &b.cmd, &mut key_text)?)
            }
            _ => None,
        };
        let mut dep_key_names = BTreeMap::new();
        for d in b.deps.iter().filter(|d| mentions_env(d)) {
            dep_key_names.insert(d.clone(), key_text(d)?);
        }
        let mut used = BTreeSet::new();
        let mut interp = |s: &str| self.interpolate(name, line, s, scope, &mut used);
        let cmd = self.cmd_of(name, line, &b.cmd, &mut interp)?;
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
        let mut lock_parts = BTreeMap::new();
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
                    let (expanded, lock_part) = self.crate_deps(krate).map_err(|m| {
                        self.err(line, format!("stage `{name}`: dependency `{s}`: {m}"))
                    })?;
                    lock_parts.extend(lock_part);
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
        // Each dependency written with `${env.NAME}`: its path here -> its name in the key.
        let mut dep_names = BTreeMap::new();
        for (raw, template) in dep_key_names {
            let here = normalize(&in_wdir(interp(&raw)?));
            if let (Some(here), Some(named)) = (here, normalize(&in_wdir(template))) {
                dep_names.insert(here, named);
            }
        }
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
        let timing = match &b.timing {
            None => Timing::default(),
            Some(t) => self.timing(name, line, t, scope, &outs, &in_wdir)?,
        };
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
            dep_names,
            lock_parts,
            cmd_key,
            timing,
            executor: match b.executor.as_deref() {
                None => None,
                Some(e @ ("local" | "slurm")) => Some(e.to_string()),
                Some(other) => {
                    return Err(self.err(
                        line,
                        format!("stage `{name}`: executor `{other}`: expected `local` or `slurm`"),
                    ))
                }
            },
        })
    }

    /// `timing:` checked: phase names not empty, `phases` only with `from`, and `from` one of
    /// the stage's outputs (so the seconds it reads are the recorded run's). Interpolated
    /// without recording params: timing is not part of the stage key.
    fn timing(
        &self,
        name: &str,
        line: u64,
        t: &RawTiming,
        scope: &Scope,
        outs: &[String],
        in_wdir: &dyn Fn(String) -> String,
    ) -> Result<Timing> {
        let bad = |what: String| self.err(line, format!("stage `{name}`: timing: {what}"));
        let phase_name = |p: &str| -> Result<String> {
            let p = p.trim();
            if p.is_empty() {
                return Err(bad("a phase name is empty".into()));
            }
            Ok(p.to_string())
        };
        let phase = match &t.phase {
            Some(p) => phase_name(p)?,
            None => Timing::default().phase,
        };
        let from = match &t.from {
            None if !t.phases.is_empty() => {
                return Err(bad("`phases` needs `from`, the file that holds them".into()))
            }
            None => None,
            Some(f) => {
                let f = self.interpolate(name, line, f, scope, &mut BTreeSet::new())?;
                let rel = normalize(&in_wdir(f.clone()));
                match rel {
                    Some(r) if outs.iter().any(|o| *o == r || is_within(&r, o)) => Some(r),
                    _ => {
                        return Err(bad(format!(
                            "`from: {f}` must be one of the stage's outputs (or inside one)"
                        )))
                    }
                }
            }
        };
        let mut phases = BTreeMap::new();
        for (key, p) in &t.phases {
            phases.insert(key.clone(), phase_name(p)?);
        }
        for (inner, outer) in &t.within {
            if inner == outer || !phases.contains_key(inner) || !phases.contains_key(outer) {
                return Err(bad(format!(
                    "`within: {{{inner}: {outer}}}`: both must be keys of `phases`, and differ"
                )));
            }
        }
        Ok(Timing {
            phase,
            from,
            phases,
            within: t.within.clone(),
        })
    }

    /// The command text (a string, or a list joined with `&&`), interpolated by `interp`.
    fn cmd_of(
        &self,
        name: &str,
        line: u64,
        cmd: &Option<Value>,
        interp: &mut dyn FnMut(&str) -> Result<String>,
    ) -> Result<String> {
        match cmd {
            Some(Value::String(s)) => interp(s),
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
                Ok(cmds.join(" && "))
            }
            Some(_) => Err(self.err(
                line,
                format!("stage `{name}`: `cmd` must be a string or a list of strings"),
            )),
            None => Err(self.err(line, format!("stage `{name}` has no `cmd`"))),
        }
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
        if let Some(var) = expr.strip_prefix(ENV_PREFIX) {
            if scope.env_literal {
                return Ok(Value::String(format!("${{{expr}}}")));
            }
            return std::env::var(var).map(Value::String).map_err(|_| {
                self.err(
                    line,
                    format!(
                        "stage `{stage}`: `${{{expr}}}`: the environment variable `{var}` is not \
                         set"
                    ),
                )
            });
        }
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

pub(super) const OPEN: char = '\u{E000}';
pub(super) const CLOSE: char = '\u{E001}';

/// Hides the braces of `${...}` (same line) from the YAML parser, so `outs: [a/${item}]`
/// parses as in a block list: in a flow sequence `{` and `}` are indicators. Each brace is
/// replaced by one private-use character, so lines and columns stay the same.
pub(super) fn mask_braces(text: &str) -> String {
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
