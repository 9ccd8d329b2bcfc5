//! Mocks exercised over real HTTP with a bare hyper client (one connection per request, so a
//! test can hang up like a client that goes away).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// An open request: the response head and the task driving its connection (abort = hang up).
struct Open {
    resp: Response<Incoming>,
    conn: JoinHandle<()>,
}

async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> Result<Open, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(body)).expect("request"))
        .await?;
    Ok(Open { resp, conn })
}

struct Answer {
    status: u16,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The `data:` payloads of an SSE body (read with the protocol crate's decoder).
    fn events(&self) -> Vec<String> {
        let mut decoder = baton_protocol::sse::SseDecoder::new();
        decoder
            .push(&self.body)
            .into_iter()
            .map(|e| e.data)
            .collect()
    }
}

async fn call(h: &MockHandle, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let bytes = Bytes::from(body.to_string());
    let open = open(h.addr(), "POST", path, bytes, headers)
        .await
        .expect("response");
    read(open).await
}

async fn read(open: Open) -> Answer {
    let status = open.resp.status().as_u16();
    let content_type = open
        .resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = open
        .resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn get(h: &MockHandle, path: &str) -> Answer {
    let open = open(h.addr(), "GET", path, Bytes::new(), &[])
        .await
        .expect("response");
    read(open).await
}

#[tokio::test]
async fn chat_stream_follows_openai_sse_format() {
    let m = MockEngine::new(Flavor::OpenAi).spawn().await;
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "one two three"}],
                      "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}});
    let a = call(&m, "/v1/chat/completions", body, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "text/event-stream");
    let events = a.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks.len(), 1 + 3 + 1 + 1, "role, 3 tokens, finish, usage");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "m1");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(c["created"].is_u64());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "t0 t1 t2 ");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    let stats = m.stats();
    assert_eq!((stats.requests, stats.completed, stats.active), (1, 1, 0));
}

#[tokio::test]
async fn completions_list_prompt_and_errors() {
    let m = MockEngine::new(Flavor::OpenAi)
        .default_tokens(2)
        .spawn()
        .await;
    let a = call(&m, "/v1/completions", json!({"prompt": ["a b", "c"]}), &[]).await;
    let v = a.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "mock-model");
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["choices"][1]["text"], "t0 t1 ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let stream = json!({"prompt": "x", "max_tokens": 2, "stream": true});
    let events = call(&m, "/v1/completions", stream, &[]).await.events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "t0 ");
    assert_eq!(events.len(), 2 + 1 + 1, "2 tokens, finish, [DONE]");

    let bad = open(m.addr(), "POST", "/v1/completions", Bytes::from("{no"), &[])
        .await
        .unwrap();
    let bad = read(bad).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], 400);
    let opts = json!({"prompt": "x", "stream_options": {"include_usage": true}});
    assert_eq!(call(&m, "/v1/completions", opts, &[]).await.status, 400);

    let models = get(&m, "/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], "mock-model");
    assert_eq!(m.requests().len(), 4);
    assert_eq!(m.requests()[2].body, Value::Null);
    assert_eq!(m.stats().failed, 2);
}

#[tokio::test]
async fn sglang_generate_streams_cumulative_text() {
    let m = MockEngine::new(Flavor::OpenAi).spawn().await;
    let body = json!({"text": "a b", "sampling_params": {"max_new_tokens": 2}, "stream": true});
    let events = call(&m, "/generate", body, &[]).await.events();
    assert_eq!(events.len(), 3);
    let last: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(last["text"], "t0 t1 ");
    assert_eq!(last["meta_info"]["completion_tokens"], 2);
    assert_eq!(last["meta_info"]["finish_reason"]["type"], "length");
}

#[tokio::test]
async fn health_toggles_and_counts() {
    let m = MockEngine::new(Flavor::OpenAi).spawn().await;
    assert_eq!(get(&m, "/health").await.status, 200);
    m.set_healthy(false);
    assert_eq!(get(&m, "/health").await.status, 503);
    assert_eq!(m.stats().health_checks, 2);
    assert_eq!(m.stats().requests, 0);
}

fn prefill_body(max_tokens: u64, stream: bool) -> Value {
    json!({"prompt": "a b c", "max_tokens": max_tokens, "stream": stream,
           "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                                  "remote_engine_id": null, "remote_block_ids": null,
                                  "remote_host": null, "remote_port": null}})
}

#[tokio::test]
async fn vllm_prefill_issues_params_only_when_planned() {
    let kv = VllmKvRegistry::default();
    let p = MockEngine::new(Flavor::VllmPrefill)
        .kv_registry(kv.clone())
        .spawn()
        .await;
    let rid = [("x-request-id", "req-42")];
    let a = call(&p, "/v1/completions", prefill_body(1, false), &rid).await;
    let params = &a.json()["kv_transfer_params"];
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["remote_engine_id"], p.engine_id());
    assert!(params["remote_request_id"]
        .as_str()
        .unwrap()
        .starts_with("req-42-"));
    assert!(params["x_mock_nonce"].is_string());
    assert_eq!(a.json()["choices"][0]["text"], "t0 ");
    assert_eq!(kv.outstanding(), 1);

    let longer = call(&p, "/v1/completions", prefill_body(5, false), &rid).await;
    assert!(longer.json().get("kv_transfer_params").is_none());
    let plain = call(
        &p,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 1}),
        &rid,
    )
    .await;
    assert!(plain.json().get("kv_transfer_params").is_none());
    let streamed = call(&p, "/v1/completions", prefill_body(1, true), &rid).await;
    assert_eq!(streamed.status, 400);
    assert_eq!(kv.outstanding(), 1);
}

