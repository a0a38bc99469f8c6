//! A language model's vocabulary: its tokenizer, special tokens and chat template, from a GGUF
//! file's `tokenizer.*` metadata, read the way llama.cpp reads them.
//!
//! The tokenizer is a `tokenizers` byte-level BPE over the file's tokens and merges, split first
//! by the pre-tokenizer that `tokenizer.ggml.pre` names (llama.cpp's rules for each), or, for a
//! SentencePiece vocabulary (`tokenizer.ggml.model = llama`), a BPE with byte fallback whose
//! merges follow the pieces' scores, as llama.cpp segments such text. A Hugging Face folder's
//! `tokenizer.json` is taken as it is ([`Vocab::from_hf`]). CONTROL
//! tokens (`<|im_start|>`) become special added tokens, found in text as llama.cpp finds them
//! when it parses specials; USER_DEFINED tokens are added tokens too. A tokenizer model or `pre`
//! that wedge does not know is refused with the list of those it does, never guessed. The chat
//! template (Jinja) renders through minijinja with a bounded amount of work, so a hostile
//! template in a file cannot hang its caller.

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab as BpeVocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};
use wedge_core::gguf::{Array, Gguf, Value};

use crate::{Error, Result};

/// One message of a chat, as OpenAI's API shapes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

/// The values of `tokenizer.ggml.pre` wedge knows.
pub const KNOWN_PRE: [&str; 4] = ["gpt-2", "smollm", "qwen2", "llama-bpe"];

/// Llama 3's split (`llama-bpe`); Qwen2's differs in taking digits one at a time.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Template steps a chat template may take (minijinja's fuel): far more than any real
/// template needs for a long conversation, far fewer than a hang.
const TEMPLATE_FUEL: u64 = 5_000_000;

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// The `tokenizers` pre-tokenizer for a `tokenizer.ggml.pre`, and whether merges are skipped
/// for words that are whole tokens (llama.cpp does so for Llama 3).
fn pre_tokenizer(pre: &str) -> Option<Result<(PreTokenizerWrapper, bool)>> {
    let byte_level = |use_regex: bool| PreTokenizerWrapper::from(ByteLevel::new(false, false, use_regex));
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| tok_err(format!("the split of `{pre}`: {e}")))?;
        Ok(split.into())
    };
    let sequence = |parts: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::from(PreSequence::new(parts));
    Some(match pre {
        // GPT-2's own split is ByteLevel's regex
        "gpt-2" => Ok((byte_level(true), false)),
        // digits one at a time, then GPT-2's split
        "smollm" => Ok((sequence(vec![Digits::new(true).into(), byte_level(true)]), false)),
        "qwen2" => split(QWEN2_SPLIT).map(|s| (sequence(vec![s, byte_level(false)]), false)),
        "llama-bpe" => split(LLAMA3_SPLIT).map(|s| (sequence(vec![s, byte_level(false)]), true)),
        _ => return None,
    })
}

fn gguf_strings<'g>(g: &'g Gguf<'_>, key: &str) -> Result<&'g [String]> {
    match g.get(key) {
        Some(Value::Array(Array::String(v))) => Ok(v),
        Some(_) => Err(tok_err(format!("{key} is not an array of strings"))),
        None => Err(tok_err(format!("{key} is missing"))),
    }
}

/// The parts of a `tokenizers` tokenizer that differ between the vocabulary kinds.
struct TokenizerParts {
    bpe: BPE,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    decoder: DecoderWrapper,
}

fn bpe_err(e: impl std::fmt::Display) -> Error {
    tok_err(format!("building the tokenizer: {e}"))
}

/// The `tokenizers` parts of a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`): the
/// file's merges, split first by the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(g: &Gguf<'_>, vocab: BpeVocab) -> Result<TokenizerParts> {
    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
        tok_err(format!(
            "tokenizer.ggml.pre `{pre}` is not one wedge knows ({}): its splitting rules would be a guess",
            KNOWN_PRE.join(", ")
        ))
    })??;
    let merges = gguf_strings(g, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).ignore_merges(ignore_merges).build().map_err(bpe_err)?;
    Ok(TokenizerParts {
        bpe,
        normalizer: None,
        pre_tokenizer: Some(pre_tokenizer),
        decoder: ByteLevel::new(true, true, true).into(),
    })
}

