//! Low-bit quantization (planned, see the SQFT issue): asymmetric round-to-nearest INT2-8 with
//! per-group scales and zero points, AutoGPTQ-packed storage, dequantizing and INT4 kernels,
//! and quantized projections for `secateur_models::CausalLm`.
