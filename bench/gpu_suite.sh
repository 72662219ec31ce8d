#!/usr/bin/env bash
# Replaced by bench/device_suite.sh (issue 14): one time-boxed call on the
# lent GPU machine, carried wheels only, the official MENTOR side by side,
# results as measurements.jsonl + summary.md + suite.log. This name stays so
# that old notes keep working; it passes its arguments on.
exec bash "$(dirname "$0")/device_suite.sh" "$@"
