#!/bin/sh
# Start script for the benchmark upstream (slurmgate's local launcher runs it
# with the port as $1 and in $PORT). Execs build/bench_upstream so that the
# gateway's pid/process-group handling sees the server itself.
here=$(cd "$(dirname "$0")" && pwd)
port=${1:-$PORT}
bin=${BENCH_UPSTREAM_BIN:-$here/../build/bench_upstream}
if [ ! -x "$bin" ]; then
	echo "upstream.sh: $bin not built (run bench/run)" >&2
	exit 1
fi
exec "$bin" "$port"
