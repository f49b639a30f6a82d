#!/usr/bin/env python3
"""kms_pg's AWS configuration resolution against botocore's, case by case.

For every configuration in CASES this writes the same config/credentials
files, builds the same environment, and compares
  - botocore (Debian python3-botocore): the credential provider chosen by
    Session.get_credentials() (its .method), Session.region_name and, when a
    region is known, the STS and KMS endpoint URLs of clients it creates;
  - kms_pg: SELECT ... FROM kms_aws_config(environment) on a running server
    (psql, PGHOST/PGPORT from the environment).
A configuration botocore rejects must be rejected by kms_pg with an error
naming the problem; the few intended differences (mfa_serial is refused by
a server that cannot prompt) are listed in the case with "kms".

Usage: aws_config_table.py WORKDIR IMDS_URL
(IMDS_URL: a plain-http emulator, which botocore asks for
credential_source = Ec2InstanceMetadata / EcsContainer.)  Prints TAP-style
"ok N - name" / "not ok N - name" lines and exits non-zero on a mismatch.
"""

import json
import os
import subprocess
import sys

import botocore.session

WORK = sys.argv[1]
IMDS = sys.argv[2]

STATIC = "aws_access_key_id = AKIAEXAMPLE000000001\naws_secret_access_key = s3cr3t/kms-pg-table\n"
STATIC2 = "aws_access_key_id = AKIAEXAMPLE000000002\naws_secret_access_key = s3cr3t/kms-pg-table-2\n"
ROLE = "role_arn = arn:aws:iam::123456789012:role/kms-user\n"

METHOD = {
    "env": "env",
    "assume_role": "assume-role",
    "web_identity": "assume-role-with-web-identity",
    "sso": "sso",
    "process": "custom-process",
    "container": "container-role",
    "imds": "iam-role",
}

