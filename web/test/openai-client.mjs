// Drives a live `wedge serve` with OpenAI's own JavaScript client (the `openai` npm package),
// streaming and not, and prints what the client parsed as one JSON object on stdout. The Rust
// test `crates/wedge-server/tests/llm.rs` starts the server, runs this, and checks the result.
//
// Usage: node web/test/openai-client.mjs BASE_URL MODEL
import OpenAI from 'openai';

const [baseURL, model] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error('usage: node openai-client.mjs BASE_URL MODEL');
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
const messages = [{ role: 'user', content: 'What is the capital of France?' }];
const out = {};

const chat = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0 });
out.chat = {
  content: chat.choices[0].message.content,
  role: chat.choices[0].message.role,
  finish_reason: chat.choices[0].finish_reason,
  usage: chat.usage,
  object: chat.object,
};

// Streamed: computed afresh (the completion cache bypassed), then replayed from the cache.
async function chatStream(options) {
  const { data: stream, response } = await client.chat.completions.create({
    model, messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
  }, options).withResponse();
  const streamed = { content: '', chunks: 0, roles: [], finish_reason: null, usage: null };
  for await (const chunk of stream) {
    streamed.chunks += 1;
    if (chunk.usage) streamed.usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) streamed.roles.push(c.delta.role);
      streamed.content += c.delta.content ?? '';
      if (c.finish_reason) streamed.finish_reason = c.finish_reason;
    }
  }
  streamed.cache = response.headers.get('x-wedge-cache');
  return streamed;
}
out.chat_stream = await chatStream({ headers: { 'Cache-Control': 'no-cache' } });
out.chat_stream_cached = await chatStream({});

const prompt = 'Once upon a time, in a small village,';
const completion = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
out.completion = { text: completion.choices[0].text, finish_reason: completion.choices[0].finish_reason };

let text = '';
const uncached = { headers: { 'Cache-Control': 'no-cache' } };
for await (const chunk of await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, stream: true }, uncached)) {
  text += chunk.choices[0]?.text ?? '';
}
out.completion_stream = { text };

try {
  await client.chat.completions.create({ model, messages, temperature: 7 });
  out.bad_temperature = { status: 200 };
} catch (e) {
  out.bad_temperature = { status: e.status, message: e.message };
}

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

console.log(JSON.stringify(out));
