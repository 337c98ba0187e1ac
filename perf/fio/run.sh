#!/bin/sh
# Run every job file here against one NVMe namespace and keep fio's JSON report of each.
#
#   RUNTIME=60 SIZE=4G perf/fio/run.sh /dev/nvme1n1 [OUTDIR] [JOB...]
#
# RUNTIME (seconds per job, default 60), SIZE (bytes of the device the jobs use, default 4G) and
# LOOPS (passes of verify.fio, default 1) come from the environment. JOB names pick job files
# (e.g. 4k-randread-qd1); default: all of them, verify.fio last. Writes OUTDIR/JOB.json (default
# OUTDIR: fio-results); `python3 perf/fio_json.py OUTDIR/*.json` prints one line per job.
# POSIX sh (busybox sh too): hosts and the test guest run the same script.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 DEVICE [OUTDIR] [JOB...]" >&2; exit 2; }
DEV=$1
OUT=${2:-fio-results}
[ $# -ge 2 ] && shift 2 || shift $#
: "${RUNTIME:=60}" "${SIZE:=4G}" "${LOOPS:=1}"
export DEV RUNTIME SIZE LOOPS
[ -b "$DEV" ] || [ -f "$DEV" ] || { echo "$DEV: not a block device or file" >&2; exit 2; }
if [ $# -eq 0 ]; then
  set -- $(cd "$here" && ls *.fio | grep -v '^verify\.fio$' | sed 's/\.fio$//') verify
fi
mkdir -p "$OUT"
failed=0
for name in "$@"; do
  echo "== $name ($DEV, ${RUNTIME}s, $SIZE)" >&2
  if ! fio --output-format=json --output="$OUT/$name.json" "$here/$name.fio"; then
    echo "!! $name failed (see $OUT/$name.json)" >&2
    failed=1
  fi
done
exit $failed
