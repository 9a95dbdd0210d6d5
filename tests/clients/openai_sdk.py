"""The official `openai` Python package against Sluice's OpenAI-compatible
front door (SPEC 11.2): a client that Sluice did not write reads its chunks,
its completions, its model list and its error bodies, and every call is a
Sluice run that Sluice's own API (plain urllib here) can see and cancel.

Usage: python openai_sdk.py BASE_URL API_KEY [unittest options]
  BASE_URL  Sluice's root, e.g. http://127.0.0.1:8080 (the SDK gets BASE_URL/v1)
  API_KEY   a key configured in Sluice's [[auth.keys]]

Run by tests/api/clients/openai_sdk.rs with the venv that scripts/test makes
(scripts/lib/openai_sdk.sh); it exits non-zero when any test fails.
"""

import json
import sys
import unittest
import urllib.error
import urllib.request

import openai

BASE = ""
KEY = ""
PROMPT = [{"role": "user", "content": "Tell me about rivers."}]

# Loopback only: a proxy from the environment must not catch Sluice's API.
_urlopen = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def api(method, path, key=None):
    """Sluice's own API: (status, JSON body or None)."""
    request = urllib.request.Request(
        BASE + path,
        method=method,
        headers={"Authorization": "Bearer " + (key or KEY)},
    )
    try:
        with _urlopen(request, timeout=30) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        body = err.read()
        status = err.code
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")


def snapshot(run_id):
    status, body = api("GET", "/api/runs/" + run_id)
    if status != 200:
        raise AssertionError(f"GET /api/runs/{run_id}: {status} {body!r}")
    return body


def run_id_of(completion_id):
    if not completion_id.startswith("chatcmpl-"):
        raise AssertionError(f"the completion id {completion_id!r} does not start with chatcmpl-")
    return completion_id[len("chatcmpl-"):]


def client(key=None):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=key or KEY, max_retries=0, timeout=60)


def dump(chunks):
    """The chunks as JSON lines, for a failure message."""
    return "\n".join(chunk.model_dump_json(exclude_unset=True) for chunk in chunks)


def content_of(chunks):
    return "".join(
        chunk.choices[0].delta.content or ""
        for chunk in chunks
        if chunk.choices
    )


