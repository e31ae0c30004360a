//! Inception-v3 with the TF-2015 FID weights in candle; FID, KID and feature diversity.
