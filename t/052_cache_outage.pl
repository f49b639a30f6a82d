# A KMS outage with values cached: the emulator process is stopped, then
# restarted on the same port with the same --state-file (keys persist) but
# stalling every call, then healthy again.  Throughout, the server is not
# restarted.
#  - down: values whose DEKs are cached decrypt in a fresh session, and a
#    tenant with a cached DEK keeps encrypting, with no KMS call; a new
#    tenant's first value, and a value whose DEK has expired, fail with a
#    clear error well within kms_pg.request_timeout (2 s, max_retries 1).
#  - hanging: the same errors, after the 2 s request timeout.
#  - back: new DEKs and expired DEKs are fetched again (one call each) and
#    everything decrypts; kms_cache_stats agrees with the emulator.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgCache;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $state = PostgreSQL::Test::Utils::tempdir('emu_state') . '/kms_state.json';
my @emu_args = ('--state-file', $state);
my ($node, $emu) = cache_node('cache_outage', '', \@emu_args);
my $calls = KmsPgCache->new($node, $emu);

my $session = q{
	SET kms_pg.kms_context_keys = 'tenant';
	SET kms_pg.request_timeout = '2s';
	SET kms_pg.max_retries = 1;
};
my $ctx = q{jsonb_build_object('tenant', tenant, 'row', i)};

# acme's DEK is cached for 300 s (the default); brief's for 1 s only
$node->safe_psql('postgres', $session . qq{
	CREATE TABLE vals AS
	  SELECT i, tenant, kms_encrypt_text('value ' || i, $ctx) AS ct
	  FROM generate_series(1, 1000) i, (VALUES ('acme')) t(tenant);
	SET kms_pg.dek_max_age = 1;
	INSERT INTO vals SELECT 0, 'brief', kms_encrypt_text('value 0', jsonb_build_object('tenant', 'brief', 'row', 0));
});
$calls->expect('setup: 2 tenants', generate_calls => 2);
my $decrypt_acme =
  qq{SELECT count(*) FROM vals WHERE tenant = 'acme' AND kms_decrypt_text(ct, $ctx) = 'value ' || i};
my $decrypt_brief = qq{SELECT kms_decrypt_text(ct, $ctx) FROM vals WHERE tenant = 'brief'};
my $encrypt_acme = qq{INSERT INTO vals SELECT 1001, 'acme', kms_encrypt_text('value 1001', jsonb_build_object('tenant', 'acme', 'row', 1001))};
my $encrypt_new = q{SELECT kms_encrypt_text('x', '{"tenant": "initech"}')};

# Run $sql in a fresh session with the outage settings: (stderr, seconds).
sub timed_psql
{
	my ($sql) = @_;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql('postgres', $session . $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose', '-v', 'ON_ERROR_STOP=1' ]);
	return ($err, time - $t0);
}

sleep 1;    # brief's DEK expires
is($node->safe_psql('postgres', 'SELECT entries FROM kms_cache_stats'), '1', "brief's entry has expired");

# ---- KMS down: the emulator process is gone ----
my $port = $emu->{port};
stop_emulator($emu);

is($node->safe_psql('postgres', $session . $decrypt_acme), '1000', 'down: cached values decrypt in a fresh session');
my ($err, $secs) = timed_psql($encrypt_acme);
is($err, '', 'down: a tenant with a cached DEK keeps encrypting');
my $d = $calls->stats_delta;
is($d->{generate_calls} + $d->{decrypt_calls}, 0, 'down: no KMS call was attempted for that');
$calls->mark;

($err, $secs) = timed_psql($encrypt_new);
like($err, qr/ERROR:  39000: could not reach KMS for GenerateDataKey after 2 attempts/,
	'down: a new tenant gets a clear error (39000, could not reach KMS, 2 attempts)');
like($err, qr/DETAIL:  Endpoint \Q$emu->{url}\E \(region us-east-1\): \S/, 'down: the endpoint in DETAIL');
cmp_ok($secs, '<', 2.5, sprintf('down: within the 2 s request timeout (%.2f s)', $secs));
($err, $secs) = timed_psql($decrypt_brief);
like($err, qr/ERROR:  39000: could not reach KMS for Decrypt after 2 attempts/,
	'down: a value whose DEK expired gets the same clear error');
cmp_ok($secs, '<', 2.5, sprintf('down: within the 2 s request timeout (%.2f s)', $secs));
$d = $calls->stats_delta;
is_deeply([ @$d{qw(generate_calls decrypt_calls call_errors)} ], [ 2, 2, 4 ],
	'down: kms_cache_stats counts the 2 failed attempts of each request');

# ---- KMS hanging: back on the same port with the same state, every call stalls ----
$emu = start_emulator(port => $port, args => [ '--cred', "$KmsPgCache::AK:$KmsPgCache::SK",
	'--seed-alias', 'alias/kms-pg-test', @emu_args ]);
is($emu->{port}, $port, 'the emulator is back on the same port');
$calls->set_emulator($emu);
emu_control($emu, 'POST', '/__emulator/faults', '{"stall_ms": 8000}');

($err, $secs) = timed_psql($encrypt_new);
like($err, qr/ERROR:  39000: KMS request timed out after 2000 ms/, 'hanging: a new tenant times out clearly');
like($err, qr/HINT:  kms_pg.request_timeout bounds one KMS request, retries included\./, 'hanging: hint');
cmp_ok($secs, '>=', 1.9, sprintf('hanging: not before the request timeout (%.2f s)', $secs));
cmp_ok($secs, '<', 3, 'hanging: and soon after it');
is($node->safe_psql('postgres', $session . $decrypt_acme), '1001', 'hanging: cached values still decrypt');
$calls->expect('hanging', generate_calls => 1, call_errors => 1);

# ---- KMS back: work resumes without a server restart ----
emu_control($emu, 'POST', '/__emulator/faults/reset');
is( $node->safe_psql('postgres', $session . qq{
		INSERT INTO vals SELECT i, tenant, kms_encrypt_text('value ' || i, $ctx)
		  FROM generate_series(1, 100) i, (VALUES ('initech')) t(tenant);
		SELECT count(*) FROM vals WHERE tenant = 'initech' AND kms_decrypt_text(ct, $ctx) = 'value ' || i}),
	'100', 'back: the new tenant encrypts and decrypts');
is($node->safe_psql('postgres', $session . $decrypt_brief), 'value 0',
	'back: the value whose DEK expired decrypts (the key survived the emulator restart)');
is($node->safe_psql('postgres', $session . $decrypt_acme), '1001', 'back: the cached values still decrypt');
$calls->expect('back', generate_calls => 1, decrypt_calls => 1, call_errors => 0);
is($node->safe_psql('postgres', q{SELECT count(DISTINCT (kms_ciphertext_info(ct)).dek_id) FROM vals}),
	'3', 'three DEKs in all: acme, brief, initech');

unlike(slurp_file($node->logfile), qr/was terminated by signal|PANIC/, 'no backend crashed');
$node->stop;
stop_emulator($emu);
done_testing();
