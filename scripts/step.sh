#!/usr/bin/env bash
# step.sh NAME COMMAND [ARGS...]: run one build step under a visible header and report its
# wall time and exit status; the step's exit status is passed through.
set -uo pipefail
name=$1
shift
printf '\n===== %s =====\n' "$name"
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
if [ "$rc" -eq 0 ]; then
    printf '===== %s: ok in %ss =====\n' "$name" "$elapsed"
else
    printf '===== %s: FAILED (exit %d) after %ss =====\n' "$name" "$rc" "$elapsed" >&2
fi
if [ -n "${STEP_LOG:-}" ]; then
    if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc)"; fi
    printf '%-55s %8ss  %s\n' "$name" "$elapsed" "$result" >>"$STEP_LOG"
fi
exit "$rc"
