
# The credential sources of issue 16 end to end against the KMS emulator:
# AssumeRole (source_profile static keys, a two-role chain, external id,
# session name, duration, credential_source Ec2InstanceMetadata, an
# untrusted caller, refresh before expiry), credential_process (success,
# expiry, failure, timeout, bad JSON, wrong Version, output never logged),
# SSO (legacy keys and sso_session, expired / missing / refused token),
# region from the profile and from IMDS, FIPS endpoint.  The server logs
# at debug5; every credential the emulator minted, the SSO token, the
# static source secret and the process's output must not reach the log.

use strict;
use warnings;

use Digest::SHA qw(sha1_hex);
use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $AK = 'AKIAKMSPGSRCTEST0001';
my $SK = 'source-static-secret/abcdefghijklmnopqrstuv';
my $ACCT = '111122223333';
my $ROLE1 = "arn:aws:iam::$ACCT:role/kms-user";
my $ROLE2 = "arn:aws:iam::$ACCT:role/kms-second";
my $ROLE_EXT = "arn:aws:iam::$ACCT:role/kms-partner";
my $ROLE_IMDS = "arn:aws:iam::$ACCT:role/kms-from-instance";
my $ROLE_NOBODY = "arn:aws:iam::$ACCT:role/kms-untrusting";
my $SSO_TOKEN = 'sso-access-token-0123456789abcdefSECRET';
my $TTL = 12;

my $emu = start_emulator(
	args => [
		'--cred', "$AK:$SK",
		'--role', "$ROLE1=$AK",
		'--role', "$ROLE2=$ROLE1",
		'--role', "$ROLE_EXT=$AK",
		'--role-external-id', "$ROLE_EXT=partner-ext-42",
		'--role', "$ROLE_IMDS=imds",
		'--role', "$ROLE_NOBODY=AKIANOBODY0000000000",
		'--sso-token', $SSO_TOKEN,
		'--sso-role', "$ACCT/KmsSso",
		'--minted-ttl-seconds', $TTL,
		'--seed-alias', 'alias/kms-pg-test'
	]);

