//! The engine against the real SmolLM2-135M-Instruct GGUF: tokenizer ids, greedy tokens and top-5 log-probs
//! must match HF transformers (f32) and llama.cpp's tokenizer.

mod common;

use std::sync::OnceLock;

use baton_native::gguf::GgufFile;
use baton_native::kv::store::KvStore;
use baton_native::model::{Model, SeqInput};
use baton_native::sampling::{Sampler, SamplingParams};
use baton_native::tokenizer::Tokenizer;

struct Loaded {
    model: Model,
    quantized: Model,
    tokenizer: Tokenizer,
}

fn loaded() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(|| {
        let file = GgufFile::open(&common::model_path()).expect("open GGUF");
        Loaded {
            model: Model::from_gguf(&file).expect("load model"),
            quantized: Model::from_gguf_with(&file, true).expect("load model (block form)"),
            tokenizer: Tokenizer::from_gguf(&file).expect("load tokenizer"),
        }
    })
}

#[test]
fn prompt_ids_match_hf_and_llama_cpp() {
    let t = &loaded().tokenizer;
    for file in ["smollm2-hf-f32-greedy.json", "smollm2-llamacpp-greedy.json"] {
        for case in common::reference(file) {
            let ids = t.encode(&case.prompt, true).unwrap();
            assert_eq!(ids, case.prompt_ids, "{file}: case {}", case.name);
        }
    }
}

#[test]
fn greedy_tokens_and_logprobs_match_hf_f32() {
    check_greedy(&loaded().model, "f32");
}

#[test]
fn greedy_tokens_and_logprobs_match_hf_f32_with_block_form_weights() {
    check_greedy(&loaded().quantized, "block form");
}

fn check_greedy(model: &Model, what: &str) {
    let cfg = &model.cfg;
    let block_size = 16;
    let mut kv = KvStore::new(cfg, block_size, 8);
    let table: Vec<u32> = (0..8).collect();
    for case in common::reference("smollm2-hf-f32-greedy.json") {
        let mut sampler = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                logprobs: Some(5),
                ..Default::default()
            },
            0,
        );
        let mut pos = 0;
        let mut input = case.prompt_ids.clone();
        let mut got = Vec::new();
        let mut worst = 0f64;
        for (step, want_top) in case.top5.iter().enumerate() {
            let logits = model
                .forward(
                    &mut kv,
                    &[SeqInput {
                        tokens: &input,
                        start_pos: pos,
                        block_table: &table,
                        want_logits: true,
                    }],
                )
                .remove(0);
            pos += input.len();
            let s = sampler.sample(&logits);
            for ((gid, glp), (wid, wlp)) in s.top.iter().zip(want_top) {
                assert_eq!(
                    gid, wid,
                    "case {} step {step}: top-5 ids {:?} vs {:?}",
                    case.name, s.top, want_top
                );
                worst = worst.max((f64::from(*glp) - wlp).abs());
            }
            got.push(s.token);
            input = vec![s.token];
        }
        assert_eq!(got, case.greedy_ids, "case {}", case.name);
        assert!(
            worst < 1e-3,
            "case {}: worst logprob error {worst}",
            case.name
        );
        eprintln!(
            "{what} {}: {} tokens, worst |Δlogprob| {worst:.2e}",
            case.name,
            got.len()
        );
    }
}
