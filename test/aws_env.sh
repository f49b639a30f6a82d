# Start/stop the KMS emulator for the AWS-provider pg_regress tests.
# Source this file (bash), then:
#
#   kms_aws_env_start OUTDIR   # certs, emulator on 127.0.0.1 over HTTPS,
#                              # OUTDIR/regress_aws.conf, exported env vars
#   kms_aws_env_stop           # stop the emulator (also registered as a trap
#                              # by the caller if it wants)
#
# Exports for the server process (inherited through make installcheck):
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (accepted by the emulator)
# and for the tests (psql \! emuctl calls):
#   KMS_EMULATOR_URL, KMS_EMULATOR_CA, KMS_PG_ROOT
# The server configuration OUTDIR/regress_aws.conf is test/regress.conf plus
# kms_pg.endpoint/region/ca_file pointing at the emulator.

KMS_AWS_TEST_AKID="AKIAKMSPGREGRESS0001"
KMS_AWS_TEST_SECRET="kms-pg-regress-secret/0123456789abcdefABCDEF"

kms_aws_env_start() {
    local out="${1:?usage: kms_aws_env_start OUTDIR}"
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local py="${KMS_PYTHON:-/usr/bin/python3}"
    mkdir -p "$out/certs"
    sh "$root/test/emulator/make_certs.sh" "$out/certs" 2>/dev/null || return 1

    rm -f "$out/emulator.port"
    "$py" "$root/test/emulator/kms_emulator.py" --port 0 --port-file "$out/emulator.port" \
        --tls-cert "$out/certs/server.pem" --tls-key "$out/certs/server.key" \
        --region us-east-1 --cred "$KMS_AWS_TEST_AKID:$KMS_AWS_TEST_SECRET" \
        --seed-alias alias/kms-pg-test --seed-alias alias/kms-pg-other \
        --quiet --die-with-parent >"$out/emulator.log" 2>&1 &
    KMS_AWS_EMULATOR_PID=$!
    local i
    for i in $(seq 1 100); do
        [ -s "$out/emulator.port" ] && break
        if ! kill -0 "$KMS_AWS_EMULATOR_PID" 2>/dev/null; then
            cat "$out/emulator.log" >&2
            return 1
        fi
        sleep 0.1
    done
    [ -s "$out/emulator.port" ] || { echo "emulator did not start" >&2; return 1; }
    local port
    port=$(cat "$out/emulator.port")

    export AWS_ACCESS_KEY_ID="$KMS_AWS_TEST_AKID"
    export AWS_SECRET_ACCESS_KEY="$KMS_AWS_TEST_SECRET"
    unset AWS_SESSION_TOKEN AWS_PROFILE AWS_WEB_IDENTITY_TOKEN_FILE AWS_ROLE_ARN \
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_CONTAINER_CREDENTIALS_FULL_URI
    export KMS_EMULATOR_URL="https://127.0.0.1:$port"
    export KMS_EMULATOR_CA="$out/certs/ca.pem"
    export KMS_PG_ROOT="$root"

    {
        cat "$root/test/regress.conf"
        echo "kms_pg.endpoint = '$KMS_EMULATOR_URL'"
        echo "kms_pg.region = 'us-east-1'"
        echo "kms_pg.ca_file = '$KMS_EMULATOR_CA'"
        echo "kms_pg.credential_sources = 'env'"
    } >"$out/regress_aws.conf"
    echo "KMS emulator at $KMS_EMULATOR_URL (pid $KMS_AWS_EMULATOR_PID), config $out/regress_aws.conf"
}

kms_aws_env_stop() {
    if [ -n "${KMS_AWS_EMULATOR_PID:-}" ]; then
        kill "$KMS_AWS_EMULATOR_PID" 2>/dev/null
        wait "$KMS_AWS_EMULATOR_PID" 2>/dev/null
        KMS_AWS_EMULATOR_PID=
    fi
}
