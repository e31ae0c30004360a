//! The stage graph: edges from outputs to the dependencies they feed, overlap and cycle
//! checks, topological order and the selection of stages (`--downstream`, `--single`).

use super::expand::Ctx;
use super::{is_within, Pipeline};
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;

impl Pipeline {
    pub(super) fn link(&mut self, ctx: &Ctx) -> Result<()> {
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
    pub(super) fn find_cycle(&self) -> Option<Vec<usize>> {
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

    pub(super) fn close(&self, keep: &mut [bool], from: &[usize], edges: &[Vec<usize>]) {
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
