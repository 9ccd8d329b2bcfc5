//! A tiny Llama written as GGUF in code (mixed Q4_1 / Q8_0 / F16 / F32 tensors), loaded back through the real
//! parser, config reader and weight loader.

use baton_native::gguf::writer::{write, TensorData};
use baton_native::gguf::{GgufFile, Value};
use baton_native::kv::store::KvStore;
use baton_native::model::config::to_gguf_metadata;
use baton_native::model::matrix::Matrix;
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
    let mut add = |name: String, m: &Matrix, ty: TensorType, out: &mut Matrix| {
        let (t, d) = tensor(&name, m.rows(), m.cols(), &m.to_f32(), ty);
        tensors.push(t);
        *out = Matrix::from_f32(m.rows(), m.cols(), d);
    };
    add(
        "token_embd.weight".into(),
        &w.embed,
        TensorType::Q8_0,
        &mut decoded.embed,
    );
    for (i, l) in w.layers.iter().enumerate() {
        let dl = &mut decoded.layers[i];
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        add(n("attn_q"), &l.wq, TensorType::Q4_1, &mut dl.wq);
        add(n("attn_k"), &l.wk, TensorType::Q4_0, &mut dl.wk);
        add(n("attn_v"), &l.wv, TensorType::F16, &mut dl.wv);
        add(n("attn_output"), &l.wo, TensorType::BF16, &mut dl.wo);
        add(n("ffn_gate"), &l.w_gate, TensorType::Q4_1, &mut dl.w_gate);
        add(n("ffn_up"), &l.w_up, TensorType::Q8_0, &mut dl.w_up);
        add(n("ffn_down"), &l.w_down, TensorType::Q4_1, &mut dl.w_down);
    }
    for (i, l) in w.layers.iter().enumerate() {
        for (name, v) in [("attn_norm", &l.attn_norm), ("ffn_norm", &l.ffn_norm)] {
            tensors.push(
                tensor(
                    &format!("blk.{i}.{name}.weight"),
                    1,
                    c.hidden,
                    v,
                    TensorType::F32,
                )
                .0,
            );
        }
    }
    tensors.push(
        tensor(
            "output_norm.weight",
            1,
            c.hidden,
            &w.output_norm,
            TensorType::F32,
        )
        .0,
    );
    let mut meta = to_gguf_metadata(&c);
    meta.push(("general.alignment".into(), Value::U32(32)));
    let file = GgufFile::from_bytes(write(&meta, &tensors)).unwrap();
    let loaded = Model::from_gguf(&file).unwrap();
    assert_eq!(loaded.cfg, c);
    assert_eq!(loaded.weights.layers[1].w_down, decoded.layers[1].w_down);
    assert_eq!(loaded.weights.embed, decoded.embed);
    let quantized = Model::from_gguf_with(&file, true).unwrap();
    assert!(matches!(quantized.weights.layers[0].wq, Matrix::Q4 { .. }));
    assert!(matches!(quantized.weights.embed, Matrix::Q8 { .. }));

    // Same logits as the model built from the decoded weights directly; the block form agrees to rounding.
    let direct = Model::new(c.clone(), decoded);
    let table: Vec<u32> = (0..4).collect();
    let run = |m: &Model, toks: &[u32]| {
        let mut kv = KvStore::new(&c, 16, 4);
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
    };
    for toks in [&[1u32, 5, 9, 77, 3][..], &[42]] {
        let want = run(&direct, toks);
        assert_eq!(run(&loaded, toks), want);
        for (a, b) in run(&quantized, toks).iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
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
