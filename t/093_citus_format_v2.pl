# Format 2 on a Citus cluster (docs/citus.md): the data key registry as a
# Citus reference table.  Opt-in: runs only when KMS_CITUS_PG_CONFIG names
# the pg_config of a PostgreSQL installation that has Citus and kms_pg
# installed; the normal suite skips it.  Nothing of Citus is part of kms_pg.
#
# A coordinator (in the Citus metadata) and two workers on 127.0.0.1, all
# with the same master key.  Proves:
#  - before kms_citus_distribute_registry(), a coordinator with workers
#    refuses format 2 sealing (55000), and the function refuses on a worker;
#  - kms_citus_distribute_registry() makes the registry a reference table
#    with a placement on every node, keeps the rows there were, and says
#    false the second time;
#  - values sealed on the coordinator into a distributed table (VALUES and
#    INSERT ... SELECT) are format 2 with 40 bytes of overhead, and every
#    placement holds the same registry rows (one per tenant's data key);
#  - those values decrypt in queries pushed down to the workers, and on
#    each worker directly in a new session, from the worker's own placement;
#  - ROLLBACK and a rolled-back savepoint leave no row on any placement; a
#    committed savepoint's row is on every placement;
#  - registry rows are written to the coordinator's placement and copied to
#    every placement at commit, so an INSERT ... SELECT that meets new data
#    keys while Citus streams rows to the shards works;
#  - after a flush, sealing for a known tenant makes a new data key (no
#    lease is taken on Citus) whose row reaches every placement;
#  - a worker refuses format 2 sealing (0A000) and seals format 1;
#  - a protected column of a distributed table refuses format 2 (0A000):
#    kms_set_column_format, and the shards' triggers when the workers'
#    kms_pg.format is 2; format 1 works and reaches the workers' catalog;
#  - kms_rotate_key_registry() on the coordinator rewraps every row on every
#    placement under another key without writing the user table (the stored
#    bytes are the same); a worker session that read before the rotation
#    still decrypts after the old key is disabled, and so do new sessions;
#  - a multi-row INSERT ... VALUES with new tenants, and kms_rewrap() of one
#    format 2 value on the coordinator, which rewraps its registry row on
#    every placement (refused, 0A000, in a query pushed down to a worker).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgCitus;

my ($coord, @workers) = citus_cluster("kms_pg.provider = 'local'\nkms_pg.kms_context_keys = 'tenant'\n");
$coord->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
my $k1 = $coord->safe_psql('postgres', q{SELECT kms_create_key('alias/v2a')});
my $k2 = $coord->safe_psql('postgres', q{SELECT kms_create_key('alias/v2b')});
my $k1_id = $coord->safe_psql('postgres', q{SELECT kms_describe_key('alias/v2a') ->> 'KeyId'});
my $k2_id = $coord->safe_psql('postgres', q{SELECT kms_describe_key('alias/v2b') ->> 'KeyId'});

sub cq { return $coord->safe_psql('postgres', $_[0]); }

# the registry rows as one line, read on a node (from its own placement)
my $reg_rows = q{SELECT count(*) || ':' || coalesce(string_agg(dek_ref || '/' || key_id || '/' || md5(wrapped_dek), ',' ORDER BY dek_ref), '')
                 FROM kms_dek_registry};

cq(q{CREATE TABLE notes (id bigint PRIMARY KEY, tenant int NOT NULL, body bytea);
     SELECT create_distributed_table('notes', 'id');});

# ---------- before the registry is a reference table ----------
my ($ret, $out, $err) = $coord->psql('postgres',
	q{SET kms_pg.format = 2; SELECT kms_encrypt('x'::bytea, '{"tenant": 1}', 'alias/v2a')});
isnt($ret, 0, 'format 2 refused on a coordinator with workers before the registry is distributed');
like($err, qr/the kms_pg data key registry is not a Citus reference table/, '... saying why');
like($err, qr/kms_citus_distribute_registry/, '... and what to run');
($ret, $out, $err) = $workers[0]->psql('postgres', q{SELECT kms_citus_distribute_registry()});
like($err, qr/this node is not a Citus coordinator/, 'kms_citus_distribute_registry refused on a worker');

# a row made before distribution (format 2 on a coordinator with no workers
# is not possible here: the row is inserted directly as the table's owner)
cq(q{INSERT INTO kms_dek_registry (dek_ref, provider, key_id, name_block, wrapped_dek)
     VALUES (4242, 1, 'pre-existing', '\x00', '\x01')});

