//! The completion cache: the prediction cache extended to generation. A request whose output
//! is reproducible (greedy, or sampled with a fixed seed) is keyed by the model's digest, its
//! prompt token ids and every setting that changes the tokens; a repeat is replayed from the
//! memory or disk tier, token by token, as the scheduler would have sent it. A computed
//! completion is stored once its `Done` arrives, so a client that leaves stores nothing.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wedge::{FinishReason, GenerateParams, TokenEvent};

use crate::auth::{Caller, Quotas};
use crate::cache::{Cache, Cached, Key};
use crate::config::GenerationConfig;
use crate::scheduler::{GenEvent, GenReceiver, Usage};

/// A finished generation, as stored in the cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    tokens: Vec<StoredToken>,
    /// Whether it ended at `max_tokens` (`length`) rather than a stop (`stop`).
    length: bool,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// One token of a stored completion. Log-probabilities are kept as their bits, so that every
/// value (−∞ included) replays exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredToken {
    id: u32,
    text: String,
    logprob: u32,
    top: Vec<(u32, u32)>,
}

impl StoredToken {
    fn new(t: &TokenEvent) -> StoredToken {
        StoredToken {
            id: t.id,
            text: t.text.clone(),
            logprob: t.logprob.to_bits(),
            top: t.top_logprobs.iter().map(|&(id, lp)| (id, lp.to_bits())).collect(),
        }
    }

    fn event(&self) -> TokenEvent {
        TokenEvent {
            id: self.id,
            text: self.text.clone(),
            logprob: f32::from_bits(self.logprob),
            top_logprobs: self.top.iter().map(|&(id, lp)| (id, f32::from_bits(lp))).collect(),
        }
    }
}

impl Completion {
    /// Bytes it holds, roughly (for the memory tier's bound).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.tokens.iter().map(|t| 48 + t.text.len() + 8 * t.top.len()).sum()
    }

    /// Its disk form.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // (serializing plain structs of numbers and strings cannot fail)
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads its disk form; `None` if it is not one.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Completion> {
        serde_json::from_slice(bytes).ok()
    }

    /// The events that deliver it again: every token, then `Done`, with the whole prompt
    /// counted as cached.
    fn events(&self) -> VecDeque<GenEvent> {
        let finish = if self.length { FinishReason::Length } else { FinishReason::Stop };
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        };
        self.tokens.iter().map(|t| GenEvent::Token(t.event())).chain([GenEvent::Done { finish, usage }]).collect()
    }

    #[cfg(test)]
    pub(crate) fn example() -> Completion {
        Completion {
            tokens: vec![
                StoredToken { id: 7, text: "Hel".into(), logprob: (-0.5f32).to_bits(), top: vec![] },
                StoredToken {
                    id: 9,
                    text: "lo é".into(),
                    logprob: f32::NEG_INFINITY.to_bits(),
                    top: vec![(9, (-1.0f32).to_bits()), (3, (-2.5f32).to_bits())],
                },
            ],
            length: true,
            prompt_tokens: 12,
            completion_tokens: 2,
        }
    }
}

/// What keys a request's completion beside the model digest and the prompt: every setting
/// that changes the tokens, or `None` when the output is not reproducible (sampled without a
/// seed), which is never cached.
pub(crate) fn cache_options(params: &GenerateParams, g: &GenerationConfig) -> Option<String> {
    let s = &params.sampling;
    let greedy = s.temperature <= 0.0;
    if !greedy && s.seed.is_none() {
        return None;
    }
    let bits = |x: f32| x.to_bits();
    let mut o = format!(
        "completion-v1 kv={} fast_cpu={} max_tokens={} eos={} top_logprobs={} rep={:x} presence={:x} frequency={:x}",
        g.kv,
        g.fast_cpu,
        params.max_tokens,
        params.stop_at_eos,
        params.top_logprobs,
        bits(s.repetition_penalty),
        bits(s.presence_penalty),
        bits(s.frequency_penalty),
    );
    if greedy {
        o.push_str(" greedy");
    } else {
        let _ = write!(
            o,
            " temperature={:x} top_k={} top_p={:x} min_p={:x} seed={}",
            bits(s.temperature),
            s.top_k,
            bits(s.top_p),
            bits(s.min_p),
            s.seed.unwrap_or_default()
        );
    }
    for (id, b) in &s.logit_bias {
        let _ = write!(o, " bias={id}:{:x}", bits(*b));
    }
    for stop in &params.stop {
        let _ = write!(o, " stop={}:{stop}", stop.len());
    }
    Some(o)
}

/// Where a computed completion goes once it is done.
struct Recording {
    key: Key,
    tokens: Vec<StoredToken>,
    cache: Arc<Cache>,
}

enum Source {
    Live(GenReceiver),
    Replay(VecDeque<GenEvent>),
}

/// The quota a generation's tokens count in: the usage once it is done, or, if it ends
/// early, what it got (and its prompt, unless it failed).
pub(crate) struct Account {
    quotas: Arc<Quotas>,
    caller: Caller,
    prompt_tokens: usize,
    seen: usize,
    failed: bool,
}

