//! A terminal chat on the `wedge` crate: load a GGUF model, keep the conversation, render it
//! with the model's own chat template, and stream each answer as it is generated.
//!
//! `cargo run --release -p chat -- path/to/SmolLM2-135M-Instruct.Q4_1.gguf`

use std::io::{BufRead, Write};

use wedge::{ChatMessage, Device, GenerateParams, LanguageModel, LmOptions, SamplingParams};

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: chat MODEL.gguf"))?;
    let lm = LanguageModel::open(&path, &Device::auto(), LmOptions::default())?;
    let sampling = SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() };
    let mut messages = vec![ChatMessage::new("system", "You are a helpful assistant.")];
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        messages.push(ChatMessage::new("user", &line?));
        let prompt = lm.vocab().encode(&lm.vocab().render_chat(&messages, true)?, true)?;
        let params = GenerateParams { max_tokens: 256, sampling: sampling.clone(), ..Default::default() };
        let mut answer = String::new();
        for token in lm.generate(&prompt, params)? {
            let text = token?.text;
            out.write_all(text.as_bytes())?;
            out.flush()?;
            answer.push_str(&text);
        }
        println!();
        messages.push(ChatMessage::new("assistant", &answer));
    }
    Ok(())
}