is(cq(q{SELECT kms_citus_distribute_registry()}), 't', 'kms_citus_distribute_registry() on the coordinator');
is(cq(q{SELECT partmethod::text || repmodel::text FROM pg_dist_partition WHERE logicalrelid = 'kms_dek_registry'::regclass}),
	'nt', 'the registry is a Citus reference table');
is(cq(q{SELECT count(DISTINCT p.groupid) FROM pg_dist_placement p JOIN pg_dist_shard s USING (shardid)
        WHERE s.logicalrelid = 'kms_dek_registry'::regclass}),
	'3', 'with a placement on each of the three nodes');
is(cq(q{SELECT kms_citus_distribute_registry()}), 'f', 'a second call says it already is one');
for my $n ($coord, @workers)
{
	like($n->safe_psql('postgres', $reg_rows), qr/^1:4242\/pre-existing\//,
		$n->name . ': the row made before distribution is on its placement');
}
cq(q{DELETE FROM kms_dek_registry WHERE dek_ref = 4242});

# ---------- sealing on the coordinator ----------
($ret, $out, $err) = $coord->psql('postgres', q{
SET kms_pg.format = 2;
INSERT INTO notes VALUES (1, 1, kms_encrypt('note-1'::bytea, '{"tenant": 1}', 'alias/v2a'));
INSERT INTO notes SELECT g, g % 3, kms_encrypt(('note-' || g)::bytea, jsonb_build_object('tenant', g % 3), 'alias/v2a')
FROM generate_series(2, 60) g;
}, on_error_stop => 1);
is($ret, 0, 'INSERT ... VALUES and INSERT ... SELECT seal format 2 on the coordinator') or diag($err);
is(cq(q{SELECT count(*) FILTER (WHERE get_byte(body, 4) = 2 AND length(body) - length('note-' || id) = 40)
        FROM notes}), '60', 'every stored value is format 2 with 40 bytes of overhead');
my $coord_rows = cq($reg_rows);
like($coord_rows, qr/^3:/, 'three registry rows: one data key per tenant');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $reg_rows), $coord_rows, $w->name . ': its placement has the same rows');
}

# ---------- decrypting on the workers ----------
my $check = q{SELECT count(*) FROM notes
              WHERE kms_decrypt(body, jsonb_build_object('tenant', tenant)) = ('note-' || id)::bytea};
like(cq("EXPLAIN (VERBOSE, COSTS OFF) $check"), qr/Query: SELECT .*kms_decrypt/s,
	'the decrypting query is pushed down to the workers');
is(cq($check), '60', 'every value decrypts in the pushed-down query');
my $sample = cq(q{SELECT encode(body, 'hex') FROM notes WHERE id = 7});
for my $w (@workers)
{
	is($w->safe_psql('postgres',
			"SELECT convert_from(kms_decrypt(decode('$sample', 'hex'), '{\"tenant\": 1}'), 'UTF8')"),
		'note-7', $w->name . ': a new session decrypts a value from its own placement');
}

# ---------- durability: the registry row shares the fate of the value ----------
cq(q{SET kms_pg.format = 2; BEGIN;
     INSERT INTO notes VALUES (100, 100, kms_encrypt('gone'::bytea, '{"tenant": 100}', 'alias/v2a'));
     ROLLBACK;});
cq(q{SET kms_pg.format = 2; BEGIN;
     SAVEPOINT s;
     INSERT INTO notes VALUES (101, 101, kms_encrypt('gone too'::bytea, '{"tenant": 101}', 'alias/v2a'));
     ROLLBACK TO SAVEPOINT s;
     SAVEPOINT t;
     INSERT INTO notes VALUES (102, 102, kms_encrypt('kept'::bytea, '{"tenant": 102}', 'alias/v2a'));
     RELEASE SAVEPOINT t;
     COMMIT;});
my $after = cq($reg_rows);
like($after, qr/^4:/, 'rolled back: no row; committed savepoint: one row');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $reg_rows), $after, $w->name . ': the same rows on its placement');
}
is(cq(q{SELECT convert_from(kms_decrypt(body, '{"tenant": 102}'), 'UTF8') FROM notes WHERE id = 102}),
	'kept', 'the committed savepoint value decrypts (on its worker)');

