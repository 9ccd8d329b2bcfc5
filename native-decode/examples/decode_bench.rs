//! Single-stream decode speed without HTTP: `cargo run --release -p baton-native --example decode_bench -- MODEL.gguf
//! [--keep-quantized] [PROMPT_TOKENS] [NEW_TOKENS]`.

use std::time::Instant;

use baton_native::gguf::GgufFile;
use baton_native::kv::store::KvStore;
use baton_native::model::{Model, SeqInput};
use baton_native::sampling::{Sampler, SamplingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: decode_bench MODEL.gguf [--keep-quantized] [PROMPT] [NEW]")?;
    let keep = args.iter().any(|a| a == "--keep-quantized");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (n_prompt, n_new) = (
        nums.first().copied().unwrap_or(16),
        nums.get(1).copied().unwrap_or(64),
    );
    let model = Model::from_gguf_with(&GgufFile::open(std::path::Path::new(path))?, keep)?;
    let bs = 16;
    let blocks = (n_prompt + n_new).div_ceil(bs) + 1;
    let mut kv = KvStore::new(&model.cfg, bs, blocks);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let prompt: Vec<u32> = (0..n_prompt as u32).map(|i| 100 + i * 37 % 1000).collect();
    let mut sampler = Sampler::new(
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        0,
    );
    let t0 = Instant::now();
    let step = |kv: &mut KvStore, toks: &[u32], pos: usize| {
        model
            .forward(
                kv,
                &[SeqInput {
                    tokens: toks,
                    start_pos: pos,
                    block_table: &table,
                    want_logits: true,
                }],
            )
            .remove(0)
    };
    let mut tok = sampler.sample(&step(&mut kv, &prompt, 0)).token;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    for i in 0..n_new - 1 {
        tok = sampler.sample(&step(&mut kv, &[tok], n_prompt + i)).token;
    }
    let decode = t1.elapsed();
    println!(
        "{} weights: prefill {n_prompt} tokens in {:.1} ms; decode {} tokens at {:.1} tok/s",
        if keep { "block-form" } else { "f32" },
        prefill.as_secs_f64() * 1e3,
        n_new - 1,
        (n_new - 1) as f64 / decode.as_secs_f64()
    );
    Ok(())
}
