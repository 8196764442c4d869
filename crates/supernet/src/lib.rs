//! Super-adapter and super-network training (planned, see the Shears and NAS issues): NLS with
//! one random sub-adapter per step, the sandwich rule, grid-params and calibrate-mag samplers,
//! AdamW with warm-up and cosine decay, checkpoints and resume.
