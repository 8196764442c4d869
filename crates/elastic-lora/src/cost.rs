//! Exact cost of a (sub-)adapter configuration: parameters and multiply-accumulates per token,
//! counted by the one counter of secateur, [`secateur_models::cost`] (see there what counts).

pub use secateur_models::cost::{Cost, cost};

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_models::{ArchSpec, Site, SiteKind};
    use std::collections::HashMap;

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
