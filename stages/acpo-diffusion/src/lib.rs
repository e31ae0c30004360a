//! Diffusion core in candle: UNet, schedules, DDPM/DDIM samplers, base training.
