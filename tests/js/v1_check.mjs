// The official `openai` JavaScript SDK against /v1: a second SDK proves the wire.
// Usage: GPT_API_BASE_URL=http://127.0.0.1:5000/v1 GPT_API_KEY=gpa_... node v1_check.mjs
// Prints one JSON object of what it saw; exits non-zero on the first surprise.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.GPT_API_BASE_URL,
  apiKey: process.env.GPT_API_KEY,
  maxRetries: 0,
});
const model = "gpt-test";

const first = await client.responses.create({ model, input: "One" });
assert.equal(first.output_text, "Echo: One");
assert.match(first.id, /^resp_[0-9a-f]{32}$/);

const second = await client.responses.create({ model, input: "Two", previous_response_id: first.id });
assert.equal(second.previous_response_id, first.id);

const types = [];
const stream = client.responses.stream({ model, input: "Three", previous_response_id: second.id });
for await (const event of stream) types.push(event.type);
const final = await stream.finalResponse();
assert.equal(final.output_text, "Echo: Three");
assert.equal(types.at(0), "response.created");
assert.equal(types.at(-1), "response.completed");

const conversation = await client.conversations.create({ items: [{ role: "user", content: "Hi" }], metadata: { k: "v" } });
const answer = await client.responses.create({ model, conversation: conversation.id });
assert.equal(answer.output_text, "Echo: Hi");
const items = [];
for await (const item of client.conversations.items.list(conversation.id, { order: "asc", limit: 1 })) {
  items.push(item.content[0].text);
}
assert.deepEqual(items, ["Hi", "Echo: Hi"]);

let refused;
try {
  await client.responses.create({ model, input: "x", tools: [{ type: "web_search" }] });
} catch (error) {
  refused = error;
}
assert.ok(refused instanceof OpenAI.BadRequestError, String(refused));
assert.equal(refused.param, "tools");

let missing;
try {
  await client.responses.retrieve(`resp_${"0".repeat(32)}`);
} catch (error) {
  missing = error;
}
assert.ok(missing instanceof OpenAI.NotFoundError, String(missing));

console.log(JSON.stringify({ ok: true, events: types.length, items }));