# ---------- no reuse on Citus: a flushed cache makes a new data key ----------
cq(q{SELECT kms_cache_flush()});
cq(q{SET kms_pg.format = 2;
     INSERT INTO notes VALUES (103, 1, kms_encrypt('another key'::bytea, '{"tenant": 1}', 'alias/v2a'))});
my $five = cq($reg_rows);
like($five, qr/^5:/, 'after a flush, tenant 1 gets a new data key and row (no lease is taken on Citus)');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $reg_rows), $five, $w->name . ': the new row is on its placement');
}
is(cq(q{SELECT count(DISTINCT substr(body, 6, 7)) FROM notes WHERE tenant = 1}), '2',
	'tenant 1\'s values refer to two registry rows');
is(cq(q{SELECT convert_from(kms_decrypt(body, '{"tenant": 1}'), 'UTF8') FROM notes WHERE id = 103}),
	'another key', 'the value under the new data key decrypts (on its worker)');

# ---------- workers do not seal format 2 ----------
($ret, $out, $err) = $workers[0]->psql('postgres',
	q{SET kms_pg.format = 2; SELECT kms_encrypt('x'::bytea, '{"tenant": 1}', 'alias/v2a')});
isnt($ret, 0, 'a worker refuses format 2 sealing');
like($err, qr/cannot encrypt in format 2 on a Citus worker/, '... saying why');
is($workers[0]->safe_psql('postgres',
		q{SET kms_pg.format = 1; SELECT get_byte(kms_encrypt('x'::bytea, '{"tenant": 1}', 'alias/v2a'), 4)}),
	'1', 'a worker seals format 1');

# ---------- protected columns of Citus tables stay format 1 ----------
cq(q{CREATE TABLE people (id bigint PRIMARY KEY, tenant int NOT NULL, ssn text);
     SELECT create_distributed_table('people', 'id');
     INSERT INTO people VALUES (1, 1, 'ssn-1');
     CALL kms_protect_column('people', 'ssn', '{tenant}', 'alias/v2a');});
($ret, $out, $err) = $coord->psql('postgres', q{SELECT kms_set_column_format('people', 'ssn', 2)});
isnt($ret, 0, 'kms_set_column_format refuses format 2 for a distributed table');
like($err, qr/format 2 is not available for protected columns of Citus tables/, '... saying why');
# format 2 asked for by the workers' setting: the shards' triggers refuse it
for my $w (@workers)
{
	$w->safe_psql('postgres', q{ALTER SYSTEM SET kms_pg.format = 2; SELECT pg_reload_conf()});
}
($ret, $out, $err) = $coord->psql('postgres', q{INSERT INTO people VALUES (2, 1, 'ssn-2')});
isnt($ret, 0, 'with kms_pg.format = 2 on the workers, a write to the protected column is refused');
like($err, qr/format 2 is not available for protected columns of Citus tables/, '... saying why');
for my $w (@workers)
{
	$w->safe_psql('postgres', q{ALTER SYSTEM RESET kms_pg.format; SELECT pg_reload_conf()});
}
cq(q{SELECT kms_set_column_format('people', 'ssn', 1); INSERT INTO people VALUES (2, 1, 'ssn-2')});
is(cq(q{SELECT string_agg(ssn, ',' ORDER BY id) FROM people_decrypted}), 'ssn-1,ssn-2',
	'in format 1 the column works');
is(cq(q{SELECT count(*) FROM people WHERE (kms_ciphertext_info(ssn)).format_version = 1}), '2',
	'both values are format 1');
for my $w (@workers)
{
	is($w->safe_psql('postgres', q{SELECT format FROM kms_protected_columns WHERE relid = 'people'::regclass}),
		'1', $w->name . ': kms_set_column_format reached its catalog row');
}

# ---------- rotation in O(data keys) on every placement ----------
my $bg = $workers[0]->background_psql('postgres', on_error_stop => 0);
# a worker session that has read registry rows (its memo) before the rotation
my $local_shard = $workers[0]->safe_psql('postgres',
	q{SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
      WHERE s.logicalrelid = 'notes'::regclass AND p.groupid = (SELECT groupid FROM pg_dist_local_group)
      ORDER BY 1 LIMIT 1});
