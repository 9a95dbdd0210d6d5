// The seed's route handler, unchanged in shape: a GET that wraps an async
// generator in a ReadableStream of `data: ${JSON.stringify(chunk)}\n\n`.
export const CHUNKS = ['Once', ' upon', ' a', ' time', ' in', ' Sluice'];

async function* generateAgentStream(prompt) {
  for (const text of CHUNKS) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    yield { type: 'token', content: text, prompt };
  }
}

export async function GET(request) {
  const prompt = new URL(request.url).searchParams.get('prompt') ?? '';
  const encoder = new TextEncoder();
  const stream = new ReadableStream({
    async start(controller) {
      for await (const chunk of generateAgentStream(prompt)) {
        controller.enqueue(encoder.encode(`data: ${JSON.stringify(chunk)}\n\n`));
      }
      controller.close();
    },
  });
  return new Response(stream, {
    headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' },
  });
}
