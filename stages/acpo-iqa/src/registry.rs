//! The judge registry (`judges.yaml` at the repository root): every NR-IQA model used to judge
//! generated images, with its kind, model file, input handling and score direction. A user adds a
//! learned IQA model exported elsewhere (e.g. MUSIQ) as an `.onnx` file plus one entry here.
//!
//! ```yaml
//! judges:
//!   - name: musiq-koniq            # unique name used in params and reports
//!     kind: onnx                   # onnx | cnniqa | brisque | niqe
//!     model: models/musiq.onnx     # relative to judges.yaml; ${ACPO_ASSETS}, ${ACPO_MIRROR} expand
//!     higher_is_better: true
//!     input:
//!       size: [224, 224]           # [height, width] the model takes (must match the .onnx)
//!       resize: bicubic            # none | nearest | bilinear | bicubic | lanczos
//!       color: rgb                 # rgb | bgr | gray
//!       layout: nchw               # nchw | nhwc
//!     normalize: { scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use crate::brisque::Brisque;
use crate::cnniqa::{Cnniqa, PatchMode};
use crate::error::{IqaError, Result};
use crate::imageio::{images_to_tensor, GrayRounding, RgbImage, PILLOW_LUMA};
use crate::niqe::Niqe;
use crate::onnx::OnnxModel;

/// What implements a judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// Any single-input, single-output `.onnx` model run with ONNX Runtime.
    Onnx,
    /// CNNIQA in candle (`model`: the safetensors weights).
    Cnniqa,
    /// BRISQUE (`model`: the directory holding `brisque_svm.txt` and `normalize.pickle`).
    Brisque,
    /// NIQE (`model`: `niqe_pris_params.npz`).
    Niqe,
}

/// How images of another size reach the judge's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// No resizing: an image of another size is an error.
    #[default]
    None,
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Resize {
    fn filter(self) -> Option<FilterType> {
        match self {
            Resize::None => None,
            Resize::Nearest => Some(FilterType::Nearest),
            Resize::Bilinear => Some(FilterType::Triangle),
            Resize::Bicubic => Some(FilterType::CatmullRom),
            Resize::Lanczos => Some(FilterType::Lanczos3),
        }
    }
}

/// Channel handling of the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    #[default]
    Rgb,
    Bgr,
    /// One channel, BT.601 luma (Pillow's weights, continuous).
    Gray,
}

/// Memory layout of an ONNX input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// Input handling of a judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputSpec {
    /// `[height, width]` the judge takes; `null` = any size (not allowed for fixed-size ONNX).
    pub size: Option<[usize; 2]>,
    /// How other sizes are brought to `size` (default `none`: they are an error).
    pub resize: Resize,
    /// Channel handling (ONNX judges; the built-in kinds fix their own).
    pub color: Color,
    /// ONNX input layout.
    pub layout: Layout,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            size: None,
            resize: Resize::None,
            color: Color::Rgb,
            layout: Layout::Nchw,
        }
    }
}

/// ONNX input normalisation: `x = (v * scale - mean[c]) / std[c]` for 8-bit values `v`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Normalize {
    /// Default 1/255 (inputs in [0, 1]).
    pub scale: f64,
    /// Per channel (one value for gray), default 0.
    pub mean: Vec<f64>,
    /// Per channel (one value for gray), default 1.
    pub std: Vec<f64>,
}

impl Default for Normalize {
    fn default() -> Self {
        Self {
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
        }
    }
}

/// Grayscale used by a `cnniqa` judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CnniqaGray {
    /// Continuous BT.601 luma: the same function ACPO's guidance and the ONNX export compute.
    #[default]
    Continuous,
    /// Pillow >= 7 rounded 8-bit gray (the original preprocessing).
    PillowRound,
    /// Pillow < 7 truncated 8-bit gray.
    PillowTruncate,
}

/// One entry of `judges.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    pub name: String,
    pub kind: JudgeKind,
    /// Model file (directory for `brisque`).
    pub model: String,
    /// Score direction: true when a larger score means a better image.
    pub higher_is_better: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub normalize: Normalize,
    /// `cnniqa` only: patch grid (default inclusive).
    #[serde(default)]
    pub patch_mode: PatchMode,
    /// `cnniqa` only: grayscale (default continuous).
    #[serde(default)]
    pub gray: CnniqaGray,
    /// Images per model call (default 32).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    32
}

