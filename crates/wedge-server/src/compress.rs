//! HTTP content codings: choosing one from `Accept-Encoding`, compressing whole responses and
//! streams (flushed frame by frame, so a server-sent event reaches the client when it is
//! written), and decoding compressed request bodies under a limit on their decompressed size.

use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::Body;

/// A content coding wedge speaks, in the order it prefers them when a client accepts several
/// equally: zstd and brotli compress JSON of floats best, gzip is what everyone has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Zstd,
    Br,
    Gzip,
    /// HTTP's `deflate`: the zlib format (RFC 1950), as browsers and Triton's client send it.
    Deflate,
}

const PREFERENCE: [Coding; 4] = [Coding::Zstd, Coding::Br, Coding::Gzip, Coding::Deflate];

/// Whole responses above this many bytes are compressed off the async workers.
const BLOCKING_ABOVE: usize = 256 << 10;

/// zstd frames may ask the decoder for a window of up to 2^this bytes (8 MiB; the format
/// allows 2 GiB, which a hostile body would use to make the decoder allocate).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

impl Coding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn parse(token: &str) -> Option<Coding> {
        PREFERENCE.into_iter().find(|c| token.eq_ignore_ascii_case(c.name())).or_else(|| {
            // (an old alias of gzip that clients may still send)
            token.eq_ignore_ascii_case("x-gzip").then_some(Coding::Gzip)
        })
    }
}

/// The coding to answer in: the acceptable one (q > 0) with the highest weight, ties going to
/// wedge's preference; `*` stands for every coding not named. None: send the body as it is.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut named: [Option<u16>; 4] = [None; 4];
    let mut star = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .map_or(Some(1000), parse_q);
            let Some(q) = q else { continue };
            if token == "*" {
                star = Some(q);
            } else if let Some(c) = Coding::parse(token) {
                let i = PREFERENCE.iter().position(|p| *p == c).unwrap_or(0);
                named[i] = Some(q);
            }
        }
    }
    let mut best: Option<(u16, Coding)> = None;
    for (i, c) in PREFERENCE.into_iter().enumerate() {
        let q = named[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A quality value (`0` to `1` with at most three decimals) in thousandths; None when malformed.
fn parse_q(q: &str) -> Option<u16> {
    let q = q.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac),
        "1" if frac == 0 => Some(1000),
        _ => None,
    }
}

/// A compressor writing into memory, from which the bytes made so far can be taken.
enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
}

impl Encoder {
    /// Levels chosen for speed: a response is compressed while its client waits.
    fn new(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, 4, 22))),
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(4))),
            Coding::Deflate => {
                Encoder::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(4)))
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Zstd(w) => w,
            Encoder::Br(w) => w.as_mut(),
            Encoder::Gzip(w) => w,
            Encoder::Deflate(w) => w,
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Zstd(w) => w.get_mut(),
            Encoder::Br(w) => w.get_mut(),
            Encoder::Gzip(w) => w.get_mut(),
            Encoder::Deflate(w) => w.get_mut(),
        }
    }

    /// Compresses `data` and flushes, so that everything written so far can be decoded from
    /// what has been taken; returns the bytes made since the last call.
    fn write_flushed(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let w = self.writer();
        w.write_all(data)?;
        w.flush()?;
        Ok(std::mem::take(self.output()))
    }

    /// Ends the stream; returns its last bytes.
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Zstd(w) => w.finish(),
            Encoder::Br(w) => Ok(w.into_inner()),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Deflate(w) => w.finish(),
        }
    }
}

/// `data` compressed whole.
pub(crate) fn compress(coding: Coding, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = Encoder::new(coding)?;
    e.writer().write_all(data)?;
    e.finish()
}

/// Compresses `resp` in `coding` when it is worth it: whole bodies of at least `min_bytes`,
/// and every stream. Responses that may be compressed say `Vary: accept-encoding`.
pub(crate) async fn encode(mut resp: Response<Body>, coding: Option<Coding>, min_bytes: usize) -> Response<Body> {
    let status = resp.status();
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return resp;
    }
    resp.headers_mut().append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Some(coding) = coding else { return resp };
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let size = resp.body().size_hint().exact();
    if size.is_some_and(|n| n < min_bytes as u64) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let body = match size {
        Some(n) => {
            let Ok(whole) = body.collect().await.map(|c| c.to_bytes());
            let compressed = if n > BLOCKING_ABOVE as u64 {
                let data = whole.clone();
                tokio::task::spawn_blocking(move || compress(coding, &data))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            } else {
                compress(coding, &whole)
            };
            match compressed {
                Ok(c) => crate::full(c),
                Err(e) => {
                    tracing::warn!("{} compression failed, answering uncompressed: {e}", coding.name());
                    return Response::from_parts(parts, crate::full(whole));
                }
            }
        }
        None => match Encoder::new(coding) {
            Ok(encoder) => Encoded { inner: body, encoder: Some(encoder) }.boxed_unsync(),
            Err(e) => {
                tracing::warn!("{} compression failed, answering uncompressed: {e}", coding.name());
                return Response::from_parts(parts, body);
            }
        },
    };
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
}

/// A streamed body compressed frame by frame, each frame flushed.
struct Encoded {
    inner: Body,
    /// None once the stream has ended.
    encoder: Option<Encoder>,
}

