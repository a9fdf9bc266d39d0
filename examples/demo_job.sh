#!/bin/sh
#SBATCH --time=01:00:00
#SBATCH --output=slurmgate-demo-%j.out
# slurmgate demo job: runs the demo LLM service on the port it is given ($1,
# or PORT). Slurm runs a copy of this script from its spool folder, so the
# demo binary is found next to the original script (scontrol's Command=),
# unless DEMO_SERVICE_BIN names it.
port="${1:-${PORT:-}}"
[ -n "$port" ] || { echo "demo_job.sh: no port given" >&2; exit 2; }
if [ -z "${DEMO_SERVICE_BIN:-}" ]; then
	script=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | sed -n 's/.* Command=\([^ ]*\).*/\1/p')
	DEMO_SERVICE_BIN="$(dirname "${script:-$0}")/../build/demo_service"
fi
exec "$DEMO_SERVICE_BIN" --host 0.0.0.0 --port "$port"
