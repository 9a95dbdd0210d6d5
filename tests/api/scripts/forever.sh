#!/bin/sh
# Runs until killed, with a child of its own: a cancel must stop both.
sleep 1000 &
printf 'pids %s %s\n' "$$" "$!"
while :; do
  printf 'tick '
  sleep 0.05
done
