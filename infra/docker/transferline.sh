#!/bin/sh
# `transferline <command>` inside the images: the producer CLI (up, upload, ingest, train, status,
# cache ...), through the package's own bin script. e.g. docker compose run --rm cli transferline status
exec node /app/apps/producer/bin/transferline.js "$@"
