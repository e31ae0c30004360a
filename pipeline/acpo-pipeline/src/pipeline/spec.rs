//! The pipeline file as written: the raw stage types serde reads (`deny_unknown_fields`, so a
//! misspelt field is an error with its line), and a mapping that keeps file order and lines.

use super::Resources;
use crate::dvc::{RawOut, RawParam};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::fmt;

/// The fields of one stage as written (also the body of `foreach`/`do`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawBody {
    pub(super) desc: Option<String>,
    pub(super) cmd: Option<Value>,
    pub(super) deps: Vec<String>,
    pub(super) params: Vec<RawParam>,
    pub(super) outs: Vec<RawOut>,
    pub(super) metrics: Vec<RawOut>,
    pub(super) plots: Vec<RawOut>,
    pub(super) env: Vec<String>,
    pub(super) resources: Option<Resources>,
    pub(super) persist: bool,
    pub(super) wdir: Option<String>,
    pub(super) frozen: bool,
    pub(super) always_changed: bool,
    pub(super) meta: Option<Value>,
    pub(super) vars: Vec<Value>,
    pub(super) executor: Option<String>,
    pub(super) timing: Option<RawTiming>,
}

/// `timing:` as written: how `acpo times` divides the stage's wall time into phases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTiming {
    pub(super) phase: Option<String>,
    pub(super) from: Option<String>,
    pub(super) phases: std::collections::BTreeMap<String, String>,
    pub(super) within: std::collections::BTreeMap<String, String>,
}

/// A stage entry: plain, `foreach`/`do`, or `matrix`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) desc: Option<String>,
    pub(super) cmd: Option<Value>,
    pub(super) deps: Vec<String>,
    pub(super) params: Vec<RawParam>,
    pub(super) outs: Vec<RawOut>,
    pub(super) metrics: Vec<RawOut>,
    pub(super) plots: Vec<RawOut>,
    pub(super) env: Vec<String>,
    pub(super) resources: Option<Resources>,
    pub(super) persist: bool,
    pub(super) wdir: Option<String>,
    pub(super) frozen: bool,
    pub(super) always_changed: bool,
    pub(super) meta: Option<Value>,
    pub(super) vars: Vec<Value>,
    pub(super) executor: Option<String>,
    pub(super) timing: Option<RawTiming>,
    pub(super) foreach: Option<Value>,
    #[serde(rename = "do")]
    pub(super) do_: Option<RawBody>,
    pub(super) matrix: Option<Ordered<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) stages: Option<Ordered<RawStage>>,
    /// DVC: values for `${...}` (files or mappings).
    pub(super) vars: Vec<Value>,
    /// DVC: metrics files of the project (shown by `metrics show`/`diff`).
    pub(super) metrics: Vec<String>,
    /// DVC: kept, listed by `acpo dag` as not acted on.
    pub(super) plots: Vec<Value>,
    pub(super) params: Vec<Value>,
    pub(super) artifacts: Option<Value>,
}

/// A mapping that keeps the order of the file (stage order, matrix axes) and the line
/// of each key.
#[derive(Debug, Clone)]
pub(super) struct Ordered<T>(pub(super) Vec<(String, u64, T)>);

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
