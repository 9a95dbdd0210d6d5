# protocol = "jsonl": every kind of event an agent may send.
import json
import sys

json.load(sys.stdin)
lines = [
    {"event": "reasoning", "text": "Which tool?"},
    {"event": "token", "text": "Let me check"},
    {"event": "tool_call", "id": "c1", "name": "clock", "arguments": "{}"},
    {"event": "tool_result", "id": "c1", "content": "12:00"},
    {"event": "token", "text": ": it is noon."},
    {"event": "done", "finish_reason": "stop", "usage": {"output_tokens": 2, "prompt_tokens": 9}},
]
for line in lines:
    print(json.dumps(line), flush=True)