my $w1_check = "SELECT count(*) FROM notes_$local_shard
             WHERE kms_decrypt(body, jsonb_build_object('tenant', tenant)) = ('note-' || id)::bytea
                OR kms_decrypt(body, jsonb_build_object('tenant', tenant)) IN ('kept', 'another key')";
my $w1_total = $workers[0]->safe_psql('postgres', "SELECT count(*) FROM notes_$local_shard");
cmp_ok($w1_total, '>', 0, 'worker 1 has rows of the distributed table');
is($bg->query_safe($w1_check), $w1_total, 'worker 1: a session decrypts its shard before the rotation');

my $bytes_before = cq(q{SELECT md5(string_agg(body::text, ',' ORDER BY id)) FROM notes});
is(cq("SELECT deks || '/' || rewrapped || '/' || skipped FROM kms_rotate_key_registry('$k1_id', 'alias/v2b')"),
	'5/5/0', 'kms_rotate_key_registry: 5 data keys rewrapped, none skipped');
is(cq(q{SELECT md5(string_agg(body::text, ',' ORDER BY id)) FROM notes}), $bytes_before,
	'no stored value changed');
$coord_rows = cq($reg_rows);
like($coord_rows, qr/^5:(?:\d+\/\Q$k2_id\E\/[0-9a-f]+,?){5}$/, 'every registry row is under the new key');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $reg_rows), $coord_rows, $w->name . ': its placement has the rewrapped rows');
}
cq(q{SELECT kms_disable_key('alias/v2a')});
is($bg->query_safe($w1_check), $w1_total,
	'worker 1: the session that read before the rotation decrypts with the old key disabled');
$bg->quit;
is(cq($check), '60', 'every value decrypts in the pushed-down query after the rotation');
for my $w (@workers)
{
	is($w->safe_psql('postgres',
			"SELECT convert_from(kms_decrypt(decode('$sample', 'hex'), '{\"tenant\": 1}'), 'UTF8')"),
		'note-7', $w->name . ': a new session decrypts after the rotation');
}

# ---------- a multi-row INSERT ... VALUES with new tenants; kms_rewrap of one value ----------
cq(q{SET kms_pg.format = 2;
     INSERT INTO notes VALUES (200, 200, kms_encrypt('t200'::bytea, '{"tenant": 200}', 'alias/v2b')),
                              (201, 201, kms_encrypt('t201'::bytea, '{"tenant": 201}', 'alias/v2b'))});
my $seven = cq($reg_rows);
like($seven, qr/^7:/, 'a two-row INSERT ... VALUES with two new tenants: two new rows');
for my $w (@workers)
{
	is($w->safe_psql('postgres', $reg_rows), $seven, $w->name . ': the two rows are on its placement');
}
is(cq(q{SELECT string_agg(convert_from(kms_decrypt(body, jsonb_build_object('tenant', tenant)), 'UTF8'), ',' ORDER BY id)
        FROM notes WHERE id IN (200, 201)}), 't200,t201', 'both decrypt on their workers');
my $k3_id = cq(q{SELECT kms_describe_key(kms_create_key('alias/v2c')) ->> 'KeyId'});
my $ref200 = cq(q{SELECT ('x' || encode(substr(body, 6, 7), 'hex'))::bit(56)::bigint FROM notes WHERE id = 200});
# in a query on the distributed table it runs on the worker: refused
($ret, $out, $err) = $coord->psql('postgres',
	q{SELECT kms_rewrap(body, 'alias/v2c', '{"tenant": 200}') FROM notes WHERE id = 200});
like($err, qr/cannot rewrap a format 2 value on a Citus worker/,
	'kms_rewrap of a format 2 value in a query pushed down to a worker is refused, saying why');
my $v200 = cq(q{SELECT encode(body, 'hex') FROM notes WHERE id = 200});
cq("SELECT length(kms_rewrap(decode('$v200', 'hex'), 'alias/v2c', '{\"tenant\": 200}'))");
for my $n ($coord, @workers)
{
	is($n->safe_psql('postgres', "SELECT key_id FROM kms_dek_registry WHERE dek_ref = $ref200"), $k3_id,
		$n->name . ': kms_rewrap of a format 2 value rewrapped its registry row on this placement');
}
is(cq(q{SELECT convert_from(kms_decrypt(body, '{"tenant": 200}'), 'UTF8') FROM notes WHERE id = 200}),
	't200', 'the value (same bytes) decrypts under its new wrapping');

done_testing();
