# protocol = "jsonl": a line longer than any sane limit.
import json
import sys

sys.stdin.read()
print(json.dumps({"event": "token", "text": "ok"}), flush=True)
print(json.dumps({"event": "token", "text": "x" * 5000}), flush=True)