my $node = kms_node('sources', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.sts_endpoint = '$emu->{url}'
kms_pg.imds_endpoint = '$emu->{url}'
kms_pg.sso_endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
log_min_messages = debug5
EOF

my $home = PostgreSQL::Test::Utils::tempdir('home');
mkdir "$home/.aws";

sub write_file
{
	my ($path, $text, $mode) = @_;
	open my $f, '>', $path or die "$path: $!";
	print $f $text;
	close $f;
	chmod($mode, $path) if defined $mode;
}

write_file("$home/.aws/credentials", "[base]\naws_access_key_id = $AK\naws_secret_access_key = $SK\n");

sub with_config
{
	my ($config, $env) = @_;
	write_file("$home/.aws/config", $config);
	start_with_env($node, { HOME => $home, %{ $env // {} } });
}

sub run_ok
{
	my ($expect_source, $name) = @_;
	my $out = $node->safe_psql('postgres', q{
		SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState';
		SELECT source FROM kms_aws_credentials_info()});
	is($out, "Enabled\n$expect_source", "$name: DescribeKey works with source $expect_source");
}

sub run_fails
{
	my ($re, $name) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		q{SELECT kms_aws_describe_key('alias/kms-pg-test')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, $re, $name);
	return $err;
}

sub last_assume_role
{
	my $reqs = emu_control($emu, 'GET', '/__emulator/requests');
	my @ar = grep { ($_->{op} // '') eq 'sts:AssumeRole' } @$reqs;
	return $ar[-1];
}

$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');

# ---- AssumeRole: source_profile with static keys ----
with_config(<<"EOF", { AWS_PROFILE => 'r1' });
[profile r1]
role_arn = $ROLE1
source_profile = base
role_session_name = kms-pg-session
duration_seconds = 900
EOF
run_ok('assume_role', 'AssumeRole from source_profile');
my $ar = last_assume_role();
is($ar->{caller}, $AK, 'STS saw the signature of the source profile\'s keys');
is($ar->{session}, 'kms-pg-session', 'role_session_name is sent');
is($ar->{duration}, '900', 'duration_seconds is sent');
like($node->safe_psql('postgres', 'SELECT origin FROM kms_aws_credentials_info()'),
	qr/role \Q$ROLE1\E of profile r1 via source_profile base, from static keys of profile base/,
	'origin names the role and the chain');

# refreshed before expiry, through STS again
{
	my $before = emu_counters($emu)->{sts_assume_role};
	my $out = $node->safe_psql('postgres', qq{
		CREATE TEMP TABLE c1 AS SELECT * FROM kms_aws_credentials_info();
		SELECT pg_sleep(@{[ $TTL * 0.8 ]});
		SELECT kms_aws_describe_key('alias/kms-pg-test') IS NOT NULL;
		CREATE TEMP TABLE c2 AS SELECT * FROM kms_aws_credentials_info();
		SELECT c2.expiration > c1.expiration AND c2.access_key_id <> c1.access_key_id FROM c1, c2;
	});
	is($out, "\nt\nt", 'assumed-role credentials are refreshed before they expire');
	is(emu_counters($emu)->{sts_assume_role} - $before, 2, 'one AssumeRole at start, one refresh');
}

# ---- a chain of two roles ----
with_config(<<"EOF", { AWS_PROFILE => 'r2' });
[profile r1]
role_arn = $ROLE1
source_profile = base
[profile r2]
role_arn = $ROLE2
source_profile = r1
EOF
run_ok('assume_role', 'role chain');
$ar = last_assume_role();
is($ar->{role}, $ROLE2, 'the last AssumeRole is for the second role');
is($ar->{caller}, $ROLE1, 'signed with the first role\'s credentials');

# ---- external id ----
with_config("[profile p]\nrole_arn = $ROLE_EXT\nsource_profile = base\nexternal_id = partner-ext-42\n",
	{ AWS_PROFILE => 'p' });
run_ok('assume_role', 'external_id accepted');
is(last_assume_role()->{external_id}, 'partner-ext-42', 'external_id is sent');
with_config("[profile p]\nrole_arn = $ROLE_EXT\nsource_profile = base\nexternal_id = wrong\n",
	{ AWS_PROFILE => 'p' });
run_fails(qr/STS AssumeRole failed for role "\Q$ROLE_EXT\E".*\n.*AccessDenied/, 'wrong external_id: AccessDenied');

# ---- a role that does not trust the caller ----
with_config("[profile n]\nrole_arn = $ROLE_NOBODY\nsource_profile = base\n", { AWS_PROFILE => 'n' });
my $err = run_fails(qr/28000: kms_pg: STS AssumeRole failed for role/, 'untrusted caller refused');
like($err, qr/AWS STS error AccessDenied \(request id [0-9a-f-]{36}\)/, 'STS error code and request id in detail');

# ---- credential_source Ec2InstanceMetadata ----
with_config("[profile i]\nrole_arn = $ROLE_IMDS\ncredential_source = Ec2InstanceMetadata\n", { AWS_PROFILE => 'i' });
run_ok('assume_role', 'credential_source Ec2InstanceMetadata');
is(last_assume_role()->{caller}, 'imds', 'source credentials came from IMDS');

# ---- mfa_serial is refused ----
with_config("[profile m]\nrole_arn = $ROLE1\nsource_profile = base\nmfa_serial = arn:aws:iam::$ACCT:mfa/me\n",
	{ AWS_PROFILE => 'm' });
run_fails(qr/0A000: kms_pg: profile "m" requires an MFA code \(mfa_serial\)/, 'mfa_serial refused clearly');

# ---- credential_process ----
my $proc = "$home/cred-proc.sh";
my $exp = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + 3600));
write_file($proc, <<"EOF", 0755);
#!/bin/sh
echo "PROCESS-STDERR-MARKER \$1" >&2
case "\$1" in
ok) printf '{"Version": 1, "AccessKeyId": "$AK", "SecretAccessKey": "$SK", "Expiration": "$exp"}' ;;
fail) echo "PROCESS-STDOUT-MARKER $SK"; exit 3 ;;
slow) sleep 5; echo '{}' ;;
badjson) echo "PROCESS-STDOUT-MARKER {not json" ;;
v2) printf '{"Version": 2, "AccessKeyId": "$AK", "SecretAccessKey": "$SK"}' ;;
expired) printf '{"Version": 1, "AccessKeyId": "$AK", "SecretAccessKey": "$SK", "Expiration": "2020-01-01T00:00:00Z"}' ;;
esac
EOF
with_config(qq{[default]\ncredential_process = "$proc" ok\n});
run_ok('process', 'credential_process');
is($node->safe_psql('postgres', qq{SELECT expiration = '$exp'::timestamptz FROM kms_aws_credentials_info()}),
	't', 'credential_process Expiration honoured');
