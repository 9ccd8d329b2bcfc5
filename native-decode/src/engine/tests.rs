//! Scheduler behaviour on a tiny random model: batching, preemption, cancellation, prefix caching, PD export.

use crate::test_support::wait_for;
use std::time::Duration;

use super::*;
use crate::model::{ModelConfig, RopeStyle, Weights};
use crate::sampling::SamplingParams;

pub(crate) fn tiny_model() -> Model {
    let cfg = ModelConfig {
        n_layers: 2,
        hidden: 32,
        ffn: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: 264,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        context_length: 256,
        tied_embeddings: true,
        rope_style: RopeStyle::Interleaved,
    };
    let w = Weights::dummy(&cfg, 7);
    Model::new(cfg, w)
}

fn engine(cfg: EngineConfig) -> EngineHandle {
    EngineHandle::spawn(tiny_model(), crate::tokenizer::tests::tiny(), cfg).unwrap()
}

/// A greedy request that runs to `max_tokens` (shared with the scheduler's SLO tests).
pub(crate) fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: "r".into(),
        prompt,
        params: GenParams {
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
        remote_decode: false,
        imported: None,
        cache_salt: None,
        tenant: None,
    }
}

async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, Finish) {
    let mut toks = Vec::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(t) => toks.push(t.token),
            Event::Done(f) => return (toks, f),
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 31 + seed * 17) % 250)
        .collect()
}

async fn run_all(e: &EngineHandle, reqs: Vec<GenerateRequest>) -> Vec<(Vec<u32>, Finish)> {
    let mut guards = Vec::new();
    let mut futs = Vec::new();
    for r in reqs {
        let (g, rx) = e.submit(r).unwrap();
        guards.push(g);
        futs.push(tokio::spawn(collect(rx)));
    }
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await.unwrap());
    }
    out
}

#[tokio::test]
async fn backend_greedy_path_matches_the_sampler() {
    // Plain greedy steps take the backend's greedy path (on a GPU: picked on the device); asking for
    // alternatives takes the sampler over full logits. Same tokens, same chosen-token log-probabilities.
    let e = engine(EngineConfig::default());
    let run = |logprobs: Option<usize>| {
        let e = e.clone();
        async move {
            let mut req = greedy(prompt(3, 12), 10);
            req.params.sampling.logprobs = logprobs;
            let (_g, mut rx) = e.submit(req).unwrap();
            let mut out = Vec::new();
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Token(t) => out.push((t.token, t.logprob, t.top.len())),
                    Event::Done(_) => break,
                    Event::Error(m) => panic!("{m}"),
                }
            }
            out
        }
    };
    let fast = run(None).await;
    let sampled = run(Some(2)).await;
    assert_eq!(fast.len(), 10);
    for ((t0, lp0, n0), (t1, lp1, n1)) in fast.iter().zip(&sampled) {
        assert_eq!((t0, n0, n1), (t1, &0, &2));
        assert!((lp0 - lp1).abs() < 1e-6, "{lp0} vs {lp1}");
    }
}

#[tokio::test]
async fn batched_equals_sequential_and_preemption_is_transparent() {
    let reqs: Vec<_> = (0..5)
        .map(|i| greedy(prompt(i, 10 + 7 * i as usize), 12))
        .collect();
    // Reference: one at a time on a roomy engine.
    let solo = engine(EngineConfig::default());
    let mut expected = Vec::new();
    for r in &reqs {
        expected.push(run_all(&solo, vec![r.clone()]).await.remove(0).0);
    }
    // Batched with a tiny token budget (chunked prefill) on a tiny pool: forces chunking and preemption.
    let small = engine(EngineConfig {
        block_size: 4,
        num_blocks: 14,
        max_batched_tokens: 8,
        ..Default::default()
    });
    let got = run_all(&small, reqs.clone()).await;
    for (i, (toks, fin)) in got.iter().enumerate() {
        assert_eq!(toks, &expected[i], "request {i}");
        assert_eq!(fin.reason, FinishReason::Length);
        assert_eq!(fin.completion_tokens, 12);
    }
    assert!(
        small.stats.preemptions.load(Ordering::Relaxed) > 0,
        "expected preemption"
    );
    // Without chunked prefill too.
    let whole = engine(EngineConfig {
        chunked_prefill: false,
        max_batched_tokens: 64,
        ..Default::default()
    });
    let got = run_all(&whole, reqs).await;
    for (i, (toks, _)) in got.iter().enumerate() {
        assert_eq!(toks, &expected[i], "request {i} (unchunked)");
    }
}

