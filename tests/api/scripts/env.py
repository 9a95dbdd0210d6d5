# Prints its environment's variable names: it should get only what the config passes.
import os
import sys

sys.stdin.read()
sys.stdout.write(" ".join(sorted(k for k in os.environ if k != "LC_CTYPE")))