with_config(qq{[default]\ncredential_process = $proc fail\n});
$err = run_fails(qr/kms_pg: the credential_process of profile "default" failed \(exit status 3\)/,
	'credential_process failure: exit status');
unlike($err, qr/MARKER/, 'credential_process output not in the error');
with_config(qq{[default]\ncredential_process = $proc badjson\n});
run_fails(qr/credential_process of profile "default" did not write a JSON object/, 'credential_process: bad JSON');
with_config(qq{[default]\ncredential_process = $proc v2\n});
run_fails(qr/wrote an unsupported Version/, 'credential_process: Version 2 refused');
with_config(qq{[default]\ncredential_process = $proc expired\n});
run_fails(qr/returned credentials that have already expired/, 'credential_process: expired credentials refused');
with_config(qq{[default]\ncredential_process = $proc slow\n});
$node->append_conf('postgresql.conf', "kms_pg.request_timeout = 1000\n");
$node->reload;
my $t0 = time;
run_fails(qr/credential_process of profile "default" did not finish within 1000 ms/, 'credential_process: timeout');
cmp_ok(time - $t0, '<', 4, 'the slow process was killed at the timeout');
$node->append_conf('postgresql.conf', "kms_pg.request_timeout = 10000\n");
with_config(qq{[default]\ncredential_process = /nonexistent/program\n});
run_fails(qr/could not run the credential_process of profile "default": No such file/, 'credential_process: missing program');
with_config(qq{[default]\ncredential_process = "$proc" ok\n[profile r]\nrole_arn = $ROLE1\nsource_profile = default\n},
	{ AWS_PROFILE => 'r' });
run_ok('assume_role', 'source_profile with credential_process');

# ---- SSO ----
sub sso_cache
{
	my ($key, $token, $expires) = @_;
	mkdir "$home/.aws/sso";
	mkdir "$home/.aws/sso/cache";
	write_file("$home/.aws/sso/cache/" . sha1_hex($key) . '.json',
		qq({"startUrl": "https://example.awsapps.com/start", "region": "us-east-1", "accessToken": "$token", "expiresAt": "$expires"}));
}
my $future = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + 3600));
my $past = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time - 60));
my $sso_legacy = "[profile s]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n"
  . "sso_account_id = $ACCT\nsso_role_name = KmsSso\n";
with_config($sso_legacy, { AWS_PROFILE => 's' });
run_fails(qr/kms_pg: no SSO token for profile "s".*\n.*\n.*HINT:  Run "aws sso login --profile s"/,
	'SSO without a cached token: says what to run');
sso_cache('https://example.awsapps.com/start', $SSO_TOKEN, $future);
run_ok('sso', 'SSO, legacy profile keys');
sso_cache('https://example.awsapps.com/start', $SSO_TOKEN, $past);
run_fails(qr/kms_pg: the SSO token of profile "s" has expired(.|\n)*HINT:  Run "aws sso login --profile s"/,
	'expired SSO token: clear error saying what to run');
sso_cache('https://example.awsapps.com/start', 'not-the-token', $future);
run_fails(qr/the SSO token of profile "s" was refused \(HTTP status 401\)/, 'refused SSO token');
with_config("[profile s2]\nsso_session = corp\nsso_account_id = $ACCT\nsso_role_name = KmsSso\n"
	  . "[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n",
	{ AWS_PROFILE => 's2' });
sso_cache('corp', $SSO_TOKEN, $future);
run_ok('sso', 'SSO, sso_session');
like($node->safe_psql('postgres', 'SELECT origin FROM kms_aws_credentials_info()'),
	qr/SSO role KmsSso in account $ACCT of profile s2/, 'SSO origin');

