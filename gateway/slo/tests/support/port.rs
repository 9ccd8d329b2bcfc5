//! Ports for servers that tests start as child processes (`redis-server`,
//! `baton engine`, `baton up`), which cannot be handed a bound listener.
//!
//! Binding port 0 and dropping the listener races: port 0 draws from the
//! kernel's ephemeral range, the same range every outgoing connection takes
//! its local port from, so a connection (these tests make many) can take the
//! port before the child binds it. Ports here come from below the ephemeral
//! range, which the kernel never hands out by itself; each is handed out once
//! per test process, from a start that differs between processes, and is
//! checked free (bound and released) when handed out.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out (above the well-known and most fixed ones).
const LOW: u32 = 10_000;

/// A port nothing listens on now, never handed out before in this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_start().max(LOW + 1_000);
    let span = high - LOW;
    // Test processes running side by side start apart.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (offset + i) % span;
        let port = u16::try_from(port).expect("ports below the ephemeral range fit u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range ({LOW}..{high})");
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(65_535)
}
