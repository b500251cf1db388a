//! A user-space TCP proxy that delays traffic (`tc netem` does not exist on this kernel).
//!
//! The delay nemesis runs one inside a node's namespace and points an iptables `REDIRECT`
//! at it, so peers' connections to the node's RPC and HTTP ports pass through it. Source
//! addresses survive the redirect, so partition rules (which match on them) still apply.
//! Every chunk read is delivered `delay + random(0..jitter)` after it arrived, but never
//! before the chunk ahead of it: a stream stays in order, as TCP's would.

use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Serves every `listen=upstream` pair until killed.
pub async fn run(maps: &[(String, String)], delay: Duration, jitter: Duration) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (listen, upstream) in maps {
        let listener = TcpListener::bind(listen).await?;
        let upstream = upstream.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, delay, jitter).await;
                    }
                });
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn relay(client: TcpStream, server: TcpStream, delay: Duration, jitter: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, delay, jitter));
    let down = tokio::spawn(pipe(sr, cw, delay, jitter));
    // When either direction ends, the connection is over: drop both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to`, each chunk held back by the delay.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    jitter: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let extra = if jitter.is_zero() { Duration::ZERO } else { rand::rng().random_range(Duration::ZERO..jitter) };
        let at = (Instant::now() + delay + extra).max(last);
        last = at;
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes arrive intact and in order, no sooner than the delay.
    #[tokio::test]
    async fn delays_and_keeps_order() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = probe.local_addr().unwrap().to_string();
        drop(probe);
        let maps = vec![(listen.clone(), echo_addr)];
        tokio::spawn(async move { run(&maps, Duration::from_millis(100), Duration::from_millis(20)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(&listen).await.unwrap();
        let started = std::time::Instant::now();
        for i in 0..20u8 {
            c.write_all(&[i]).await.unwrap();
        }
        let mut got = vec![0u8; 20];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
        // Two passes through the proxy (there and back), each at least 100 ms.
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }
}
