
# Refresh that never drops a working server: an STS outage (AssumeRole)
# and an IMDS outage that cover the whole refresh window.  Decryption
# (through KMS: the DEK cache is flushed before every decrypt) goes on
# with the still-valid credentials until a margin before they expire, with
# one WARNING per failure streak and backed-off retries, the status view
# shows the last refresh error; after expiry it fails with a clear error;
# once the outage ends the next call refreshes and works again.
#
# Credentials live 80 s (refresh window: the last 20 s; used until 5 s
# before expiry).  The outage starts right after they are fetched and
# lasts until they have expired: more than 60 s in which decryption goes
# on (a decrypt through KMS every second), refreshing fails throughout the
# refresh window, then the clear error.  The same rules apply to any
# lifetime: refresh from min(5 min, lifetime/4) before Expiration, use
# until min(30 s, lifetime/16) before it.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $AK = 'AKIAKMSPGOUTAGE00001';
my $SK = 'outage-static-secret/abcdefghijklmnopqrs';
my $ROLE = 'arn:aws:iam::111122223333:role/kms-outage';
my $TTL = 80;

my $emu = start_emulator(
	args => [
		'--cred', "$AK:$SK", '--role', "$ROLE=$AK",
		'--minted-ttl-seconds', $TTL, '--seed-alias', 'alias/kms-pg-test'
	]);

my $node = kms_node('outage', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.sts_endpoint = '$emu->{url}'
kms_pg.imds_endpoint = '$emu->{url}'
kms_pg.max_retries = 0
EOF
my $home = PostgreSQL::Test::Utils::tempdir('home');
mkdir "$home/.aws";
open my $f, '>', "$home/.aws/config" or die;
print $f "[profile r]\nrole_arn = $ROLE\nsource_profile = base\n[profile base]\naws_access_key_id = $AK\naws_secret_access_key = $SK\n";
close $f;

sub phase
{
	my ($name, $env, $sources) = @_;
	$node->append_conf('postgresql.conf', "kms_pg.credential_sources = '$sources'\n");
	start_with_env($node, $env);
	$node->safe_psql('postgres', 'CREATE EXTENSION IF NOT EXISTS kms_pg');
	my $log_offset = -s $node->logfile;
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe(q{SET kms_pg.provider = aws;
		CREATE TEMP TABLE v AS SELECT kms_encrypt_text('outage value', '{}', 'alias/kms-pg-test') AS ct});
	my ($life, $exp) = split /\|/, $s->query_safe(
		q{SELECT extract(epoch FROM expiration - fetched_at), extract(epoch FROM expiration) FROM kms_aws_credentials_status});
	cmp_ok($life, '<=', $TTL, "$name: short-lived credentials ($life s)");

	# the outage starts, long before the refresh window; decryption goes on
	emu_control($emu, 'POST', '/__emulator/faults', '{"credential_error_count": 1000000}');
	my $outage_start = time;
	my ($early_ok, $early_n) = (0, 0);
	while (time < $exp - $life / 4 + 0.3)
	{
		my $r = $s->query(q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(ct, '{}') FROM v});
		$early_ok++ if $r =~ /outage value/;
		$early_n++;
		sleep(1);
	}
	is($early_ok, $early_n, "$name: $early_n decrypts before the refresh window, all during the outage");
	my $faults0 = emu_counters($emu)->{credential_faults};

	# refresh window: every decrypt goes to KMS, refreshing fails, the
	# current credentials keep working
	my ($ok, $n) = (0, 0);
	while (time < $exp - $life / 16 - 0.6)
	{
		my $r = $s->query(q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(ct, '{}') FROM v});
		$ok++ if $r =~ /outage value/;
		$n++;
		sleep(0.2);
	}
	cmp_ok($n, '>=', 5, "$name: $n decrypts during the outage");
	is($ok, $n, "$name: every decrypt during the outage succeeded");
	my $served = time - $outage_start;
	cmp_ok($served, '>=', 60, sprintf('%s: decryption went on through %.0f s of outage', $name, $served));
	my $st = $s->query(q{SELECT usable, refresh_failures > 0, last_refresh_error, next_refresh_attempt IS NOT NULL
		FROM kms_aws_credentials_status});
	like($st, qr/^t\|t\|.+\|t$/, "$name: status shows usable credentials, failures, last error, next attempt");
	note("status: $st");
	# each refresh attempt is one request plus one immediate retry
	my $attempts = (emu_counters($emu)->{credential_faults} - $faults0) / 2;
	cmp_ok($attempts, '<', $n, "$name: refresh retried with backoff ($attempts attempts for $n calls)");

	# past the margin before expiry: a clear error
	sleep($exp - $life / 16 + 0.2 - time);
	$s->{stderr} = '';
	$s->query(q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(ct, '{}') FROM v});
	like($s->{stderr}, qr/kms_pg: the AWS credentials from \w+ expire at .* and could not be refreshed/,
		"$name: after the credentials expire, decryption fails clearly");
	like($s->{stderr}, qr/Last refresh error \(\d+ in a row\)/, "$name: the error says why");

	# the outage ends: the next call refreshes
	emu_control($emu, 'POST', '/__emulator/faults', '{"credential_error_count": 0}');
	like($s->query(q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(ct, '{}') FROM v}), qr/\noutage value$/,
		"$name: after the outage the next call refreshes and decrypts");
	is($s->query(q{SELECT refresh_failures FROM kms_aws_credentials_status}), '0',
		"$name: failure streak reset");
	$s->quit;

	my $log = substr(slurp_file($node->logfile), $log_offset);
	my @warnings = ($log =~ /WARNING:  kms_pg: could not refresh the AWS credentials/g);
	is(scalar @warnings, 1, "$name: one WARNING for the failure streak");
	like($log, qr/LOG:  kms_pg: AWS credentials refreshed from \w+ after \d+ failed attempts/,
		"$name: the recovery is logged");
}

phase('STS outage (AssumeRole)', { HOME => $home, AWS_PROFILE => 'r' }, 'profile');
phase('IMDS outage', { HOME => $home }, 'imds');

$node->stop;
stop_emulator($emu);
done_testing();
