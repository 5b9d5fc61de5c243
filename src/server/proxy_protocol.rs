//! The PROXY protocol, v1 (text) and v2 (binary), for `server.proxy_protocol`
//! (SPEC sections 3 and 14): an L4 load balancer starts every connection
//! with a header naming the client's address, which then stands for the
//! connection's peer (access log, `X-Forwarded-For`, `trusted_proxies`).
//!
//! `parse` is pure and bounded: it decides from at most `DECIDING_BYTES`
//! and allocates nothing. `read_header` takes exactly the header's bytes
//! off a socket (peeked first, then consumed), so the TLS handshake or the
//! HTTP request that follows is read by whoever reads next, untouched.
//! Format: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// The longest v1 header, `\r\n` included.
pub const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: signature, version and command, family and
/// transport, length of the rest.
const V2_FIXED: usize = 16;
/// The largest address block (two `AF_UNIX` paths).
const V2_UNIX_ADDRESSES: usize = 216;
/// Enough bytes for `parse` to decide on any header: a whole v1 line, or a
/// v2 header's fixed part and addresses (its TLVs are skipped unread).
pub const DECIDING_BYTES: usize = V2_FIXED + V2_UNIX_ADDRESSES;

/// A valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes on the connection, v2 TLVs included.
    pub len: usize,
    /// The client's address; `None`: the header names none (v2 `LOCAL`,
    /// a balancer's own health check; v1 `UNKNOWN`; v2 `UNSPEC` or
    /// `AF_UNIX`), and the connection's own peer stands.
    pub source: Option<SocketAddr>,
}

/// Why the bytes are not a PROXY header (the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a PROXY protocol header: {0}")]
pub struct Malformed(pub &'static str);

/// The header at the start of `bytes`: `Ok(None)` while the bytes so far
/// could still begin one and do not yet decide.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, Malformed> {
    match bytes.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(Malformed(
            "does not start with \"PROXY \" or the v2 signature",
        )),
    }
}

