//! The one parameter and multiply-accumulate counter of secateur: of a model, of a sub-network
//! ([`SubnetStructure::spec`] gives its architecture), and of adapters on either.
//!
//! MACs per token, for a token attending to `context` keys:
//! - every projection counts `out × in` (as dense: the base's sparsity is reported separately,
//!   since unstructured zeros save nothing without sparse kernels);
//! - every active adapter counts `r × (in + out)` (`x·Aᵀ` then `·Bᵀ`);
//! - attention products count `2 × heads × head_dim × context` per layer (`q·Kᵀ` and `p·V`);
//! - the LM head counts `vocab × hidden`; embedding lookups, norms, activations and softmax are
//!   not multiply-accumulates of weights and are left out.
//!
//! Parameters count the embedding, the head when untied, every norm (with its bias), and every
//! projection with its bias; adapter parameters are counted apart.

use std::collections::HashMap;

use serde::Serialize;

use crate::spec::NormKind;
use crate::{ArchSpec, LayerDims, Site, SubnetStructure};

/// The cost of a model, with adapters at given ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// Parameters of the model (adapters not included).
    pub params: usize,
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

/// Cost per token of `spec` with adapters of the given ranks (none: an empty map), at `context`
/// keys.
pub fn cost(spec: &ArchSpec, ranks: &HashMap<Site, usize>, context: usize) -> Cost {
    let h = spec.hidden_size;
    let norm = match spec.norm {
        NormKind::Rms | NormKind::Layer { bias: false } => h,
        NormKind::Layer { bias: true } => 2 * h,
    };
    let embed = spec.vocab_size * h;
    let mut c = Cost {
        params: embed + if spec.tie_word_embeddings { 0 } else { embed } + norm * (1 + usize::from(spec.embed_norm)),
        projection_macs: 0,
        adapter_macs: 0,
        attention_macs: 0,
        head_macs: spec.vocab_size * h,
        adapter_params: 0,
    };
    for layer in 0..spec.num_layers {
        c.attention_macs += 2 * spec.layer(layer).num_heads * spec.head_dim * context;
        c.params += 2 * norm;
        for kind in spec.block_site_kinds() {
            let [out, inp] = spec.site_shape(layer, kind);
            c.projection_macs += out * inp;
            c.params += out * inp + if spec.site_has_bias(kind) { out } else { 0 };
            if let Some(&r) = ranks.get(&Site::new(layer, kind)) {
                c.adapter_macs += r * (inp + out);
                c.adapter_params += r * (inp + out);
            }
        }
    }
    c
}

impl SubnetStructure {
    /// The architecture of this sub-network of `spec`: its residual width, its kept blocks with
    /// their heads, key/value groups and MLP widths (what extraction writes).
    pub fn spec(&self, spec: &ArchSpec) -> ArchSpec {
        let mut s = spec.clone();
        s.hidden_size = self.hidden(spec);
        s.num_layers = self.layers.len();
        s.layer_dims = Some(self.layer_dims(spec));
        s
    }

    /// The sizes of each kept block.
    pub fn layer_dims(&self, spec: &ArchSpec) -> Vec<LayerDims> {
        self.layers
            .iter()
            .map(|l| {
                let rep = spec.layer(l.layer).num_heads / spec.layer(l.layer).num_kv_heads;
                LayerDims { num_heads: l.kv_groups * rep, num_kv_heads: l.kv_groups, intermediate_size: l.mlp_width }
            })
            .collect()
    }
}
