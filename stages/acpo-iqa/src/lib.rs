//! NR-IQA models: CNNIQA (candle, differentiable), BRISQUE, NIQE, ONNX export/evaluation, FID/KID.
