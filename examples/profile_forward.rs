//! Times the pieces of one forward pass (a quick profile): `profile_forward [CONFIG] [BATCH] [SEQ]`,
//! by default the SmolLM2-135M config at 1 x 512.
//! `cargo run --release -p secateur-models --example profile_forward`

use secateur_models::generate::token_tensor;
use secateur_models::{ArchSpec, Cpu, DenseLm, Projection};
use std::time::Instant;
type B = Cpu;
fn main() {
    secateur_models::host::tune_allocator();
    let mut args = std::env::args().skip(1);
    let config = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/smollm2_135m_config.json"));
    let batch: usize = args.next().map_or(1, |a| a.parse().expect("batch"));
    let seq: usize = args.next().map_or(512, |a| a.parse().expect("seq"));
    let spec = ArchSpec::from_config_file(&config).unwrap();
    let d = Default::default();
    let m = DenseLm::<B>::init_random(spec, 0.02, 0, &d);
    let vocab = m.spec().vocab_size;
    let ids: Vec<Vec<u32>> = (0..batch).map(|b| (0..seq).map(|t| ((b * 131 + t * 17) % vocab) as u32).collect()).collect();
    let mask = vec![vec![true; seq]; batch];
    let positions: Vec<Vec<usize>> = (0..batch).map(|_| (0..seq).collect()).collect();
    let layers = m.blocks.len() as f64;
    for _ in 0..3 {
        let ms = |a: Instant| a.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let ctx = m.context(&mask, &positions, &d);
        let t_ctx = ms(t);
        let h = m.embed_tokens(token_tensor::<B>(&ids, &d));
        let blk = &m.blocks[0];
        let t = Instant::now();
        let n = blk.attn_norm.forward(h.clone());
        let _ = n.clone().into_data();
        let t_norm = ms(t);
        let t = Instant::now();
        let outs: Vec<_> = blk.attn_in.iter().map(|p| p.forward(n.clone())).collect();
        let _ = outs[2].clone().into_data();
        let t_qkv = ms(t);
        let t = Instant::now();
        let a = blk.attention(n.clone(), &ctx, None);
        let _ = a.clone().into_data();
        let t_attn = ms(t) - t_qkv;
        let t = Instant::now();
        let g = blk.mlp_gate.as_ref().unwrap().forward(n.clone());
        let u = blk.mlp_up.forward(n.clone());
        let _ = u.clone().into_data();
        let t_gu = ms(t);
        let t = Instant::now();
        let hdn = secateur_models::nn::activate(g, m.spec().activation) * u;
        let _ = hdn.clone().into_data();
        let t_act = ms(t);
        let t = Instant::now();
        let dn = blk.mlp_down.forward(hdn);
        let _ = dn.into_data();
        let t_down = ms(t);
        let t = Instant::now();
        let y = blk.forward(h.clone(), &ctx, None);
        let _ = y.into_data();
        let t_block = ms(t);
        let t = Instant::now();
        let l = m.logits(h.clone());
        let _ = l.into_data();
        let t_logits = ms(t);
        let t = Instant::now();
        let _ = m.forward(token_tensor::<B>(&ids, &d), &mask).unwrap().into_data();
        let t_all = ms(t);
        println!(
            "ctx {t_ctx:.1} | per block: norm {t_norm:.1} qkv {t_qkv:.1} attn-core+o {t_attn:.1} gate+up {t_gu:.1} act*up {t_act:.1} down {t_down:.1} block {t_block:.1} (x{layers}) | logits {t_logits:.1} | forward {t_all:.1} ms"
        );
    }
}
