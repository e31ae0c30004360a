//! Captions of a labelled image dataset: every template with every class name.
//!
//! The text-to-image rows train a prompt-conditioned UNet on CIFAR-10 (issue 20), whose only
//! text is its labels; captions are made from templates listed in params
//! (`text.captions.templates`, each with one `{}` for the class name), so the model sees
//! several phrasings per class and the encoder's token states vary within a class.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TextError};

/// One caption: its class and the template it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caption {
    /// Class index (the dataset's label).
    pub label: usize,
    pub class: String,
    /// Index into the template list.
    pub template: usize,
    pub text: String,
}

/// The captions of `classes` from `templates`, class-major (all templates of class 0, then
/// class 1, ...). Class names are written as read, except `_` becomes a space
/// (`automobile`, `sea_turtle` -> `sea turtle`).
pub fn build_captions(classes: &[String], templates: &[String]) -> Result<Vec<Caption>> {
    let key = "text.captions.templates";
    if templates.is_empty() {
        return Err(TextError::Param {
            key: key.into(),
            msg: "empty; expected templates such as \"a photo of a {}\"".into(),
        });
    }
    for (i, t) in templates.iter().enumerate() {
        if t.matches("{}").count() != 1 {
            return Err(TextError::Param {
                key: format!("{key}[{i}]"),
                msg: format!("{t:?} must contain `{{}}` (the class name) exactly once"),
            });
        }
    }
    if classes.is_empty() || classes.iter().any(|c| c.trim().is_empty()) {
        return Err(TextError::Param {
            key: "classes".into(),
            msg: format!("expected non-empty class names, got {classes:?}"),
        });
    }
    let mut out = Vec::with_capacity(classes.len() * templates.len());
    for (label, class) in classes.iter().enumerate() {
        let name = class.replace('_', " ");
        for (template, t) in templates.iter().enumerate() {
            out.push(Caption {
                label,
                class: class.clone(),
                template,
                text: t.replace("{}", &name),
            });
        }
    }
    Ok(out)
}

/// A captions folder as `embed-captions` writes it: `captions.json` and the `tokens` of
/// `embeddings.safetensors`, row for row.
#[derive(Debug, Clone)]
pub struct CaptionEmbeddings {
    pub captions: Vec<Caption>,
    /// `[K, L, D]` F32 token states, zero at padding.
    pub tokens: Tensor,
}

impl CaptionEmbeddings {
    /// Reads `dir/captions.json` and `dir/embeddings.safetensors`, checking they agree.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (_, captions, tokens) = crate::embeddings::load_embedded(
            dir,
            "captions.json",
            "captions",
            "embed-captions",
            device,
        )?;
        Ok(CaptionEmbeddings { captions, tokens })
    }

    /// The class of every row.
    pub fn labels(&self) -> Vec<usize> {
        self.captions.iter().map(|c| c.label).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn every_template_with_every_class_class_major() {
        let c = build_captions(&s(&["cat", "sea_turtle"]), &s(&["a photo of a {}", "{}"])).unwrap();
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "a photo of a cat",
                "cat",
                "a photo of a sea turtle",
                "sea turtle"
            ]
        );
        assert_eq!(
            (c[3].label, c[3].template, c[3].class.as_str()),
            (1, 1, "sea_turtle")
        );
    }

    #[test]
    fn bad_templates_name_the_param() {
        let e = build_captions(&s(&["cat"]), &s(&["a {}", "no slot"])).unwrap_err();
        assert!(e.to_string().contains("text.captions.templates[1]"), "{e}");
        let e = build_captions(&s(&["cat"]), &s(&["{} and {}"])).unwrap_err();
        assert!(e.to_string().contains("exactly once"), "{e}");
        assert!(build_captions(&s(&["cat"]), &[]).is_err());
        assert!(build_captions(&s(&[" "]), &s(&["{}"])).is_err());
    }
}