/// The parsed registry file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub judges: Vec<JudgeSpec>,
    #[serde(skip)]
    pub path: PathBuf,
}

impl Registry {
    /// Reads and validates `judges.yaml` (unique names, known fields).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| IqaError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses registry text; `path` is used for messages and to resolve relative model paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut reg: Registry = serde_saphyr::from_str(text).map_err(|e| IqaError::Registry {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        reg.path = path.to_path_buf();
        let mut seen = std::collections::HashSet::new();
        for j in &reg.judges {
            if !seen.insert(j.name.as_str()) {
                return Err(IqaError::Registry {
                    path: path.to_path_buf(),
                    reason: format!("judge name `{}` appears twice", j.name),
                });
            }
            if j.batch_size == 0 {
                return Err(IqaError::Registry {
                    path: path.to_path_buf(),
                    reason: format!("judge `{}`: batch_size must be at least 1", j.name),
                });
            }
        }
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Result<&JudgeSpec> {
        self.judges
            .iter()
            .find(|j| j.name == name)
            .ok_or_else(|| IqaError::Registry {
                path: self.path.clone(),
                reason: format!(
                    "no judge named `{name}` (known: {})",
                    self.judges
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// Resolves a model path: `${ACPO_ASSETS}` / `${ACPO_MIRROR}` expand (defaults
    /// `.cache/assets` and `../shared/data` relative to the registry's directory), relative
    /// paths are taken relative to the registry's directory.
    pub fn resolve(&self, model: &str) -> PathBuf {
        let base = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .map(PathBuf::from)
                .unwrap_or_else(|_| base.join(default))
        };
        let expanded = model
            .replace(
                "${ACPO_ASSETS}",
                &var("ACPO_ASSETS", ".cache/assets").to_string_lossy(),
            )
            .replace(
                "${ACPO_MIRROR}",
                &var("ACPO_MIRROR", "../shared/data").to_string_lossy(),
            );
        let p = PathBuf::from(expanded);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    }

    /// Loads the named judge.
    pub fn load_judge(&self, name: &str) -> Result<Judge> {
        let spec = self.get(name)?.clone();
        let path = self.resolve(&spec.model);
        Judge::load(spec, path)
    }
}

enum Model {
    Cnniqa(Box<Cnniqa>),
    Brisque(Box<Brisque>),
    Niqe(Box<Niqe>),
    Onnx(OnnxModel),
}

/// A loaded judge.
pub struct Judge {
    pub spec: JudgeSpec,
    pub model_path: PathBuf,
    model: Model,
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judge")
            .field("spec", &self.spec)
            .field("model_path", &self.model_path)
            .finish()
    }
}

impl Judge {
    /// Loads the model of `spec` from `model_path` and checks it against the spec.
    pub fn load(spec: JudgeSpec, model_path: PathBuf) -> Result<Self> {
        let err = |reason: String| IqaError::Judge {
            judge: spec.name.clone(),
            path: model_path.clone(),
            reason,
        };
        if !model_path.exists() {
            return Err(err(
                "model file is missing (run `just setup`, or fix `model` in judges.yaml)".into(),
            ));
        }
        let wrap = |e: IqaError| err(e.to_string());
        let model = match spec.kind {
            JudgeKind::Cnniqa => Model::Cnniqa(Box::new(
                Cnniqa::load(&model_path, &Device::Cpu).map_err(wrap)?,
            )),
            JudgeKind::Brisque => {
                Model::Brisque(Box::new(Brisque::load_dir(&model_path).map_err(wrap)?))
            }
            JudgeKind::Niqe => Model::Niqe(Box::new(Niqe::load(&model_path).map_err(wrap)?)),
            JudgeKind::Onnx => {
                let m = OnnxModel::load(&model_path, 0).map_err(wrap)?;
                check_onnx_input(&spec, m.input_dims()).map_err(err)?;
                Model::Onnx(m)
            }
        };
        if spec.kind != JudgeKind::Onnx && spec.normalize != Normalize::default() {
            return Err(err(format!(
                "`normalize` applies to onnx judges only; {:?} judges fix their own input",
                spec.kind
            )));
        }
        Ok(Self {
            spec,
            model_path,
            model,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Smallest image (width, height) accepted without resizing.
    pub fn min_size(&self) -> (usize, usize) {
        match self.spec.kind {
            JudgeKind::Cnniqa => match self.spec.patch_mode {
                PatchMode::Inclusive => (32, 32),
                PatchMode::Strict => (33, 33),
            },
            JudgeKind::Brisque => (crate::brisque::MIN_SIDE, crate::brisque::MIN_SIDE),
            JudgeKind::Niqe => (crate::niqe::BLOCK * 2, crate::niqe::BLOCK),
            JudgeKind::Onnx => self.spec.input.size.map(|[h, w]| (w, h)).unwrap_or((1, 1)),
        }
    }

    /// Brings an image to the judge's input size (or rejects it).
    fn prepare(&self, img: &RgbImage) -> Result<RgbImage> {
        let too_small = |mw: usize, mh: usize| IqaError::ImageTooSmall {
            judge: self.spec.name.clone(),
            path: self.model_path.clone(),
            width: img.width,
            height: img.height,
            min_width: mw,
            min_height: mh,
        };
        match (self.spec.input.size, self.spec.input.resize.filter()) {
            (Some([h, w]), Some(filter)) => Ok(img.resize(w, h, filter)),
            (Some([h, w]), None) => {
                if img.width == w && img.height == h {
                    Ok(img.clone())
                } else if img.width < w || img.height < h {
                    Err(too_small(w, h))
                } else {
                    Err(IqaError::Judge {
                        judge: self.spec.name.clone(),
                        path: self.model_path.clone(),
                        reason: format!(
                            "image is {}x{}, the judge takes {w}x{h} and `input.resize` is none",
                            img.width, img.height
                        ),
                    })
                }
            }
            (None, _) => {
                let (mw, mh) = self.min_size();
                let ok = match self.spec.kind {
                    JudgeKind::Niqe => Niqe::accepts(img.width, img.height),
                    _ => img.width >= mw && img.height >= mh,
                };
                if ok {
                    Ok(img.clone())
                } else {
                    Err(too_small(mw, mh))
                }
            }
        }
    }

    /// Raw scores of `images` (in the judge's own direction; see `spec.higher_is_better`).
    pub fn score(&self, images: &[RgbImage]) -> Result<Vec<f64>> {
        let prepared: Vec<RgbImage> = images
            .iter()
            .map(|i| self.prepare(i))
            .collect::<Result<_>>()?;
        let wrap = |e: IqaError| match e {
            e @ (IqaError::Judge { .. } | IqaError::ImageTooSmall { .. }) => e,
            e => IqaError::Judge {
                judge: self.spec.name.clone(),
                path: self.model_path.clone(),
                reason: e.to_string(),
            },
        };
        match &self.model {
            Model::Brisque(b) => prepared.iter().map(|i| b.score(i)).collect::<Result<_>>(),
            Model::Niqe(n) => prepared.iter().map(|i| n.score(i)).collect::<Result<_>>(),
            Model::Cnniqa(m) => {
                let rounding = match self.spec.gray {
                    CnniqaGray::Continuous => None,
                    CnniqaGray::PillowRound => Some(GrayRounding::Round),
                    CnniqaGray::PillowTruncate => Some(GrayRounding::Truncate),
                };
                match rounding {
                    Some(r) => m.score_rgb8(&prepared, self.spec.patch_mode, r),
                    None => {
                        let mut out = Vec::with_capacity(prepared.len());
                        for group in same_size_runs(&prepared) {
                            for chunk in group.chunks(self.spec.batch_size) {
                                let t = images_to_tensor(chunk, m.device())?;
                                let s = m.score(&t, self.spec.patch_mode)?;
                                out.extend(
                                    s.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
                                );
                            }
                        }
                        Ok(out)
                    }
                }
            }
            Model::Onnx(m) => {
                let mut out = Vec::with_capacity(prepared.len());
                for group in same_size_runs(&prepared) {
                    for chunk in group.chunks(self.spec.batch_size) {
                        let (data, shape) = self.onnx_input(chunk)?;
                        let y = m.run(data, &shape)?;
                        if y.len() != chunk.len() {
                            return Err(IqaError::Judge {
                                judge: self.spec.name.clone(),
                                path: self.model_path.clone(),
                                reason: format!(
                                    "model returned {} values for {} images; a judge must output one score per image",
                                    y.len(),
                                    chunk.len()
                                ),
                            });
                        }
                        out.extend(y.into_iter().map(f64::from));
                    }
                }
                Ok(out)
            }
        }
        .map_err(wrap)
    }

    fn onnx_input(&self, imgs: &[RgbImage]) -> Result<(Vec<f32>, Vec<usize>)> {
        let (h, w) = (imgs[0].height, imgs[0].width);
        let color = self.spec.input.color;
        let c = if color == Color::Gray { 1 } else { 3 };
        let nz = &self.spec.normalize;
        let pick = |v: &Vec<f64>, ch: usize| if v.len() == 1 { v[0] } else { v[ch] };
        let mut data = vec![0f32; imgs.len() * c * h * w];
        for (n, img) in imgs.iter().enumerate() {
            for (p, px) in img.data.chunks_exact(3).enumerate() {
                for ch in 0..c {
                    let v = match color {
                        Color::Rgb => px[ch] as f64,
                        Color::Bgr => px[2 - ch] as f64,
                        Color::Gray => {
                            PILLOW_LUMA[0] * px[0] as f64
                                + PILLOW_LUMA[1] * px[1] as f64
                                + PILLOW_LUMA[2] * px[2] as f64
                        }
                    };
                    let x = (v * nz.scale - pick(&nz.mean, ch)) / pick(&nz.std, ch);
                    let idx = match self.spec.input.layout {
                        Layout::Nchw => ((n * c + ch) * h * w) + p,
                        Layout::Nhwc => (n * h * w + p) * c + ch,
                    };
                    data[idx] = x as f32;
                }
            }
        }
        let shape = match self.spec.input.layout {
            Layout::Nchw => vec![imgs.len(), c, h, w],
            Layout::Nhwc => vec![imgs.len(), h, w, c],
        };
        Ok((data, shape))
    }
}

/// Splits a slice into runs of equally sized images (keeps order).
fn same_size_runs(imgs: &[RgbImage]) -> Vec<&[RgbImage]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=imgs.len() {
        if i == imgs.len()
            || imgs[i].width != imgs[start].width
            || imgs[i].height != imgs[start].height
        {
            if i > start {
                runs.push(&imgs[start..i]);
            }
            start = i;
        }
    }
    runs
}

/// Checks an ONNX model's declared input against the registry entry.
fn check_onnx_input(spec: &JudgeSpec, dims: &[i64]) -> std::result::Result<(), String> {
    let c = if spec.input.color == Color::Gray {
        1
    } else {
        3
    };
    let nz = &spec.normalize;
    for (what, v) in [("mean", &nz.mean), ("std", &nz.std)] {
        if v.len() != 1 && v.len() != c {
            return Err(format!(
                "normalize.{what} has {} values; give 1 or {c} (one per channel)",
                v.len()
            ));
        }
    }
    if dims.len() != 4 {
        return Err(format!(
            "ONNX input has shape {dims:?}; a judge takes a 4-d image batch"
        ));
    }
    let (dc, dh, dw) = match spec.input.layout {
        Layout::Nchw => (dims[1], dims[2], dims[3]),
        Layout::Nhwc => (dims[3], dims[1], dims[2]),
    };
    if dc != -1 && dc != c as i64 {
        return Err(format!(
            "ONNX input has {dc} channels ({:?} layout, shape {dims:?}) but judges.yaml says color {:?} ({c} channel(s))",
            spec.input.layout, spec.input.color
        ));
    }
    match spec.input.size {
        Some([h, w]) => {
            if (dh != -1 && dh != h as i64) || (dw != -1 && dw != w as i64) {
                return Err(format!(
                    "ONNX input is {dh}x{dw} (height x width, shape {dims:?}) but judges.yaml says input.size [{h}, {w}]"
                ));
            }
        }
        None => {
            if dh != -1 || dw != -1 {
                return Err(format!(
                    "ONNX input has a fixed size {dh}x{dw} (shape {dims:?}); declare it as input.size in judges.yaml"
                ));
            }
        }
    }
    Ok(())
}

/// Scores `images` with `judge` (raw scores in the judge's direction), the entry point the
/// evaluation stage calls.
pub fn judge_images(judge: &Judge, images: &[RgbImage]) -> Result<Vec<f64>> {
    judge.score(images)
}
