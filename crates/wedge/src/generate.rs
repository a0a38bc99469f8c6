//! Generating text from one prompt: chunked prefill, then a token per step, each given to the
//! caller as soon as it is sampled with the text it completes (UTF-8 split across tokens and
//! stop strings split across tokens both handled).

use crate::sample::{Sampler, SamplingParams, top_logprobs};
use crate::{Result, Vocab};

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingParams,
    /// Generation stops before the first of these strings; it is not returned.
    pub stop: Vec<String>,
    /// Stop at the model's end-of-sequence / end-of-turn tokens (default true).
    pub stop_at_eos: bool,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
    /// Positions of the cache (0: prompt + `max_tokens`).
    pub ctx: usize,
    /// The most likely alternatives to report with each token, with their log-probabilities
    /// (0: none).
    pub top_logprobs: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_at_eos: true,
            prefill_chunk: 256,
            ctx: 0,
            top_logprobs: 0,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

impl FinishReason {
    /// `stop` or `length`, as OpenAI names them.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// Token id.
    pub id: u32,
    /// The text this token releases: its own, plus any held back before it (an incomplete
    /// UTF-8 character, or what might have been the start of a stop string).
    pub text: String,
    /// Its log-probability under the model.
    pub logprob: f32,
    /// The most likely tokens at this position and their log-probabilities, most likely first
    /// ([`GenerateParams::top_logprobs`] of them).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Counts and timings of a generation (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, the ones already in the cache (not prefilled again).
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Seconds of prefill (until the first logits).
    pub prompt_secs: f64,
    /// Seconds from the start to the first generated token.
    pub ttft_secs: f64,
    /// Seconds of the decode steps after the first token.
    pub decode_secs: f64,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prompt_tok_s(&self) -> f64 {
        let n = self.prompt_tokens - self.cached_tokens;
        if self.prompt_secs > 0.0 { n as f64 / self.prompt_secs } else { 0.0 }
    }

    /// Generated tokens per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.completion_tokens.saturating_sub(1);
        if self.decode_secs > 0.0 { n as f64 / self.decode_secs } else { 0.0 }
    }
}

/// Turns a growing list of token ids into text increments: a piece is released once it no
/// longer ends in an incomplete UTF-8 character (decoded, it would end in U+FFFD).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the tokens decoded together for context.
    prefix: usize,
    /// Tokens whose text is already out.
    read: usize,
}

impl TextStream {
    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, vocab: &Vocab, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = vocab.decode(&self.ids[self.prefix..self.read])?;
        let now = vocab.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}

/// One sequence's continuation: chooses each token from the logits after the last one, keeps
/// the tokens so far for the penalties, releases the text they complete, and decides when the
/// sequence ends (an end token, a stop string across token boundaries, `max_tokens`, a full
/// context). [`Generation`] drives one on its own cache; a scheduler that steps many sequences
/// together (`wedge serve`'s continuous batching) drives one per sequence.
#[derive(Debug)]
pub struct Continuation {
    params: GenerateParams,
    sampler: Sampler,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    stops: Vec<u32>,
    text: TextStream,
    /// Text decoded but not yet released (a stop string might be starting).
    held: String,
    finish: Option<FinishReason>,
}

