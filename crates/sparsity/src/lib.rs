//! Unstructured and N:M sparsity (planned, see the Shears issue): calibration statistics block by
//! block, Wanda (`|W| * ||X||`) and magnitude scores, per-row and N:M masks, and masked
//! projections swapped into a `secateur_models::CausalLm` through its projection sites.