#[tokio::test]
async fn vllm_prefill_eos_first_token_issues_no_params() {
    let p = MockEngine::new(Flavor::VllmPrefill)
        .fault(Fault::EosFirstNth { n: 1 })
        .spawn()
        .await;
    let a = call(&p, "/v1/completions", prefill_body(1, false), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["choices"][0]["finish_reason"], "stop");
    assert!(a.json().get("kv_transfer_params").is_none());
    assert_eq!(p.kv_registry().outstanding(), 0);
}

#[tokio::test]
async fn vllm_decode_pulls_exact_params_once() {
    let VllmPair {
        prefill: p,
        decode: d,
        kv,
    } = VllmPair::plain().await;
    let issue = || async {
        let a = call(&p, "/v1/completions", prefill_body(1, false), &[]).await;
        a.json()["kv_transfer_params"].clone()
    };
    let decode_body =
        |params: Value| json!({"prompt": "a b c", "max_tokens": 4, "kv_transfer_params": params});

    let params = issue().await;
    let ok = call(&d, "/v1/completions", decode_body(params.clone()), &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["choices"][0]["text"], "t0 t1 t2 t3 ");
    assert_eq!(kv.outstanding(), 0);
    assert_eq!(d.requests()[0].body["kv_transfer_params"], params);

    let replay = call(&d, "/v1/completions", decode_body(params), &[]).await;
    assert_eq!(replay.status, 400);
    assert_eq!(
        replay.json()["error"]["message"],
        "invalid kv_transfer_params"
    );

    let mut tampered = issue().await;
    tampered["x_mock_nonce"] = json!("forged");
    let rejected = call(&d, "/v1/completions", decode_body(tampered), &[]).await;
    assert_eq!(rejected.status, 400);
    assert_eq!(kv.outstanding(), 1);

    let local = call(
        &d,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 1}),
        &[],
    )
    .await;
    assert_eq!(local.status, 200);
    let stats = d.stats();
    assert_eq!((stats.rejected_params, stats.local_prefills), (2, 1));
    assert_eq!((kv.issued(), kv.pulled()), (2, 1));
}

