#!/usr/bin/env bash
# TAP tests in t/ with PostgreSQL::Test::Cluster (Debian ships the Perl
# modules but PGXS TAP support is disabled, so run prove directly).
# KMS_TAP_TESTS="t/050_cache_aws.pl ..." runs only those.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PGXS_DIR=$(dirname "$(dirname "$(dirname "$(pg_config --pgxs)")")")
export PERL5LIB="$PWD/t:$PGXS_DIR/src/test/perl${PERL5LIB:+:$PERL5LIB}"
export PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress"
export PATH="$(pg_config --bindir):$PATH"
export TESTDIR="$PWD" TESTDATADIR="$PWD/tmp_check/tap"
mkdir -p tmp_check/tap
prove ${PROVE_FLAGS:--v} ${KMS_TAP_TESTS:-t/*.pl}
