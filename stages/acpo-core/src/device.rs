//! Where the stages compute: one rule for every stage crate.

use candle_core::Device;

/// The first CUDA GPU when candle is built with CUDA (the workspace's `cuda` feature) and one
/// is present, else the CPU. A GPU that is present but cannot be opened also falls back to
/// the CPU; the stages log the device they ran on.
pub fn default_device() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cuda_the_stages_run_on_the_cpu() {
        if !candle_core::utils::cuda_is_available() {
            assert!(matches!(default_device(), Device::Cpu));
        }
    }
}