# ---- region from the profile, then from IMDS; FIPS endpoints ----
$node->append_conf('postgresql.conf', "kms_pg.region = ''\n");
my $keys = "aws_access_key_id = $AK\naws_secret_access_key = $SK\n";
with_config("[profile r]\nregion = us-east-1\n$keys", { AWS_PROFILE => 'r' });
is($node->safe_psql('postgres', q{SELECT region || ' ' || region_from FROM kms_aws_config()}),
	'us-east-1 profile r', 'region from the profile');
run_ok('profile', 'KMS works with the profile\'s region');
with_config("[profile r]\n$keys", { AWS_PROFILE => 'r' });
is($node->safe_psql('postgres', q{SELECT coalesce(region, 'none') || ' ' || region_from FROM kms_aws_config()}),
	'none imds', 'no region configured: IMDS is next');
is($node->safe_psql('postgres', q{SELECT kms_aws_describe_key('alias/kms-pg-test')->>'region'}),
	'us-east-1', 'the region came from instance metadata');
with_config("[profile r]\nregion = eu-west-1\n$keys", { AWS_PROFILE => 'r', AWS_REGION => 'us-east-1' });
is($node->safe_psql('postgres', q{SELECT region || ' ' || region_from FROM kms_aws_config()}),
	'us-east-1 AWS_REGION', 'the environment comes before the profile');
$node->append_conf('postgresql.conf',
	"kms_pg.region = 'eu-central-1'\nkms_pg.endpoint = ''\nkms_pg.sts_endpoint = ''\nkms_pg.use_fips_endpoint = on\n");
$node->reload;
is($node->safe_psql('postgres', q{SELECT region_from || ' ' || kms_endpoint || ' ' || sts_endpoint FROM kms_aws_config()}),
	'kms_pg.region https://kms-fips.eu-central-1.amazonaws.com/ https://sts-fips.eu-central-1.amazonaws.com/',
	'kms_pg.region first; kms_pg.use_fips_endpoint selects the FIPS endpoints');

# ---- no secret of any source in the debug5 log ----
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/MARKER/, 'credential_process stdout/stderr never reach the log');
unlike($log, qr/\Q$SSO_TOKEN\E/, 'SSO token not in the log');
unlike($log, qr/\Q$SK\E/, 'static source secret not in the log');
my $minted = emu_control($emu, 'GET', '/__emulator/credentials/minted');
cmp_ok(scalar @$minted, '>=', 8, 'the emulator minted credentials for the sources (' . scalar(@$minted) . ')');
# test/secrets_scan.py (as t/080): each minted secret access key and session
# token raw, in hex and base64, in 8-byte pieces, and its SigV4 signing keys
my $python = $ENV{KMS_PYTHON} // '/usr/bin/python3';
my @dates = map { strftime('%Y%m%d', gmtime(time + $_ * 86400)) } (-1, 0, 1);
my $leaks = 0;
for my $c (@$minted, { secret => $SK, token => $SSO_TOKEN })
{
	my ($out, $err) = ('', '');
	my $rc = IPC::Run::run(
		[
			$python, kms_root() . '/test/secrets_scan.py', '--aws-secret', $c->{secret},
			'--aws-token', $c->{token}, (map { ('--sigv4-date', $_) } @dates), $node->logfile
		],
		'>', \$out, '2>', \$err);
	if ($out =~ /LEAK/ || !$rc)
	{
		$leaks++;
		diag("$out\n$err");
	}
}
{
	# the scan can see: a planted piece of a minted secret is flagged
	my $probe = $node->basedir . '/probe.txt';
	write_file($probe, 'x ' . substr($minted->[0]{secret}, 5, 12) . " y\n");
	my ($out, $err) = ('', '');
	IPC::Run::run([ $python, kms_root() . '/test/secrets_scan.py', '--aws-secret', $minted->[0]{secret}, $probe ],
		'>', \$out, '2>', \$err);
	like($out, qr/LEAK/, 'secrets_scan flags a planted piece of a minted secret');
}
is($leaks, 0, 'secrets_scan: no minted credential (assume_role, imds, sso), static source secret or SSO token in the debug5 log');

stop_emulator($emu);
done_testing();
