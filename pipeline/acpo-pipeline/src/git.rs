//! Files of the pipeline directory as a git revision has them (`metrics diff REV`,
//! `params diff REV`), through the `git` command: the pipeline directory may be anywhere
//! inside a repository, so paths are given relative to it (`REV:./path`).

use crate::error::{Error, Result};
use std::path::Path;
use std::process::Command;

/// `rev` resolved to a commit (`git rev-parse --verify REV^{commit}`), or a usage error
/// naming it (exit 2): not a repository, or no such revision.
pub fn resolve(root: &Path, rev: &str) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .map_err(|e| Error::Usage(format!("git revision `{rev}`: cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "git revision `{rev}`: not a commit of the repository holding {}",
            root.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The text of `rel` (relative to `root`) at commit `commit`; `None` when the commit does
/// not have that file.
pub fn show(root: &Path, commit: &str, rel: &str) -> Result<Option<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .arg("show")
        .arg(format!("{commit}:./{rel}"))
        .output()
        .map_err(|e| Error::io(Path::new("git"), e))?;
    if !out.status.success() {
        return Ok(None);
    }
    String::from_utf8(out.stdout)
        .map(Some)
        .map_err(|_| Error::Corrupt {
            path: root.join(rel),
            message: format!("at {commit}: not UTF-8 text"),
        })
}
