//! Loads a report page in headless Chromium and reads back what the page's own load check
//! ([`crate::html`]'s script) recorded on `<body>`: images that failed to load, tables with
//! no rows, in-page links to no element, and rendered tables wider than the viewport. The
//! end-to-end tests call it; `chromium` is installed by `just setup`.

use crate::error::{ReportError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the browser saw on one page.
#[derive(Debug, Clone)]
pub struct PageCheck {
    /// The `data-*` attributes of `<body>` after load (without the `data-` prefix).
    pub attrs: BTreeMap<String, String>,
    /// A screenshot of the top of the page at the checked width.
    pub screenshot: PathBuf,
}

impl PageCheck {
    fn attr(&self, k: &str) -> &str {
        self.attrs.get(k).map(String::as_str).unwrap_or("")
    }

    /// Every layout problem found, in words; empty when the page is fine.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.attr("checked") != "1" {
            p.push("the page's load check did not run".to_string());
            return p;
        }
        if self.attr("images") == "0" {
            p.push("the page has no images".into());
        }
        if self.attr("broken-images") != "0" {
            p.push(format!(
                "images that did not load: {}",
                self.attr("broken-list")
            ));
        }
        if self.attr("empty-tables") != "0" {
            p.push(format!(
                "{} table(s) without rows",
                self.attr("empty-tables")
            ));
        }
        if self.attr("toc-links") == "0" || self.attr("toc-links").is_empty() {
            p.push("no table of contents (nav links)".into());
        }
        if !self.attr("broken-links").is_empty() {
            p.push(format!(
                "in-page links to no element: {}",
                self.attr("broken-links")
            ));
        }
        if !self.attr("wide-tables").is_empty() {
            p.push(format!(
                "tables wider than the {} px viewport: {}",
                self.attr("viewport"),
                self.attr("wide-tables")
            ));
        }
        p
    }
}

/// The first of `chromium`, `chromium-browser` that runs.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Loads `page` at `width` pixels in headless Chromium (profile and screenshot in `scratch`)
/// and returns what its load check recorded.
pub fn check_page(page: &Path, width: u32, scratch: &Path) -> Result<PageCheck> {
    let fail = |msg: String| ReportError::Browser {
        page: page.to_path_buf(),
        msg,
    };
    let bin = chromium().ok_or_else(|| {
        fail("chromium not found: run `just setup` (installs the Debian package `chromium`)".into())
    })?;
    let page = std::fs::canonicalize(page).map_err(|e| ReportError::io(page, e))?;
    let url = format!("file://{}", page.display());
    let profile = scratch.join("chromium-profile");
    let screenshot = scratch.join("page.png");
    let run = |extra: &[String]| -> Result<String> {
        let o = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--hide-scrollbars",
                "--allow-file-access-from-files",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},3000"))
            .args(extra)
            .arg(&url)
            .output()
            .map_err(|e| fail(format!("{bin}: {e}")))?;
        if !o.status.success() {
            return Err(fail(format!(
                "{bin} exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    run(&[format!("--screenshot={}", screenshot.display())])?;
    let dom = run(&["--dump-dom".into()])?;
    Ok(PageCheck {
        attrs: body_attrs(&dom),
        screenshot,
    })
}

/// The `data-*` attributes of the `<body>` tag in `dom`.
fn body_attrs(dom: &str) -> BTreeMap<String, String> {
    let Some(start) = dom.find("<body") else {
        return BTreeMap::new();
    };
    let tag = &dom[start..dom[start..].find('>').map_or(dom.len(), |e| start + e)];
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(i) = rest.find(" data-") {
        rest = &rest[i + 6..];
        let Some(eq) = rest.find("=\"") else { break };
        let key = rest[..eq].to_string();
        rest = &rest[eq + 2..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.insert(key, rest[..end].replace("&amp;", "&"));
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_body_attributes_and_names_each_problem() {
        let dom = "<html><head></head><body data-images=\"3\" data-broken-images=\"1\" \
                   data-broken-list=\"a.png\" data-empty-tables=\"0\" data-toc-links=\"4\" \
                   data-broken-links=\"#x\" data-viewport=\"1280\" data-wide-tables=\"t:1500\" \
                   data-checked=\"1\"><p>x</p></body></html>";
        let c = PageCheck {
            attrs: body_attrs(dom),
            screenshot: PathBuf::new(),
        };
        assert_eq!(c.attrs["viewport"], "1280");
        let p = c.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("a.png") && p[1].contains("#x") && p[2].contains("t:1500"));
        let ok = PageCheck {
            attrs: body_attrs(
                "<body data-images=\"3\" data-broken-images=\"0\" data-empty-tables=\"0\" \
                 data-toc-links=\"4\" data-broken-links=\"\" data-wide-tables=\"\" data-checked=\"1\">",
            ),
            screenshot: PathBuf::new(),
        };
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let unchecked = PageCheck {
            attrs: body_attrs("<body>"),
            screenshot: PathBuf::new(),
        };
        assert_eq!(unchecked.problems().len(), 1);
    }
}
