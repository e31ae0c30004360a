//! Generic content-hashed pipeline engine (DVC-style YAML stages); knows nothing about diffusion.
