//! What the peer benchmarks share with smtp-tls's `blast` example: the
//! command line, the message and the closing line.

use std::error::Error;

/// `HOST:PORT COUNT SIZE` from the command line.
pub struct Args {
    pub host: String,
    pub port: u16,
    pub count: usize,
    pub size: usize,
}

impl Args {
    pub fn parse(name: &str) -> Result<Self, Box<dyn Error>> {
        let args: Vec<String> = std::env::args().collect();
        let [_, target, count, size] = args.as_slice() else {
            return Err(format!("usage: {name} HOST:PORT COUNT SIZE").into());
        };
        let (host, port) = target.rsplit_once(':').ok_or("HOST:PORT")?;
        Ok(Self {
            host: host.to_owned(),
            port: port.parse()?,
            count: count.parse()?,
            size: size.parse()?,
        })
    }
}

/// The message `blast` sends, less its final CRLF: both libraries append
/// `\r\n.\r\n` themselves, so the bytes on the wire are the same as blast's.
pub fn body(size: usize) -> Vec<u8> {
    let mut body = b"Subject: blast\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(
            b"012345678901234567890123456789012345678901234567890123456789012345678901234567\r\n",
        );
    }
    body.truncate(size.max(20));
    body
}

/// Whether `PEER_NODELAY=1` asks for TCP_NODELAY on the session's socket.
pub fn nodelay() -> bool {
    std::env::var("PEER_NODELAY").is_ok_and(|v| v == "1")
}

/// Prints blast's closing line; an error unless every message was accepted.
pub fn report(args: &Args, accepted: usize, elapsed: f64) -> Result<(), Box<dyn Error>> {
    let Args { count, size, .. } = *args;
    println!(
        "{accepted}/{count} messages of {size} bytes in {elapsed:.3} s: {:.0} messages/s, {:.1} MiB/s",
        accepted as f64 / elapsed,
        (accepted * size) as f64 / elapsed / 1048576.0
    );
    if accepted == count {
        Ok(())
    } else {
        Err(format!("{} of {count} messages not accepted", count - accepted).into())
    }
}
