# Writes a little, complains on stderr, exits 3.
import sys

sys.stdout.write("partial")
sys.stdout.flush()
for i in range(15):
    print(f"noise line {i}", file=sys.stderr)
print("fatal: the tool exploded", file=sys.stderr)
sys.exit(3)
