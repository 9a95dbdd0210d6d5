// A Sluice push worker (SPEC 12) for Node 20+ with the built-in fetch: it
// streams a run's events to Sluice as it produces them, in one NDJSON
// request, and retries exactly once.
//
//   node examples/push-worker.mjs BASE_URL [--key KEY] [--words N] [--delay S]
//                                 [--publish-url URL]
//
// Without --publish-url it creates a push run and prints "run ID" first. The
// job is a stand-in: N words ("word1 word2 ..."), one token event every S
// seconds, then done. Exit status: 0 the run is done with all our events;
// 3 the run ended without us (cancelled, timed out): stop; 1 anything else.
//
// Retrying: Sluice answers a streamed body when it ends, with the offset (the
// run's events published so far). The worker keeps every event it made and
// the last offset Sluice answered (`acked`). After a dropped connection or a
// 5xx it posts again with `Sluice-Offset: acked` and the events from there
// on: Sluice skips those it already has (a dropped body's whole lines were
// kept) and appends the rest, then the body goes on with new events.
// (Re-sending is simpler than asking the run where it is, and just as exact.)
// 409 offset_mismatch names the run's offset: go on from there. 409
// run_finished (a body in progress gets it as soon as the run is cancelled):
// stop.
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

/** The job: yields events as it makes them. */
async function* produce(words, delaySeconds) {
  for (let i = 0; i < words; i++) {
    await sleep(delaySeconds * 1000);
    yield { event: 'token', text: `${i ? ' ' : ''}word${i + 1}` };
  }
  yield { event: 'done', finish_reason: 'stop' };
}

const { values: args, positionals: [base] } = parseArgs({
  allowPositionals: true,
  options: {
    key: { type: 'string' }, // API key (Authorization: Bearer)
    'publish-url': { type: 'string' }, // publish to this run, as POST /api/runs answered
    words: { type: 'string', default: '20' },
    delay: { type: 'string', default: '0.1' },
  },
});
const auth = args.key ? { Authorization: `Bearer ${args.key}` } : {};
let url = args['publish-url'];
if (!url) {
  const run = await fetch(new URL('/api/runs', base), {
    method: 'POST',
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: JSON.stringify({ agent: 'push', prompt: 'a job' }),
  });
  if (run.status !== 201) throw new Error(`POST /api/runs: ${run.status} ${await run.text()}`);
  const created = await run.json();
  url = created.publish_url; // carries a publish token when keys are set
  console.log('run', created.id);
}

const job = produce(Number(args.words), Number(args.delay));
const events = [];
let acked = 0;

/** The events from `start`: first the ones made, then new ones as they come. */
function body(start) {
  let i = start;
  return new ReadableStream({
    async pull(controller) {
      if (i === events.length) {
        const { value, done } = await job.next();
        if (done) return controller.close();
        events.push(value);
      }
      controller.enqueue(new TextEncoder().encode(`${JSON.stringify(events[i++])}\n`));
    },
  });
}

async function main() {
  for (let attempt = 0; attempt < 5; attempt++) {
    if (attempt) await sleep(200 * 2 ** attempt);
    let answer, text, reply;
    try {
      answer = await fetch(new URL(url, base), {
        method: 'POST',
        body: body(acked),
        duplex: 'half',
        headers: { ...auth, 'Content-Type': 'application/x-ndjson', 'Sluice-Offset': String(acked) },
      });
      text = await answer.text();
      reply = answer.headers.get('content-type') === 'application/json' ? JSON.parse(text) : {};
    } catch (error) {
      console.error(`connection lost (${error.cause?.code ?? error.message}); retrying from offset ${acked}`);
      continue;
    }
    const code = reply.error?.code;
    if (answer.status >= 500) {
      console.error(`${answer.status}; retrying from offset ${acked}`);
    } else if (answer.status === 200 && reply.status !== 'running') {
      console.log(`run ${reply.status}: ${reply.offset} events published`);
      return reply.status === 'done' ? 0 : 1;
    } else if (answer.status === 200 || code === 'offset_mismatch') {
      acked = reply.offset; // go on from where the run is
    } else if (code === 'run_finished') { // no more publishing: did the run end with our done?
      if (reply.status === 'done' && reply.offset === events.length && events.at(-1).event === 'done') {
        console.log(`run done: ${reply.offset} events published (only the answer was lost)`);
        return 0;
      }
      console.log(`run ${reply.status} (not by this worker) after ${reply.offset} events: stopping`);
      return 3; // cancelled, timed out, or ended by another producer
    } else {
      console.error(`publish failed: ${answer.status} ${text}`);
      return 1;
    }
  }
  console.error('giving up after 5 attempts');
  return 1;
}

process.exit(await main()); // now, even if the job is mid-step
