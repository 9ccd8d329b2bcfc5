//! `baton up` end to end: the real model on CPU behind the gateway, a greedy
//! request, then SIGINT stops every process.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

mod support;
use support::{free_port, http, model};

#[test]
fn up_serves_the_model_through_the_gateway_and_stops_on_sigint() {
    let model = model();
    assert!(
        model.is_file(),
        "test model missing at {} (run tests/fetch-model.sh)",
        model.display()
    );
    // `baton up` exits at once if one of its ports was taken by another
    // process since it was checked free (nothing holds it): start it again on others.
    let (mut child, rx, mut printed, (gw, p, d)) = (0..5)
        .find_map(|_| start_up(&model))
        .expect("baton up did not start on 5 sets of free ports");
    // The ready message includes a curl that works, greedy (a sensible answer from a 135M model).
    while !printed.iter().any(|l| l.contains("\"temperature\":0")) {
        printed.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    assert!(printed.iter().any(|l| l.contains("curl -N")), "{printed:?}");
    // Logs to a pipe (the launcher's, the gateway's and both engines' share stdout here) carry no ANSI
    // colour codes, and there were some logs to check.
    assert!(printed.iter().any(|l| l.contains("INFO")), "{printed:?}");
    assert!(
        !printed.iter().any(|l| l.contains('\u{1b}')),
        "ANSI escape in piped logs: {printed:?}"
    );
    let (status, reply) = http(
        gw,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"smollm2","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":12,"temperature":0}"#,
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("Paris"), "{reply}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "exit status {s}");
            break;
        }
        assert!(Instant::now() < deadline, "baton up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The engines went with it.
    assert!(TcpStream::connect(("127.0.0.1", p)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", d)).is_err());
}

type Up = (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
    (u16, u16, u16),
);

/// `baton up` on fresh ports, once it printed that it is up (its lines so
/// far, and the rest to come); `None` if it exited first.
fn start_up(model: &std::path::Path) -> Option<Up> {
    let (gw, p, d) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["up", "--model"])
        .arg(model)
        .args([
            "--port",
            &gw.to_string(),
            "--prefill-port",
            &p.to_string(),
            "--decode-port",
            &d.to_string(),
        ])
        .args(["--kv-memory-mb", "64", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Baton is up")) {
        match rx.recv_timeout(Duration::from_secs(180).saturating_sub(start.elapsed())) {
            Ok(l) => printed.push(l),
            Err(RecvTimeoutError::Disconnected) if child.wait().is_ok() => return None,
            Err(_) => {
                let _ = child.kill();
                panic!("not up in time; printed: {printed:?}");
            }
        }
    }
    Some((child, rx, printed, (gw, p, d)))
}
