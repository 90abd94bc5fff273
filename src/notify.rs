//! systemd's readiness protocol (`Type=notify`): datagrams such as `READY=1` to the socket
//! `$NOTIFY_SOCKET` names, a path or (with a leading `@`) an abstract Linux socket name.
//! Without the variable every call is a no-op, so `ecsd serve` behaves the same outside
//! systemd.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `message` (newline-separated `KEY=value` assignments) to `socket`, the value of
/// `NOTIFY_SOCKET`. `None` (not started by systemd) sends nothing.
pub fn notify(socket: Option<&str>, message: &str) -> io::Result<()> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else { return Ok(()) };
    let sock = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// Waits until the HTTP server at `addr` answers a request (any status), for up to `within`:
/// readiness means a client would get an answer, not only that a socket is bound.
pub async fn answers(addr: SocketAddr, within: Duration) -> io::Result<()> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: ecsd\r\nConnection: close\r\n\r\n").await?;
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await?;
        if &head[..5] == b"HTTP/" {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, "the answer is not HTTP"))
        }
    };
    tokio::time::timeout(within, ask).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("{target} did not answer within {within:?}"))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        notify(Some(path.to_str().unwrap()), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ecsd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify(Some(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_a_missing_one_is_an_error() {
        notify(None, "READY=1").unwrap();
        notify(Some(""), "READY=1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone.sock");
        assert!(notify(Some(missing.to_str().unwrap()), "READY=1").is_err());
    }

    #[tokio::test]
    async fn answers_waits_for_an_http_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Bound but not answering: not ready.
        assert!(answers(addr, Duration::from_millis(200)).await.is_err());
        // Answers every connection, the abandoned first one (still queued) included.
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        answers(addr, Duration::from_secs(5)).await.unwrap();
    }
}
