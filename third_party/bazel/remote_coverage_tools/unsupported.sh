#!/bin/sh
echo "bazel coverage needs the real @remote_coverage_tools; this offline" >&2
echo "stand-in (.bazelrc config 'debian') does not provide it." >&2
exit 1