CASES = [
    # name, config, credentials, env, extra
    ("default profile, credentials file", None, "[default]\n" + STATIC, {}, {}),
    ("default profile, config file, region", "[default]\nregion = us-west-2\n" + STATIC, None, {}, {}),
    ("credentials file wins over config file", "[default]\n" + STATIC2 + "region = eu-west-1\n",
     "[default]\n" + STATIC, {}, {}),
    ("AWS_PROFILE selects [profile dev]", "[profile dev]\nregion = eu-central-1\n",
     "[default]\n" + STATIC2 + "[dev]\n" + STATIC, {"AWS_PROFILE": "dev"}, {}),
    ("AWS_DEFAULT_PROFILE beats AWS_PROFILE", "[profile a]\nregion = eu-west-1\n[profile b]\nregion = eu-west-2\n",
     "[a]\n" + STATIC + "[b]\n" + STATIC2, {"AWS_PROFILE": "b", "AWS_DEFAULT_PROFILE": "a"}, {}),
    ("environment keys come first", "[default]\nregion = us-east-2\n", "[default]\n" + STATIC,
     {"AWS_ACCESS_KEY_ID": "AKIAENV0000000000001", "AWS_SECRET_ACCESS_KEY": "env-secret"}, {}),
    ("AWS_PROFILE names a profile that does not exist", "[default]\n" + STATIC, None,
     {"AWS_PROFILE": "nope"}, {}),
    ("[dev] in the config file is not a profile", "[dev]\n" + STATIC, None, {"AWS_PROFILE": "dev"}, {}),
    ("quoted profile name", '[profile "my profile"]\nregion = ca-central-1\n' + STATIC, None,
     {"AWS_PROFILE": "my profile"}, {}),
    ("[profile x] in the credentials file is a profile named so", None, "[profile x]\n" + STATIC,
     {"AWS_PROFILE": "x"}, {}),
    ("AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE", "@alt", "@alt", {}, {"alt": True}),
    ("role_arn + source_profile", "[profile r]\n" + ROLE + "source_profile = base\nregion = us-east-1\n",
     "[base]\n" + STATIC, {"AWS_PROFILE": "r"}, {}),
    ("source_profile chain of three", "[profile a]\n" + ROLE + "source_profile = b\n"
     "[profile b]\nrole_arn = arn:aws:iam::123456789012:role/b\nsource_profile = c\n",
     "[c]\n" + STATIC, {"AWS_PROFILE": "a"}, {}),
    ("source_profile loop", "[profile a]\n" + ROLE + "source_profile = b\n"
     "[profile b]\nrole_arn = arn:aws:iam::123456789012:role/b\nsource_profile = a\n", None,
     {"AWS_PROFILE": "a"}, {}),
    ("source_profile refers to itself, with static keys", "[profile s]\n" + ROLE + "source_profile = s\n" + STATIC,
     None, {"AWS_PROFILE": "s"}, {}),
    ("source_profile refers to itself, without keys", "[profile s]\n" + ROLE + "source_profile = s\n",
     None, {"AWS_PROFILE": "s"}, {}),
    ("source_profile does not exist", "[profile r]\n" + ROLE + "source_profile = ghost\n", None,
     {"AWS_PROFILE": "r"}, {}),
    ("source profile without credentials", "[profile r]\n" + ROLE + "source_profile = empty\n"
     "[profile empty]\nregion = us-east-1\n", None, {"AWS_PROFILE": "r"}, {}),
    ("both source_profile and credential_source", "[profile r]\n" + ROLE +
     "source_profile = base\ncredential_source = Environment\n", "[base]\n" + STATIC, {"AWS_PROFILE": "r"}, {}),
    ("role_arn without any source", "[profile r]\n" + ROLE, None, {"AWS_PROFILE": "r"}, {}),
    ("credential_source Environment", "[profile r]\n" + ROLE + "credential_source = Environment\n", None,
     {"AWS_PROFILE": "r", "AWS_ACCESS_KEY_ID": "AKIAENV0000000000001", "AWS_SECRET_ACCESS_KEY": "env-secret"}, {}),
    ("credential_source Environment without keys", "[profile r]\n" + ROLE + "credential_source = Environment\n",
     None, {"AWS_PROFILE": "r"}, {}),
    ("credential_source EcsContainer", "[profile r]\n" + ROLE + "credential_source = EcsContainer\n", None,
     {"AWS_PROFILE": "r", "AWS_CONTAINER_CREDENTIALS_FULL_URI": IMDS + "/container-credentials/t"}, {}),
    ("credential_source Ec2InstanceMetadata", "[profile r]\n" + ROLE + "credential_source = Ec2InstanceMetadata\n",
     None, {"AWS_PROFILE": "r"}, {}),
    ("credential_source with a wrong name", "[profile r]\n" + ROLE + "credential_source = environment\n", None,
     {"AWS_PROFILE": "r"}, {}),
    ("role_session_name, external_id, duration_seconds", "[profile r]\n" + ROLE +
     "source_profile = base\nrole_session_name = kms-pg\nexternal_id = ext-123\nduration_seconds = 1800\n",
     "[base]\n" + STATIC, {"AWS_PROFILE": "r"}, {}),
    ("mfa_serial", "[profile r]\n" + ROLE + "source_profile = base\nmfa_serial = arn:aws:iam::123456789012:mfa/me\n",
     "[base]\n" + STATIC, {"AWS_PROFILE": "r"}, {"kms": "error:MFA"}),
    ("role_arn in the environment's profile beats web identity variables",
     "[profile r]\n" + ROLE + "source_profile = base\n", "[base]\n" + STATIC,
     {"AWS_PROFILE": "r", "AWS_WEB_IDENTITY_TOKEN_FILE": "/tmp/none", "AWS_ROLE_ARN": "arn:aws:iam::1:role/w"}, {}),
    ("web_identity_token_file in the profile", "[default]\nweb_identity_token_file = /var/run/token\n" + ROLE,
     None, {}, {}),
    ("AWS_WEB_IDENTITY_TOKEN_FILE without a role", None, None,
     {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}, {}),
    ("credential_process", "[default]\ncredential_process = @proc\n", None, {}, {}),
    ("source_profile with credential_process", "[profile r]\n" + ROLE + "source_profile = p\n"
     "[profile p]\ncredential_process = @proc\n", None, {"AWS_PROFILE": "r"}, {}),
    ("SSO, legacy keys", "[default]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n"
     "sso_account_id = 123456789012\nsso_role_name = KmsUser\n", None, {}, {}),
    ("SSO, sso_session", "[default]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = KmsUser\n"
     "[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\nsso_region = eu-west-1\n", None, {}, {}),
    ("SSO, missing keys", "[default]\nsso_account_id = 123456789012\nsso_role_name = KmsUser\n", None, {}, {}),
    ("SSO, sso_session does not exist", "[default]\nsso_session = nope\nsso_account_id = 1\nsso_role_name = R\n",
     None, {}, {}),
    ("region: AWS_DEFAULT_REGION beats the profile", "[default]\nregion = eu-west-3\n", "[default]\n" + STATIC,
     {"AWS_DEFAULT_REGION": "ap-southeast-2"}, {}),
    ("region in the credentials file profile", None, "[default]\n" + STATIC + "region = sa-east-1\n", {}, {}),
    ("sts_regional_endpoints legacy, legacy region", "[default]\nregion = us-east-1\nsts_regional_endpoints = legacy\n",
     "[default]\n" + STATIC, {}, {}),
    ("sts_regional_endpoints legacy, newer region", "[default]\nregion = ap-east-1\nsts_regional_endpoints = legacy\n",
     "[default]\n" + STATIC, {}, {}),
    ("AWS_STS_REGIONAL_ENDPOINTS overrides the profile", "[default]\nregion = eu-west-1\nsts_regional_endpoints = regional\n",
     "[default]\n" + STATIC, {"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, {}),
    ("use_fips_endpoint in the profile", "[default]\nregion = us-west-2\nuse_fips_endpoint = true\n",
     "[default]\n" + STATIC, {}, {}),
    ("AWS_USE_FIPS_ENDPOINT", "[default]\nregion = us-east-2\n", "[default]\n" + STATIC,
     {"AWS_USE_FIPS_ENDPOINT": "true"}, {}),
    ("duplicate section", "[default]\nregion = us-east-1\n[default]\nregion = us-west-1\n",
     "[default]\n" + STATIC, {}, {}),
    ("colon delimiter, upper-case key, comments, continuation",
     "# comment\n[default]\n; another\nRegion: eu-north-1\ns3 =\n  addressing_style = path\n",
     "[default]\n" + STATIC, {}, {}),
    ("[DEFAULT] values apply to every section", "[DEFAULT]\nregion = me-south-1\n[profile x]\n",
     "[x]\n" + STATIC, {"AWS_PROFILE": "x"}, {}),
    ("access key id without secret (credentials file)", None, "[default]\naws_access_key_id = AKIAEXAMPLE000000001\n",
     {}, {}),
    ("access key id without secret (environment)", None, None, {"AWS_ACCESS_KEY_ID": "AKIAENV0000000000001"}, {}),
    ("nothing configured: instance metadata", None, None, {}, {}),
]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def prepare(i, config, creds, env, extra):
    d = os.path.join(WORK, "case%02d" % i)
    home = os.path.join(d, "home")
    os.makedirs(os.path.join(home, ".aws"), exist_ok=True)
    proc = os.path.join(d, "proc.sh")
    write(proc, "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"AKIAPROC000000000001\", "
          "\"SecretAccessKey\": \"proc-secret\"}'\n")
    os.chmod(proc, 0o755)
    e = {"HOME": home}
    if extra.get("alt"):
        # decoys in HOME, the real files elsewhere
        write(os.path.join(home, ".aws", "config"), "[default]\nregion = us-west-1\n")
        write(os.path.join(home, ".aws", "credentials"), "[default]\n" + STATIC2)
        write(os.path.join(d, "alt-config"), "[default]\nregion = af-south-1\n")
        write(os.path.join(d, "alt-credentials"), "[default]\n" + STATIC)
        e["AWS_CONFIG_FILE"] = os.path.join(d, "alt-config")
        e["AWS_SHARED_CREDENTIALS_FILE"] = os.path.join(d, "alt-credentials")
    else:
        if config is not None:
            write(os.path.join(home, ".aws", "config"), config.replace("@proc", proc))
        if creds is not None:
            write(os.path.join(home, ".aws", "credentials"), creds)
    e.update(env)
    return e


def boto(env):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = IMDS
    os.environ["AWS_METADATA_SERVICE_NUM_ATTEMPTS"] = "1"
    try:
        s = botocore.session.Session()
        creds = s.get_credentials()
        region = s.get_config_variable("region")
        out = {"source": creds.method if creds else None, "region": region}
        if region:
            kw = {"aws_access_key_id": "a", "aws_secret_access_key": "b"}
            out["kms"] = s.create_client("kms", **kw).meta.endpoint_url.rstrip("/")
            out["sts"] = s.create_client("sts", **kw).meta.endpoint_url.rstrip("/")
        return out
    except Exception as ex:  # every rejection botocore has
        return {"error": "%s: %s" % (type(ex).__name__, ex)}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def kms(env):
    arr = "ARRAY[%s]::text[]" % ",".join(
        "'%s'" % ("%s=%s" % kv).replace("'", "''") for kv in sorted(env.items()))
    sql = ("SELECT json_build_object('source', source, 'chain', chain, 'region', region, "
           "'kms', kms_endpoint, 'sts', sts_endpoint) FROM kms_aws_config(%s)" % arr)
    r = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip()}
    d = json.loads(r.stdout)
    src = d["source"]
    if src == "profile":
        src = "config-file" if "/.aws/config" in d["chain"] or "alt-config" in d["chain"] \
            else "shared-credentials-file"
    else:
        src = METHOD.get(src, src)
    out = {"source": src, "region": d["region"], "chain": d["chain"]}
    if d["region"]:
        out["kms"] = d["kms"].rstrip("/")
        out["sts"] = d["sts"].rstrip("/")
    return out


def main():
    failed = 0
    n = 0
    for i, (name, config, creds, env, extra) in enumerate(CASES, 1):
        e = prepare(i, config, creds, env, extra)
        b = boto(e)
        if "AWS_STS_REGIONAL_ENDPOINTS" not in e and "sts_regional_endpoints" not in (config or ""):
            # kms_pg defaults to regional STS endpoints, as current botocore
            # releases and the other SDKs do; Debian's botocore 1.29 still
            # defaults to the legacy global endpoint: compare with botocore
            # told "regional" explicitly.
            b["sts"] = boto(dict(e, AWS_STS_REGIONAL_ENDPOINTS="regional")).get("sts")
        k = kms(e)
        n += 1
        want_kms = extra.get("kms")
        if want_kms:
            # an intended difference: kms_pg refuses what botocore would prompt for
            ok = "error" in k and want_kms.split(":", 1)[1] in k["error"] and "error" not in b
        elif "error" in b:
            ok = "error" in k and "kms_pg:" in k["error"]
        else:
            ok = "error" not in k and all(k.get(f) == b.get(f) for f in ("source", "region", "kms", "sts"))
        print("%s %d - %s" % ("ok" if ok else "not ok", n, name))
        if not ok:
            failed += 1
        if not ok or os.environ.get("KMS_TABLE_VERBOSE"):
            print("#   botocore: %s" % json.dumps(b))
            print("#   kms_pg:   %s" % json.dumps(k))
    print("1..%d" % n)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
