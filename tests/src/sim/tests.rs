//! The sim engines' latency model and protocol, over real sockets. Timing assertions are loose
//! lower/upper bounds: the machine running them may be busy.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::load::{self, client, prompt_text, Class, Planned, RunOptions, Workload};
use super::{prompt_tokens, SimEngine, SimRole};

async fn post(url: &str, body: &Value) -> (u16, Bytes) {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn one_class() -> Workload {
    Workload {
        seed: 1,
        rate: 1.0,
        requests: 1,
        prompt_tokens: vec![(1.0, 10, 10)],
        output_tokens: (8, 8),
        classes: vec![Class {
            name: "c".into(),
            weight: 1.0,
            ttft_ms: 10_000.0,
            tpot_ms: 10_000.0,
        }],
        chat_fraction: 0.0,
    }
}

fn planned(prompt: usize, output: usize, chat: bool) -> Planned {
    Planned {
        at: Duration::ZERO,
        prompt_tokens: prompt,
        output_tokens: output,
        class: 0,
        chat,
    }
}

#[test]
fn prompt_tokens_match_the_gateway_estimate() {
    assert_eq!(
        prompt_tokens(&json!({"prompt": prompt_text(100)})),
        Some(100)
    );
    assert_eq!(prompt_tokens(&json!({"prompt": [1, 2, 3]})), Some(3));
    // "user:" + 40 chars + "\n" = 46 chars → 11, plus 4 for the message.
    let chat = json!({"messages": [{"role": "user", "content": prompt_text(10)}]});
    assert_eq!(prompt_tokens(&chat), Some(15));
    assert_eq!(prompt_tokens(&json!({"prompt": ""})), Some(1));
    assert_eq!(prompt_tokens(&json!({})), None);
}

#[test]
fn plans_are_reproducible() {
    let mut w = one_class();
    w.requests = 50;
    w.rate = 100.0;
    w.prompt_tokens = vec![(1.0, 50, 500), (1.0, 1000, 2000)];
    assert_eq!(w.plan(), w.plan());
    let mut other = w.clone();
    other.seed = 2;
    assert_ne!(w.plan(), other.plan());
    assert!(w.plan().windows(2).all(|p| p[0].at <= p[1].at));
}

#[tokio::test]
async fn ttft_is_prefill_time_and_tpot_a_decode_step() {
    // 2000 tokens × 0.05 ms = 100 ms of prefill (one chunk) + 6 ms; then steps of 5.5 ms.
    let e = SimEngine::new(SimRole::Unified).spawn().await;
    let w = one_class();
    let plan = [planned(2000, 20, false)];
    let r = load::run_open_loop(&e.url(), &w, &plan, &RunOptions::default()).await;
    let r = &r[0];
    assert!(r.completed && r.good, "{r:?}");
    let ttft = r.ttft_ms.unwrap();
    let tpot = r.tpot_ms.unwrap();
    assert!((100.0..400.0).contains(&ttft), "ttft {ttft}");
    assert!((5.0..30.0).contains(&tpot), "tpot {tpot}");
    assert_eq!(r.tokens, 20);
    let st = e.stats();
    assert_eq!((st.requests, st.completed, st.prefill_tokens), (1, 1, 2000));
    assert_eq!(st.output_tokens, 20);
}

#[tokio::test]
async fn decode_steps_grow_with_the_batch_and_stall_on_prefills() {
    // A big per-sequence cost makes the batch effect dominate timer noise.
    let e = SimEngine::new(SimRole::Unified)
        .base_ms(2.0)
        .per_seq_ms(2.0)
        .spawn()
        .await;
    let w = one_class();
    let alone = load::run_open_loop(
        &e.url(),
        &w,
        &[planned(10, 30, false)],
        &RunOptions::default(),
    )
    .await;
    let plan: Vec<Planned> = (0..16).map(|_| planned(10, 30, false)).collect();
    let batch = load::run_open_loop(&e.url(), &w, &plan, &RunOptions::default()).await;
    let t1 = alone[0].tpot_ms.unwrap();
    let t16 = load::percentile(
        &batch.iter().filter_map(|r| r.tpot_ms).collect::<Vec<_>>(),
        0.5,
    );
    // 4 ms vs 34 ms per step.
    assert!(t16 > 3.0 * t1, "batch 1: {t1} ms, batch 16: {t16} ms");
    assert!(e.stats().max_batch >= 12, "{:?}", e.stats());

    // A 2000-token prompt arriving mid-decode costs the decoding sequence 100 ms of steps.
    let e = SimEngine::new(SimRole::Unified).spawn().await;
    let url = e.url();
    let decoding = tokio::spawn(async move {
        let plan = [planned(10, 40, false)];
        load::run_open_loop(&url, &w, &plan, &RunOptions::default()).await
    });
    // Wait until it decodes, then send the long prompt.
    e.wait_until(|s| s.output_tokens >= 2, Duration::from_secs(5))
        .await
        .expect("decoding");
    let (status, _) = post(
        &format!("{}/v1/completions", e.url()),
        &json!({"prompt": prompt_text(2000), "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let r = &decoding.await.unwrap()[0];
    // Alone: 39 × 5.5 ms ≈ 215 ms; with the stall ≥ 300 ms.
    let decode_ms = r.latency_ms - r.ttft_ms.unwrap();
    assert!(decode_ms >= 300.0, "{r:?}");
}

#[tokio::test]
async fn vllm_prefill_issues_params_and_decode_pulls_them() {
    let p = SimEngine::new(SimRole::Prefill).spawn().await;
    let d = SimEngine::new(SimRole::Decode).spawn().await;
    let prompt = prompt_text(1000);
    let (status, bytes) = post(
        &format!("{}/v1/completions", p.url()),
        &json!({"prompt": prompt, "max_tokens": 1, "stream": false,
                "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null,
                    "remote_host": null, "remote_port": null}}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let params = v["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["remote_num_tokens"], 1000);
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert_eq!(p.stats().kv_issued, 1);

    // Decode with the params: no prefill cost (one position recomputed).
    let t0 = Instant::now();
    let (status, bytes) = post(
        &format!("{}/v1/completions", d.url()),
        &json!({"prompt": prompt, "max_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.contains("\"completion_tokens\":4"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let st = d.stats();
    assert_eq!(
        (st.kv_pulled, st.local_prefills, st.prefill_tokens),
        (1, 0, 1)
    );
    assert!(t0.elapsed() < Duration::from_millis(500));

    // Without params the decoder prefills the prompt itself.
    let (status, _) = post(
        &format!("{}/v1/chat/completions", d.url()),
        &json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(d.stats().local_prefills, 1);

    // Malformed params are a 400; a streaming remote-decode prefill too.
    let (status, _) = post(
        &format!("{}/v1/completions", d.url()),
        &json!({"prompt": "x", "kv_transfer_params": {"do_remote_prefill": false}}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &format!("{}/v1/completions", p.url()),
        &json!({"prompt": "x", "stream": true, "kv_transfer_params": {"do_remote_decode": true}}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn chat_streams_a_role_chunk_and_eos_is_honoured() {
    let e = SimEngine::new(SimRole::Unified)
        .eos_after(Some(3))
        .spawn()
        .await;
    let url = format!("{}/v1/chat/completions", e.url());
    let msg = json!([{"role": "user", "content": "hi"}]);
    let (_, bytes) = post(
        &url,
        &json!({"messages": msg, "max_tokens": 10, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.contains("\"role\":\"assistant\""), "{text}");
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.contains("\"completion_tokens\":3"), "{text}");
    let (_, bytes) = post(
        &url,
        &json!({"messages": msg, "max_tokens": 10, "ignore_eos": true}),
    )
    .await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 "
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_batch() {
    let e = SimEngine::new(SimRole::Unified).spawn().await;
    let req = Request::post(format!("{}/v1/completions", e.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"prompt": "a b c d", "max_tokens": 10_000, "stream": true}).to_string(),
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    let st = e
        .wait_until(|s| s.cancelled > 0, Duration::from_secs(5))
        .await
        .expect("the request left the batch");
    assert_eq!((st.cancelled, st.completed), (1, 0));
    assert!(st.output_tokens < 1000, "{st:?}");
    // Idle again: nothing left running.
    e.wait_until(|s| s.running == 0, Duration::from_secs(5))
        .await
        .expect("nothing left running");
}