impl hyper::body::Body for Encoded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else { return Poll::Ready(None) };
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    let last = this.encoder.take().map(Encoder::finish);
                    return match last {
                        Some(Ok(bytes)) if !bytes.is_empty() => Poll::Ready(Some(Ok(Frame::data(bytes.into())))),
                        Some(Err(e)) => {
                            tracing::warn!("ending a compressed stream: {e}");
                            Poll::Ready(None)
                        }
                        _ => Poll::Ready(None),
                    };
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // (trailers pass as they are)
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            match encoder.write_flushed(&data) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes.into())))),
                Err(e) => {
                    // (cannot happen writing to memory; the client sees a cut stream)
                    tracing::warn!("compressing a stream: {e}");
                    this.encoder = None;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Why a compressed request body was refused.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// A coding wedge does not speak, or more than one.
    Unsupported(String),
    /// It decompresses to more than the limit.
    TooLarge,
    /// Not valid data in its coding.
    Corrupt(String),
}

/// The coding of a request body (`Content-Encoding`); None for `identity` or none given.
pub(crate) fn request_coding(headers: &HeaderMap) -> Result<Option<Coding>, DecodeError> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| DecodeError::Unsupported("a non-ASCII Content-Encoding".into()))?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("identity")) {
            let c = Coding::parse(token).ok_or_else(|| {
                DecodeError::Unsupported(format!("Content-Encoding `{token}`: use zstd, br, gzip or deflate"))
            })?;
            codings.push(c);
        }
    }
    match codings.as_slice() {
        [] => Ok(None),
        [c] => Ok(Some(*c)),
        _ => Err(DecodeError::Unsupported("one Content-Encoding at most".into())),
    }
}

/// `data` decompressed, refused as soon as it grows past `max` bytes (so a small body that
/// would expand to gigabytes costs `max` at most).
pub(crate) fn decode(coding: Coding, data: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let corrupt = |e: io::Error| DecodeError::Corrupt(format!("the {} body does not decode: {e}", coding.name()));
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(corrupt)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            Box::new(d)
        }
        Coding::Br => Box::new(brotli::Decompressor::new(data, 4096)),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
    };
    let mut out = Vec::new();
    reader.take((max as u64).saturating_add(1)).read_to_end(&mut out).map_err(corrupt)?;
    if out.len() > max {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        negotiate(&h)
    }

    #[test]
    fn accept_encoding_weights_and_preference() {
        assert_eq!(negotiate(&HeaderMap::new()), None);
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(accept("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(accept("gzip;q=0.5, br;q=0.4"), Some(Coding::Gzip));
        assert_eq!(accept("zstd;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("*"), Some(Coding::Zstd));
        assert_eq!(accept("*;q=0.1, br;q=0.9"), Some(Coding::Br));
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("GZIP"), Some(Coding::Gzip));
        assert_eq!(accept("x-gzip"), Some(Coding::Gzip));
        // malformed weights drop their item, not the header
        assert_eq!(accept("br;q=2, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(accept("br;q=0.0001, deflate"), Some(Coding::Deflate));
        assert_eq!(accept("compress, sdch"), None);
    }

    #[test]
    fn every_coding_round_trips_whole_and_streamed() {
        let text: Vec<u8> = (0..20_000u32).flat_map(|i| format!("{{\"i\":{i}}},").into_bytes()).collect();
        for c in PREFERENCE {
            let packed = compress(c, &text).unwrap();
            assert!(packed.len() < text.len() / 4, "{c:?}: {} of {}", packed.len(), text.len());
            assert_eq!(decode(c, &packed, text.len()).unwrap(), text, "{c:?}");
            assert!(matches!(decode(c, &packed, text.len() - 1), Err(DecodeError::TooLarge)), "{c:?}");
            assert!(
                matches!(decode(c, &packed[..packed.len() / 2], usize::MAX), Err(DecodeError::Corrupt(_))),
                "{c:?}"
            );

            // streamed: after each flushed piece, everything written so far decodes
            let mut e = Encoder::new(c).unwrap();
            let mut sent = Vec::new();
            for (k, chunk) in text.chunks(7_001).enumerate() {
                sent.extend(e.write_flushed(chunk).unwrap());
                let mut so_far = Vec::new();
                let mut d: Box<dyn Read> = match c {
                    Coding::Zstd => Box::new(zstd::stream::read::Decoder::new(&sent[..]).unwrap()),
                    Coding::Br => Box::new(brotli::Decompressor::new(&sent[..], 4096)),
                    Coding::Gzip => Box::new(flate2::read::GzDecoder::new(&sent[..])),
                    Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&sent[..])),
                };
                // (a stream not yet ended reads as far as it goes, then reports its end early)
                let _ = d.read_to_end(&mut so_far);
                let written = k * 7_001 + chunk.len();
                assert_eq!(so_far, text[..written], "{c:?} after {written} bytes");
            }
            sent.extend(e.finish().unwrap());
            assert_eq!(decode(c, &sent, usize::MAX).unwrap(), text, "{c:?}");
        }
    }

    #[test]
    fn request_codings() {
        let mut h = HeaderMap::new();
        assert!(matches!(request_coding(&h), Ok(None)));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("identity"));
        assert!(matches!(request_coding(&h), Ok(None)));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZip"));
        assert!(matches!(request_coding(&h), Ok(Some(Coding::Gzip))));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("compress"));
        assert!(matches!(request_coding(&h), Err(DecodeError::Unsupported(m)) if m.contains("compress")));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip, br"));
        assert!(matches!(request_coding(&h), Err(DecodeError::Unsupported(_))));
    }

    #[test]
    fn a_zip_bomb_costs_the_limit_only() {
        let zeros = vec![0u8; 16 << 20];
        for c in PREFERENCE {
            let bomb = compress(c, &zeros).unwrap();
            assert!(bomb.len() < 1 << 20, "{c:?}: {}", bomb.len());
            assert!(matches!(decode(c, &bomb, 1 << 20), Err(DecodeError::TooLarge)), "{c:?}");
        }
    }
}
