#!/bin/sh
# Start script for the benchmark's realistic upstream (bench/upstream_evhttp.c;
# slurmgate's local launcher runs it with the port as $1 and in $PORT). Execs
# build/bench_upstream_evhttp so that the gateway's pid/process-group handling
# sees the server itself.
here=$(cd "$(dirname "$0")" && pwd)
port=${1:-$PORT}
bin=${BENCH_UPSTREAM_EVHTTP_BIN:-$here/../build/bench_upstream_evhttp}
if [ ! -x "$bin" ]; then
	echo "upstream_evhttp.sh: $bin not built (run bench/run)" >&2
	exit 1
fi
exec "$bin" "$port"
