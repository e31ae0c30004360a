//! YAML reading through `serde-saphyr`, with errors that name file, line and column.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` (the contents of `file`) into `T`, mapping errors to `file:line:column`.
/// YAML 1.2 booleans only (`yes`/`no`/`on`/`off` stay strings: no "Norway problem").
pub fn from_str<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T> {
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| yaml_error(file, &e))
}

/// Reads and parses a YAML file.
pub fn read<T: DeserializeOwned>(file: &Path) -> Result<T> {
    from_str(file, &read_text(file, file)?)
}

/// Reads a UTF-8 text file of the pipeline (`pipeline.yaml`, `params.yaml`, a profile). A
/// missing file or one that is not UTF-8 is bad input (exit 2) naming `shown` and, for bad
/// bytes, the line and column of the first one; other I/O errors stay I/O errors.
pub fn read_text(file: &Path, shown: &Path) -> Result<String> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "{}: not found (run acpo in the directory that holds it, or create it)",
                shown.display()
            )))
        }
        Err(e) => return Err(Error::io(file, e)),
    };
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..at];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Error::Yaml {
            file: shown.to_path_buf(),
            line: 1 + before.iter().filter(|&&b| b == b'\n').count() as u64,
            column: 1 + (at - line_start) as u64,
            message: format!(
                "byte 0x{:02x} is not UTF-8 (the file must be UTF-8 text)",
                e.as_bytes()[at]
            ),
        }
    })
}

/// Parses a YAML document into a JSON value; an empty (or comment-only) document is `null`.
pub fn value_from_str(file: &Path, text: &str) -> Result<serde_json::Value> {
    if is_blank(text) {
        return Ok(serde_json::Value::Null);
    }
    from_str(file, text)
}

/// True when the text holds no YAML content (only whitespace and comments).
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    })
}

fn yaml_error(file: &Path, e: &serde_saphyr::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = e.without_snippet().to_string();
    // serde-saphyr appends its own "at line X column Y"; keep only the message itself.
    let message = strip_location_suffix(&message);
    Error::Yaml {
        file: file.to_path_buf(),
        line,
        column,
        message,
    }
}

fn strip_location_suffix(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("").trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        a: u32,
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = from_str::<S>(Path::new("x.yaml"), "a: 1\nb: 2\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("x.yaml:2:"), "{s}");
        assert!(s.contains('b'), "{s}");
        let e = from_str::<BTreeMap<String, u32>>(Path::new("y.yaml"), "a: [1,\n").unwrap_err();
        assert!(e.to_string().starts_with("y.yaml:"), "{e}");
    }

    #[test]
    fn yes_and_no_are_strings() {
        let v = value_from_str(Path::new("p.yaml"), "a: no\nb: true\nc: on\n").unwrap();
        assert_eq!(v, serde_json::json!({"a": "no", "b": true, "c": "on"}));
    }

    #[test]
    fn blank_documents_are_null() {
        let v = value_from_str(Path::new("p.yaml"), "# only a comment\n\n").unwrap();
        assert!(v.is_null());
    }
}
