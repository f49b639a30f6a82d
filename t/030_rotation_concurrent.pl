# kms_rotate_column under concurrent writers, and a rotation cancelled
# half way and started again.
#
# A writer session inserts and updates rows (new values under the old key)
# while another session rotates the column in small batches.  Afterwards
# every row decrypts to what the writer last wrote (a mirror table kept in
# the writer's own transactions is the truth), nothing is lost, and a
# second rotation pass leaves no value under the old key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('rotation');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'kms_pg'
} . master_key_conf('a'));
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/tap-old');
SELECT kms_create_key('alias/tap-new');
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, secret bytea NOT NULL);
CREATE TABLE truth (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE writer_stop (stop boolean);
INSERT INTO acct SELECT i, i, kms_encrypt_text(i::text, jsonb_build_object('id', i), 'alias/tap-old')
FROM generate_series(1, 4000) i;
INSERT INTO truth SELECT id, v FROM acct;

-- Slows each rotation batch (not the writer's statements) so that the
-- writer and the rotation overlap and a cancel lands half way.
CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tap.slow', true) = 'on' THEN PERFORM pg_sleep(0.02); END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_batch AFTER UPDATE ON acct FOR EACH STATEMENT EXECUTE FUNCTION slow_batch();

-- The writer: new rows and updates of existing rows, each value encrypted
-- under the old key, each transaction also recording the value in truth;
-- until told to stop.
CREATE PROCEDURE writer() LANGUAGE plpgsql AS $$
DECLARE
    r int;
BEGIN
    FOR i IN 1 .. 100000 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM writer_stop);
        INSERT INTO acct VALUES (100000 + i, -i,
            kms_encrypt_text((-i)::text, jsonb_build_object('id', 100000 + i), 'alias/tap-old'));
        INSERT INTO truth VALUES (100000 + i, -i);
        r := 1 + (i * 7919) % 4000;
        UPDATE acct SET v = v + 1000000,
            secret = kms_encrypt_text((v + 1000000)::text, jsonb_build_object('id', id), 'alias/tap-old')
        WHERE id = r;
        UPDATE truth SET v = v + 1000000 WHERE id = r;
        COMMIT;
        PERFORM pg_sleep(0.005);
    END LOOP;
END $$;
});

# "rows matching rows_in_truth, checksums equal"
my $checks = q{
SELECT (SELECT count(*) FROM acct a JOIN truth t USING (id)
        WHERE a.v = t.v AND kms_decrypt_text(a.secret, jsonb_build_object('id', a.id)) = t.v::text)
       || ' ' || (SELECT count(*) FROM truth) || ' ' || (SELECT count(*) FROM acct) || ' ' ||
       ((SELECT sum(t.v) FROM truth t) =
        (SELECT sum(kms_decrypt_text(a.secret, jsonb_build_object('id', a.id))::bigint) FROM acct a))
};
my $usage = q{
SELECT coalesce(string_agg(k.alias || '=' || u."values", ',' ORDER BY k.alias), 'none')
FROM kms_key_usage('acct', 'secret') u JOIN kms_keys k ON k.key_id = u.key_id
};

# Start a psql session in the background running the statements one by
# one (each -c is its own transaction: a CALL that commits must not share
# a query string with other statements).
sub bg
{
	my (@sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  map { ('-c', $_) } @sql ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# --- writers during a rotation ---
my $writer = bg('CALL writer()');
$node->poll_query_until('postgres', 'SELECT count(*) > 20 FROM truth WHERE id > 100000')
  or die 'writer did not start';
my $rot = bg('SET tap.slow = on', q{CALL kms_rotate_column('acct', 'secret', 'alias/tap-new', 100)});
ok($rot->{h}->finish, 'rotation with a concurrent writer ran to its end')
  or diag ${ $rot->{err} };
like(${ $rot->{err} }, qr/kms_rotate_column: \d+ of \d+ rows/, 'rotation reported progress per batch');
note 'rotation output: ' . ${ $rot->{err} };
my $during = sql('SELECT count(*) FROM truth WHERE id > 100000');
sql('INSERT INTO writer_stop VALUES (true)');
ok($writer->{h}->finish, 'writer ran to its end') or diag ${ $writer->{err} };
my $rows = sql('SELECT count(*) FROM truth');
cmp_ok($rows, '>', 4000 + 20, "writer inserted rows during the rotation ($during when it ended)");
cmp_ok(sql('SELECT count(*) FROM truth WHERE v > 1000000'), '>', 0, 'and updated existing rows');

is(sql($checks), "$rows $rows $rows true",
	'no row lost: counts, per-row plaintext and checksum match what the writer wrote');
like(sql($usage), qr/alias\/tap-new=\d+/, 'values moved to the new key');
is(sql(q{SELECT rows_done <= rows_total AND percent_done <= 100 FROM kms_rotation_status
         ORDER BY run_id DESC LIMIT 1}), 't',
	'progress with a concurrent writer never shows more done than to do');

# The writer kept using the old key; a second pass finishes the job.
sql(q{CALL kms_rotate_column('acct', 'secret', 'alias/tap-new', 500)});
is(sql($usage), "alias/tap-new=$rows", 'second pass: zero values under the old key');
is(sql(q{SELECT state, rows_done = rows_total, percent_done FROM kms_rotation_status
         ORDER BY run_id DESC LIMIT 1}), 'finished|t|100.0', 'a finished run shows exactly 100%');
is(sql($checks), "$rows $rows $rows true", 'all rows still decrypt to the same values');

# Disabling the old key then breaks nothing.
sql(q{SELECT kms_disable_key('alias/tap-old'); SELECT kms_cache_flush();});
is(sql($checks), "$rows $rows $rows true", 'all rows decrypt with the old key disabled');

# --- cancelled half way, then started again (back to the old key) ---
sql(q{SELECT kms_enable_key('alias/tap-old')});
my $rot2 = bg('SET tap.slow = on', q{CALL kms_rotate_column('acct', 'secret', 'alias/tap-old', 50)});
$node->poll_query_until('postgres', q{
SELECT rows_done >= 500 FROM kms_rotation_status
WHERE tbl = 'acct' AND new_key_id = 'alias/tap-old' AND state = 'running'})
  or die 'rotation did not progress';
ok(sql(q{SELECT pg_cancel_backend(pid) FROM kms_rotation_status
         WHERE new_key_id = 'alias/tap-old' AND state = 'running'}) eq 't', 'cancel sent');
ok(!$rot2->{h}->finish, 'the cancelled CALL failed');
like(${ $rot2->{err} }, qr/canceling statement due to user request/, 'it was cancelled');

my ($state, $done, $total) = split /\|/, sql(q{
SELECT state, rows_done, rows_total FROM kms_rotation_status
WHERE new_key_id = 'alias/tap-old' ORDER BY run_id DESC LIMIT 1});
is($state, 'stopped', 'status shows the cancelled run as stopped');
ok($done > 0 && $done < $total, "cancelled half way ($done of $total)");
is(sql($usage), "alias/tap-new=" . ($rows - $done) . ",alias/tap-old=$done",
	'committed batches are exactly those the progress table counts');

sql(q{CALL kms_rotate_column('acct', 'secret', 'alias/tap-old', 1000)});
is(sql(q{SELECT rows_total FROM kms_rotation_status ORDER BY run_id DESC LIMIT 1}), $rows - $done,
	'the second run only had the remaining rows to do');
is(sql($usage), "alias/tap-old=$rows", 'restarted rotation completed: new key at zero');
is(sql($checks), "$rows $rows $rows true", 'all rows decrypt after the interrupted and resumed rotation');

$node->stop;
done_testing();
