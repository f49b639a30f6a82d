
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

$s2->quit;
$node->stop;
stop_emulator($emu);
done_testing();
