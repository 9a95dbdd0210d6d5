# protocol = "text": answers with what it received, so a test can check it.
import json
import sys

request = json.load(sys.stdin)
print(json.dumps({"prompt": request["prompt"], "messages": request["messages"]}), end="", flush=True)
