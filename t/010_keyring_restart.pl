# The local keyring across server restarts: values stay decryptable, the
# file is owner-only, a missing keyring is a clear error and is never
# recreated by a decryption, a damaged keyring is a clear error and is
# left alone, and restoring the backup copy makes everything work again.
use strict;
use warnings;

use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('keyring_restart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');

my $keyring = $node->data_dir . '/kms_pg_keyring.json';
my $backup = $node->basedir . '/keyring_backup.json';

# Run SQL and return (stderr) with the SQLSTATE shown; the DEK cache is
# flushed first so the keyring is really read.
sub sql_error
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql(
		'postgres', "SELECT kms_cache_flush();\n$sql",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $ret == 0 ? '' : $err;
}

sub file_mode
{
	return sprintf('%04o', (stat($_[0]))[2] & 07777);
}

my $check_all = q{SELECT kms_cache_flush() >= 0,
  count(*) FILTER (WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'secret ' || id)
  FROM secrets};

# Before the first key there is no keyring, and using a key does not make one.
ok(!-e $keyring, 'no keyring before the first kms_create_key');
like(
	sql_error(q{SELECT kms_encrypt('x'::bytea, '{}', 'alias/t010')}),
	qr/ERROR:  42704: kms_pg local keyring ".*kms_pg_keyring\.json" does not exist/,
	'encrypting before any key exists: keyring does not exist (42704)');
ok(!-e $keyring, 'a failed encryption does not create the keyring');

# First key: the keyring appears with mode 0600.
$node->safe_psql('postgres', q{SELECT kms_create_key('alias/t010', 'restart test')});
ok(-f $keyring, 'kms_create_key created the keyring');
is(file_mode($keyring), '0600', 'keyring file mode is 0600');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE secrets AS
	  SELECT id, kms_encrypt_text('secret ' || id, jsonb_build_object('id', id), 'alias/t010') AS ct
	  FROM generate_series(1, 100) AS id});
is($node->safe_psql('postgres', $check_all), "t|100", 'all values decrypt before the restart');
copy($keyring, $backup) or die "could not back up the keyring: $!";

# Restart: the keyring persisted, the cache is empty, values decrypt.
$node->restart;
is($node->safe_psql('postgres', $check_all), "t|100", 'all values decrypt after a restart');
is(file_mode($keyring), '0600', 'keyring file mode is still 0600');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM kms_keys WHERE alias = 'alias/t010' AND enabled}),
	'1',
	'the key is listed after the restart');

# A key created after the restart is kept alongside the first.
$node->safe_psql('postgres', q{SELECT kms_create_key('alias/t010_b')});
$node->restart;
is($node->safe_psql('postgres', q{SELECT string_agg(alias, ',' ORDER BY alias) FROM kms_keys}),
	'alias/t010,alias/t010_b', 'both keys survive a second restart');
copy($keyring, $backup) or die "could not back up the keyring: $!";

# Missing keyring after a restart: a clear error, and no new keyring.
$node->stop;
unlink($keyring) or die "could not remove the keyring: $!";
$node->start;
like(
	sql_error(q{SELECT kms_decrypt(ct, jsonb_build_object('id', id)) FROM secrets WHERE id = 1}),
	qr/ERROR:  42704: kms_pg local keyring ".*kms_pg_keyring\.json" does not exist/,
	'missing keyring: decrypt fails with 42704 "does not exist"');
ok(!-e $keyring, 'a decryption does not recreate the missing keyring');
like(
	sql_error(q{SELECT kms_encrypt('x'::bytea, '{}', 'alias/t010')}),
	qr/ERROR:  42704: kms_pg local keyring ".*" does not exist/,
	'missing keyring: encrypt fails with 42704');
like(
	sql_error(q{SELECT kms_rotate_key('alias/t010')}),
	qr/ERROR:  42704: kms_pg local keyring ".*" does not exist/,
	'missing keyring: rotate fails with 42704');
like(
	sql_error(q{SELECT kms_disable_key('alias/t010')}),
	qr/ERROR:  42704: kms_pg local keyring ".*" does not exist/,
	'missing keyring: disable fails with 42704');
like(sql_error(q{SELECT * FROM kms_keys}),
	qr/ERROR:  42704: kms_pg local keyring ".*" does not exist/,
	'missing keyring: kms_keys fails with 42704');
like(
	sql_error(q{SELECT kms_create_key('alias/t010_new')}),
	qr/ERROR:  42704: kms_pg local keyring ".*" is missing but existed before/,
	'missing keyring: kms_create_key refuses to start a new keyring over a lost one');
ok(!-e $keyring, 'none of these recreated the keyring');

# Damaged keyring (truncated to half its size): a clear error, file untouched.
copy($backup, $keyring) or die "could not restore the keyring: $!";
chmod(0600, $keyring);
my $size = -s $keyring;
truncate($keyring, int($size / 2)) or die "could not truncate the keyring: $!";
my $damaged = slurp_file($keyring);
like(
	sql_error(q{SELECT kms_decrypt(ct, jsonb_build_object('id', id)) FROM secrets WHERE id = 1}),
	qr/ERROR:  F0000: kms_pg local keyring ".*kms_pg_keyring\.json" is damaged/,
	'truncated keyring: decrypt fails with F0000 "is damaged"');
like(
	sql_error(q{SELECT kms_create_key('alias/t010_c')}),
	qr/ERROR:  F0000: kms_pg local keyring ".*" is damaged/,
	'truncated keyring: kms_create_key fails with F0000 and does not replace it');
is(slurp_file($keyring), $damaged, 'the damaged keyring was left as it was');

# An empty file and a file that is JSON but not a keyring are damaged too.
truncate($keyring, 0) or die "could not truncate the keyring: $!";
like(
	sql_error(q{SELECT kms_decrypt(ct, jsonb_build_object('id', id)) FROM secrets WHERE id = 1}),
	qr/ERROR:  F0000: kms_pg local keyring ".*" is damaged/,
	'empty keyring: decrypt fails with F0000');
append_to_file($keyring, '{"keys": []}');
like(
	sql_error(q{SELECT kms_decrypt(ct, jsonb_build_object('id', id)) FROM secrets WHERE id = 1}),
	qr/ERROR:  F0000: kms_pg local keyring ".*" is damaged/,
	'keyring without a format field: decrypt fails with F0000');

# Group or world access is refused.
copy($backup, $keyring) or die "could not restore the keyring: $!";
chmod(0644, $keyring);
like(
	sql_error(q{SELECT kms_decrypt(ct, jsonb_build_object('id', id)) FROM secrets WHERE id = 1}),
	qr/ERROR:  F0000: kms_pg local keyring ".*" has group or world access/,
	'a world-readable keyring is refused');

# Restoring the backup copy (mode 0600) makes everything work again.
chmod(0600, $keyring);
is($node->safe_psql('postgres', $check_all), "t|100", 'restored keyring: all values decrypt');
$node->restart;
is($node->safe_psql('postgres', $check_all), "t|100", 'restored keyring: all values decrypt after a restart');
is( $node->safe_psql(
		'postgres',
		q{SELECT kms_decrypt_text(kms_encrypt_text('new', '{}', 'alias/t010_b'), '{}')}),
	'new',
	'restored keyring: new values encrypt and decrypt');
ok(!glob($keyring . '.tmp.*'), 'no temporary keyring files are left');

$node->stop;
done_testing();