/// `PROXY TCP4|TCP6 <source> <destination> <source port> <destination
/// port>\r\n`, or `PROXY UNKNOWN …\r\n`; single spaces, at most 107 bytes.
fn parse_v1(bytes: &[u8]) -> Result<Option<Header>, Malformed> {
    let prefix = bytes.len().min(V1_PREFIX.len());
    if bytes[..prefix] != V1_PREFIX[..prefix] {
        return Err(Malformed("v1: does not start with \"PROXY \""));
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(newline) = memchr::memchr(b'\n', window) else {
        return if bytes.len() >= V1_MAX {
            Err(Malformed("v1: no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if newline < V1_PREFIX.len() || window[newline - 1] != b'\r' {
        return Err(Malformed("v1: line not ended by CRLF"));
    }
    let len = newline + 1;
    let line = &window[V1_PREFIX.len()..newline - 1];
    let mut fields = line.split(|&b| b == b' ');
    let family = fields.next().unwrap_or_default();
    if family == b"UNKNOWN" {
        // The sender could not tell; whatever follows is to be ignored.
        return Ok(Some(Header { len, source: None }));
    }
    let v6 = match family {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(Malformed("v1: protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(Malformed("v1: fewer than four fields"));
    let (source, destination) = (next()?, next()?);
    let (source_port, destination_port) = (next()?, next()?);
    if fields.next().is_some() {
        return Err(Malformed("v1: more than four fields"));
    }
    let source = v1_address(source, v6)?;
    v1_address(destination, v6)?;
    let port = v1_port(source_port)?;
    v1_port(destination_port)?;
    Ok(Some(Header {
        len,
        source: Some(SocketAddr::new(source, port)),
    }))
}

fn v1_address(field: &[u8], v6: bool) -> Result<IpAddr, Malformed> {
    let text = std::str::from_utf8(field).map_err(|_| Malformed("v1: address is not text"))?;
    let address = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    address.map_err(|_| Malformed("v1: address does not match its protocol"))
}

/// A decimal port, 0 to 65535, without sign or leading zero.
fn v1_port(field: &[u8]) -> Result<u16, Malformed> {
    let well_formed = matches!(field, [b'0'] | [b'1'..=b'9', ..])
        && field.len() <= 5
        && field.iter().all(u8::is_ascii_digit);
    let port = well_formed
        .then(|| field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
        .and_then(|n| u16::try_from(n).ok());
    port.ok_or(Malformed("v1: port is not a number from 0 to 65535"))
}

/// The 12-byte signature, version 2 with `LOCAL` or `PROXY`, a family and
/// transport, the length of the rest, then the addresses and any TLVs.
fn parse_v2(bytes: &[u8]) -> Result<Option<Header>, Malformed> {
    let signature = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..signature] != V2_SIGNATURE[..signature] {
        return Err(Malformed("v2: wrong signature"));
    }
    if bytes.len() < V2_FIXED {
        return Ok(None);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Err(Malformed("v2: version is not 2"));
    }
    let (family, transport) = (bytes[13] >> 4, bytes[13] & 0x0f);
    let rest = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let len = V2_FIXED + rest;
    let addresses = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => V2_UNIX_ADDRESSES,
        _ => return Err(Malformed("v2: unknown address family")),
    };
    if transport > 2 {
        return Err(Malformed("v2: unknown transport"));
    }
    match command {
        // The balancer's own connection (a health check): no addresses.
        0 => return Ok(Some(Header { len, source: None })),
        1 => {}
        _ => return Err(Malformed("v2: command is not LOCAL or PROXY")),
    }
    if transport == 2 {
        return Err(Malformed("v2: a datagram header on a stream"));
    }
    if rest < addresses {
        return Err(Malformed("v2: shorter than its address family's addresses"));
    }
    let Some(block) = bytes.get(V2_FIXED..V2_FIXED + addresses) else {
        return Ok(None);
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let source = match (family, transport) {
        // UNSPEC (either), or a path: no IP address to stand for the peer.
        (0 | 3, _) | (_, 0) => None,
        (1, _) => {
            let ip: [u8; 4] = block[..4].try_into().unwrap_or_default();
            Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port(8)))
        }
        _ => {
            let ip: [u8; 16] = block[..16].try_into().unwrap_or_default();
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port(32)))
        }
    };
    Ok(Some(Header { len, source }))
}

/// Why `read_header` closed a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("closed before a PROXY protocol header")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the header off `stream`, leaving the stream at the first byte
/// after it. The bytes are peeked until they decide, then exactly the
/// header's are consumed; nothing is read ahead, so the stream can go on
/// to the TLS handshake or to hyper as it is. The caller bounds the time.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ReadError> {
    let mut buf = [0u8; DECIDING_BYTES];
    // tokio has no synchronous `peek` for `try_io`; a second handle on the
    // same socket (one `dup`) has std's. It shares the non-blocking flag.
    let peeker = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
    let header = loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // Bytes that do not decide yet count as "would block": tokio then
        // waits for more to arrive instead of waking at once again.
        let peeked = stream.try_io(Interest::READABLE, || match peeker.peek(&mut buf)? {
            0 => Ok(Err(ReadError::Closed)),
            n => match parse(&buf[..n]) {
                Ok(Some(header)) => Ok(Ok(header)),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(malformed) => Ok(Err(malformed.into())),
            },
        });
        match peeked {
            Ok(decided) => break decided?,
            // The sender closed (or half-closed) before the header was
            // whole: no more bytes will come to decide on.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(ReadError::Closed)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error.into()),
        }
    };
    drop(peeker);
    let mut left = header.len;
    while left > 0 {
        let n = left.min(buf.len());
        stream.read_exact(&mut buf[..n]).await?;
        left -= n;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(line: &str) -> Result<Option<Header>, Malformed> {
        parse(line.as_bytes())
    }

    fn source(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    /// A v2 header: command, family/transport byte, address block, TLVs.
    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        let rest = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        header.extend_from_slice(&rest.to_be_bytes());
        header.extend_from_slice(addresses);
        header.extend_from_slice(tlvs);
        header
    }

    fn inet(source: [u8; 4], port: u16) -> Vec<u8> {
        let mut block = source.to_vec();
        block.extend_from_slice(&[10, 0, 0, 1]);
        block.extend_from_slice(&port.to_be_bytes());
        block.extend_from_slice(&8443u16.to_be_bytes());
        block
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_end_at_the_crlf() {
        let line = "PROXY TCP4 192.0.2.7 10.0.0.1 54321 8443\r\n";
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x16\x03\x01 the TLS ClientHello");
        assert_eq!(
            parse(&bytes),
            Ok(Some(Header {
                len: line.len(),
                source: source("192.0.2.7:54321"),
            }))
        );
        let line = "PROXY TCP6 2001:db8::7 ::1 0 65535\r\n";
        assert_eq!(
            v1(line),
            Ok(Some(Header {
                len: line.len(),
                source: source("[2001:db8::7]:0"),
            }))
        );
    }

    #[test]
    fn v1_unknown_keeps_the_connections_own_address() {
        for line in ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ::1 1 2\r\n"] {
            assert_eq!(
                v1(line),
                Ok(Some(Header {
                    len: line.len(),
                    source: None,
                }))
            );
        }
    }

    #[test]
    fn a_header_that_has_not_all_arrived_waits_for_more() {
        let line = "PROXY TCP4 192.0.2.7 10.0.0.1 54321 8443\r\n".as_bytes();
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Ok(None), "{end} bytes");
        }
        let header = v2(1, 0x11, &inet([192, 0, 2, 7], 1), &[]);
        for end in 0..header.len() {
            assert_eq!(parse(&header[..end]), Ok(None), "{end} bytes");
        }
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        let cases = [
            ("PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "does not start"),
            ("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "does not start"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
            ("PROXY\r\n", "does not start"),
            ("PROXY \r\n", "not TCP4"),
            ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "fewer"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more"),
            ("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "more"),
            ("PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n", "address"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "more"),
            ("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "address"),
            ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "address"),
            ("PROXY TCP4 1.2.3.4 5.6.7.888 1 2\r\n", "address"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "port"),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 999999999999\r\n", "port"),
        ];
        for (line, reason) in cases {
            match v1(line) {
                Err(Malformed(why)) => assert!(why.contains(reason), "{line:?}: {why}"),
                other => panic!("{line:?} gave {other:?}"),
            }
        }
        let invalid_utf8 = b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n";
        assert!(parse(invalid_utf8).is_err());
    }

    #[test]
    fn a_v1_line_longer_than_107_bytes_is_refused_without_waiting_for_more() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line).map(|h| h.map(|h| h.len)), Ok(Some(V1_MAX)));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(parse(&long), Err(Malformed("v1: no CRLF within 107 bytes")));
        long.extend_from_slice(b"\r\n");
        assert!(parse(&long).is_err());
    }

    #[test]
    fn anything_else_is_refused_at_its_first_byte() {
        // A TLS ClientHello, a plain request, a near-miss v2 signature.
        for bytes in [
            &b"\x16\x03\x01"[..],
            b"GET / HTTP/1.1\r\n",
            b"\r\n\r\n\0\r\nQUIT\r",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn v2_proxy_names_the_client_and_its_length_covers_the_tlvs() {
        let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let header = v2(1, 0x11, &inet([192, 0, 2, 7], 54321), &tlvs);
        assert_eq!(
            parse(&header),
            Ok(Some(Header {
                len: 16 + 12 + tlvs.len(),
                source: source("192.0.2.7:54321"),
            }))
        );
        // The TLVs need not have arrived: the addresses decide.
        assert_eq!(parse(&header[..28]).map(|h| h.map(|h| h.len)), Ok(Some(34)));

        let mut block = [0u8; 36];
        block[15] = 7;
        block[31] = 1;
        block[32..34].copy_from_slice(&443u16.to_be_bytes());
        let header = v2(1, 0x21, &block, &[]);
        assert_eq!(
            parse(&header).map(|h| h.and_then(|h| h.source)),
            Ok(source("[::7]:443"))
        );
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_connections_own_address() {
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Ok(Some(Header {
                len: 16,
                source: None
            }))
        );
        // LOCAL may still carry addresses; they are skipped, not believed.
        let local = v2(0, 0x11, &inet([192, 0, 2, 7], 1), &[]);
        assert_eq!(
            parse(&local),
            Ok(Some(Header {
                len: 28,
                source: None
            }))
        );
        let unspec = v2(1, 0x00, &[], &[1, 2, 3]);
        assert_eq!(
            parse(&unspec),
            Ok(Some(Header {
                len: 19,
                source: None
            }))
        );
        let unix = v2(1, 0x31, &[b'/'; 216], &[]);
        assert_eq!(parse(&unix).map(|h| h.map(|h| h.source)), Ok(Some(None)));
    }

    #[test]
    fn malformed_v2_headers_are_refused() {
        let good = inet([192, 0, 2, 7], 1);
        let mut wrong_version = v2(1, 0x11, &good, &[]);
        wrong_version[12] = 0x11;
        let mut short_length = v2(1, 0x11, &good, &[]);
        short_length[15] = 11;
        let mut bad_signature = v2(1, 0x11, &good, &[]);
        bad_signature[8] = b'q';
        let cases = [
            (bad_signature, "signature"),
            (wrong_version, "version"),
            (v2(2, 0x11, &good, &[]), "command"),
            (v2(0xf, 0x11, &good, &[]), "command"),
            (v2(1, 0x41, &good, &[]), "family"),
            (v2(1, 0x13, &good, &[]), "transport"),
            (v2(1, 0x12, &good, &[]), "datagram"),
            (short_length, "shorter"),
            (v2(1, 0x21, &good, &[]), "shorter"),
            (v2(1, 0x31, &[0; 100], &[]), "shorter"),
        ];
        for (header, reason) in cases {
            match parse(&header) {
                Err(Malformed(why)) => assert!(why.contains(reason), "{header:?}: {why}"),
                other => panic!("{header:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_v2_header_may_be_as_long_as_its_length_field_says() {
        let tlvs = vec![0u8; usize::from(u16::MAX) - 12];
        let header = v2(1, 0x11, &inet([192, 0, 2, 7], 1), &tlvs);
        assert_eq!(
            parse(&header[..DECIDING_BYTES]).map(|h| h.map(|h| h.len)),
            Ok(Some(16 + usize::from(u16::MAX)))
        );
    }

    /// `read_header` over a real socket: the header arrives in pieces, and
    /// what follows it is left for the next reader, byte for byte.
    #[tokio::test]
    async fn read_header_takes_exactly_the_header_off_the_socket() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tlvs = [0x04, 0x00, 0x02, b'h', b'i'];
        let header = v2(1, 0x11, &inet([192, 0, 2, 7], 4242), &tlvs);
        let sent = header.clone();
        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            for piece in sent.chunks(5) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"after").await.unwrap();
            client
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let read = read_header(&mut stream).await.unwrap();
        assert_eq!(read.len, header.len());
        assert_eq!(read.source, source("192.0.2.7:4242"));
        let mut after = [0u8; 5];
        stream.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"after");
        drop(client.await.unwrap());

        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"\x16\x03\x01\x02\x00").await.unwrap();
            client
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        assert!(matches!(
            read_header(&mut stream).await,
            Err(ReadError::Malformed(_))
        ));
        drop(client.await.unwrap());

        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"PROXY TCP4 1.2").await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        client.await.unwrap();
        assert!(matches!(
            read_header(&mut stream).await,
            Err(ReadError::Closed)
        ));
    }
}
