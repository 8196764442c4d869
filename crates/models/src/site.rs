//! Stable names of the linear projections inside decoder blocks.
//!
//! A [`Site`] is a block index plus a [`SiteKind`]. Its canonical name is
//! `layers.{i}.self_attn.{q,k,v,qkv,o}` or `layers.{i}.mlp.{gate,up,down}` for every family;
//! [`SiteKind::parse`] also accepts the families' own module names (`q_proj`,
//! `query_key_value`, `Wqkv`, `dense_h_to_4h`, ...), which is what `--targets` options take.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which projection of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    Q,
    K,
    V,
    /// Fused q, k and v (GPT-NeoX, BLOOM, MPT).
    Qkv,
    /// Attention output projection.
    O,
    Gate,
    Up,
    Down,
}

impl SiteKind {
    /// The short canonical name (`q`, `qkv`, `down`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::Qkv => "qkv",
            Self::O => "o",
            Self::Gate => "gate",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// Whether the site belongs to attention (else to the MLP).
    pub fn is_attention(self) -> bool {
        matches!(self, Self::Q | Self::K | Self::V | Self::Qkv | Self::O)
    }

    /// Parses a canonical name or any family's module name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "q" | "q_proj" | "query" => Self::Q,
            "k" | "k_proj" | "key" => Self::K,
            "v" | "v_proj" | "value" => Self::V,
            "qkv" | "query_key_value" | "Wqkv" | "wqkv" | "qkv_proj" => Self::Qkv,
            "o" | "o_proj" | "out_proj" | "dense" | "attention.dense" | "self_attention.dense" => Self::O,
            "gate" | "gate_proj" | "w1" => Self::Gate,
            "up" | "up_proj" | "dense_h_to_4h" | "w3" => Self::Up,
            "down" | "down_proj" | "dense_4h_to_h" | "w2" => Self::Down,
            _ => return None,
        })
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One projection of one block. Serialised as its canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Site {
    pub layer: usize,
    pub kind: SiteKind,
}

impl Site {
    pub fn new(layer: usize, kind: SiteKind) -> Self {
        Self { layer, kind }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.kind.is_attention() { "self_attn" } else { "mlp" };
        write!(f, "layers.{}.{}.{}", self.layer, group, self.kind)
    }
}

impl From<Site> for String {
    fn from(s: Site) -> Self {
        s.to_string()
    }
}

impl TryFrom<String> for Site {
    type Error = ParseSiteError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Error of [`Site::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid site name {0:?}: expected layers.<i>.<self_attn|mlp>.<projection>")]
pub struct ParseSiteError(pub String);

impl FromStr for Site {
    type Err = ParseSiteError;

    /// Parses `layers.3.self_attn.q`, `layers.3.mlp.down_proj`, `layers.3.attention.query_key_value`,
    /// and the same with a family prefix such as `model.` or `gpt_neox.`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSiteError(s.to_string());
        let parts: Vec<&str> = s.split('.').collect();
        let at = parts.iter().position(|p| matches!(*p, "layers" | "h" | "blocks")).ok_or_else(err)?;
        let layer: usize = parts.get(at + 1).ok_or_else(err)?.parse().map_err(|_| err())?;
        let rest = &parts[at + 2..];
        let kind = match rest {
            [leaf] => SiteKind::parse(leaf),
            [group, leaf] => SiteKind::parse(leaf).filter(|k| {
                let attn = matches!(*group, "self_attn" | "attention" | "self_attention" | "attn");
                let mlp = matches!(*group, "mlp" | "ffn");
                (attn && k.is_attention()) || (mlp && !k.is_attention())
            }),
            _ => None,
        }
        .ok_or_else(err)?;
        Ok(Site { layer, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_round_trip() {
        for kind in [SiteKind::Q, SiteKind::Qkv, SiteKind::O, SiteKind::Gate, SiteKind::Down] {
            let site = Site::new(3, kind);
            assert_eq!(site.to_string().parse::<Site>().unwrap(), site);
        }
        assert_eq!(Site::new(3, SiteKind::Q).to_string(), "layers.3.self_attn.q");
        assert_eq!(Site::new(0, SiteKind::Down).to_string(), "layers.0.mlp.down");
    }

    #[test]
    fn family_aliases_parse() {
        let cases = [
            ("model.layers.2.self_attn.q_proj", Site::new(2, SiteKind::Q)),
            ("gpt_neox.layers.1.attention.query_key_value", Site::new(1, SiteKind::Qkv)),
            ("transformer.h.0.mlp.dense_4h_to_h", Site::new(0, SiteKind::Down)),
            ("transformer.blocks.5.attn.Wqkv", Site::new(5, SiteKind::Qkv)),
            ("transformer.blocks.5.ffn.up_proj", Site::new(5, SiteKind::Up)),
            ("layers.4.attention.dense", Site::new(4, SiteKind::O)),
        ];
        for (name, site) in cases {
            assert_eq!(name.parse::<Site>().unwrap(), site, "{name}");
        }
        assert!("layers.x.mlp.up".parse::<Site>().is_err());
        assert!("layers.1.mlp.q_proj".parse::<Site>().is_err());
        assert!("embed_tokens".parse::<Site>().is_err());
    }
}