fn sglang_body(port: u16, room: u64) -> Value {
    json!({"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3,
           "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room})
}

async fn sglang_pair(timeout: Duration) -> (MockHandle, MockHandle, Rendezvous) {
    let rdv = Rendezvous::default();
    let p = MockEngine::new(Flavor::SglangPrefill {
        bootstrap_port: 8998,
    })
    .rendezvous(rdv.clone())
    .rendezvous_timeout(timeout)
    .spawn()
    .await;
    let d = MockEngine::new(Flavor::SglangDecode)
        .rendezvous(rdv.clone())
        .rendezvous_timeout(timeout)
        .spawn()
        .await;
    (p, d, rdv)
}

#[tokio::test]
async fn sglang_legs_complete_only_together() {
    let (p, d, rdv) = sglang_pair(WAIT).await;
    let prefill = tokio::spawn({
        let p = p.clone();
        async move { call(&p, "/v1/chat/completions", sglang_body(8998, 7), &[]).await }
    });
    p.wait_until(|s| s.active == 1, WAIT).await.unwrap();
    assert_eq!(rdv.pending(), 1);
    assert!(!prefill.is_finished());
    let decoded = call(&d, "/v1/chat/completions", sglang_body(8998, 7), &[]).await;
    assert_eq!(decoded.status, 200);
    assert_eq!(
        decoded.json()["choices"][0]["message"]["content"],
        "t0 t1 t2 "
    );
    let prefilled = prefill.await.unwrap();
    assert_eq!(prefilled.status, 200);
    assert_eq!(prefilled.json()["usage"]["completion_tokens"], 1);
    assert_eq!(rdv.pending(), 0);
    assert_eq!(p.stats().completed + d.stats().completed, 2);
}

#[tokio::test]
async fn sglang_validates_bootstrap_fields_and_times_out() {
    let (p, d, rdv) = sglang_pair(Duration::from_millis(50)).await;
    let wrong_port = call(&p, "/v1/chat/completions", sglang_body(9000, 1), &[]).await;
    assert_eq!(wrong_port.status, 400);
    let mut missing = sglang_body(8998, 1);
    missing.as_object_mut().unwrap().remove("bootstrap_room");
    assert_eq!(
        call(&d, "/v1/chat/completions", missing, &[]).await.status,
        400
    );
    let alone = call(&d, "/v1/chat/completions", sglang_body(8998, 2), &[]).await;
    assert_eq!(alone.status, 500);
    assert!(alone.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bootstrap timeout"));
    assert_eq!(rdv.pending(), 0);
}

#[tokio::test]
async fn sglang_batch_uses_one_room_per_item() {
    let (p, d, rdv) = sglang_pair(WAIT).await;
    let body = json!({"prompt": ["a", "b c"], "max_tokens": 2, "bootstrap_host": ["127.0.0.1", "127.0.0.1"],
                      "bootstrap_port": [8998, 8998], "bootstrap_room": [11, 12]});
    let (a, b) = tokio::join!(
        call(&p, "/v1/completions", body.clone(), &[]),
        call(&d, "/v1/completions", body, &[])
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(b.json()["choices"].as_array().unwrap().len(), 2);
    assert_eq!(rdv.pending(), 0);
}

#[tokio::test]
async fn waiting_leg_counts_cancelled_when_client_leaves() {
    let (_p, d, rdv) = sglang_pair(WAIT).await;
    let bytes = Bytes::from(sglang_body(8998, 3).to_string());
    let pending = tokio::spawn(open(d.addr(), "POST", "/v1/chat/completions", bytes, &[]));
    d.wait_until(|s| s.active == 1, WAIT).await.unwrap();
    assert_eq!(rdv.pending(), 1);
    pending.abort();
    let stats = d.wait_until(|s| s.cancelled == 1, WAIT).await.unwrap();
    assert_eq!(stats.active, 0);
    assert_eq!(rdv.pending(), 0);
}

#[tokio::test]
async fn status_faults_hit_the_nth_request() {
    let m = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusNth { n: 2, status: 503 })
        .spawn()
        .await;
    let body = json!({"prompt": "x", "max_tokens": 1});
    let statuses = [
        call(&m, "/v1/completions", body.clone(), &[]).await.status,
        call(&m, "/v1/completions", body.clone(), &[]).await.status,
        call(&m, "/v1/completions", body, &[]).await.status,
    ];
    assert_eq!(statuses, [200, 503, 200]);
    let stats = m.stats();
    assert_eq!((stats.completed, stats.failed), (2, 1));
}

#[tokio::test]
async fn reset_fault_closes_without_response() {
    let m = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::ConnectionResetNth { n: 1 })
        .spawn()
        .await;
    let body = Bytes::from(json!({"prompt": "x"}).to_string());
    assert!(open(m.addr(), "POST", "/v1/completions", body, &[])
        .await
        .is_err());
    assert_eq!(m.stats().failed, 1);
}

#[tokio::test]
async fn drop_mid_stream_fault_sends_some_tokens_then_aborts() {
    let m = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::DropMidStreamNth {
            n: 1,
            after_tokens: 2,
        })
        .spawn()
        .await;
    let body =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": true});
    let o = open(
        m.addr(),
        "POST",
        "/v1/chat/completions",
        Bytes::from(body.to_string()),
        &[],
    )
    .await
    .unwrap();
    let mut body = o.resp.into_body();
    let mut received = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(err.is_some(), "the stream must end with a transport error");
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.matches("\"content\":\"t").count(), 2);
    assert!(!text.contains("[DONE]"));
    assert_eq!(m.stats().failed, 1);
}

#[tokio::test]
async fn hang_and_stream_cancellation_are_counted() {
    let m = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::HangNth { n: 1 })
        .token_delay(Duration::from_millis(20))
        .spawn()
        .await;
    let body = Bytes::from(json!({"prompt": "x", "max_tokens": 100, "stream": true}).to_string());
    let hung = tokio::spawn(open(m.addr(), "POST", "/v1/completions", body.clone(), &[]));
    m.wait_until(|s| s.active == 1, WAIT).await.unwrap();
    hung.abort();
    m.wait_until(|s| s.cancelled == 1 && s.active == 0, WAIT)
        .await
        .unwrap();

    let o = open(m.addr(), "POST", "/v1/completions", body, &[])
        .await
        .unwrap();
    let mut stream = o.resp.into_body();
    assert!(stream.frame().await.is_some());
    drop(stream);
    o.conn.abort();
    let stats = m.wait_until(|s| s.cancelled == 2, WAIT).await.unwrap();
    assert_eq!((stats.active, stats.completed), (0, 0));
}

#[tokio::test]
async fn shutdown_refuses_new_connections() {
    let m = MockEngine::new(Flavor::OpenAi).spawn().await;
    assert_eq!(get(&m, "/health").await.status, 200);
    m.shutdown();
    assert!(TcpStream::connect(m.addr()).await.is_err());
}

#[tokio::test]
async fn body_delay_sends_head_first() {
    let m = MockEngine::new(Flavor::OpenAi)
        .body_delay(Duration::from_secs(30))
        .spawn()
        .await;
    let body = Bytes::from(json!({"prompt": "x", "max_tokens": 1}).to_string());
    // The head arrives although the body is 30 s away; then hang up.
    let o = open(m.addr(), "POST", "/v1/completions", body, &[])
        .await
        .unwrap();
    assert_eq!(o.resp.status(), 200);
    drop(o.resp);
    o.conn.abort();
    m.wait_until(|s| s.cancelled == 1, WAIT).await.unwrap();
}
