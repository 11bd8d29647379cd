#!/bin/sh
# The image's entry point: `voicegate SUBCOMMAND [FLAGS]`, with --model defaulting to $VOICEGATE_MODEL (the
# build arg MODEL_ID) for the subcommands that load a model; a --model among FLAGS still wins (it comes later).
set -eu
if [ "$#" -eq 0 ]; then
    exec voicegate --help
fi
command="$1"
shift
case "$command" in
    serve|wyoming|synth)
        exec voicegate "$command" --model "${VOICEGATE_MODEL}" "$@" ;;
    *)
        exec voicegate "$command" "$@" ;;
esac
