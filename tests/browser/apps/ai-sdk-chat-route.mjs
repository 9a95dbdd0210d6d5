// The AI SDK's own chat route, as `useChat` apps have it in
// app/api/chat/route.ts (the AI SDK docs' getting-started route): the body is
// DefaultChatTransport's `{ id, messages: UIMessage[], trigger, … }`, the UI
// messages go through convertToModelMessages, and the answer is
// toUIMessageStreamResponse(). The model is the AI SDK's own test model,
// streaming slowly enough that a client can be cut off mid-answer.
import { convertToModelMessages, simulateReadableStream, streamText } from 'ai';
import { MockLanguageModelV3 } from 'ai/test';

export const CHAT_WORDS = [
  'Resumable', ' answers', ' survive', ' a', ' cut', ' connection:', ' Sluice',
  ' keeps', ' the', ' run', ' going', ' and', ' replays', ' it', ' from', ' the', ' start', ' ✓',
];
/** The pause before each chunk of the model's stream. */
export const CHUNK_DELAY_MS = 150;

export const model = new MockLanguageModelV3({
  doStream: async () => ({
    stream: simulateReadableStream({
      initialDelayInMs: CHUNK_DELAY_MS,
      chunkDelayInMs: CHUNK_DELAY_MS,
      chunks: [
        { type: 'stream-start', warnings: [] },
        { type: 'text-start', id: 't1' },
        ...CHAT_WORDS.map((delta) => ({ type: 'text-delta', id: 't1', delta })),
        { type: 'text-end', id: 't1' },
        {
          type: 'finish',
          finishReason: { unified: 'stop', raw: 'stop' },
          usage: {
            inputTokens: { total: 5, noCache: 5, cacheRead: 0, cacheWrite: 0 },
            outputTokens: { total: CHAT_WORDS.length, text: CHAT_WORDS.length, reasoning: 0 },
          },
        },
      ],
    }),
  }),
});

export async function POST(req) {
  const { messages } = await req.json();
  const result = streamText({
    model,
    messages: await convertToModelMessages(messages),
  });
  return result.toUIMessageStreamResponse();
}
