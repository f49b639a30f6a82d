
# AWS credential chain against the KMS emulator: environment, web identity
# (emulator STS), shared credentials and config files with profiles,
# container credentials (relative and full URI, token in variable and in
# file), EC2 IMDSv2; refresh of short-lived credentials before Expiration;
# source ordering; nothing found; no secret in the server log.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $AK = 'AKIAKMSPGTAPTEST0001';
my $SK = 'tap-static-secret/abcdefghijklmnopqrstuvwxyz0123';
my $WEB_TOKEN = 'eyJhbGciOiJSUzI1NiJ9.kms-pg-web-identity.sig';
my $CONTAINER_TOKEN = 'kms-pg-container-auth-token-0123456789';
my $TTL = 8;

my $emu = start_emulator(
	args => [
		'--cred', "$AK:$SK",
		'--web-identity-token', $WEB_TOKEN,
		'--container-auth-token', $CONTAINER_TOKEN,
		'--minted-ttl-seconds', $TTL,
		'--seed-alias', 'alias/kms-pg-test'
	]);

my $node = kms_node('creds', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.sts_endpoint = '$emu->{url}'
kms_pg.container_endpoint = '$emu->{url}'
kms_pg.imds_endpoint = '$emu->{url}'
log_min_messages = debug1
EOF

my $tmp = PostgreSQL::Test::Utils::tempdir('awsfiles');

sub set_sources
{
	my ($sources, $extra) = @_;
	$node->append_conf('postgresql.conf',
		"kms_pg.credential_sources = '$sources'\n" . ($extra // ''));
}

# Source in use and a KMS call that must succeed with it.
sub check_source
{
	my ($expect_source, $name) = @_;
	my $out = $node->safe_psql('postgres',
		q{SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState';
		  SELECT source || '|' || session_token || '|' || (expiration IS NOT NULL)
		  FROM kms_aws_credentials_info()});
	my ($state, $info) = split /\n/, $out;
	is($state, 'Enabled', "$name: DescribeKey works");
	like($info, qr/^\Q$expect_source\E\|/, "$name: source is $expect_source");
	return $info;
}

# In one session: credentials are reused while fresh, and refreshed once
# less than a quarter of their lifetime remains.
sub check_refresh
{
	my ($counter, $name) = @_;
	my $before = emu_counters($emu)->{$counter};
	my $out = $node->safe_psql('postgres', qq{
		CREATE TEMP TABLE c1 AS SELECT * FROM kms_aws_credentials_info();
		CREATE TEMP TABLE c1b AS SELECT * FROM kms_aws_credentials_info();
		SELECT (SELECT fetched_at FROM c1) = (SELECT fetched_at FROM c1b) AS reused;
		SELECT (SELECT expiration - fetched_at FROM c1) <= interval '$TTL seconds' AS short_lived;
		SELECT pg_sleep(@{[ $TTL * 0.8 ]});
		SELECT kms_aws_describe_key('alias/kms-pg-test') IS NOT NULL AS works;
		CREATE TEMP TABLE c2 AS SELECT * FROM kms_aws_credentials_info();
		SELECT c2.fetched_at > c1.fetched_at AND c2.expiration > c1.expiration
		       AND c2.access_key_id <> c1.access_key_id AS refreshed FROM c1, c2;
	});
	is($out, "t\nt\n\nt\nt", "$name: reused while fresh, refreshed before expiry");
	my $after = emu_counters($emu)->{$counter};
	is($after - $before, 2, "$name: exactly one refresh fetch ($counter)");

	# credentials revoked early: the call fetches new ones and succeeds
	emu_control($emu, 'POST', '/__emulator/credentials/expire');
	$out = $node->safe_psql('postgres', q{
		SELECT kms_aws_describe_key('alias/kms-pg-test') IS NOT NULL;
		SELECT kms_aws_describe_key('alias/kms-pg-test') IS NOT NULL});
	is($out, "t\nt", "$name: expired token is refetched transparently");
}

# ---- env ----
set_sources('env,web_identity,profile,container,imds');
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
my $info = check_source('env', 'env');
is($info, 'env|false|false', 'env: long-term credentials, no expiry');
is( $node->safe_psql('postgres', 'SELECT access_key_id FROM kms_aws_credentials_info()'),
	'AKIA****0001', 'access key id is masked');

# ---- shared credentials file, named profile via kms_pg.aws_profile ----
my $credfile = "$tmp/credentials";
append_to_file($credfile, <<"EOF");
# comment
[default]
aws_access_key_id = AKIAWRONGWRONGWRONG1
aws_secret_access_key = wrong

[kmspg]
aws_access_key_id = $AK
aws_secret_access_key = $SK
EOF
set_sources('env,web_identity,profile,container,imds', "kms_pg.aws_profile = 'kmspg'\n");
start_with_env($node, { AWS_SHARED_CREDENTIALS_FILE => $credfile, HOME => $tmp });
check_source('profile', 'credentials file profile');
like($node->safe_psql('postgres', 'SELECT origin FROM kms_aws_credentials_info()'),
	qr/profile kmspg in \Q$credfile\E/, 'profile origin names profile and file');

# env comes first in the default order, unless the sources say otherwise
start_with_env($node,
	{ AWS_SHARED_CREDENTIALS_FILE => $credfile, AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
check_source('env', 'env before profile');
set_sources('profile,env', "kms_pg.aws_profile = 'kmspg'\n");
$node->reload;
check_source('profile', 'credential_sources reorders the chain');

# ---- config file, [profile name], AWS_PROFILE ----
my $cfgfile = "$tmp/config";
append_to_file($cfgfile, <<"EOF");
[default]
region = us-east-1
[profile cfgonly]
aws_access_key_id=$AK
aws_secret_access_key=$SK
EOF
set_sources('env,web_identity,profile,container,imds', "kms_pg.aws_profile = ''\n");
start_with_env($node,
	{ AWS_SHARED_CREDENTIALS_FILE => $credfile, AWS_CONFIG_FILE => $cfgfile, AWS_PROFILE => 'cfgonly' });
check_source('profile', 'config file [profile cfgonly] via AWS_PROFILE');

# the default profile of the credentials file has wrong keys: KMS says so
start_with_env($node, { AWS_SHARED_CREDENTIALS_FILE => $credfile, AWS_CONFIG_FILE => $cfgfile });
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT kms_aws_describe_key('alias/kms-pg-test')});
like($stderr, qr/KMS rejected the credentials of the server \(UnrecognizedClientException\)/,
	'default profile with unknown key id is rejected by KMS');

# ---- web identity through the emulator's STS ----
my $tokfile = "$tmp/web-identity-token";
append_to_file($tokfile, "$WEB_TOKEN\n");
set_sources('env,web_identity,profile,container,imds');
start_with_env($node,
	{ AWS_WEB_IDENTITY_TOKEN_FILE => $tokfile, AWS_ROLE_ARN => 'arn:aws:iam::111122223333:role/kms-pg' });
is(check_source('web_identity', 'web identity'), 'web_identity|true|true', 'web identity: session credentials with expiry');
check_refresh('sts_web_identity', 'web identity');

# a wrong token: STS refuses, with its error code and request id
my $badtok = "$tmp/bad-token";
append_to_file($badtok, "not-the-token\n");
start_with_env($node,
	{ AWS_WEB_IDENTITY_TOKEN_FILE => $badtok, AWS_ROLE_ARN => 'arn:aws:iam::111122223333:role/kms-pg' });
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT kms_aws_describe_key('alias/kms-pg-test')}, extra_params => ['-v', 'VERBOSITY=verbose']);
like($stderr, qr/28000: kms_pg: STS AssumeRoleWithWebIdentity failed for role "arn:aws:iam::111122223333:role\/kms-pg"/,
	'web identity: bad token refused');
like($stderr, qr/AWS STS error InvalidIdentityToken \(request id [0-9a-f-]{36}\)/,
	'web identity: STS error code and request id in detail');
unlike($stderr, qr/not-the-token/, 'web identity: token not in the error');

# ---- container credentials: relative URI, token in a variable ----
start_with_env($node,
	{
		AWS_CONTAINER_CREDENTIALS_RELATIVE_URI => '/container-credentials/task',
		AWS_CONTAINER_AUTHORIZATION_TOKEN => $CONTAINER_TOKEN
	});
is(check_source('container', 'container relative URI'), 'container|true|true', 'container: session credentials');
check_refresh('container_credentials', 'container relative URI');

# full URI, token in a file
my $ctokfile = "$tmp/container-token";
append_to_file($ctokfile, "$CONTAINER_TOKEN\n");
start_with_env($node,
	{
		AWS_CONTAINER_CREDENTIALS_FULL_URI => "$emu->{url}/container-credentials/full",
		AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE => $ctokfile
	});
check_source('container', 'container full URI with token file');
like($node->safe_psql('postgres', 'SELECT origin FROM kms_aws_credentials_info()'),
	qr{/container-credentials/full$}, 'container: origin is the full URI');

# wrong token: the endpoint says 401
start_with_env($node,
	{
		AWS_CONTAINER_CREDENTIALS_RELATIVE_URI => '/container-credentials/task',
		AWS_CONTAINER_AUTHORIZATION_TOKEN => 'wrong-token'
	});
($ret, $stdout, $stderr) = $node->psql('postgres', q{SELECT * FROM kms_aws_credentials_info()});
like($stderr, qr/container credentials endpoint returned HTTP status 401/, 'container: wrong token refused');
unlike($stderr, qr/wrong-token/, 'container: token not in the error');

# plain http to a non-loopback full URI is refused before any request
start_with_env($node, { AWS_CONTAINER_CREDENTIALS_FULL_URI => 'http://192.0.2.10/creds' });
($ret, $stdout, $stderr) = $node->psql('postgres', q{SELECT * FROM kms_aws_credentials_info()});
like($stderr, qr/refusing plain http to non-loopback host "192.0.2.10"/, 'container: http to non-loopback refused');

# ---- EC2 IMDSv2 ----
set_sources('imds');
start_with_env($node, {});
is(check_source('imds', 'IMDSv2'), 'imds|true|true', 'imds: session credentials');
like($node->safe_psql('postgres', 'SELECT origin FROM kms_aws_credentials_info()'),
	qr/^role kms-pg-test-role via /, 'imds: role name discovered');
check_refresh('imds_credentials', 'IMDSv2');
my $c = emu_counters($emu);
ok($c->{imds_token} >= 3, 'imds: session token PUT before credential GETs');

# ---- nothing found ----
my $closed = PostgreSQL::Test::Cluster::get_free_port();
set_sources('env,imds', "kms_pg.imds_endpoint = 'http://127.0.0.1:$closed'\n");
start_with_env($node, {});
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT * FROM kms_aws_credentials_info()}, extra_params => ['-v', 'VERBOSITY=verbose']);
like($stderr, qr/28000: kms_pg: no AWS credentials found/, 'no source: clear error');
like($stderr, qr/DETAIL:  Tried env: AWS_ACCESS_KEY_ID\/AWS_SECRET_ACCESS_KEY not set; imds: http:\/\/127.0.0.1:$closed\/latest\/api\/token unreachable/,
	'no source: detail lists what was tried');

# ---- no secret ever in the server log (debug1 logging was on) ----
$node->stop;
my $log = slurp_file($node->logfile);
for my $secret ($SK, $WEB_TOKEN, $CONTAINER_TOKEN)
{
	unlike($log, qr/\Q$secret\E/, 'secret absent from the server log');
}
unlike($log, qr/ASIA[A-Z2-7]{16}/, 'no full temporary access key id in the log');
like($log, qr/using AWS credentials from imds/, 'credential source is logged at DEBUG1');

stop_emulator($emu);
done_testing();
