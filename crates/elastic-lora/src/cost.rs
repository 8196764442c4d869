//! Exact cost of a (sub-)adapter configuration: parameters and multiply-accumulates per token.
//!
//! MACs per token, for a token attending to `context` keys:
//! - every projection counts `out × in` (as dense: the base's sparsity is reported separately,
//!   since unstructured zeros save nothing without sparse kernels);
//! - every active adapter counts `r × (in + out)` (`x·Aᵀ` then `·Bᵀ`);
//! - attention products count `2 × heads × head_dim × context` per layer (`q·Kᵀ` and `p·V`);
//! - the LM head counts `vocab × hidden`; embedding lookups, norms, activations and softmax are
//!   not multiply-accumulates of weights and are left out.

use std::collections::HashMap;

use secateur_models::{ArchSpec, Site};
use serde::Serialize;

/// The cost of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub projection_macs: usize,
    pub adapter_macs: usize,
    pub attention_macs: usize,
    pub head_macs: usize,
    /// Adapter parameters at the active ranks.
    pub adapter_params: usize,
}

impl Cost {
    /// Total MACs per token.
    pub fn macs(&self) -> usize {
        self.projection_macs + self.adapter_macs + self.attention_macs + self.head_macs
    }
}

/// Cost per token of `spec` with adapters of the given ranks, at `context` keys.
pub fn cost(spec: &ArchSpec, ranks: &HashMap<Site, usize>, context: usize) -> Cost {
    let mut c = Cost {
        projection_macs: 0,
        adapter_macs: 0,
        attention_macs: (0..spec.num_layers).map(|l| 2 * spec.layer(l).num_heads * spec.head_dim * context).sum(),
        head_macs: spec.vocab_size * spec.hidden_size,
        adapter_params: 0,
    };
    for layer in 0..spec.num_layers {
        for kind in spec.block_site_kinds() {
            let [out, inp] = spec.site_shape(layer, kind);
            c.projection_macs += out * inp;
            if let Some(&r) = ranks.get(&Site::new(layer, kind)) {
                c.adapter_macs += r * (inp + out);
                c.adapter_params += r * (inp + out);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_models::SiteKind;

    #[test]
    fn hand_computed_llama() {
        // hidden 8, 2 heads of 4 (1 KV head), intermediate 16, vocab 10, 1 layer.
        let cfg = serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1
        });
        let spec = ArchSpec::from_config_value(std::path::Path::new("config.json"), cfg).unwrap();
        let none = cost(&spec, &HashMap::new(), 5);
        // q 8x8, k 4x8, v 4x8, o 8x8, gate 16x8, up 16x8, down 8x16.
        assert_eq!(none.projection_macs, 64 + 32 + 32 + 64 + 128 + 128 + 128);
        assert_eq!(none.attention_macs, 2 * 2 * 4 * 5);
        assert_eq!(none.head_macs, 80);
        assert_eq!(none.macs(), 576 + 80 + 80);
        let ranks: HashMap<Site, usize> = [(Site::new(0, SiteKind::Q), 2), (Site::new(0, SiteKind::Down), 3)].into_iter().collect();
        let with = cost(&spec, &ranks, 5);
        // q: 2·(8+8) = 32; down: 3·(16+8) = 72.
        assert_eq!(with.adapter_macs, 104);
        assert_eq!(with.adapter_params, 104);
        assert_eq!(with.macs(), none.macs() + 104);
    }
}
