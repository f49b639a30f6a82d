# The keyring catalog through point-in-time recovery, and the move from
# the 1.0 keyring file on ALTER EXTENSION kms_pg UPDATE.
#
# PITR: a base backup, then (in WAL only) a new key, a rotation and values
# under both; recovery to a restore point after the rotation decrypts
# every value, and keys made after the target are not there.
#
# Upgrade: kms_pg 1.0 (the frozen install script) keeps its keys in the
# file; values are written under two keys, one rotated, one disabled.
# ALTER EXTENSION UPDATE without a master key fails and changes nothing;
# with one, every key moves into the catalog (same ids, aliases, versions,
# states), every value decrypts, also once the file is gone, and the
# upgraded extension has the same objects as a fresh 1.1 install.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

# ---- PITR ----
my $primary = PostgreSQL::Test::Cluster->new('pitr_primary');
$primary->init(has_archiving => 1, allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$primary->start;
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/pitr-a');
CREATE TABLE vals (id int PRIMARY KEY, ct bytea);
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i), 'alias/pitr-a')
  FROM generate_series(1, 50) i;
});
$primary->backup('base');
$primary->safe_psql(
	'postgres', q{
SELECT kms_create_key('alias/pitr-b');
SELECT kms_rotate_key('alias/pitr-a');
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i),
    CASE WHEN i % 2 = 0 THEN 'alias/pitr-a' ELSE 'alias/pitr-b' END) FROM generate_series(51, 100) i;
SELECT pg_create_restore_point('after_rotation');
});
# The segment the switch completes, named at the switch: later WAL (a
# checkpoint under load, say) may already be written into the next segment,
# which will not be archived, so the current position must not be used.
my $last_segment = $primary->safe_psql(
	'postgres', q{
SELECT kms_create_key('alias/pitr-too-late');
SELECT kms_rotate_key('alias/pitr-b');
SELECT pg_walfile_name(pg_switch_wal());
});
$last_segment = (split /\n/, $last_segment)[-1];
$primary->poll_query_until('postgres',
	qq{SELECT last_archived_wal >= '$last_segment' FROM pg_stat_archiver})
  or die "archiving did not catch up (waiting for $last_segment)";

my $pitr = PostgreSQL::Test::Cluster->new('pitr_restored');
$pitr->init_from_backup($primary, 'base', has_restoring => 1);
$pitr->append_conf('postgresql.conf', "recovery_target_name = 'after_rotation'\nrecovery_target_action = 'promote'\n");
$pitr->start;
$pitr->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'PITR did not finish';
is( $pitr->safe_psql('postgres',
		q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id}),
	'100', 'PITR to a point after the rotation: all 100 values decrypt');
is( $pitr->safe_psql('postgres',
		q{SELECT string_agg(alias || ':' || current_version, ',' ORDER BY alias) FROM kms_keys}),
	'alias/pitr-a:2,alias/pitr-b:1', 'the keyring is the one of the restore point');
$pitr->stop;
$primary->stop;

# ---- upgrade from 1.0 ----
my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg VERSION '1.0';
SELECT kms_create_key('alias/up-a', 'first');
SELECT kms_create_key('alias/up-b');
SELECT kms_create_key('alias/up-off');
CREATE TABLE vals (id int PRIMARY KEY, ct bytea);
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i),
    CASE i % 3 WHEN 0 THEN 'alias/up-a' WHEN 1 THEN 'alias/up-b' ELSE 'alias/up-off' END)
  FROM generate_series(1, 90) i;
SELECT kms_rotate_key('alias/up-a');
INSERT INTO vals SELECT i, kms_encrypt_text('v' || i, jsonb_build_object('id', i), 'alias/up-a')
  FROM generate_series(91, 120) i;
SELECT kms_disable_key('alias/up-off');
});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}), '1.0',
	'kms_pg 1.0 is installed');
ok(-f $node->data_dir . '/kms_pg_keyring.json', '1.0 keeps its keys in the keyring file');
my $enabled_check = q{SELECT kms_cache_flush() >= 0, count(*) FROM vals
  WHERE id % 3 <> 2 AND kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id};