impl Account {
    pub(crate) fn new(quotas: Arc<Quotas>, caller: Caller, prompt_tokens: usize) -> Account {
        Account { quotas, caller, prompt_tokens, seen: 0, failed: false }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let prompt = if self.failed { 0 } else { self.prompt_tokens };
        self.quotas.charge(&self.caller, (prompt + self.seen) as u64);
    }
}

/// The events of one generation request, from the scheduler or replayed from the cache, in
/// the order [`GenEvent`] describes. Dropping it cancels a running request.
pub struct Generation {
    source: Source,
    recording: Option<Recording>,
    account: Account,
    hit: bool,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("cache_hit", &self.hit).finish_non_exhaustive()
    }
}

impl Generation {
    /// A request the scheduler runs; stored under `store`'s key when it is done.
    pub(crate) fn live(rx: GenReceiver, store: Option<(Key, Arc<Cache>)>, account: Account) -> Generation {
        let recording = store.map(|(key, cache)| Recording { key, tokens: Vec::new(), cache });
        Generation { source: Source::Live(rx), recording, account, hit: false }
    }

    /// A completion replayed from the cache.
    pub(crate) fn replay(c: &Completion, account: Account) -> Generation {
        Generation { source: Source::Replay(c.events()), recording: None, account, hit: true }
    }

    /// Whether it is answered from the cache.
    pub fn cache_hit(&self) -> bool {
        self.hit
    }

    /// The next event; `None` after the last.
    pub async fn recv(&mut self) -> Option<GenEvent> {
        let event = match &mut self.source {
            Source::Live(rx) => rx.recv().await,
            Source::Replay(events) => events.pop_front(),
        }?;
        match &event {
            GenEvent::Token(t) => {
                if let Some(r) = &mut self.recording {
                    r.tokens.push(StoredToken::new(t));
                }
                self.account.seen += 1;
            }
            GenEvent::Done { finish, usage } => {
                (self.account.prompt_tokens, self.account.seen) = (usage.prompt_tokens, usage.completion_tokens);
                if let Some(r) = self.recording.take() {
                    let c = Arc::new(Completion {
                        tokens: r.tokens,
                        length: *finish == FinishReason::Length,
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                    });
                    r.cache.put(r.key, Cached::Completion(c)).await;
                }
            }
            GenEvent::Failed(_) => {
                self.recording = None;
                self.account.failed = true;
            }
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_what_it_stored() {
        let c = Completion::example();
        assert_eq!(Completion::from_bytes(&c.to_bytes()), Some(c.clone()));
        let events: Vec<GenEvent> = c.events().into();
        assert_eq!(events.len(), 3);
        let GenEvent::Token(t) = &events[1] else { panic!("{events:?}") };
        assert_eq!((t.id, t.text.as_str(), t.logprob), (9, "lo é", f32::NEG_INFINITY));
        assert_eq!(t.top_logprobs, vec![(9, -1.0), (3, -2.5)]);
        let GenEvent::Done { finish, usage } = &events[2] else { panic!("{events:?}") };
        assert_eq!(*finish, FinishReason::Length);
        assert_eq!(*usage, Usage { prompt_tokens: 12, cached_tokens: 12, completion_tokens: 2 });
        assert_eq!(Completion::from_bytes(b"{\"tokens\": 3}"), None);
    }

    #[test]
    fn only_reproducible_requests_are_keyed_and_every_setting_counts() {
        let g = GenerationConfig::default();
        let greedy = GenerateParams::default();
        let sampled = |seed| {
            let mut p = GenerateParams::default();
            p.sampling.temperature = 0.8;
            p.sampling.seed = seed;
            p
        };
        assert!(cache_options(&sampled(None), &g).is_none(), "unseeded sampling is not reproducible");
        let base = cache_options(&greedy, &g).unwrap();
        // The seed does not change a greedy answer.
        let mut seeded_greedy = greedy.clone();
        seeded_greedy.sampling.seed = Some(5);
        assert_eq!(cache_options(&seeded_greedy, &g).unwrap(), base);
        let mut variants = vec![cache_options(&sampled(Some(1)), &g), cache_options(&sampled(Some(2)), &g)];
        let mut change = |f: &dyn Fn(&mut GenerateParams)| {
            let mut p = greedy.clone();
            f(&mut p);
            variants.push(cache_options(&p, &g));
        };
        change(&|p| p.max_tokens += 1);
        change(&|p| p.stop_at_eos = false);
        change(&|p| p.top_logprobs = 2);
        change(&|p| p.stop = vec!["a b".into()]);
        change(&|p| p.stop = vec!["a".into(), "b".into()]);
        change(&|p| p.sampling.repetition_penalty = 1.1);
        change(&|p| p.sampling.presence_penalty = 0.5);
        change(&|p| p.sampling.frequency_penalty = 0.5);
        change(&|p| p.sampling.logit_bias = vec![(3, -100.0)]);
        let mut f16 = g.clone();
        f16.kv = "f16".into();
        variants.push(cache_options(&greedy, &f16));
        let mut all: Vec<String> = variants.into_iter().map(Option::unwrap).collect();
        all.push(base);
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "two settings share a key: {all:#?}");
    }
}