#[tokio::test]
async fn prefix_cache_hits_give_identical_output() {
    let e = engine(EngineConfig {
        block_size: 4,
        ..Default::default()
    });
    let p = prompt(3, 21);
    let a = run_all(&e, vec![greedy(p.clone(), 8)]).await.remove(0);
    let b = run_all(&e, vec![greedy(p, 8)]).await.remove(0);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1.cached_tokens, 0);
    assert_eq!(b.1.cached_tokens, 20);
}

#[tokio::test]
async fn cache_salts_share_blocks_only_within_one_salt() {
    let e = engine(EngineConfig {
        block_size: 4,
        ..Default::default()
    });
    let p = prompt(5, 21);
    let salted = |salt: Option<&str>| GenerateRequest {
        cache_salt: salt.map(str::to_string),
        ..greedy(p.clone(), 4)
    };
    let a = run_all(&e, vec![salted(Some("a"))]).await.remove(0);
    let b = run_all(&e, vec![salted(Some("b"))]).await.remove(0);
    let plain = run_all(&e, vec![salted(None)]).await.remove(0);
    let a2 = run_all(&e, vec![salted(Some("a"))]).await.remove(0);
    assert_eq!(
        [a.1.cached_tokens, b.1.cached_tokens, plain.1.cached_tokens],
        [0, 0, 0]
    );
    assert_eq!(a2.1.cached_tokens, 20, "the same salt hits");
    for other in [&b, &plain, &a2] {
        assert_eq!(other.0, a.0, "the salt changes nothing but sharing");
    }
}

