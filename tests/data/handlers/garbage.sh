#!/bin/sh
# An exec handler that says ready, waits for a request, then writes garbage instead of a frame and
# hangs: the agent must report a protocol error and kill it.
printf '\002\000\000\000\012\000' >&4
dd bs=1 count=1 <&3 >/dev/null 2>&1
echo "writing garbage" >&2
printf 'this is not a frame' >&4
exec sleep 3600
