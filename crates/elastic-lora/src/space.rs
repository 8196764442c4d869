//! Search spaces of elastic adapters: groups of sites sharing one rank choice.

use std::path::Path;

use secateur_models::{ArchSpec, Site, SiteKind};
use serde::{Deserialize, Serialize};

use crate::LoraError;

/// Sites that share one rank, with the descending list of ranks to choose from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchGroup {
    pub name: String,
    pub sites: Vec<Site>,
    pub choices: Vec<usize>,
}

/// A list of groups; a sub-adapter picks one choice per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSpace {
    pub groups: Vec<SearchGroup>,
}

/// One choice index per group of a [`SearchSpace`] (index 0 is the largest rank).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubnetConfig(pub Vec<usize>);

impl SearchSpace {
    /// The preset of a family: per layer, the attention input projections (`q, k, v` or the
    /// fused `qkv`) share one choice and every other target has its own (Shears' LLaMA space:
    /// `[q,k,v]`, `[up]`, `[down]`). `targets` are site kinds; `None` means the family's
    /// default (`q,k,v,up,down`, or `qkv,up,down` for fused attention).
    pub fn preset(spec: &ArchSpec, targets: Option<&[SiteKind]>, choices: &[usize]) -> Result<Self, LoraError> {
        let available = spec.block_site_kinds();
        let default: Vec<SiteKind> = available
            .iter()
            .copied()
            .filter(|k| matches!(k, SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv | SiteKind::Up | SiteKind::Down))
            .collect();
        let targets: Vec<SiteKind> = match targets {
            Some(t) => t.to_vec(),
            None => default,
        };
        for t in &targets {
            if !available.contains(t) {
                return Err(LoraError::Space(format!(
                    "target `{t}` does not exist in a {:?} block (sites: {})",
                    spec.family,
                    available.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut choices = choices.to_vec();
        choices.sort_unstable_by(|a, b| b.cmp(a));
        choices.dedup();
        let mut groups = Vec::new();
        for layer in 0..spec.num_layers {
            let attn: Vec<Site> = targets
                .iter()
                .filter(|k| matches!(k, SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv))
                .map(|&k| Site::new(layer, k))
                .collect();
            if !attn.is_empty() {
                groups.push(SearchGroup { name: format!("layers.{layer}.attn_in"), sites: attn, choices: choices.clone() });
            }
            for &k in targets.iter().filter(|k| !matches!(k, SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv)) {
                groups.push(SearchGroup {
                    name: format!("layers.{layer}.{k}"),
                    sites: vec![Site::new(layer, k)],
                    choices: choices.clone(),
                });
            }
        }
        let space = Self { groups };
        space.validate()?;
        Ok(space)
    }

    /// LoNAS's space (the paper's LLaMA preset): per layer, the attention input projections
    /// share one rank choice (`[q,k,v]`, or the fused `qkv`) and the MLP input projections share
    /// another (`[gate,up]`, or `[up]` without a gate); the paper's choices are `[32, 28]`.
    /// With `secateur nas --lora` the frozen weights' widths are elastic too (Mode B).
    pub fn lonas_preset(spec: &ArchSpec, choices: &[usize]) -> Result<Self, LoraError> {
        let mut choices = choices.to_vec();
        choices.sort_unstable_by(|a, b| b.cmp(a));
        choices.dedup();
        let kinds = spec.block_site_kinds();
        let mut groups = Vec::new();
        for layer in 0..spec.num_layers {
            let pick = |f: fn(&SiteKind) -> bool| kinds.iter().filter(|k| f(k)).map(|&k| Site::new(layer, k)).collect::<Vec<_>>();
            groups.push(SearchGroup {
                name: format!("layers.{layer}.attn_in"),
                sites: pick(|k| matches!(k, SiteKind::Q | SiteKind::K | SiteKind::V | SiteKind::Qkv)),
                choices: choices.clone(),
            });
            groups.push(SearchGroup {
                name: format!("layers.{layer}.mlp_in"),
                sites: pick(|k| matches!(k, SiteKind::Gate | SiteKind::Up)),
                choices: choices.clone(),
            });
        }
        let space = Self { groups };
        space.validate()?;
        Ok(space)
    }

    /// Parses a `--targets` shorthand such as `q,k,v,up,down` or `query_key_value,dense_4h_to_h`.
    pub fn parse_targets(s: &str) -> Result<Vec<SiteKind>, LoraError> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| SiteKind::parse(t).ok_or_else(|| LoraError::Space(format!("unknown target `{t}`"))))
            .collect()
    }

    /// Checks that choices are positive and descending and that no site is in two groups.
    pub fn validate(&self) -> Result<(), LoraError> {
        let mut seen = std::collections::HashSet::new();
        for g in &self.groups {
            if g.choices.is_empty() || g.choices.contains(&0) {
                return Err(LoraError::Space(format!("group `{}`: choices must be positive and non-empty", g.name)));
            }
            if g.choices.windows(2).any(|w| w[0] <= w[1]) {
                return Err(LoraError::Space(format!("group `{}`: choices {:?} must be strictly descending", g.name, g.choices)));
            }
            if g.sites.is_empty() {
                return Err(LoraError::Space(format!("group `{}` has no sites", g.name)));
            }
            for s in &g.sites {
                if !seen.insert(*s) {
                    return Err(LoraError::Space(format!("site `{s}` is in more than one group")));
                }
            }
        }
        Ok(())
    }

    /// Checks the space against a model's sites.
    pub fn validate_for(&self, sites: &[(Site, [usize; 2])]) -> Result<(), LoraError> {
        self.validate()?;
        for g in &self.groups {
            for s in &g.sites {
                if !sites.iter().any(|(t, _)| t == s) {
                    return Err(LoraError::Space(format!("group `{}`: the model has no site `{s}`", g.name)));
                }
            }
        }
        Ok(())
    }

    /// Reads a space from JSON.
    pub fn from_file(path: &Path) -> Result<Self, LoraError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoraError::Io { path: path.to_path_buf(), source })?;
        let space: Self = serde_json::from_str(&text).map_err(|e| LoraError::File { path: path.to_path_buf(), reason: e.to_string() })?;
        space.validate().map_err(|e| LoraError::File { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(space)
    }

    /// Writes the space as JSON (atomically).
    pub fn to_file(&self, path: &Path) -> Result<(), LoraError> {
        let text = serde_json::to_string_pretty(self).expect("JSON");
        secateur_models::weights::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// Every group at its largest rank.
    pub fn maximal(&self) -> SubnetConfig {
        SubnetConfig(vec![0; self.groups.len()])
    }

    /// Every group at its smallest rank.
    pub fn minimal(&self) -> SubnetConfig {
        SubnetConfig(self.groups.iter().map(|g| g.choices.len() - 1).collect())
    }

    /// Index `floor(n/2)` of each descending list (Shears, Eq. 3): `[32, 24, 16]` gives 24.
    pub fn heuristic(&self) -> SubnetConfig {
        SubnetConfig(self.groups.iter().map(|g| g.choices.len() / 2).collect())
    }

    /// The rank of each group under `config`.
    pub fn ranks(&self, config: &SubnetConfig) -> Result<Vec<usize>, LoraError> {
        if config.0.len() != self.groups.len() {
            return Err(LoraError::Config(format!("{} choices for {} groups", config.0.len(), self.groups.len())));
        }
        self.groups
            .iter()
            .zip(&config.0)
            .map(|(g, &i)| {
                g.choices
                    .get(i)
                    .copied()
                    .ok_or_else(|| LoraError::Config(format!("group `{}`: index {i} out of {} choices", g.name, g.choices.len())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_spec() -> ArchSpec {
        let cfg = serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2
        });
        ArchSpec::from_config_value(Path::new("config.json"), cfg).unwrap()
    }

    #[test]
    fn llama_preset_is_shears_grouping() {
        let space = SearchSpace::preset(&llama_spec(), None, &[16, 32, 24]).unwrap();
        assert_eq!(space.groups.len(), 6);
        assert_eq!(space.groups[0].sites, vec![Site::new(0, SiteKind::Q), Site::new(0, SiteKind::K), Site::new(0, SiteKind::V)]);
        assert_eq!(space.groups[1].sites, vec![Site::new(0, SiteKind::Up)]);
        assert_eq!(space.groups[2].choices, vec![32, 24, 16]);
        assert_eq!(space.ranks(&space.heuristic()).unwrap(), vec![24; 6]);
        assert_eq!(space.ranks(&space.minimal()).unwrap(), vec![16; 6]);
        // floor(n/2) on an even list: [32, 24, 16, 8] -> index 2 -> 16.
        let even = SearchSpace::preset(&llama_spec(), None, &[32, 24, 16, 8]).unwrap();
        assert_eq!(even.ranks(&even.heuristic()).unwrap()[0], 16);
    }

    #[test]
    fn lonas_preset_groups_qkv_and_gate_up() {
        let space = SearchSpace::lonas_preset(&llama_spec(), &[28, 32]).unwrap();
        assert_eq!(space.groups.len(), 2 * llama_spec().num_layers);
        assert_eq!(space.groups[0].sites, vec![Site::new(0, SiteKind::Q), Site::new(0, SiteKind::K), Site::new(0, SiteKind::V)]);
        assert_eq!(space.groups[1].sites, vec![Site::new(0, SiteKind::Gate), Site::new(0, SiteKind::Up)]);
        assert_eq!(space.groups[1].choices, vec![32, 28]);
    }

    #[test]
    fn targets_parse_and_validate() {
        let t = SearchSpace::parse_targets("q_proj,v,down").unwrap();
        assert_eq!(t, vec![SiteKind::Q, SiteKind::V, SiteKind::Down]);
        assert!(SearchSpace::parse_targets("q,lm_head").is_err());
        let err = SearchSpace::preset(&llama_spec(), Some(&[SiteKind::Qkv]), &[8]).unwrap_err();
        assert!(err.to_string().contains("qkv"), "{err}");
    }

    #[test]
    fn file_round_trip_and_errors() {
        let space = SearchSpace::preset(&llama_spec(), None, &[8, 4]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("space.json");
        space.to_file(&p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"layers.0.self_attn.q\""));
        assert_eq!(SearchSpace::from_file(&p).unwrap(), space);
        std::fs::write(&p, r#"{"groups":[{"name":"g","sites":["layers.0.mlp.up"],"choices":[4,8]}]}"#).unwrap();
        let err = SearchSpace::from_file(&p).unwrap_err();
        assert!(err.to_string().contains("descending") && err.to_string().contains("space.json"), "{err}");
        assert!(space.ranks(&SubnetConfig(vec![5; 6])).is_err());
    }
}
