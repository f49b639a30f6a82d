# A stalled fill holds up only its own data key (issue 19): with the AWS
# provider, one session's GenerateDataKey hangs in KMS; meanwhile
#  - 8 sessions encrypting for 160 other tenants (160 new DEKs) finish,
#  - 4 sessions reading values of 40 other, uncached tenants (40 unwraps)
#    finish,
#  - a session encrypting for the stalled tenant waits on the slot (wait
#    event Extension, never an LWLock) and takes over when the filler is
#    cancelled.
# Calls are counted on both sides (emulator and kms_cache_stats) and must be
# exact: 1 stalled + 160 + 1 takeover GenerateDataKey, 40 Decrypt.
# Nothing here is timed: "finish during the stall" means the sessions
# returned while the filler was still inside its (90 s) KMS call.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgCache;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my ($node, $emu) = cache_node('cache_stalled_fill', <<'EOF');
max_connections = 40
kms_pg.max_retries = 0
kms_pg.request_timeout = '180s'
kms_pg.kms_context_keys = 'tenant'
EOF
my $calls = KmsPgCache->new($node, $emu);

sub emu_faults
{
	my ($json) = @_;
	emu_control($emu, 'POST', '/__emulator/faults/reset');
	emu_control($emu, 'POST', '/__emulator/faults', $json) if $json;
}

# Values of 40 tenants to read cold later.
$node->safe_psql('postgres', q{
	CREATE TABLE cold AS
	  SELECT i, kms_encrypt_text('cold ' || i, jsonb_build_object('tenant', 'cold' || (i % 40), 'i', i)) AS ct
	  FROM generate_series(0, 199) i;
	CREATE TABLE sink (tenant text, ct bytea);
});
$calls->expect('setup: 40 tenants', generate_calls => 40);
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
$calls->mark;

# ---- the filler: its GenerateDataKey stalls ----
emu_faults('{"stall_ms": 90000, "stall_count": 1, "ops": ["GenerateDataKey"]}');
my $filler = $node->background_psql('postgres', on_error_stop => 0);
my $filler_pid = $filler->query_safe('SELECT pg_backend_pid()');
$filler->query_until(qr/filling/,
	"\\echo filling\nINSERT INTO sink SELECT 'slow', kms_encrypt_text('s', jsonb_build_object('tenant', 'slow'));\n");
for (1 .. 400)
{
	last if emu_counters($emu)->{stalled} >= 1;
	usleep(50_000);
}
is(emu_counters($emu)->{stalled}, 1, "the filler's GenerateDataKey is stalled in KMS");

# ---- a session on the same DEK waits for it ----
my $same = $node->background_psql('postgres', on_error_stop => 0);
my $same_pid = $same->query_safe('SELECT pg_backend_pid()');
$same->query_until(qr/waiting/,
	"\\echo waiting\nSELECT count(kms_encrypt_text('t', jsonb_build_object('tenant', 'slow', 'n', n))) FROM generate_series(1, 5) n;\n\\echo same-done\n");
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = $same_pid")
  or die 'the session on the same DEK did not wait on the slot';
pass('a session encrypting for the same tenant waits on the slot (wait event Extension)');

# ---- other DEKs go ahead: 8 encrypting sessions, 4 cold readers ----
my @enc = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. 8;
my @rd = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. 4;
for my $k (0 .. $#enc)
{
	$enc[$k]->query_until(qr/started/,
		"\\echo started\nSELECT count(kms_encrypt_text('v', jsonb_build_object('tenant', 'new$k-' || (n % 20), 'n', n))) FROM generate_series(1, 100) n;\n\\echo enc-done\n");
}
for my $k (0 .. $#rd)
{
	$rd[$k]->query_until(qr/started/,
		"\\echo started\nSELECT count(*) FROM cold WHERE i % 4 = $k AND kms_decrypt_text(ct, jsonb_build_object('tenant', 'cold' || (i % 40), 'i', i)) = 'cold ' || i;\n\\echo rd-done\n");
}
my $enc_ok = 0;
for my $s (@enc)
{
	$enc_ok++ if $s->query_until(qr/enc-done/, '') =~ /^100$/m;
}
my $rd_ok = 0;
for my $s (@rd)
{
	$rd_ok++ if $s->query_until(qr/rd-done/, '') =~ /^50$/m;
}
is($enc_ok, 8, '8 sessions encrypted 100 values each for 20 new tenants each');
is($rd_ok, 4, '4 sessions decrypted 50 values each of 10 uncached tenants each');

# All of that while the filler is still inside its KMS call.
is( $node->safe_psql('postgres',
		"SELECT state || '|' || coalesce(wait_event_type, '-') FROM pg_stat_activity WHERE pid = $filler_pid"),
	'active|-', 'the filler is still in its KMS call (active, not waiting on a lock)');
is(emu_counters($emu)->{stalled}, 1, '... and the emulator still holds it');
is( $node->safe_psql('postgres',
		"SELECT wait_event_type FROM pg_stat_activity WHERE pid = $same_pid"),
	'Extension', 'the session on the same DEK still waits');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'LWLock'}),
	'0', 'no session waits on an LWLock');

# ---- cancel the filler: the waiter takes over ----
is($node->safe_psql('postgres', "SELECT pg_cancel_backend($filler_pid)"), 't', 'cancel the filler');
like($same->query_until(qr/same-done/, ''), qr/^5$/m, 'the waiter took over and encrypted its 5 values');
$filler->query('SELECT 1');
like($filler->{stderr}, qr/canceling statement due to user request/, 'the filler was cancelled');

my $d = $calls->expect('stalled fill, others went ahead',
	generate_calls => 1 + 160 + 1, decrypt_calls => 40, call_errors => 1);
is($d->{misses}, 1 + 160 + 1 + 40, 'one miss per DEK, two for the cancelled one');

$_->quit for (@enc, @rd, $same);
eval { $filler->quit; 1 };
emu_faults();
unlike(slurp_file($node->logfile), qr/was terminated by signal|PANIC/, 'no backend crashed');
$node->stop;
stop_emulator($emu);
done_testing();
