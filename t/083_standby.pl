# A hot standby built with pg_basebackup, local provider.
#
# The keyring is a WAL-logged catalog (kms_local_key, kms_local_key_version)
# whose key material is wrapped under the master key, kept outside the
# database: the standby gets every key through the base backup and WAL,
# and needs only the same master key.  On the standby:
#  - key management (create, rotate, disable) fails with 25006, since the
#    keyring must only change on the primary;
#  - kms_encrypt() itself writes nothing (the local provider wraps a new DEK
#    with a root key it only reads), and PostgreSQL allows volatile
#    functions in read-only transactions, so encrypting a value works and
#    the result decrypts on the primary too; storing it is what PostgreSQL
#    refuses (INSERT in a read-only transaction, 25006).
# Keys created and rotated on the primary after the backup reach the
# standby through WAL and decrypt there, and after promotion.  A standby
# with the catalog but no master key fails with its own error (55000).
use strict;
use warnings;

use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$primary->start;
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/t083');
SELECT kms_create_key('alias/t083-ctx');
CREATE TABLE vals (id int PRIMARY KEY, ctx jsonb, plain text, ct bytea);
INSERT INTO vals
  SELECT i, jsonb_build_object('tenant', 't' || (i % 4), 'id', i), 'value ' || i,
         kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 't' || (i % 4), 'id', i), 'alias/t083')
  FROM generate_series(1, 300) AS i;
SET kms_pg.kms_context_keys = 'tenant';
INSERT INTO vals
  SELECT i, jsonb_build_object('tenant', 't' || (i % 4), 'id', i), 'value ' || i,
         kms_encrypt_text('value ' || i, jsonb_build_object('tenant', 't' || (i % 4), 'id', i), 'alias/t083-ctx')
  FROM generate_series(301, 400) AS i;
});

my $check = q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, ctx) = plain};
is($primary->safe_psql('postgres', $check), '400', 'the primary decrypts its 400 values');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# rows written after the backup arrive through WAL
$primary->safe_psql(
	'postgres', q{
INSERT INTO vals
  SELECT i, jsonb_build_object('id', i), 'value ' || i,
         kms_encrypt_text('value ' || i, jsonb_build_object('id', i), 'alias/t083')
  FROM generate_series(401, 450) AS i;
});
$primary->wait_for_catchup($standby);

ok(!-e $primary->backup_dir . '/base/kms_pg_keyring.json', 'there is no keyring file to copy');

# A standby with the catalog but without the master key: a clear error of
# its own, nothing decrypts, nothing falls back.
{
	my $conf = $standby->data_dir . '/postgresql.conf';
	my $text = slurp_file($conf);
	(my $without = $text) =~ s/^kms_pg\.master_key_file.*$//mg;
	open(my $fh, '>', $conf) or die;
	print $fh $without;
	close($fh);
	$standby->reload;
	my ($ret, $out, $err) = $standby->psql('postgres', 'SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE id = 1',
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/55000: this standby has the kms_pg keyring but no master key/,
		'a standby without the master key: 55000, no fallback');
	open($fh, '>', $conf) or die;
	print $fh $text;
	close($fh);
	$standby->reload;
}
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is($standby->safe_psql('postgres', $check), '450', 'the standby decrypts all 450 values');

