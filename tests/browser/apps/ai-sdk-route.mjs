// A genuine AI SDK route handler, as a Next.js app has it in
// app/api/agent/route.ts: streamText over a model, answered with
// toUIMessageStreamResponse(). The model is the AI SDK's own test model, so
// the test needs no key and no network; everything else is the real package.
import { jsonSchema, simulateReadableStream, streamText, tool } from 'ai';
import { MockLanguageModelV3 } from 'ai/test';

export const WORDS = ['Sluice', ' relays', ' the', ' AI', ' SDK', ' stream', ' é✓'];

const model = new MockLanguageModelV3({
  doStream: async () => ({
    stream: simulateReadableStream({
      initialDelayInMs: 20,
      chunkDelayInMs: 20,
      chunks: [
        { type: 'stream-start', warnings: [] },
        { type: 'text-start', id: 't1' },
        ...WORDS.map((delta) => ({ type: 'text-delta', id: 't1', delta })),
        { type: 'text-end', id: 't1' },
        {
          type: 'finish',
          finishReason: { unified: 'stop', raw: 'stop' },
          usage: {
            inputTokens: { total: 3, noCache: 3, cacheRead: 0, cacheWrite: 0 },
            outputTokens: { total: WORDS.length, text: WORDS.length, reasoning: 0 },
          },
        },
      ],
    }),
  }),
});

export async function POST(request) {
  const { messages } = await request.json();
  const result = streamText({
    model,
    messages: messages.map(({ role, content }) => ({ role, content })),
  });
  return result.toUIMessageStreamResponse();
}

// The same route with a model that reasons and calls a tool, which the
// route executes: reasoning, tool input and tool output on the real protocol.
const toolModel = new MockLanguageModelV3({
  doStream: async () => ({
    stream: simulateReadableStream({
      chunkDelayInMs: 10,
      chunks: [
        { type: 'stream-start', warnings: [] },
        { type: 'reasoning-start', id: 'r1' },
        { type: 'reasoning-delta', id: 'r1', delta: 'The user wants the weather.' },
        { type: 'reasoning-end', id: 'r1' },
        { type: 'tool-call', toolCallId: 'call-1', toolName: 'weather', input: '{"city":"Paris"}' },
        {
          type: 'finish',
          finishReason: { unified: 'tool-calls', raw: 'tool_calls' },
          usage: {
            inputTokens: { total: 3, noCache: 3, cacheRead: 0, cacheWrite: 0 },
            outputTokens: { total: 5, text: 0, reasoning: 5 },
          },
        },
      ],
    }),
  }),
});

export async function POSTWithTools(request) {
  const { messages } = await request.json();
  const result = streamText({
    model: toolModel,
    messages: messages.map(({ role, content }) => ({ role, content })),
    tools: {
      weather: tool({
        description: 'The weather in a city',
        inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
        execute: async ({ city }) => ({ city, temperature: 21 }),
      }),
    },
  });
  return result.toUIMessageStreamResponse({ sendReasoning: true });
}