#[tokio::test]
async fn cancellation_frees_blocks() {
    let e = engine(EngineConfig {
        block_size: 4,
        num_blocks: 64,
        prefix_caching: false,
        ..Default::default()
    });
    let (guard, mut rx) = e.submit(greedy(prompt(1, 30), 200)).unwrap();
    // Wait until it is generating.
    assert!(matches!(rx.recv().await, Some(Event::Token(_))));
    assert!(e.stats.kv_usage() > 0.0);
    drop(guard);
    drop(rx);
    wait_for("blocks freed after cancel", || {
        e.stats.kv_usage() == 0.0 && e.stats.num_running.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn invalid_requests_get_errors() {
    let e = engine(EngineConfig {
        block_size: 4,
        num_blocks: 4,
        ..Default::default()
    });
    for p in [vec![], vec![9999], prompt(0, 40)] {
        let (_g, mut rx) = e.submit(greedy(p, 4)).unwrap();
        assert!(matches!(rx.recv().await, Some(Event::Error(_))));
    }
}

#[tokio::test]
async fn prefill_lease_export_and_import_continue_exactly() {
    let p = prompt(5, 19);
    let e = engine(EngineConfig {
        block_size: 4,
        ..Default::default()
    });
    let full = run_all(&e, vec![greedy(p.clone(), 6)]).await.remove(0).0;

    let prefill = engine(EngineConfig {
        block_size: 4,
        prefix_caching: false,
        ..Default::default()
    });
    let mut req = greedy(p.clone(), 1);
    req.remote_decode = true;
    let (_, fin) = run_all(&prefill, vec![req]).await.remove(0);
    let lease = fin.kv_lease.expect("lease");
    assert_eq!(lease.num_tokens, 19);
    assert_eq!(lease.block_ids.len(), 5);
    assert!(
        prefill.stats.kv_usage() > 0.0,
        "blocks are kept for the puller"
    );
    let exported = prefill
        .export_kv(&lease.transfer_id)
        .await
        .expect("exported");
    assert!(
        prefill.export_kv(&lease.transfer_id).await.is_none(),
        "second pull finds nothing"
    );

    // A decoder with another block size imports it and continues exactly.
    let decode = engine(EngineConfig {
        block_size: 8,
        prefix_caching: false,
        ..Default::default()
    });
    let mut req = greedy(p, 6);
    req.imported = Some(ImportedKv {
        block_size: exported.block_size,
        num_tokens: exported.num_tokens,
        prompt_digest: exported.prompt_digest,
        payload: KvPayload::Host(exported.blocks),
    });
    let (toks, _) = run_all(&decode, vec![req]).await.remove(0);
    assert_eq!(toks, full);
}

#[tokio::test]
async fn imported_kv_is_never_cached_and_must_be_for_the_same_tokens() {
    use crate::transfer::prompt_digest;
    let cfg = || EngineConfig {
        block_size: 4,
        ..Default::default()
    };
    // Two prompts of one length; A's KV is exported by a prefill engine.
    let (a, v) = (prompt(1, 19), prompt(2, 19));
    let fresh = run_all(&engine(cfg()), vec![greedy(v.clone(), 6)])
        .await
        .remove(0)
        .0;
    let prefill = engine(cfg());
    let mut req = greedy(a.clone(), 1);
    req.remote_decode = true;
    let lease = run_all(&prefill, vec![req]).await.remove(0).1.kv_lease;
    let kv = prefill
        .export_kv(&lease.expect("lease").transfer_id)
        .await
        .expect("exported");
    assert_eq!(kv.prompt_digest, prompt_digest(&a));
    let imported = |digest: [u8; 32]| ImportedKv {
        block_size: kv.block_size,
        num_tokens: kv.num_tokens,
        prompt_digest: digest,
        payload: KvPayload::Host(kv.blocks.clone()),
    };
    let decode = engine(cfg());
    let recomputes = || decode.stats.kv_pull_recomputes.load(Ordering::Relaxed);
    // A's KV offered for V under A's digest: not imported; V is computed and answered exactly.
    let mut req = greedy(v.clone(), 6);
    req.imported = Some(imported(kv.prompt_digest));
    assert_eq!(run_all(&decode, vec![req]).await.remove(0).0, fresh);
    assert_eq!(recomputes(), 1);
    // A holder that lies (V's digest on A's KV) gets its KV imported into that one request, but none of it is
    // cached: later plain requests for V find nothing cached and answer as a fresh engine.
    let decode = engine(cfg());
    let mut req = greedy(v.clone(), 6);
    req.imported = Some(imported(prompt_digest(&v)));
    run_all(&decode, vec![req]).await;
    assert_eq!(decode.stats.kv_pull_recomputes.load(Ordering::Relaxed), 0);
    let (later, fin) = run_all(&decode, vec![greedy(v.clone(), 6)]).await.remove(0);
    assert_eq!((later, fin.cached_tokens), (fresh, 0));
}

#[tokio::test]
async fn device_offer_reserves_blocks_until_released_and_a_cpu_decoder_falls_back() {
    use crate::transfer::tcp::{self, DeviceImport, TcpPuller};
    use crate::transfer::{KvPuller, RemoteKv};
    let cfg = || EngineConfig {
        block_size: 4,
        prefix_caching: false,
        ..Default::default()
    };
    let p = prompt(5, 19);
    let full = run_all(&engine(cfg()), vec![greedy(p.clone(), 6)])
        .await
        .remove(0)
        .0;
    // A holder that claims a shared GPU pool: what is under test is the offer, the reservation and the fallback.
    let mut prefill = engine(cfg());
    let pool = DevicePool {
        host_id: "host-a".into(),
        k_handle: "00".repeat(64),
        v_handle: "11".repeat(64),
        n_layers: 2,
        n_kv_heads: 1,
        head_dim: 8,
        block_size: 4,
        num_blocks: 256,
    };
    prefill.device_pool = Some(Arc::new(pool.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let key = baton_protocol::FleetKey::from_bytes(&[7; 32]).unwrap();
    tokio::spawn(tcp::serve(l, prefill.clone(), key.clone()));
    let lease = |p: Vec<u32>| {
        let prefill = prefill.clone();
        async move {
            let mut req = greedy(p, 1);
            req.remote_decode = true;
            let lease = run_all(&prefill, vec![req]).await.remove(0).1.kv_lease;
            let lease = lease.expect("lease");
            RemoteKv {
                host: "127.0.0.1".into(),
                port,
                transfer_id: lease.transfer_id,
                block_ids: lease.block_ids,
                num_tokens: Some(lease.num_tokens),
                engine_id: None,
            }
        }
    };
    let decode = engine(cfg());
    let bounds = crate::transfer::PullBounds {
        prompt_tokens: p.len(),
        pool_blocks: decode.num_blocks,
        block_size: decode.block_size,
        floats_per_token: decode.kv_floats_per_token,
    };
    let puller = TcpPuller {
        timeout: Duration::from_secs(5),
        key: Some(key),
        device: Some(DeviceImport {
            host_id: "host-a".into(),
            stats: decode.stats.clone(),
        }),
    };

    let remote = lease(p.clone()).await;
    let imp = puller.pull(&remote, bounds).await.unwrap();
    let KvPayload::Device(d) = &imp.payload else {
        panic!("same host: expected a device offer, got {:?}", imp.payload)
    };
    assert_eq!((&d.pool, &d.src_blocks), (&pool, &remote.block_ids));
    assert!(
        prefill.stats.kv_usage() > 0.0,
        "reserved while the copy is pending"
    );
    // The CPU decoder cannot map a GPU pool: it recomputes (counted), answers exactly, turns device copies off and
    // lets the holder free its blocks.
    let mut req = greedy(p.clone(), 6);
    req.imported = Some(imp);
    assert_eq!(run_all(&decode, vec![req]).await.remove(0).0, full);
    assert_eq!(decode.stats.kv_pull_recomputes.load(Ordering::Relaxed), 1);
    assert!(decode.stats.kv_device_broken.load(Ordering::Relaxed));
    wait_for("released blocks back in the holder's pool", || {
        prefill.stats.kv_usage() == 0.0
    })
    .await;

    // Device copies are off now: the next pull streams the blocks through the host and imports them.
    let remote = lease(p.clone()).await;
    let imp = puller.pull(&remote, bounds).await.unwrap();
    assert!(matches!(imp.payload, KvPayload::Host(_)));
    let mut req = greedy(p, 6);
    req.imported = Some(imp);
    assert_eq!(run_all(&decode, vec![req]).await.remove(0).0, full);
    assert_eq!(decode.stats.kv_pull_recomputes.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn unpulled_leases_expire() {
    let e = engine(EngineConfig {
        block_size: 4,
        prefix_caching: false,
        kv_lease: Duration::from_millis(50),
        ..Default::default()
    });
    let mut req = greedy(prompt(2, 9), 1);
    req.remote_decode = true;
    let (_, fin) = run_all(&e, vec![req]).await.remove(0);
    assert!(fin.kv_lease.is_some());
    wait_for("the lease to expire", || {
        e.stats.kv_leases_expired.load(Ordering::Relaxed) == 1
    })
    .await;
    // Usage is published after the scheduler's next pass: awaited, not slept for.
    wait_for("the expired lease's blocks freed", || {
        e.stats.kv_usage() == 0.0
    })
    .await;
    assert_eq!(e.stats.kv_leases_expired.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn stop_strings_and_stop_tokens() {
    let e = engine(EngineConfig::default());
    let p = prompt(4, 8);
    let (toks, _) = run_all(&e, vec![greedy(p.clone(), 8)]).await.remove(0);
    let mut req = greedy(p, 8);
    req.params.stop_token_ids = vec![toks[3]];
    let (got, fin) = run_all(&e, vec![req]).await.remove(0);
    let first = toks.iter().position(|&t| t == toks[3]).unwrap();
    assert_eq!(got, toks[..=first].to_vec());
    assert_eq!(fin.reason, FinishReason::Stop);
    assert_eq!(fin.stop_reason, Some(StopReason::Token(toks[3])));
}

/// The text a request produced, and how it finished.
async fn text(e: &EngineHandle, req: GenerateRequest) -> (String, Finish) {
    let (_guard, mut rx) = e.submit(req).unwrap();
    let mut out = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => out.push_str(&t.text),
            Event::Done(f) => {
                out.push_str(&f.tail_text);
                return (out, f);
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done");
}

#[tokio::test]
async fn stop_strings_wait_for_min_tokens_and_text_before_is_kept() {
    let e = engine(EngineConfig::default());
    let p = prompt(4, 8);
    let (full, _) = text(&e, greedy(p.clone(), 10)).await;
    let first: String = full.chars().take(1).collect();
    assert!(!first.is_empty(), "the tiny model writes text");
    let mut req = greedy(p.clone(), 10);
    req.params.stop = vec![first.clone()];
    let (cut, fin) = text(&e, req).await;
    assert_eq!(
        (cut.as_str(), fin.stop_reason),
        ("", Some(StopReason::Text(first.clone())))
    );
    // Stopping is not allowed for the whole output: nothing is cut, the stop string's text included.
    let mut req = greedy(p, 10);
    req.params.stop = vec![first];
    req.params.min_tokens = 10;
    let (kept, fin) = text(&e, req).await;
    assert_eq!((kept, fin.reason), (full, FinishReason::Length));
}

#[tokio::test]
async fn a_sequence_that_outgrows_the_cache_ends_with_length() {
    let e = engine(EngineConfig {
        block_size: 4,
        num_blocks: 3,
        prefix_caching: false,
        ..Default::default()
    });
    let (toks, fin) = run_all(&e, vec![greedy(prompt(1, 5), 50)]).await.remove(0);
    assert_eq!(fin.reason, FinishReason::Length);
    assert_eq!(
        toks.len(),
        8,
        "12 slots: 5 prompt tokens + 7 computed outputs + 1 sampled"
    );
    assert_eq!(e.stats.kv_usage(), 0.0);
}

#[tokio::test]
async fn slo_plans_give_the_same_tokens_through_chunking_and_preemption() {
    // Budgets change which sequences a step holds and how big its chunks are, never what anyone gets: the SLO
    // plan (tight TPOT and TTFT, deadlines against arrival order) on a pool small enough to preempt answers
    // exactly as one request at a time.
    let reqs: Vec<_> = (0..5)
        .map(|i| greedy(prompt(i, 10 + 7 * i as usize), 12))
        .collect();
    let solo = engine(EngineConfig::default());
    let mut expected = Vec::new();
    for r in &reqs {
        expected.push(run_all(&solo, vec![r.clone()]).await.remove(0).0);
    }
    let small = engine(EngineConfig {
        block_size: 4,
        num_blocks: 14,
        max_batched_tokens: 8,
        ..Default::default()
    });
    let now = std::time::Instant::now();
    let mut guards = Vec::new();
    let mut futs = Vec::new();
    for (i, r) in reqs.into_iter().enumerate() {
        let slo = SeqSlo {
            tpot_ms: Some(1.0 + i as f64),
            ttft_ms: Some(5.0),
            first_token_due: Some(now + Duration::from_millis(500 - 100 * i as u64)),
        };
        let (g, rx) = small.submit_with(r, slo).unwrap();
        guards.push(g);
        futs.push(tokio::spawn(collect(rx)));
    }
    for (i, f) in futs.into_iter().enumerate() {
        let (toks, fin) = f.await.unwrap();
        assert_eq!(toks, expected[i], "request {i}");
        assert_eq!(fin.completion_tokens, 12);
    }
    // (Whether it preempted depends on how arrivals met steps; the hand-stepped SLO tests cover preemption.)
}