sub standby_fails
{
	my ($sql, $re, $name) = @_;
	my ($ret, $out, $err) =
	  $standby->psql('postgres', $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	ok($ret != 0 && $err =~ $re, $name) or diag("ret $ret, stdout: $out, stderr: $err");
}

standby_fails(q{SELECT kms_create_key('alias/t083-standby')},
	qr/25006: the kms_pg local keyring cannot be changed during recovery/,
	'kms_create_key on the standby: read-only error (25006)');
standby_fails(q{SELECT kms_rotate_key('alias/t083')}, qr/25006/, 'kms_rotate_key on the standby: 25006');
standby_fails(q{SELECT kms_disable_key('alias/t083')}, qr/25006/, 'kms_disable_key on the standby: 25006');
standby_fails(q{SELECT kms_enable_key('alias/t083')}, qr/25006/, 'kms_enable_key on the standby: 25006');

# Encrypting writes nothing: allowed in the read-only transaction.
my $ct = $standby->safe_psql('postgres',
	q{SELECT kms_encrypt_text('made on the standby', '{"where": "standby"}', 'alias/t083')});
like($ct, qr/^\\xc54b5047/, 'kms_encrypt works on the standby');
is( $standby->safe_psql('postgres', qq{SELECT kms_decrypt_text('$ct'::bytea, '{"where": "standby"}')}),
	'made on the standby',
	'the standby decrypts its own value');
is( $primary->safe_psql('postgres', qq{SELECT kms_decrypt_text('$ct'::bytea, '{"where": "standby"}')}),
	'made on the standby',
	'the primary decrypts the value made on the standby');
is( $standby->safe_psql('postgres',
		q{SELECT kms_decrypt_text(kms_reencrypt(ct, ctx, 'alias/t083-ctx'), ctx) = plain FROM vals WHERE id = 5}),
	't', 'kms_reencrypt works on the standby');
is( $standby->safe_psql('postgres',
		q{SELECT kms_decrypt_text(kms_rewrap(ct, 'alias/t083-ctx', ctx), ctx) = plain FROM vals WHERE id = 6}),
	't', 'kms_rewrap works on the standby');
standby_fails(
	q{INSERT INTO vals VALUES (9999, '{}', 'x', kms_encrypt_text('x', '{}', 'alias/t083'))},
	qr/25006: cannot execute INSERT in a read-only transaction/,
	'storing a value on the standby: PostgreSQL refuses the INSERT (25006)');
standby_fails(
	q{UPDATE vals SET ct = kms_rewrap(ct, 'alias/t083-ctx', ctx) WHERE id = 1},
	qr/25006/, 'rewrapping in place on the standby: 25006');

# Keys made on the primary after the backup: the keyring is in WAL.
$primary->safe_psql(
	'postgres', q{
SELECT kms_create_key('alias/t083-late');
SELECT kms_rotate_key('alias/t083');
INSERT INTO vals
  SELECT i, jsonb_build_object('id', i), 'late ' || i,
         kms_encrypt_text('late ' || i, jsonb_build_object('id', i),
                          CASE WHEN i % 2 = 0 THEN 'alias/t083-late' ELSE 'alias/t083' END)
  FROM generate_series(451, 460) AS i;
});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE id = 452}),
	'late 452', 'a key created after the backup decrypts on the standby');
is($standby->safe_psql('postgres', q{SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE id = 451}),
	'late 451', 'a key version rotated in after the backup decrypts on the standby');
is($standby->safe_psql('postgres', $check), '460', 'the standby decrypts all 460 values');
is( $standby->safe_psql('postgres', q{SELECT current_version FROM kms_keys WHERE alias = 'alias/t083'}),
	'2', 'the standby sees the rotation in kms_keys');

# A key disabled on the primary stops working on the standby once replayed
# (after its cached data keys expire or are flushed there).
$primary->safe_psql('postgres', q{SELECT kms_disable_key('alias/t083-late')});
$primary->wait_for_catchup($standby);
$standby->safe_psql('postgres', 'SELECT kms_cache_flush()');
standby_fails(q{SELECT kms_decrypt_text(ct, ctx) FROM vals WHERE id = 452},
	qr/55000: kms_pg local key ".*" is disabled/, 'a key disabled on the primary is disabled on the standby');
$primary->safe_psql('postgres', q{SELECT kms_enable_key('alias/t083-late')});
$primary->wait_for_catchup($standby);

# Failover: the promoted standby decrypts everything and manages keys.
$primary->stop;
$standby->promote;
is($standby->safe_psql('postgres', $check), '460', 'after promotion all 460 values decrypt');
is( $standby->safe_psql('postgres',
		q{SELECT kms_decrypt_text(kms_encrypt_text('after failover', '{}', kms_create_key('alias/t083-new')), '{}')}),
	'after failover', 'the promoted standby creates keys and uses them');
is($standby->safe_psql('postgres', q{SELECT kms_rotate_key('alias/t083-late')}), '2',
	'the promoted standby rotates keys');

$standby->stop;
done_testing();
