// The recipe Sluice replaces: a route handler that wraps an async generator
// in a text/event-stream response. Same workload and events as Sluice's
// one-shot route; no log, resume, fan-out or metrics.
export const dynamic = 'force-dynamic';

export async function GET(request) {
  const url = new URL(request.url);
  const tokens = Number(url.searchParams.get('tokens') ?? 48);
  const interval = Number(url.searchParams.get('interval_ms') ?? 40);
  const encoder = new TextEncoder();

  async function* events() {
    yield 'id: r:1\nevent: run\ndata: {"run_id":"r"}\n\n';
    for (let i = 0; i < tokens; i += 1) {
      if (interval > 0) await new Promise((resolve) => setTimeout(resolve, interval));
      yield `id: r:${i + 2}\nevent: token\ndata: ${JSON.stringify({ text: ` word${i}` })}\n\n`;
    }
    yield `id: r:${tokens + 2}\nevent: done\ndata: {"finish_reason":"stop"}\n\n`;
  }

  const iterator = events();
  const stream = new ReadableStream({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(encoder.encode(value));
    },
    cancel() {
      iterator.return();
    },
  });
  return new Response(stream, {
    headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
  });
}
