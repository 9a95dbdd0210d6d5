"""A Sluice push worker (SPEC 12) with httpx: it streams a run's events to
Sluice as it produces them, in one NDJSON request, and retries exactly once.

  python examples/push_worker.py BASE_URL [--key KEY] [--words N] [--delay S]
                                 [--publish-url URL]

Without --publish-url it creates a push run and prints "run ID" first. The
job is a stand-in: N words ("word1 word2 ..."), one token event every S
seconds, then done. Exit status: 0 the run is done with all our events;
3 the run ended without us (cancelled, timed out): stop; 1 anything else.

Retrying: Sluice answers a streamed body when it ends, with the offset (the
run's events published so far). The worker keeps every event it made and the
last offset Sluice answered (`acked`). After a dropped connection or a 5xx it
posts again with `Sluice-Offset: acked` and the events from there on: Sluice
skips those it already has (a dropped body's whole lines were kept) and
appends the rest, then the body goes on with new events as they come.
(Re-sending is simpler than asking the run where it is, and just as exact.)
409 offset_mismatch names the run's offset: go on from there. 409
run_finished (a body in progress gets it when the run is cancelled; httpx
reads it at its next write): stop.
"""
import argparse, itertools, json, sys, time

import httpx


def produce(words, delay):
    """The job: yields events as it makes them."""
    for i in range(words):
        time.sleep(delay)
        yield {"event": "token", "text": f"{' ' if i else ''}word{i + 1}"}
    yield {"event": "done", "finish_reason": "stop"}


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("base_url")
    cli.add_argument("--key", help="API key (Authorization: Bearer)")
    cli.add_argument("--publish-url", help="publish to this run, as POST /api/runs answered")
    cli.add_argument("--words", type=int, default=20)
    cli.add_argument("--delay", type=float, default=0.1)
    args = cli.parse_args()
    auth = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    client = httpx.Client(base_url=args.base_url, headers=auth, timeout=30)
    url = args.publish_url
    if not url:
        run = client.post("/api/runs", json={"agent": "push", "prompt": "a job"})
        run.raise_for_status()
        url = run.json()["publish_url"]  # carries a publish token when keys are set
        print("run", run.json()["id"], flush=True)

    job, events, acked = produce(args.words, args.delay), [], 0

    def body(start):  # the events from `start`: first the ones made, then new ones
        for i in itertools.count(start):
            if i == len(events):
                event = next(job, None)
                if event is None:
                    return
                events.append(event)
            yield (json.dumps(events[i]) + "\n").encode()

    for attempt in range(5):
        if attempt:
            time.sleep(0.2 * 2**attempt)
        try:
            answer = client.post(url, content=body(acked), headers={
                "Content-Type": "application/x-ndjson", "Sluice-Offset": str(acked)})
        except httpx.TransportError as error:
            print(f"connection lost ({error!r}); retrying from offset {acked}", file=sys.stderr)
            continue
        reply = answer.json() if answer.headers.get("content-type") == "application/json" else {}
        code = reply.get("error", {}).get("code")
        if answer.status_code >= 500:
            print(f"{answer.status_code}; retrying from offset {acked}", file=sys.stderr)
        elif answer.status_code == 200 and reply["status"] != "running":
            print(f"run {reply['status']}: {reply['offset']} events published")
            return 0 if reply["status"] == "done" else 1
        elif answer.status_code == 200 or code == "offset_mismatch":
            acked = reply["offset"]  # go on from where the run is
        elif code == "run_finished":  # no more publishing: did the run end with our done?
            if reply["status"] == "done" and reply["offset"] == len(events) and events[-1]["event"] == "done":
                print(f"run done: {reply['offset']} events published (only the answer was lost)")
                return 0
            print(f"run {reply['status']} (not by this worker) after {reply['offset']} events: stopping")
            return 3  # cancelled, timed out, or ended by another producer
        else:
            print(f"publish failed: {answer.status_code} {answer.text}", file=sys.stderr)
            return 1
    print("giving up after 5 attempts", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
