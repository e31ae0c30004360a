//! Analytic floating-point operation counts of the UNet (a multiply-add counts as 2).
//!
//! Counted: every convolution, linear layer and attention product, the work that grows with
//! width and resolution; not counted: GroupNorm, SiLU, additions and the optimiser, which are
//! a few operations per activation or parameter. The base-training study spends equal compute
//! on configurations of different widths through [`train_step_flops`]; the throughput bench
//! divides these counts by measured time.

use crate::config::UNetConfig;

/// Forward FLOPs of one image split by the op class that does them (the classes of the
/// roofline bench's per-op timing, `acpo_ops::timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlopSplit {
    /// Convolutions (3x3, the 1x1 skips, down- and upsampling).
    pub conv: u64,
    /// Attention's score and value products (`4 N^2 c` per block).
    pub attention: u64,
    /// Linear layers: the time-embedding MLP and projections, attention's qkv and output
    /// projections.
    pub linear: u64,
}

impl FlopSplit {
    /// Every class together.
    pub fn total(&self) -> u64 {
        self.conv + self.attention + self.linear
    }

    fn conv(&mut self, cin: usize, cout: usize, k: usize, out_side: usize) {
        self.conv += 2 * (cin * cout * k * k * out_side * out_side) as u64;
    }

    fn linear(&mut self, cin: usize, cout: usize, tokens: usize) {
        self.linear += 2 * (cin * cout * tokens) as u64;
    }

    fn res_block(&mut self, cin: usize, cout: usize, temb_dim: usize, side: usize) {
        if cin != cout {
            self.conv(cin, cout, 1, side);
        }
        self.conv(cin, cout, 3, side);
        self.conv(cout, cout, 3, side);
        self.linear(temb_dim, cout, 1);
    }

    /// Self-attention over `side^2` tokens of `c` channels: qkv and output projections plus the
    /// score and value products (`8 N c^2 + 4 N^2 c`; heads split `c`, so they do not change it).
    fn attn_block(&mut self, c: usize, side: usize) {
        let n = side * side;
        self.linear(c, 3 * c, n);
        self.linear(c, c, n);
        self.attention += 4 * (n * n * c) as u64;
    }
}

/// FLOPs of one forward pass of one image through an unconditional UNet of `cfg`, by class.
pub fn unet_forward_split(cfg: &UNetConfig) -> FlopSplit {
    let mut f = FlopSplit::default();
    let ch = cfg.channels;
    let temb_dim = 4 * ch;
    let attn_at = |side: usize| cfg.attention_resolutions.contains(&side);
    f.linear(ch, temb_dim, 1);
    f.linear(temb_dim, temb_dim, 1);
    let mut side = cfg.image_size;
    f.conv(cfg.in_channels, ch, 3, side);
    let mut skips = vec![ch];
    let mut cur = ch;
    let levels = cfg.channel_mult.len();
    for (i, &m) in cfg.channel_mult.iter().enumerate() {
        let cout = ch * m;
        for _ in 0..cfg.num_res_blocks {
            f.res_block(cur, cout, temb_dim, side);
            cur = cout;
            if attn_at(side) {
                f.attn_block(cur, side);
            }
            skips.push(cur);
        }
        if i + 1 < levels {
            side /= 2;
            f.conv(cur, cur, 3, side);
            skips.push(cur);
        }
    }
    f.res_block(cur, cur, temb_dim, side);
    f.res_block(cur, cur, temb_dim, side);
    f.attn_block(cur, side);
    for (i, &m) in cfg.channel_mult.iter().enumerate().rev() {
        let cout = ch * m;
        for _ in 0..=cfg.num_res_blocks {
            let sc = skips.pop().expect("one skip per down layer");
            f.res_block(cur + sc, cout, temb_dim, side);
            cur = cout;
            if attn_at(side) {
                f.attn_block(cur, side);
            }
        }
        if i > 0 {
            side *= 2;
            f.conv(cur, cur, 3, side);
        }
    }
    f.conv(cur, cfg.in_channels, 3, side);
    f
}

/// FLOPs of one forward pass of one image through an unconditional UNet of `cfg`.
pub fn unet_forward_flops(cfg: &UNetConfig) -> u64 {
    unet_forward_split(cfg).total()
}

/// FLOPs of one training image (forward, and a backward of twice the forward's work: the
/// gradients with respect to both the activations and the weights).
pub fn train_image_flops(cfg: &UNetConfig) -> u64 {
    3 * unet_forward_flops(cfg)
}

/// FLOPs of one optimiser step of `batch_size` images.
pub fn train_step_flops(cfg: &UNetConfig, batch_size: usize) -> u64 {
    train_image_flops(cfg) * batch_size as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-level UNet small enough to count by hand.
    #[test]
    fn tiny_unet_matches_a_hand_count() {
        let cfg = UNetConfig {
            image_size: 4,
            in_channels: 3,
            channels: 2,
            channel_mult: vec![1],
            num_res_blocks: 1,
            attention_resolutions: vec![],
            num_heads: 1,
            dropout: 0.0,
            norm_groups: 1,
            context_dim: None,
        };
        // ch 2, temb 8, one level at side 4 (16 pixels), no down/upsampling.
        let temb_mlp = 2 * (2 * 8) + 2 * (8 * 8); // 160
        let conv_in = 2 * 3 * 2 * 9 * 16; // 1728
                                          // A 2 -> 2 res block: two 3x3 convs of 2 * 2*2*9*16 = 1152 each, temb 2*8*2 = 32.
        let res22 = 1152 + 1152 + 32; // 2336
        let down = res22;
        // Mid: two res blocks and attention over 16 tokens of 2 channels:
        // qkv 2*2*6*16 = 384, proj 2*2*2*16 = 128, scores and values 4*16*16*2 = 2048.
        let mid = 2 * res22 + 384 + 128 + 2048;
        // Up: two res blocks of 4 -> 2 (skip concatenation): 2*4*2*9*16 = 2304, 1152,
        // 1x1 skip 2*4*2*16 = 256, temb 32.
        let res42 = 2304 + 1152 + 256 + 32; // 3744
        let up = 2 * res42;
        let conv_out = 2 * 2 * 3 * 9 * 16; // 1728
        let hand = temb_mlp + conv_in + down + mid + up + conv_out;
        assert_eq!(unet_forward_flops(&cfg), hand as u64);
        let split = unet_forward_split(&cfg);
        assert_eq!(split.attention, 2048);
        assert_eq!(split.linear, 160 + 5 * 32 + 384 + 128); // MLP, 5 res-block temb, qkv, proj
        assert_eq!(split.total(), hand as u64);
        assert_eq!(train_step_flops(&cfg, 4), 12 * hand as u64);
    }

    #[test]
    fn doubling_the_width_roughly_quadruples_the_work() {
        let a = UNetConfig {
            channels: 32,
            norm_groups: 8,
            ..Default::default()
        };
        let b = UNetConfig {
            channels: 64,
            ..a.clone()
        };
        let r = unet_forward_flops(&b) as f64 / unet_forward_flops(&a) as f64;
        assert!(r > 3.5 && r < 4.0, "{r}");
    }
}