class Streaming(unittest.TestCase):
    def test_a_stream_is_read_by_the_sdk_and_matches_the_run(self):
        n = 7
        raw = client().chat.completions.with_raw_response.create(
            model="sim",
            messages=PROMPT,
            stream=True,
            max_tokens=n,
            extra_body={"interval_ms": 0},
        )
        header_run = raw.headers.get("x-run-id")
        chunks = list(raw.parse())
        self.assertTrue(chunks, "the stream had no chunk")
        detail = "chunks:\n" + dump(chunks)

        run_id = run_id_of(chunks[0].id)
        self.assertEqual(header_run, run_id, "X-Run-Id vs the chunk id\n" + detail)
        for chunk in chunks:
            self.assertEqual(chunk.id, chunks[0].id, detail)
            self.assertEqual(chunk.object, "chat.completion.chunk", detail)
            self.assertEqual(chunk.model, "sim", detail)

        first = chunks[0].choices[0]
        self.assertEqual(first.delta.role, "assistant", detail)

        with_choices = [chunk for chunk in chunks if chunk.choices]
        self.assertEqual(with_choices[-1].choices[0].finish_reason, "stop", detail)
        for chunk in with_choices[:-1]:
            self.assertIsNone(chunk.choices[0].finish_reason, detail)
        content_chunks = [c for c in with_choices if c.choices[0].delta.content]
        self.assertEqual(len(content_chunks), n, detail)

        usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
        self.assertEqual(len(usage), 1, "one usage chunk\n" + detail)
        self.assertEqual(usage[0].completion_tokens, n, detail)
        self.assertEqual(chunks[-1].choices, [], "the usage chunk is the last, with no choices\n" + detail)

        run = snapshot(run_id)
        self.assertEqual(run["status"], "done", run)
        self.assertEqual(content_of(chunks), run["text"], detail)
        self.assertTrue(run["text"], run)

    def test_the_stream_helper_accumulates_the_run(self):
        # client.chat.completions.stream(): the SDK's own accumulator, which
        # folds the chunks into one ChatCompletion.
        n = 6
        with client().chat.completions.stream(
            model="sim",
            messages=PROMPT,
            max_tokens=n,
            extra_body={"interval_ms": 0},
        ) as stream:
            kinds = [event.type for event in stream]
            completion = stream.get_final_completion()
        detail = f"events: {kinds}\ncompletion: {completion.model_dump_json()}"
        self.assertIn("content.done", kinds, detail)
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "stop", detail)
        self.assertEqual(completion.usage.completion_tokens, n, detail)
        self.assertEqual(choice.message.content, snapshot(run_id_of(completion.id))["text"], detail)

    def test_a_failing_run_raises_api_error_with_sluices_words(self):
        chunks = []
        stream = client().chat.completions.create(
            model="sim",
            messages=PROMPT,
            stream=True,
            max_tokens=5,
            extra_body={"fail_after": 2, "interval_ms": 0},
        )
        with self.assertRaises(openai.APIError) as raised:
            for chunk in stream:
                chunks.append(chunk)
        error = raised.exception
        detail = f"{error!r} body={error.body!r}\nchunks before it:\n{dump(chunks)}"
        self.assertNotIsInstance(error, openai.APIStatusError, detail)
        self.assertEqual(error.code, "simulated_failure", detail)
        self.assertEqual(error.type, "sluice_error", detail)
        self.assertIn("fail_after", error.message, detail)
        self.assertEqual(error.body["message"], error.message, detail)
        self.assertEqual(content_of(chunks), snapshot(run_id_of(chunks[0].id))["text"], detail)
        self.assertEqual(len([c for c in chunks if c.choices and c.choices[0].delta.content]), 2, detail)
        self.assertEqual(snapshot(run_id_of(chunks[0].id))["status"], "error")

    def test_a_cancelled_run_ends_the_stream_with_cancelled(self):
        stream = client().chat.completions.create(
            model="sim",
            messages=PROMPT,
            stream=True,
            max_tokens=200,
            extra_body={"interval_ms": 50},
        )
        chunks = []
        deleted = None
        for chunk in stream:
            chunks.append(chunk)
            if deleted is None and len(chunks) == 4:
                deleted = api("DELETE", "/api/runs/" + run_id_of(chunk.id))
        detail = f"DELETE answered {deleted!r}\nchunks:\n{dump(chunks)}"
        self.assertIsNotNone(deleted, "the stream ended before 4 chunks\n" + detail)
        self.assertEqual(deleted[0], 202, detail)

        with_choices = [chunk for chunk in chunks if chunk.choices]
        self.assertEqual(with_choices[-1].choices[0].finish_reason, "cancelled", detail)
        tokens = len([c for c in with_choices if c.choices[0].delta.content])
        self.assertLess(tokens, 200, "the run was not cut short\n" + detail)
        self.assertGreaterEqual(tokens, 3, detail)
        usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
        self.assertEqual(len(usage), 1, detail)
        self.assertEqual(usage[0].completion_tokens, tokens, detail)

        run = snapshot(run_id_of(chunks[0].id))
        self.assertEqual(run["status"], "cancelled", run)
        self.assertEqual(content_of(chunks), run["text"], detail)