is($node->safe_psql('postgres', $enabled_check), 't|80', '1.0: the 80 values under enabled keys decrypt');
my $keys_before = $node->safe_psql('postgres',
	q{SELECT string_agg(concat_ws(' ', key_id, alias, description, enabled, created, current_version, versions), E'\n' ORDER BY alias) FROM kms_keys});

# without a master key the update fails and changes nothing
{
	my ($ret, $out, $err) = $node->psql('postgres', 'ALTER EXTENSION kms_pg UPDATE',
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/58P01: no kms_pg master key is configured/, 'update without a master key: 58P01');
	is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}), '1.0',
		'the extension stays at 1.0');
	is($node->safe_psql('postgres', $enabled_check), 't|80', 'and its values still decrypt');
}

$node->append_conf('postgresql.conf', master_key_conf('a'));
$node->reload;

# a damaged keyring file stops the update too, and nothing changes
{
	my $ring = $node->data_dir . '/kms_pg_keyring.json';
	my $good = slurp_file($ring);
	truncate($ring, int(length($good) / 2)) or die;
	my ($ret, $out, $err) = $node->psql('postgres', 'ALTER EXTENSION kms_pg UPDATE',
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/F0000: kms_pg local keyring ".*" is damaged/, 'update with a damaged keyring file: F0000');
	is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}), '1.0',
		'the extension stays at 1.0');
	open(my $fh, '>', $ring) or die;
	print $fh $good;
	close($fh);
}
$node->safe_psql('postgres', 'ALTER EXTENSION kms_pg UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'kms_pg'}), '1.1',
	'updated to 1.1');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(concat_ws(' ', key_id, alias, description, enabled, created, current_version, versions), E'\n' ORDER BY alias) FROM kms_keys}),
	$keys_before, 'every key moved with its id, alias, description, state, date and versions');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT master_key) FROM kms_local_key_version}),
	'4|1', 'four key versions in the catalog, under the master key');

# the file is no longer used: remove it
unlink($node->data_dir . '/kms_pg_keyring.json') or die;
$node->restart;
is($node->safe_psql('postgres', $enabled_check), 't|80', '1.1: the 80 values under enabled keys decrypt without the file');
{
	my ($ret, $out, $err) = $node->psql('postgres',
		q{SELECT kms_decrypt_text(ct, jsonb_build_object('id', id)) FROM vals WHERE id = 2});
	like($err, qr/kms_pg local key ".*" is disabled/, 'the disabled key is still disabled');
}
$node->safe_psql('postgres', q{SELECT kms_enable_key('alias/up-off')});
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM vals WHERE kms_decrypt_text(ct, jsonb_build_object('id', id)) = 'v' || id}),
	'120', 'enabled again: all 120 values written under 1.0 decrypt');
is($node->safe_psql('postgres', q{SELECT kms_rotate_key('alias/up-a')}), '3', 'an imported key rotates on');

# same objects as a fresh 1.1 install
my $objects = q{SELECT string_agg(pg_describe_object(classid, objid, 0), E'\n' ORDER BY pg_describe_object(classid, objid, 0))
  FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kms_pg')};
my $upgraded = $node->safe_psql('postgres', $objects);
my $views = q{SELECT string_agg(c.relname || ': ' || pg_get_viewdef(c.oid), E'\n' ORDER BY c.relname) FROM pg_class c
  WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace};
my $upgraded_views = $node->safe_psql('postgres', $views);
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION kms_pg');
is($node->safe_psql('fresh', $objects), $upgraded, 'the upgraded extension has the objects of a fresh 1.1 install');
is($node->safe_psql('fresh', $views), $upgraded_views, 'with the same view definitions');
is($node->safe_psql('fresh', q{SELECT count(*) FROM kms_local_key}), '0',
	'a fresh install in another database starts with an empty keyring (keys are per database)');
$node->stop;
done_testing();