impl Continuation {
    /// A continuation of `prompt` (its sampling values are checked here).
    pub fn new(vocab: &Vocab, prompt: &[u32], params: GenerateParams) -> Result<Continuation> {
        params.sampling.validate().map_err(input_err)?;
        if prompt.is_empty() {
            return Err(input_err("the prompt has no tokens".into()));
        }
        let stops = if params.stop_at_eos { vocab.stop_tokens() } else { Vec::new() };
        Ok(Continuation {
            sampler: Sampler::new(params.sampling.clone()),
            params,
            prompt: prompt.to_vec(),
            generated: Vec::new(),
            stops,
            text: TextStream::default(),
            held: String::new(),
            finish: None,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &GenerateParams {
        &self.params
    }

    /// The prompt.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Ends it early (an error, a cancelled request) with `reason`.
    pub fn end(&mut self, reason: FinishReason) {
        self.finish.get_or_insert(reason);
    }

    /// The token the next step must append to the sequence (the last one chosen), while it
    /// goes on.
    pub fn next_input(&self) -> Option<u32> {
        if self.finish.is_some() { None } else { self.generated.last().copied() }
    }

    /// Chooses the next token from `logits` (the logits after the sequence's last token).
    /// `room` says whether the sequence's cache has a position left for it. Returns the token
    /// with the text it releases (`None`: an end token that released nothing); afterwards
    /// [`Continuation::finish_reason`] says whether the sequence has ended.
    pub fn accept(&mut self, vocab: &Vocab, logits: &[f32], room: bool) -> Result<Option<TokenEvent>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        let s = self.sampler.sample(logits, &self.prompt, &self.generated);
        let top_logprobs =
            if self.params.top_logprobs > 0 { top_logprobs(logits, self.params.top_logprobs) } else { Vec::new() };
        if self.stops.contains(&s.id) {
            self.finish = Some(FinishReason::Stop);
            let text = std::mem::take(&mut self.held);
            return Ok((!text.is_empty()).then_some(TokenEvent { id: s.id, text, logprob: s.logprob, top_logprobs }));
        }
        self.generated.push(s.id);
        let piece = self.text.push(vocab, s.id)?;
        self.held.push_str(&piece);
        let (mut text, stopped) = self.release();
        if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated.len() >= self.params.max_tokens || !room {
            self.finish = Some(FinishReason::Length);
            text.push_str(&std::mem::take(&mut self.held));
        }
        Ok(Some(TokenEvent { id: s.id, text, logprob: s.logprob, top_logprobs }))
    }

    /// Splits off the text that can be released: all of it unless a stop string might begin
    /// in its tail. Returns `(released, stopped)`.
    fn release(&mut self) -> (String, bool) {
        if let Some((at, _)) = self
            .params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min()
        {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        // keep the longest tail that is a proper prefix of a stop string
        let keep = self
            .params
            .stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        (std::mem::replace(&mut self.held, rest), false)
    }
}

fn input_err(msg: String) -> crate::Error {
    crate::Error::Core(wedge_core::Error::Input(msg))
}

pub use driver::Generation;

/// The generator: a blocking iterator (native) and an async stream (every target) over the
/// same steps.
mod driver {
    use std::rc::Rc;

    use super::*;
    use crate::lm::{DecodeState, LanguageModel, SeqId};

    #[cfg(not(target_arch = "wasm32"))]
    type Clock = std::time::Instant;
    // (no clock in a browser's wasm32 std: the timings read 0 there)
    #[cfg(target_arch = "wasm32")]
    type Clock = ();

    fn now() -> Option<Clock> {
        #[cfg(not(target_arch = "wasm32"))]
        return Some(std::time::Instant::now());
        #[cfg(target_arch = "wasm32")]
        return None;
    }

    fn secs(since: Option<Clock>) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        #[cfg(target_arch = "wasm32")]
        return since.map_or(0.0, |()| 0.0);
    }

    /// One prompt's generation: each token runs one step (the first runs the prefill too) and
    /// gives the sampled token. An iterator on native targets (each `next` blocks on its step),
    /// and on every target [`Generation::next_async`] or [`Generation::into_stream`] (a
    /// `futures` `Stream`) for async callers.
    pub struct Generation<'m> {
        lm: Model<'m>,
        state: Slot<'m>,
        /// Prompt tokens already in the cache (a conversation's earlier turns).
        skip: usize,
        seq: SeqId,
        prefill_chunk: usize,
        next: Continuation,
        /// The logits for the next token, once the prefill ran.
        logits: Option<Vec<f32>>,
        /// An error ended it.
        failed: bool,
        stats: GenerationStats,
        started: Option<Clock>,
    }

    impl std::fmt::Debug for Generation<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Generation")
                .field("stats", &self.stats)
                .field("finish", &self.next.finish_reason())
                .finish_non_exhaustive()
        }
    }

    impl LanguageModel {
        /// Starts generating after `prompt` (token ids, BOS included if the model wants one).
        pub fn generate(&self, prompt: &[u32], params: GenerateParams) -> Result<Generation<'_>> {
            let ctx = if params.ctx > 0 { params.ctx } else { prompt.len() + params.max_tokens.max(1) };
            check(prompt, ctx)?;
            let mut state = self.new_state(1, ctx)?;
            let seq = state.add().ok_or_else(|| input_err("no free sequence".into()))?;
            Model::Borrowed(self).start(Slot::Owned(state), seq, 0, prompt, params)
        }

        /// Starts generating after `prompt` in sequence `seq` of a state the caller keeps:
        /// the longest prefix of `prompt` the sequence already holds (an earlier turn of the
        /// conversation, and its answer) is reused, and only the rest is prefilled.
        pub fn generate_in<'a>(
            &'a self,
            state: &'a mut DecodeState,
            seq: SeqId,
            prompt: &[u32],
            params: GenerateParams,
        ) -> Result<Generation<'a>> {
            let skip = reuse(state, seq, prompt)?;
            Model::Borrowed(self).start(Slot::Borrowed(state), seq, skip, prompt, params)
        }

        /// [`LanguageModel::generate_in`] for a caller that cannot keep borrows (a JS binding,
        /// on one thread): the generation holds the model and the state, and
        /// [`Generation::into_state`] gives the state back for the conversation's next turn.
        pub fn generate_owned(
            self: &Rc<Self>,
            mut state: DecodeState,
            seq: SeqId,
            prompt: &[u32],
            params: GenerateParams,
        ) -> Result<Generation<'static>> {
            let skip = reuse(&mut state, seq, prompt)?;
            Model::Shared(self.clone()).start(Slot::Owned(state), seq, skip, prompt, params)
        }
    }

    /// Checks `prompt` against `seq` of `state` and reuses the prefix the sequence holds.
    fn reuse(state: &mut DecodeState, seq: SeqId, prompt: &[u32]) -> Result<usize> {
        check(prompt, state.ctx())?;
        if state.len(seq).is_none() {
            return Err(input_err(format!("sequence {} is not in the state", seq.0)));
        }
        Ok(state.reuse_prefix(seq, prompt))
    }

    /// A generation's model: borrowed, or shared with the caller.
    enum Model<'m> {
        Borrowed(&'m LanguageModel),
        Shared(Rc<LanguageModel>),
    }

    impl std::ops::Deref for Model<'_> {
        type Target = LanguageModel;

        fn deref(&self) -> &LanguageModel {
            match self {
                Model::Borrowed(m) => m,
                Model::Shared(m) => m,
            }
        }
    }

    impl<'m> Model<'m> {
        fn start(
            self,
            state: Slot<'m>,
            seq: SeqId,
            skip: usize,
            prompt: &[u32],
            params: GenerateParams,
        ) -> Result<Generation<'m>> {
            let next = Continuation::new(self.vocab(), prompt, params.clone())?;
            Ok(Generation {
                lm: self,
                state,
                skip,
                seq,
                prefill_chunk: params.prefill_chunk.max(1),
                next,
                logits: None,
                failed: false,
                stats: GenerationStats { prompt_tokens: prompt.len(), cached_tokens: skip, ..Default::default() },
                started: None,
            })
        }
    }

    /// Checks that a prompt leaves room in a context of `ctx` positions (an empty one is
    /// refused by [`Continuation::new`]).
    fn check(prompt: &[u32], ctx: usize) -> Result<()> {
        if prompt.len() >= ctx {
            return Err(input_err(format!("the prompt has {} tokens, the context holds {ctx}", prompt.len())));
        }
        Ok(())
    }

    /// A generation's cache: its own, or one the caller keeps across generations.
    enum Slot<'m> {
        Owned(DecodeState),
        Borrowed(&'m mut DecodeState),
    }

    impl Slot<'_> {
        fn get(&mut self) -> &mut DecodeState {
            match self {
                Slot::Owned(s) => s,
                Slot::Borrowed(s) => s,
            }
        }
    }

    impl<'m> Generation<'m> {
        /// Why it ended, once it has.
        pub fn finish_reason(&self) -> Option<FinishReason> {
            if self.failed { Some(FinishReason::Stop) } else { self.next.finish_reason() }
        }

        /// Counts and timings so far.
        pub fn stats(&self) -> GenerationStats {
            self.stats
        }

        /// The tokens generated so far.
        pub fn tokens(&self) -> &[u32] {
            self.next.tokens()
        }

        /// The cache it ran in, when it holds it ([`LanguageModel::generate`] and
        /// [`LanguageModel::generate_owned`]): the prompt and the tokens generated are in it,
        /// so the next turn of a conversation reuses them.
        pub fn into_state(self) -> Option<DecodeState> {
            match self.state {
                Slot::Owned(s) => Some(s),
                Slot::Borrowed(_) => None,
            }
        }

        /// The next token, or `None` once the generation has finished; an error ends it.
        pub async fn next_async(&mut self) -> Option<Result<TokenEvent>> {
            match self.next_token().await {
                Ok(Some(t)) => Some(Ok(t)),
                Ok(None) => None,
                Err(e) => {
                    self.failed = true;
                    Some(Err(e))
                }
            }
        }

        /// The generation as a `futures` `Stream` of tokens.
        pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<TokenEvent>> + 'm {
            futures_util::stream::unfold(self, |mut g| async move { g.next_async().await.map(|t| (t, g)) })
        }

        async fn prefill(&mut self) -> Result<Vec<f32>> {
            self.started = now();
            let mut logits = Vec::new();
            for part in self.next.prompt()[self.skip..].chunks(self.prefill_chunk) {
                logits = self.lm.step_async(self.state.get(), &[(self.seq, part)]).await?.pop().unwrap_or_default();
            }
            self.stats.prompt_secs = secs(self.started);
            Ok(logits)
        }

        async fn next_token(&mut self) -> Result<Option<TokenEvent>> {
            if self.finish_reason().is_some() {
                return Ok(None);
            }
            let logits = match self.logits.take() {
                Some(l) => l,
                None => self.prefill().await?,
            };
            let state = self.state.get();
            let room = state.len(self.seq).unwrap_or(0) < state.ctx();
            let event = self.next.accept(self.lm.vocab(), &logits, room)?;
            if self.stats.ttft_secs == 0.0 {
                self.stats.ttft_secs = secs(self.started);
            }
            self.stats.completion_tokens = self.next.tokens().len();
            if let Some(id) = self.next.next_input() {
                let step = now();
                self.logits = self.lm.step_async(self.state.get(), &[(self.seq, &[id])]).await?.pop();
                self.stats.decode_secs += secs(step);
            }
            Ok(event)
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    impl Iterator for Generation<'_> {
        type Item = Result<TokenEvent>;

        fn next(&mut self) -> Option<Self::Item> {
            pollster::block_on(self.next_async())
        }
    }
}