class NotStreaming(unittest.TestCase):
    def test_a_completion_is_the_runs_text(self):
        n = 9
        raw = client().chat.completions.with_raw_response.create(
            model="sim",
            messages=PROMPT,
            max_tokens=n,
            extra_body={"interval_ms": 0},
        )
        completion = raw.parse()
        detail = completion.model_dump_json(indent=1)
        run_id = run_id_of(completion.id)
        self.assertEqual(raw.headers.get("x-run-id"), run_id, detail)
        self.assertEqual(completion.object, "chat.completion", detail)
        self.assertEqual(completion.model, "sim", detail)
        self.assertEqual(len(completion.choices), 1, detail)
        choice = completion.choices[0]
        self.assertEqual(choice.message.role, "assistant", detail)
        self.assertEqual(choice.finish_reason, "stop", detail)
        self.assertEqual(completion.usage.completion_tokens, n, detail)

        run = snapshot(run_id)
        self.assertEqual(run["status"], "done", run)
        self.assertTrue(run["text"], run)
        self.assertEqual(choice.message.content, run["text"], detail)

        status, runs = api("GET", "/api/runs?limit=1000")
        self.assertEqual(status, 200, runs)
        self.assertIn(run_id, [r["id"] for r in runs["runs"]], runs)

    def test_a_failing_run_is_a_502_with_sluices_code(self):
        with self.assertRaises(openai.APIStatusError) as raised:
            client().chat.completions.create(
                model="sim",
                messages=PROMPT,
                max_tokens=5,
                extra_body={"fail_after": 2, "interval_ms": 0},
            )
        error = raised.exception
        detail = f"{error!r} body={error.body!r}"
        self.assertIsInstance(error, openai.InternalServerError, detail)
        self.assertEqual(error.status_code, 502, detail)
        self.assertEqual(error.code, "simulated_failure", detail)
        self.assertEqual(error.type, "sluice_error", detail)
        self.assertIn("fail_after", error.body["message"], detail)
        run_id = error.response.headers.get("x-run-id")
        self.assertTrue(run_id, "no X-Run-Id on the 502\n" + detail)
        self.assertEqual(snapshot(run_id)["status"], "error")


class Errors(unittest.TestCase):
    def test_an_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as raised:
            client().chat.completions.create(model="no-such-model", messages=PROMPT)
        error = raised.exception
        detail = f"{error!r} body={error.body!r}"
        self.assertEqual(error.status_code, 404, detail)
        self.assertEqual(error.code, "model_not_found", detail)
        self.assertEqual(error.body["code"], "model_not_found", detail)
        self.assertIn("no-such-model", error.body["message"], detail)

    def test_an_unknown_model_is_not_found_when_streaming(self):
        with self.assertRaises(openai.NotFoundError) as raised:
            client().chat.completions.create(model="no-such-model", messages=PROMPT, stream=True)
        self.assertEqual(raised.exception.code, "model_not_found", repr(raised.exception.body))

    def test_a_wrong_key_is_an_authentication_error(self):
        bad = client(key="not-a-key")
        with self.assertRaises(openai.AuthenticationError) as raised:
            bad.chat.completions.create(model="sim", messages=PROMPT, max_tokens=1)
        self.assertEqual(raised.exception.status_code, 401)
        self.assertEqual(raised.exception.type, "authentication_error", repr(raised.exception.body))
        with self.assertRaises(openai.AuthenticationError):
            bad.chat.completions.create(model="sim", messages=PROMPT, stream=True, max_tokens=1)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()


class Models(unittest.TestCase):
    def test_the_model_list_has_the_sim(self):
        models = {model.id: model for model in client().models.list()}
        self.assertIn("sim", models, list(models))
        self.assertEqual(models["sim"].object, "model")
        self.assertEqual(models["sim"].owned_by, "sluice")


def main():
    global BASE, KEY
    if len(sys.argv) < 3 or not sys.argv[1].startswith("http"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    BASE, KEY = sys.argv[1].rstrip("/"), sys.argv[2]
    print(f"openai {openai.__version__} (Python {sys.version.split()[0]}) against {BASE}/v1", file=sys.stderr)
    unittest.main(argv=[sys.argv[0], *sys.argv[3:]], verbosity=2)


if __name__ == "__main__":
    main()
