#!/bin/sh
# run.sh TARGET SECONDS - replay every crash reproducer and the seed corpus
# of one fuzz target, then fuzz it for SECONDS. Fails on any crash.
# New inputs go to build/fuzz/corpus/TARGET (the seeds stay untouched);
# a crash is written to build/fuzz/artifacts/TARGET/ and named on stderr:
# copy it to tests/fuzz/crashes/TARGET/ once fixed, so it is replayed forever.
# FUZZ_SEED=N fixes libFuzzer's seed (make test does: the same inputs every
# run, so a new finding shows up in make fuzz, not as a flaky make test).
set -eu
t=$1
secs=$2
bin=build/fuzz/fuzz_$t
seeds=tests/fuzz/corpus/$t
crashes=tests/fuzz/crashes/$t
work=build/fuzz/corpus/$t
art=build/fuzz/artifacts/$t
mkdir -p "$work" "$art" "$seeds"
dict=
seed=
[ -n "${FUZZ_SEED:-}" ] && seed="-seed=$FUZZ_SEED"
[ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"

# every reproducer ever found, then every seed, run once each
files=$(find "$crashes" "$seeds" -type f ! -name .gitkeep 2>/dev/null | sort)
if [ -n "$files" ]; then
	echo "== fuzz_$t: replaying $(echo "$files" | wc -l) reproducers and seeds"
	# shellcheck disable=SC2086
	"$bin" -runs=1 $files >"$art/replay.log" 2>&1 || { cat "$art/replay.log"; echo "fuzz_$t: replay FAILED"; exit 1; }
fi
echo "== fuzz_$t: fuzzing for $secs s"
# shellcheck disable=SC2086
if ! "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix="$art/" $seed $dict "$work" "$seeds" >"$art/run.log" 2>&1; then
	tail -60 "$art/run.log"
	echo "fuzz_$t: CRASH (reproducer in $art/)"
	exit 1
fi
grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" "$art/run.log" |
	sed "s/^/fuzz_$t: /"
