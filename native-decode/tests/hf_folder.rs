//! An HF folder (config.json + model.safetensors + tokenizer.json) written in code and loaded back; its
//! half-split RoPE on original weights must equal interleaved RoPE on llama.cpp-permuted weights (the GGUF trap).

use std::collections::HashMap;
use std::path::PathBuf;

use baton_native::kv::store::KvStore;
use baton_native::loader::{load, LoadFormat};
use baton_native::model::matrix::Matrix;
use baton_native::model::{Model, ModelConfig, RopeStyle, SeqInput, Weights};
use baton_native::tokenizer::byte_level::bytes_to_unicode;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

fn cfg() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        hidden: 32,
        ffn: 48,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: 260,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        context_length: 64,
        tied_embeddings: true,
        rope_style: RopeStyle::HalfSplit,
    }
}

/// llama.cpp's q/k row permutation: within each head, row `s·hd/2 + i` moves to `2i + s`.
fn permute(m: &Matrix, n_heads: usize) -> Matrix {
    let (rows, cols) = (m.rows(), m.cols());
    let hd = rows / n_heads;
    let src = m.to_f32();
    let mut out = vec![0f32; rows * cols];
    for h in 0..n_heads {
        for s in 0..2 {
            for i in 0..hd / 2 {
                let from = h * hd + s * hd / 2 + i;
                let to = h * hd + 2 * i + s;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
    Matrix::from_f32(rows, cols, out)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baton-native-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_folder(dir: &std::path::Path, c: &ModelConfig, w: &Weights) {
    std::fs::write(
        dir.join("config.json"),
        json!({
            "architectures": ["LlamaForCausalLM"], "num_hidden_layers": c.n_layers, "hidden_size": c.hidden,
            "intermediate_size": c.ffn, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
            "vocab_size": c.vocab, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps,
            "max_position_embeddings": c.context_length, "tie_word_embeddings": true,
        })
        .to_string(),
    )
    .unwrap();
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut mat =
        |name: String, m: &Matrix| named.push((name, vec![m.rows(), m.cols()], bytes(&m.to_f32())));
    mat("model.embed_tokens.weight".into(), &w.embed);
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        mat(p("self_attn.q_proj"), &l.wq);
        mat(p("self_attn.k_proj"), &l.wk);
        mat(p("self_attn.v_proj"), &l.wv);
        mat(p("self_attn.o_proj"), &l.wo);
        mat(p("mlp.gate_proj"), &l.w_gate);
        mat(p("mlp.up_proj"), &l.w_up);
        mat(p("mlp.down_proj"), &l.w_down);
    }
    for (i, l) in w.layers.iter().enumerate() {
        named.push((
            format!("model.layers.{i}.input_layernorm.weight"),
            vec![c.hidden],
            bytes(&l.attn_norm),
        ));
        named.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            vec![c.hidden],
            bytes(&l.ffn_norm),
        ));
    }
    named.push((
        "model.norm.weight".into(),
        vec![c.hidden],
        bytes(&w.output_norm),
    ));
    let views: Vec<(String, TensorView<'_>)> = named
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();

    // Byte-level BPE vocabulary: <|endoftext|>, <|im_start|>, <|im_end|>, 256 bytes, one merge.
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, ch) in bytes_to_unicode().iter().enumerate() {
        vocab.insert(ch.to_string(), 3 + i as u32);
    }
    vocab.insert("hi".into(), 259);
    std::fs::write(
        dir.join("tokenizer.json"),
        json!({
            "added_tokens": [
                {"id": 0, "content": "<|endoftext|>", "special": true},
                {"id": 1, "content": "<|im_start|>", "special": true},
                {"id": 2, "content": "<|im_end|>", "special": true},
            ],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            ]},
            "model": {"type": "BPE", "vocab": vocab, "merges": ["h i"]},
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"})
            .to_string(),
    )
    .unwrap();
}

fn logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let table: Vec<u32> = (0..4).collect();
    let mut kv = KvStore::new(&m.cfg, 16, 4);
    m.forward(
        &mut kv,
        &[SeqInput {
            tokens: toks,
            start_pos: 0,
            block_table: &table,
            want_logits: true,
        }],
    )
    .remove(0)
}

#[test]
fn hf_folder_loads_and_matches_permuted_interleaved_model() {
    let c = cfg();
    let w = Weights::dummy(&c, 11);
    let dir = temp_dir("hf");
    write_folder(&dir, &c, &w);
    let (hf, tok) = load(&dir, LoadFormat::Auto, false, 0).unwrap();
    assert_eq!(hf.cfg, c);
    let space = tok.token_id("Ġ").unwrap();
    assert_eq!(
        tok.encode("hi 12<|im_end|>", false).unwrap(),
        vec![259, space, 3 + 0x31, 3 + 0x32, 2]
    );
    assert_eq!(tok.eos_id, Some(2));
    assert!(tok.chat_template.is_some());

    // The same weights the way a GGUF holds them: q/k rows permuted, interleaved RoPE.
    let mut gw = w.clone();
    for l in &mut gw.layers {
        l.wq = permute(&l.wq, c.n_heads);
        l.wk = permute(&l.wk, c.n_kv_heads);
    }
    let gguf_like = Model::new(
        ModelConfig {
            rope_style: RopeStyle::Interleaved,
            ..c.clone()
        },
        gw,
    );
    let toks = [5u32, 70, 200, 9, 33, 1, 2];
    for (a, b) in logits(&hf, &toks).iter().zip(logits(&gguf_like, &toks)) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dummy_format_uses_the_folder_config() {
    let c = cfg();
    let dir = temp_dir("dummy");
    write_folder(&dir, &c, &Weights::dummy(&c, 1));
    let (m, _) = load(&dir, LoadFormat::Dummy, false, 5).unwrap();
    assert_eq!(m.cfg, c);
    assert_eq!(logits(&m, &[4, 5]).len(), c.vocab);
    let _ = std::fs::remove_dir_all(&dir);
}
