//! A TCP proxy on loopback that delays every byte by a fixed time in each
//! direction, for the round-trip benchmarks of `bench/run.sh` where `tc
//! netem` is not available.
//!
//! usage: delay_proxy LISTEN_PORT TARGET_HOST:PORT ONE_WAY_MS

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target, ms] = args.as_slice() else {
        return Err("usage: delay_proxy LISTEN_PORT TARGET_HOST:PORT ONE_WAY_MS".into());
    };
    let delay = Duration::from_millis(ms.parse()?);
    let listener = TcpListener::bind(("127.0.0.1", listen.parse::<u16>()?)).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let server = TcpStream::connect(target.as_str()).await?;
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::spawn(pipe(cr, sw, delay));
        tokio::spawn(pipe(sr, cw, delay));
    }
}
