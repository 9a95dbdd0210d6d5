# protocol = "jsonl": a line that is not an event.
import sys

sys.stdin.read()
print("this is not json", flush=True)
