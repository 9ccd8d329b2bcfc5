//! A tiny Llama written as GGUF in code (mixed Q4_1 / Q8_0 / F16 / F32 tensors), loaded back through the real
//! parser, config reader and weight loader.

use baton_native::gguf::writer::{write, TensorData};
use baton_native::gguf::{GgufFile, Value};
use baton_native::kv::store::KvStore;
use baton_native::model::config::to_gguf_metadata;
use baton_native::model::{Model, ModelConfig, RopeStyle, SeqInput, Weights};
use baton_native::quant::{dequantize, quantize, TensorType};

fn cfg() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        hidden: 64,
        ffn: 96,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab: 128,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        context_length: 64,
        tied_embeddings: true,
        rope_style: RopeStyle::Interleaved,
    }
}

/// Encodes `values` (`[rows, cols]`, row-major) and returns the tensor plus what it decodes to.
fn tensor(
    name: &str,
    rows: usize,
    cols: usize,
    values: &[f32],
    ty: TensorType,
) -> (TensorData, Vec<f32>) {
    let data = quantize(ty, values).unwrap();
    let decoded = dequantize(ty, &data, values.len()).unwrap();
    let dims = if rows == 1 {
        vec![cols]
    } else {
        vec![cols, rows]
    };
    (
        TensorData {
            name: name.into(),
            dims,
            ty,
            data,
        },
        decoded,
    )
}

#[test]
fn gguf_round_trip_loads_the_same_model() {
    let c = cfg();
    let w = Weights::dummy(&c, 3);
    let mut tensors = Vec::new();
    let mut decoded = w.clone();
    let (t, d) = tensor(
        "token_embd.weight",
        c.vocab,
        c.hidden,
        &w.embed,
        TensorType::Q8_0,
    );
    tensors.push(t);
    decoded.embed = d;
    let (t, d) = tensor(
        "output_norm.weight",
        1,
        c.hidden,
        &w.output_norm,
        TensorType::F32,
    );
    tensors.push(t);
    decoded.output_norm = d;
    for (i, l) in w.layers.iter().enumerate() {
        let dl = &mut decoded.layers[i];
        let mut add = |name: &str,
                       rows: usize,
                       cols: usize,
                       v: &[f32],
                       ty: TensorType,
                       out: &mut Vec<f32>| {
            let (t, d) = tensor(&format!("blk.{i}.{name}.weight"), rows, cols, v, ty);
            tensors.push(t);
            *out = d;
        };
        add(
            "attn_norm",
            1,
            c.hidden,
            &l.attn_norm,
            TensorType::F32,
            &mut dl.attn_norm,
        );
        add(
            "attn_q",
            c.q_dim(),
            c.hidden,
            &l.wq,
            TensorType::Q4_1,
            &mut dl.wq,
        );
        add(
            "attn_k",
            c.kv_dim(),
            c.hidden,
            &l.wk,
            TensorType::Q4_0,
            &mut dl.wk,
        );
        add(
            "attn_v",
            c.kv_dim(),
            c.hidden,
            &l.wv,
            TensorType::F16,
            &mut dl.wv,
        );
        add(
            "attn_output",
            c.hidden,
            c.q_dim(),
            &l.wo,
            TensorType::BF16,
            &mut dl.wo,
        );
        add(
            "ffn_norm",
            1,
            c.hidden,
            &l.ffn_norm,
            TensorType::F32,
            &mut dl.ffn_norm,
        );
        add(
            "ffn_gate",
            c.ffn,
            c.hidden,
            &l.w_gate,
            TensorType::Q4_1,
            &mut dl.w_gate,
        );
        add(
            "ffn_up",
            c.ffn,
            c.hidden,
            &l.w_up,
            TensorType::Q8_0,
            &mut dl.w_up,
        );
        add(
            "ffn_down",
            c.hidden,
            c.ffn,
            &l.w_down,
            TensorType::Q4_1,
            &mut dl.w_down,
        );
    }
    let mut meta = to_gguf_metadata(&c);
    meta.push(("general.alignment".into(), Value::U32(32)));
    let bytes = write(&meta, &tensors);
    let file = GgufFile::from_bytes(bytes).unwrap();
    let loaded = Model::from_gguf(&file).unwrap();
    assert_eq!(loaded.cfg, c);
    assert_eq!(loaded.weights.layers[1].w_down, decoded.layers[1].w_down);
    assert_eq!(loaded.weights.embed, decoded.embed);

    // Same logits as the model built from the decoded weights directly.
    let direct = Model::new(c.clone(), decoded);
    let table: Vec<u32> = (0..4).collect();
    let run = |m: &Model| {
        let mut kv = KvStore::new(&c, 16, 4);
        let toks = [1u32, 5, 9, 77, 3];
        m.forward(
            &mut kv,
            &[SeqInput {
                tokens: &toks,
                start_pos: 0,
                block_table: &table,
                want_logits: true,
            }],
        )
        .remove(0)
    };
    assert_eq!(run(&loaded), run(&direct));
}

#[test]
fn shape_mismatch_and_missing_tensor_are_errors() {
    let c = cfg();
    let meta = to_gguf_metadata(&c);
    let file = GgufFile::from_bytes(write(&meta, &[])).unwrap();
    assert!(matches!(
        Model::from_gguf(&file),
        Err(baton_native::Error::MissingTensor(_))
    ));
    // The first tensor the loader reads, with the wrong length.
    let (t, _) = tensor(
        "blk.0.attn_norm.weight",
        1,
        c.hidden + 32,
        &vec![0.0; c.hidden + 32],
        TensorType::F32,
    );
    let file = GgufFile::from_bytes(write(&meta, &[t])).unwrap();
    assert!(matches!(
        Model::from_gguf(&file),
        Err(baton_native::Error::BadShape { .. })
    ));
}

#[test]
fn unsupported_architecture_is_reported() {
    let mut meta = to_gguf_metadata(&cfg());
    meta[0].1 = Value::String("mamba".into());
    let file = GgufFile::from_bytes(write(&meta, &[])).unwrap();
    assert!(matches!(
        Model::from_gguf(&file),
        Err(baton_native::Error::UnsupportedModel(_))
    ));
}
