//! Every HTTP route's request body, as the route reads it before a model is involved, and a
//! compressed body as `Content-Encoding` decodes it.

use wedge_server::fuzz::{Route, decode_body, read_body};

use crate::text::vocabularies;

/// The first byte chooses the route (and for the KServe route whether a binary-data header
/// length follows, as two bytes); the rest is the body.
pub fn http_body(data: &[u8]) {
    let Some((&op, rest)) = data.split_first() else { return };
    let vocab = &vocabularies()[usize::from(op >> 4) % vocabularies().len()];
    let (route, body) = match op % 8 {
        0 => (Route::Embeddings, rest),
        1 => (Route::Infer(None), rest),
        2 => match rest {
            [a, b, body @ ..] => (Route::Infer(Some(usize::from(u16::from_le_bytes([*a, *b])))), body),
            _ => return,
        },
        3 => (Route::Chat, rest),
        4 => (Route::Completions, rest),
        5 => (Route::Tokenize, rest),
        6 => (Route::Detokenize, rest),
        _ => (Route::RepositoryIndex, rest),
    };
    let _ = read_body(route, body, vocab);
}

/// A body in a content coding (the first byte chooses it), decoded with a 64 KiB limit: the
/// output never exceeds the limit.
pub fn content_coding(data: &[u8]) {
    let Some((&op, body)) = data.split_first() else { return };
    let coding = ["zstd", "br", "gzip", "deflate", "x-gzip", "identity", "gzip, zstd", "GZIP"][usize::from(op % 8)];
    const MAX: usize = 64 << 10;
    if let Ok(Some(out)) = decode_body(coding, body, MAX) {
        assert!(out.len() <= MAX.max(body.len()), "a decoded body of {} bytes passed the limit", out.len());
    }
}
