//! The one HTTP/1.1 client of the tests: it sends the request target and headers exactly as
//! given (no normalisation, so path traversal and odd Host headers reach nginx as a hostile
//! client would send them), from this thread's namespace or from inside a test's namespace
//! (`*_in`), and a WebSocket client.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as the echo backend's JSON.
    pub fn echo(&self) -> Result<crate::http_backend::Echo> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not an echo (status {}): {}", self.status, self.text()))
    }
}

/// Connects and sends `method target` with `headers` (a `Host` is added unless given) and
/// `Connection: close`; returns the open connection for reading the response.
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    send_on(conn, addr, method, target, headers)
}

/// Sends the request on a connection made elsewhere (e.g. inside a namespace).
fn send_on(
    mut conn: TcpStream,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<TcpStream> {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .with_context(|| format!("send {method} {target} to {addr}"))?;
    Ok(conn)
}

/// One request, the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let conn = send(addr, method, target, headers)?;
    read_response(BufReader::new(conn), method)
        .with_context(|| format!("the answer to {method} {target} from {addr}"))
}

/// `GET target` with `headers`.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request(addr, "GET", target, headers)
}

/// One request from inside `ns` (the socket is made there), the whole response.
pub fn request_in(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let conn = ns.connect(addr, IO_TIMEOUT)?;
    let conn = send_on(conn, addr, method, target, headers)?;
    read_response(BufReader::new(conn), method)
        .with_context(|| format!("the answer to {method} {target} from {addr}"))
}

/// `GET target` with `headers` from inside `ns`.
pub fn get_in(
    ns: &Netns,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    request_in(ns, addr, "GET", target, headers)
}

/// `GET` of a full `http://ADDR:PORT/path` URL (as the router writes endpoints) from inside
/// `ns`.
pub fn get_url_in(ns: &Netns, url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("{url}: the host is not ADDR:PORT"))?;
    get_in(ns, addr, path, headers)
}

/// A response to `method`: status line, headers, and the body (to the end, or de-chunked).
fn read_response(mut reader: impl BufRead, method: &str) -> Result<Response> {
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = Vec::new();
    if method.eq_ignore_ascii_case("HEAD") {
    } else if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend_from_slice(&chunk);
        }
    } else {
        reader.read_to_end(&mut body).context("read the body")?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Reads a status line and headers.
pub fn read_head(reader: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("read the status line")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).context("read a header")?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .with_context(|| format!("bad header {l:?}"))?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// One chunk of a chunked body; `None` at the end.
pub fn read_chunk(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = String::new();
    reader.read_line(&mut line).context("read a chunk size")?;
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .with_context(|| format!("bad chunk size {line:?}"))?;
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk).context("read a chunk")?;
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf).context("read a chunk end")?;
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(chunk))
}

/// A WebSocket connected through `addr` to `path`, with extra request headers.
pub fn websocket(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<tungstenite::WebSocket<TcpStream>> {
    use tungstenite::client::IntoClientRequest as _;
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    for (n, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(n.as_bytes())?,
            tungstenite::http::HeaderValue::from_str(v)?,
        );
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => bail!("WebSocket handshake: {e}"),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            bail!("WebSocket handshake interrupted")
        }
    }
}

/// Sends `text` and returns the echoed message.
pub fn ws_roundtrip(ws: &mut tungstenite::WebSocket<TcpStream>, text: &str) -> Result<String> {
    ws.send(tungstenite::Message::text(text))?;
    loop {
        match ws.read()? {
            tungstenite::Message::Text(t) => return Ok(t.to_string()),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => bail!("unexpected WebSocket message {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_read_with_and_without_chunking() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 2\r\n\r\nhi";
        let r = read_response(raw, "GET").unwrap();
        assert_eq!(
            (r.status, r.header("a"), r.text().as_str()),
            (200, Some("b"), "hi")
        );
        let raw: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n\
            3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = read_response(raw, "GET").unwrap();
        assert_eq!((r.status, r.text().as_str()), (401, "abcde"));
    }
}
