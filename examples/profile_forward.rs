//! Times the pieces of one forward pass of the benchmark LLaMA config (a quick profile).
//! `cargo run --release -p secateur-models --example profile_forward`

use secateur_models::generate::token_tensor;
use secateur_models::{ArchSpec, Cpu, DenseLm, Projection};
use std::time::Instant;
type B = Cpu;
fn main() {
    let spec = ArchSpec::from_config_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/llama_bench_config.json"))
        .unwrap();
    let d = Default::default();
    let m = DenseLm::<B>::init_random(spec, 0.02, 0, &d);
    let ids: Vec<Vec<u32>> = (0..8).map(|b| (0..128).map(|t| ((b * 131 + t * 17) % 4096) as u32).collect()).collect();
    let mask = vec![vec![true; 128]; 8];
    let positions: Vec<Vec<usize>> = (0..8).map(|_| (0..128).collect()).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        let ctx = m.context(&mask, &positions, &d);
        let t1 = Instant::now();
        let h = m.embed_tokens(token_tensor::<B>(&ids, &d));
        let t2 = Instant::now();
        let blk = &m.blocks[0];
        let n = blk.attn_norm.forward(h.clone());
        let t3 = Instant::now();
        let q = blk.attn_in[0].forward(n.clone());
        let t4 = Instant::now();
        let a = blk.attention(n.clone(), &ctx, None);
        let t5 = Instant::now();
        let mm = blk.mlp(n.clone(), m.spec());
        let t6 = Instant::now();
        let l = m.logits(h.clone());
        let t7 = Instant::now();
        let _ = (q, a, mm, l);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "ctx {:.2} embed {:.2} norm {:.2} q {:.2} attn(all) {:.2} mlp {:.2} logits {:.2}",
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t4, t5),
            ms(t5, t6),
            ms(t6, t7)
        );
    }
}
