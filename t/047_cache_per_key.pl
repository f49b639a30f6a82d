
# The DEK cache per key: slots record their key, so
#  - kms_cache_flush(key) wipes one key's DEKs (by alias, key id or ARN)
#    and leaves the others (no new provider call for them);
#  - kms_disable_key() drops only that key's DEKs, in every session (a
#    second session that had them in its local table can no longer use them);
#  - an AWS DisabledException / KMSInvalidStateException / NotFoundException
#    for a key drops that key's cached DEKs in every backend, the other
#    key's DEKs keep working without KMS calls.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $AK = 'AKIAKMSPGCACHEKEY001';
my $SK = 'cache-key-secret/abcdefghijklmnopqrstu';
my $emu = start_emulator(
	args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-a', '--seed-alias', 'alias/kms-pg-b' ]);
my $node = kms_node('perkey', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
EOF
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');

sub cstat
{
	my ($col) = @_;
	return $node->safe_psql('postgres', "SELECT $col FROM kms_cache_stats");
}

# ---- local provider ----
$node->safe_psql('postgres', q{
	SELECT kms_create_key('alias/loc-a'), kms_create_key('alias/loc-b');
	CREATE TABLE lv AS SELECT k, kms_encrypt_text('local ' || k, '{}', 'alias/loc-' || k) AS ct
	  FROM (VALUES ('a'), ('b')) v(k);
	SELECT kms_cache_flush();
	SELECT count(*) FROM lv WHERE kms_decrypt_text(ct, '{}') = 'local ' || k;
});
is(cstat('entries'), '2', 'local: two keys, two cached DEKs');

# a second session holds both DEKs in its local table
my $s2 = $node->background_psql('postgres', on_error_stop => 0);
is($s2->query_safe(q{SELECT count(*) FROM lv WHERE kms_decrypt_text(ct, '{}') = 'local ' || k}), '2',
	'second session decrypts both');

my $dec0 = cstat('decrypt_calls');
is($node->safe_psql('postgres', q{SELECT kms_cache_flush('alias/loc-b')}), '1',
	'kms_cache_flush(alias) wipes that key\'s DEK only');
is(cstat('entries'), '1', 'the other key\'s DEK stays');
$node->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, '{}') FROM lv WHERE k = 'a'});
is(cstat('decrypt_calls') - $dec0, 0, 'the other key still decrypts from the cache');
$node->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, '{}') FROM lv WHERE k = 'b'});
is(cstat('decrypt_calls') - $dec0, 1, 'the flushed key needs one provider call');
my $bid = $node->safe_psql('postgres', q{SELECT key_id FROM kms_keys WHERE alias = 'alias/loc-b'});
is($node->safe_psql('postgres', qq{SELECT kms_cache_flush('$bid')}), '1', 'kms_cache_flush(key id) works too');

# disable one key: only its DEKs go, in every session
$node->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, '{}') FROM lv});
is(cstat('entries'), '2', 'both cached again');
$node->safe_psql('postgres', q{SELECT kms_disable_key('alias/loc-a')});
is(cstat('entries'), '1', 'kms_disable_key drops only that key\'s DEK');
$s2->{stderr} = '';
my $r = $s2->query(q{SELECT kms_decrypt_text(ct, '{}') FROM lv WHERE k = 'a'});
like($s2->{stderr}, qr/disabled/, 'the other session can no longer use the disabled key\'s cached DEK');
$dec0 = cstat('decrypt_calls');
is($s2->query(q{SELECT kms_decrypt_text(ct, '{}') FROM lv WHERE k = 'b'}), 'local b',
	'the other session still decrypts the other key');
is(cstat('decrypt_calls') - $dec0, 0, '... from its cache');
$node->safe_psql('postgres', q{SELECT kms_enable_key('alias/loc-a')});

# ---- AWS: KMS says a key is disabled ----
$node->safe_psql('postgres', q{
	SET kms_pg.provider = aws;
	CREATE TABLE av AS SELECT k, kms_encrypt_text('aws ' || k, '{}', 'alias/kms-pg-' || k) AS ct
	  FROM (VALUES ('a'), ('b')) v(k);
	SELECT kms_cache_flush();
	SELECT count(*) FROM av WHERE kms_decrypt_text(ct, '{}') = 'aws ' || k;
});
is($s2->query(q{SELECT count(*) FROM av WHERE kms_decrypt_text(ct, '{}') = 'aws ' || k}), '2',
	'AWS: second session has both DEKs');
emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-a", "state": "Disabled"}');
is($node->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, '{}') FROM av WHERE k = 'a'}), 'aws a',
	'AWS: a key disabled in KMS still decrypts from the cache (KMS not asked)');
# the next KMS call for the key: GenerateDataKey for a new DEK
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET kms_pg.provider = aws; SELECT kms_encrypt_text('x', '{"new": 1}', 'alias/kms-pg-a')});
like($err, qr/KMS key is disabled/, 'AWS: DisabledException on the next KMS call');
my $before = emu_counters($emu);
$s2->{stderr} = '';
$s2->query(q{SELECT kms_decrypt_text(ct, '{}') FROM av WHERE k = 'a'});
like($s2->{stderr}, qr/KMS key is disabled/, 'AWS: every session dropped the key\'s DEKs: KMS is asked and refuses');
is($s2->query(q{SELECT kms_decrypt_text(ct, '{}') FROM av WHERE k = 'b'}), 'aws b',
	'AWS: the other key still works');
my $after = emu_counters($emu);
is($after->{Decrypt} - $before->{Decrypt}, 1, 'AWS: one Decrypt (the refused one), none for the other key');

emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-a", "state": "PendingDeletion"}');
($ret, $out, $err) = $node->psql('postgres',
	q{SET kms_pg.provider = aws; SELECT kms_encrypt_text('x', '{"new": 2}', 'alias/kms-pg-a')});
like($err, qr/pending deletion/, 'AWS: KMSInvalidStateException for a key pending deletion');

# ---- kms_pg.key_state_check_interval: a key disabled in KMS, nobody told ----
emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-a", "state": "Enabled"}');
$node->append_conf('postgresql.conf', "kms_pg.key_state_check_interval = 2\nkms_pg.dek_max_age = 3600\n");
$node->reload;
$s2->quit;
$s2 = $node->background_psql('postgres', on_error_stop => 0);
# several DEKs per key (one per tenant), in two sessions
$node->safe_psql('postgres', q{
	SET kms_pg.provider = aws; SET kms_pg.kms_context_keys = 'tenant';
	CREATE TABLE av2 AS SELECT k, t, kms_encrypt_text('aws ' || k, jsonb_build_object('tenant', t), 'alias/kms-pg-' || k) AS ct
	  FROM (VALUES ('a'), ('b')) v(k), generate_series(1, 3) t;
	SELECT count(*) FROM av2 WHERE kms_decrypt_text(ct, jsonb_build_object('tenant', t)) = 'aws ' || k;
});
is($s2->query(q{SELECT count(*) FROM av2 WHERE kms_decrypt_text(ct, jsonb_build_object('tenant', t)) = 'aws ' || k}),
	'6', 'check interval: 6 DEKs of 2 keys cached, used by two sessions');
my $m = $node->background_psql('postgres', on_error_stop => 0);
$before = emu_counters($emu);
emu_control($emu, 'POST', '/__emulator/keys/state', '{"key": "alias/kms-pg-a", "state": "Disabled"}');
my $t0 = Time::HiRes::time();
my ($dropped_after, $b_ok) = (undef, 1);
while (Time::HiRes::time() - $t0 < 8)
{
	$b_ok &&= $m->query(q{SELECT count(*) FROM av2 WHERE k = 'b' AND kms_decrypt_text(ct, jsonb_build_object('tenant', t)) = 'aws b'}) eq '3';
	$s2->{stderr} = '';
	$s2->query(q{SELECT kms_decrypt_text(ct, jsonb_build_object('tenant', t)) FROM av2 WHERE k = 'a'});
	if ($s2->{stderr} =~ /KMS key is disabled/)
	{
		$dropped_after = Time::HiRes::time() - $t0;
		last;
	}
	Time::HiRes::sleep(0.25);
}
ok(defined $dropped_after, 'check interval: the disabled key\'s cached DEKs stop working without any flush');
cmp_ok($dropped_after // 99, '<=', 2 + 1.5, 'check interval: within the interval (2 s) plus a check');
ok($b_ok, 'check interval: the other key kept working');
$after = emu_counters($emu);
my $describes = $after->{DescribeKey} - $before->{DescribeKey};
my $bound = 2 * (int(($dropped_after // 8) / 2) + 2);
cmp_ok($describes, '<=', $bound,
	"check interval: $describes DescribeKey calls for 2 keys, 6 DEKs, 3 sessions (one per key per interval: <= $bound)");
cmp_ok($describes, '>=', 1, 'check interval: the state was asked');
$m->quit;

$s2->quit;
$node->stop;
stop_emulator($emu);
done_testing();