/// The `tokenizers` parts of a SentencePiece vocabulary (`tokenizer.ggml.model = llama`), made
/// to segment as llama.cpp's SPM tokenizer does: spaces become `▁` (one put in front of the
/// text, and after each special token, unless `add_space_prefix` is false), then adjacent
/// pieces merge, the pair whose joined piece scores highest first (leftmost among equals); a
/// character no piece covers falls back to its UTF-8 bytes (`<0xXX>` tokens). As BPE merges:
/// every split of a NORMAL piece into two pieces, ranked by the joined piece's score. (This
/// reaches every piece whose characters are pieces themselves, which SentencePiece's training
/// makes sure of; llama.cpp could also reach a piece spelled with a character outside the
/// vocabulary.)
fn sentencepiece(g: &Gguf<'_>, tokens: &[String], types: &[i64], vocab: BpeVocab) -> Result<TokenizerParts> {
    let scores = match g.get("tokenizer.ggml.scores").and_then(Value::as_array).and_then(Array::to_f64) {
        Some(v) if v.len() == tokens.len() => v,
        _ => return Err(tok_err("tokenizer.ggml.scores is not one number per token")),
    };
    let add_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
    let unk = match g.get("tokenizer.ggml.unknown_token_id").and_then(Value::as_u64) {
        Some(i) => tokens.get(i as usize).cloned(),
        None => types.iter().position(|t| *t == UNKNOWN).map(|i| tokens[i].clone()),
    };
    // the first id of a piece that appears twice is the one looked up, as in the vocabulary
    let id_of = |piece: &str| vocab.get(piece).map(|&i| i as usize);
    let mut ranked: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != NORMAL || id_of(piece) != Some(id) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(at);
            let normal = |p: &str| id_of(p).is_some_and(|i| types[i] == NORMAL);
            if normal(a) && normal(b) {
                ranked.push((scores[id], id, a, b));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = ranked.iter().map(|(_, _, a, b)| (a.to_string(), b.to_string())).collect();
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(bpe_err);
    let mut normalizers = Vec::new();
    if add_prefix {
        normalizers.push(Prepend::new("▁".to_string()).into());
    }
    normalizers.push(replace(" ", "▁")?.into());
    let decoders = vec![replace("▁", " ")?.into(), ByteFallback::new().into(), Fuse::new().into()];
    Ok(TokenizerParts {
        bpe: bpe.build().map_err(bpe_err)?,
        normalizer: Some(NormalizerSequence::new(normalizers).into()),
        pre_tokenizer: None,
        decoder: DecoderSequence::new(decoders).into(),
    })
}

/// A language model's tokenizer, special tokens and chat template.
#[derive(Clone)]
pub struct Vocab {
    /// Finds special tokens written in the text.
    tokenizer: Tokenizer,
    /// Takes them as plain text.
    plain: Tokenizer,
    tokens: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    template: Option<String>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("tokens", &self.tokens)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

impl Vocab {
    /// Reads `tokenizer.ggml.*` and `tokenizer.chat_template` from a GGUF file.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Vocab> {
        let model = g.str("tokenizer.ggml.model")?;
        if !matches!(model, "gpt2" | "llama") {
            return Err(tok_err(format!(
                "tokenizer.ggml.model `{model}` is not supported (wedge reads `gpt2`: byte-level BPE, and `llama`: \
                 SentencePiece)"
            )));
        }
        let strings = |key: &str| match g.get(key) {
            Some(Value::Array(Array::String(v))) => Ok(v),
            Some(_) => Err(tok_err(format!("{key} is not an array of strings"))),
            None => Err(tok_err(format!("{key} is missing"))),
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => v
                .as_array()
                .and_then(Array::to_i64)
                .filter(|t| t.len() == tokens.len())
                .ok_or_else(|| tok_err("tokenizer.ggml.token_type is not one integer per token"))?,
        };
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(tok_err(format!("tokenizer.ggml.tokens has {} tokens", tokens.len())));
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                    _ => Err(tok_err(format!("{key} {v:?} is not a token of the {} in the vocabulary", tokens.len()))),
                },
            }
        };
        let (bos, eos, eot) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
            id("tokenizer.ggml.eot_token_id")?,
        );
        let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(tok_err("tokenizer.ggml.add_bos_token is set, but there is no bos_token_id"));
        }

        // the first id of a string that appears twice keeps it, as llama.cpp's lookup does
        let mut vocab = BpeVocab::default();
        vocab.reserve(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let added: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, CONTROL | USER_DEFINED))
            .map(|(i, t)| AddedToken::from(tokens[i].clone(), *t == CONTROL).normalized(false))
            .collect();
        let parts = if model == "gpt2" { byte_level_bpe(g, vocab)? } else { sentencepiece(g, tokens, &types, vocab)? };
        let mut tokenizer = Tokenizer::new(parts.bpe);
        tokenizer.with_normalizer(parts.normalizer).with_pre_tokenizer(parts.pre_tokenizer);
        tokenizer.with_decoder(Some(parts.decoder));
        tokenizer.add_tokens(&added);
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);
        let template = g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        Ok(Vocab { tokenizer, plain, tokens: tokens.len(), bos, eos, eot, add_bos, template })
    }

    /// Reads a Hugging Face `tokenizer.json` and, when there is one, `tokenizer_config.json`
    /// (BOS and EOS tokens, `add_bos_token`, `chat_template`). Without `add_bos_token`, BOS is
    /// added when the tokenizer's own post-processor adds it.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Vocab> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(|e| tok_err(format!("tokenizer.json: {e}")))?;
        let cfg: serde_json::Value = match tokenizer_config {
            Some(b) => serde_json::from_slice(b).map_err(|e| tok_err(format!("tokenizer_config.json: {e}")))?,
            None => serde_json::Value::Null,
        };
        let tokens = tokenizer.get_vocab_size(true);
        // a special token is a string or `{"content": ...}`
        let id = |key: &str| -> Result<Option<u32>> {
            let text = match cfg.get(key) {
                Some(serde_json::Value::String(t)) => t.as_str(),
                Some(v) => match v.get("content").and_then(serde_json::Value::as_str) {
                    Some(t) => t,
                    None => return Ok(None),
                },
                None => return Ok(None),
            };
            tokenizer
                .token_to_id(text)
                .map(Some)
                .ok_or_else(|| tok_err(format!("tokenizer_config.json: {key} {text:?} is not a token")))
        };
        let (bos, eos) = (id("bos_token")?, id("eos_token")?);
        let add_bos = match cfg.get("add_bos_token").and_then(serde_json::Value::as_bool) {
            Some(v) => v,
            None => bos.is_some_and(|b| tokenizer.encode("a", true).is_ok_and(|e| e.get_ids().first() == Some(&b))),
        };
        if add_bos && bos.is_none() {
            return Err(tok_err("tokenizer_config.json sets add_bos_token, but names no bos_token"));
        }
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            // a list of named templates: the default one
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);
        Ok(Vocab { tokenizer, plain, tokens, bos, eos, eot: None, add_bos, template })
    }

    /// Token ids of `text`, with the BOS token first when the model asks for it. With
    /// `parse_special`, special tokens written in the text (`<|im_end|>`) are those tokens, as in
    /// a rendered chat prompt; without it they are plain text, as user input should be.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special { &self.tokenizer } else { &self.plain };
        let enc = tok.encode(text, false).map_err(|e| tok_err(format!("encoding: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos.filter(|_| self.add_bos));
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids` (special tokens included, as they are).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| tok_err(format!("decoding: {e}")))
    }

    /// The text of one token, `None` outside the vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens
    }

    /// Whether there are no tokens (never, for a vocabulary that loaded).
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }

    /// Beginning of sequence.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End of sequence.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The tokens that end a turn: EOS and, where the file names one, EOT.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eos.into_iter().chain(self.eot).collect();
        v.dedup();
        v
    }

    /// The file's chat template (Jinja), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// A conversation rendered by the model's chat template, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .template
            .as_deref()
            .ok_or_else(|| Error::ChatTemplate("the model file has no chat template".into()))?;
        let text = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or_default();
        render_chat(template, messages, add_generation_prompt, &text(self.bos), &text(self.eos))
    }
}

/// Renders a Hugging Face chat template as `transformers` does: `messages`,
/// `add_generation_prompt`, `bos_token` and `eos_token` in scope, `raise_exception` to fail,
/// Python's string methods on strings; at most [`TEMPLATE_FUEL`] steps.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let err = |e: minijinja::Error| Error::ChatTemplate(format!("{e:#}"));
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    let tmpl = env.template_from_str(template).map_err(err)?;
    tmpl.render(minijinja::context! {
        messages => minijinja::value::Serde(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}\
                          {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn a_chat_renders_with_the_generation_prompt() {
        let out = render_chat(CHATML, &[ChatMessage::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}\
                 {{ messages[0]['content'].strip().upper() }}";
        assert_eq!(render_chat(t, &[ChatMessage::new("user", "  hi ")], false, "", "").unwrap(), "HI");
        let e = render_chat(t, &[ChatMessage::new("system", "x")], false, "", "").unwrap_err().to_string();
        assert!(e.contains("user first"), "{e}");
    }

    #[test]
    fn a_template_that_would_run_forever_is_stopped() {
        let t = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}";
        let e = render_chat(t, &[], false, "", "").unwrap_err().to_string();
        assert!(e.to_lowercase().contains("fuel"), "{e}");
        assert!(render_chat("{% if %}", &[], false, "", "").is_err());
    }

    #[test]
    fn every_known_pre_tokenizer_builds() {
        for pre in KNOWN_PRE {
            assert!(pre_tokenizer(pre).unwrap().is_ok(), "{pre}");
        }
        assert!(pre_tokenizer("deepseek-llm").is_none());
    }
}
