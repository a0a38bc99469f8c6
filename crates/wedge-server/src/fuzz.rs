//! The server's input readers without a socket or a model, for the fuzz targets in `fuzz/`
//! (and their corpus replay in `wedge-fuzz`): every route's request body as the route reads
//! it, a compressed body as `Content-Encoding` decodes it, and the server-sent-event writer of
//! streamed answers. Not a stable API.

use bytes::Bytes;
use serde_json::Value;
use wedge::Vocab;
use wedge::openai::{Endpoint, Fields, Logprobs, Request, object};
use wedge_serve::{GenEvent, ServeError};

use crate::{api, compress, llm, parse_json};

/// A route whose body [`read_body`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v2/models/{name}/infer`, with `Inference-Header-Content-Length` when given.
    Infer(Option<usize>),
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /tokenize`.
    Tokenize,
    /// `POST /detokenize`.
    Detokenize,
    /// `POST /v2/repository/index`.
    RepositoryIndex,
}

/// Reads `body` as `route` does before it reaches a model (`vocab` stands for the language
/// model's vocabulary, with at most 4 choices); the error is the 400's message.
pub fn read_body(route: Route, body: &[u8], vocab: &Vocab) -> Result<(), ServeError> {
    let bad = ServeError::BadInput;
    match route {
        Route::Embeddings => {
            let r: api::OpenAiRequest = parse_json(body)?;
            r.encoding()?;
            api::openai_inputs(r.input)?;
        }
        Route::Infer(header_len) => {
            api::Infer::parse(body, header_len)?;
        }
        Route::Chat | Route::Completions => {
            let endpoint = if route == Route::Chat { Endpoint::Chat } else { Endpoint::Completions };
            let map = object(body).map_err(bad)?;
            let f = Fields(&map);
            f.string("user").map_err(bad)?;
            f.string("model").map_err(bad)?;
            Request::parse(&map, endpoint, vocab, 4).map_err(bad)?;
        }
        Route::Tokenize => {
            llm::token_ids_of(&Fields(&object(body).map_err(bad)?), vocab)?;
        }
        Route::Detokenize => {
            llm::text_of(&Fields(&object(body).map_err(bad)?), vocab)?;
        }
        Route::RepositoryIndex => {
            if !body.is_empty() {
                parse_json::<Value>(body)?;
            }
        }
    }
    Ok(())
}

/// A request body's content coding (`Content-Encoding` value) decoded with the limit `max`,
/// as the server decodes it: `Ok(None)` for a coding it refuses (415), `Err` for a body it
/// refuses (400 corrupt, 413 too large).
pub fn decode_body(content_encoding: &str, body: &[u8], max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut headers = hyper::HeaderMap::new();
    let Ok(value) = hyper::header::HeaderValue::from_str(content_encoding) else { return Ok(None) };
    headers.insert(hyper::header::CONTENT_ENCODING, value);
    match compress::request_coding(&headers) {
        Ok(None) => Ok(Some(body.to_vec())),
        Ok(Some(coding)) => match compress::decode(coding, body, max) {
            Ok(out) => Ok(Some(out)),
            Err(compress::DecodeError::TooLarge) => Err(format!("larger than {max} bytes")),
            Err(e) => Err(format!("{e:?}")),
        },
        Err(_) => Ok(None),
    }
}

/// The server-sent events of a streamed answer to `endpoint` with `n` choices, from the
/// choices' events in the order given (`vocab` spells log-probabilities).
pub fn sse_frames(
    endpoint: Endpoint,
    n: usize,
    include_usage: bool,
    logprobs: Logprobs,
    events: Vec<(usize, GenEvent)>,
    vocab: &Vocab,
) -> Vec<u8> {
    let mut writer = llm::SseWriter::new(endpoint, "fuzz", "model", n, include_usage, logprobs);
    let mut out: Vec<Bytes> = writer.head();
    for (i, event) in events {
        out.push(writer.event(i, event, Some(vocab)));
    }
    out.concat()
}
