#!/bin/sh
# demo_service.sh - start the slurmgate demo LLM service.
#
# Usage: demo_service.sh PORT [extra demo_service options...]
#   PORT falls back to $PORT when no argument is given.
# Environment knobs read by the binary itself (inherited through exec):
#   DEMO_DELAY           startup ("model loading") delay in seconds
#   DEMO_TOKEN_DELAY_MS  delay between streamed tokens in ms
#   DEMO_FAIL_EXIT       exit immediately with this code (failed start)
#   DEMO_SERVICE_BIN     override the binary path (e.g. an ASan build)
# The binary is exec'd so signals from the gateway reach it directly.

if [ $# -gt 0 ]; then
	port=$1
	shift
else
	port=${PORT:-}
fi

if [ -z "$port" ]; then
	echo "usage: $0 PORT [options...] (or set PORT)" >&2
	exit 2
fi

bin=${DEMO_SERVICE_BIN:-"$(dirname "$0")/../build/demo_service"}
exec "$bin" --port "$port" "$@"
