//! One table type for the commands that print tables (`metrics show`, `metrics diff`,
//! `params diff`), rendered as aligned text, Markdown, CSV or JSON (`--md`, `--csv`,
//! `--json`), so every command offers the same formats the same way.

use serde_json::{Map, Value};
use std::fmt::Write;

/// How a table is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Columns aligned with spaces, for a terminal.
    #[default]
    Text,
    /// A GitHub-flavoured Markdown table.
    Markdown,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of objects, one per row, keyed by the column names.
    Json,
}

/// A header and rows of cells (every row as long as the header).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; a short row is padded with empty cells.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.text(),
            Format::Markdown => self.markdown(),
            Format::Csv => self.csv(),
            Format::Json => self.json(),
        }
    }

    fn text(&self) -> String {
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r[c].chars().count())
                .chain([self.header[c].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut s = line(&self.header);
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    fn markdown(&self) -> String {
        let cell = |c: &str| c.replace('|', "\\|").replace('\n', " ");
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut s = line(&self.header);
        let _ = writeln!(s, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    fn csv(&self) -> String {
        let cell = |c: &str| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.to_string()
            }
        };
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            cells.join(",") + "\n"
        };
        let mut s = line(&self.header);
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    /// Cells that read as JSON numbers stay numbers; the rest are strings.
    fn json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for (h, c) in self.header.iter().zip(r) {
                    let v = match serde_json::from_str::<Value>(c) {
                        Ok(n @ Value::Number(_)) => n,
                        _ => Value::String(c.clone()),
                    };
                    m.insert(h.clone(), v);
                }
                Value::Object(m)
            })
            .collect();
        serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Table {
        let mut t = Table::new(&["path", "metric", "value"]);
        t.push(vec!["a.json".into(), "fid".into(), "12.5".into()]);
        t.push(vec!["b|c.json".into(), "note, \"x\"".into(), "n/a".into()]);
        t
    }

    #[test]
    fn text_aligns_columns() {
        assert_eq!(
            t().render(Format::Text),
            "path      metric     value\na.json    fid        12.5\nb|c.json  note, \"x\"  n/a\n"
        );
    }

    #[test]
    fn markdown_escapes_pipes() {
        let s = t().render(Format::Markdown);
        assert!(
            s.starts_with("| path | metric | value |\n|---|---|---|\n"),
            "{s}"
        );
        assert!(s.contains("| b\\|c.json | note, \"x\" | n/a |"), "{s}");
    }

    #[test]
    fn csv_quotes_commas_and_quotes() {
        assert_eq!(
            t().render(Format::Csv),
            "path,metric,value\na.json,fid,12.5\nb|c.json,\"note, \"\"x\"\"\",n/a\n"
        );
    }

    #[test]
    fn json_keeps_numbers_numbers() {
        let v: Value = serde_json::from_str(&t().render(Format::Json)).unwrap();
        assert_eq!(v[0]["value"], serde_json::json!(12.5));
        assert_eq!(v[1]["value"], serde_json::json!("n/a"));
        assert_eq!(v[1]["metric"], serde_json::json!("note, \"x\""));
    }

    #[test]
    fn short_rows_are_padded() {
        let mut t = Table::new(&["a", "b"]);
        t.push(vec!["1".into()]);
        assert_eq!(t.rows[0], vec!["1".to_string(), String::new()]);
    }
}
