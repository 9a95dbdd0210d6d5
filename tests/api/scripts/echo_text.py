# protocol = "text": echoes the run it was given, a few words at a time.
import json
import sys
import time

run = json.load(sys.stdin)
words = ["echo:", run["prompt"], "n=" + str(run["params"].get("n", "")), "id=" + run["run_id"][:8], "ünïcode✓"]
for word in words:
    sys.stdout.write(word + " ")
    sys.stdout.flush()
    time.sleep(0.05)
