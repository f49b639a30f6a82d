#!/usr/bin/env bash
# pg_regress over sql/*.sql in a temporary instance, with the KMS emulator
# running for the AWS-provider tests.  Runs as the server user.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=$(mktemp -d /tmp/kms_pg_regress.XXXXXX)
CONF="$PWD/test/regress.conf"
if [ -f test/aws_env.sh ]; then
    source test/aws_env.sh
    kms_aws_env_start "$OUT" || { echo "could not start the KMS emulator"; exit 1; }
    trap 'kms_aws_env_stop' EXIT
    CONF="$OUT/regress_aws.conf"
fi
make -s installcheck KMS_REGRESS_CONF="$CONF"
rc=$?
if [ $rc != 0 ] && [ -f regression.diffs ]; then
    head -c 20000 regression.diffs
fi
exit $rc
