//! Stable Diffusion 1.x/2.x for users who have the weights (issue 20, item 5).
//!
//! - [`config`]: the `stable_diffusion` params entry (release, folder, optional SHA-256 pins)
//!   and each release's architecture, image size, prediction type and noise schedule;
//! - [`model`]: the checked folder ([`SdWeights`]), the frozen or trainable [`Denoiser`]
//!   (v-prediction converted to `eps`), CLIP's [`TextEncoder`] and the [`Vae`] decoder from
//!   candle-transformers;
//! - [`unet`]: the UNet with diffusers' weight names in differentiable ops only
//!   (candle-transformers' UNet stops gradients in its fused layer norm and softmax).
//!
//! Nothing here downloads: the weights are the user's, read in place.

pub mod config;
pub mod error;
pub mod link;
pub mod model;
pub mod prompts;
pub mod sampling;
pub mod tiny;
pub mod unet;

pub use config::{Architecture, Prediction, SdConfig, SdVersion};
pub use error::{Result, SdError};
pub use link::SdLink;
pub use model::{Denoiser, Encoded, SdWeights, TextEncoder, Vae};
pub use unet::SdUNet;
