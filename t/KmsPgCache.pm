# Helpers for the DEK cache TAP tests (t/05*_cache_*.pl): a node with
# kms_pg.provider = 'aws' talking to a KMS emulator over HTTPS, and a call
# ledger that checks every step's KMS calls twice -- in the emulator's
# counters (what KMS saw) and in kms_cache_stats (what the server counted)
# -- and that both agree with the number the test expects.

package KmsPgCache;

use strict;
use warnings;

use KmsPgTest;
use PostgreSQL::Test::Utils;
use Test::More;

use Exporter 'import';
our @EXPORT = qw(cache_node cache_stats);

our $AK = 'AKIAKMSPGTAPCACHE050';
our $SK = 'tap-cache-secret/0123456789abcdefghijklmnop';

# The emulator operations behind each kms_cache_stats call column.
my %STAT_OPS = (
	generate_calls => ['GenerateDataKey'],
	decrypt_calls => ['Decrypt'],
	rewrap_calls => [ 'ReEncrypt', 'Encrypt' ],
	describe_calls => ['DescribeKey']);

# Start an emulator (extra kms_emulator.py arguments in $emu_args) and a
# node using it with the AWS provider, default key alias/kms-pg-test and
# $conf appended; creates the extension.  Returns ($node, $emu).
sub cache_node
{
	my ($name, $conf, $emu_args) = @_;
	my $emu = start_emulator(
		args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test', @{ $emu_args // [] } ]);
	my $node = kms_node($name, <<"EOF" . ($conf // ''));
kms_pg.provider = 'aws'
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
kms_pg.key_id = 'alias/kms-pg-test'
EOF
	start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
	$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
	return ($node, $emu);
}

# kms_cache_stats as a hash.
sub cache_stats
{
	my ($node) = @_;
	my @cols = qw(entries encrypting_entries capacity hits local_hits misses
	  generate_calls decrypt_calls rewrap_calls describe_calls call_errors
	  coalesced_waits evictions expirations dek_rotations flushes);
	my $row = $node->safe_psql('postgres',
		'SELECT ' . join(', ', @cols) . ' FROM kms_cache_stats');
	my @v = split /\|/, $row;
	die "kms_cache_stats: unexpected row '$row'" unless @v == @cols;
	my %s;
	@s{@cols} = @v;
	return \%s;
}

# ---- the call ledger ----

sub new
{
	my ($class, $node, $emu) = @_;
	my $self = bless { node => $node, emu => $emu }, $class;
	$self->mark;
	return $self;
}

# Take the current counters of both sides as the new base (only the
# server's while the emulator is stopped).
sub mark
{
	my ($self) = @_;
	$self->{emu_base} = $self->{emu}{pid} ? KmsPgTest::emu_counters($self->{emu}) : undef;
	$self->{stats_base} = cache_stats($self->{node});
	return;
}

# Point the ledger at another emulator process (restarted: counters from 0).
sub set_emulator
{
	my ($self, $emu) = @_;
	$self->{emu} = $emu;
	$self->mark;
	return;
}

# Stats deltas since the base, without checking the emulator (it may be down).
sub stats_delta
{
	my ($self) = @_;
	my $now = cache_stats($self->{node});
	my %d = map { $_ => $now->{$_} - $self->{stats_base}{$_} } keys %$now;
	$d{entries} = $now->{entries};
	$d{encrypting_entries} = $now->{encrypting_entries};
	return \%d;
}

# Check the KMS calls since the base: %want gives the expected count per
# kms_cache_stats call column (missing ones: 0).  Both the emulator's
# counters (mapped to those columns) and kms_cache_stats must show exactly
# that, and neither side any other KMS request (total).  call_errors is
# checked too when %want names it.  The emulator must be running.
# Returns the stats deltas and re-marks.
sub expect
{
	my ($self, $label, %want) = @_;
	my $emu_now = KmsPgTest::emu_counters($self->{emu});
	my $delta = $self->stats_delta;
	my (%expected, %emulator, %stats);

	for my $col (sort keys %STAT_OPS)
	{
		$expected{$col} = $want{$col} // 0;
		$emulator{$col} = 0;
		$emulator{$col} += ($emu_now->{$_} // 0) - ($self->{emu_base}{$_} // 0)
		  for @{ $STAT_OPS{$col} };
		$stats{$col} = $delta->{$col};
	}
	$expected{total} = 0;
	$expected{total} += $expected{$_} for keys %STAT_OPS;
	$emulator{total} = ($emu_now->{total} // 0) - ($self->{emu_base}{total} // 0);
	$stats{total} = 0;
	$stats{total} += $stats{$_} for keys %STAT_OPS;
	if (defined $want{call_errors})
	{
		$expected{call_errors} = $want{call_errors};
		$stats{call_errors} = $delta->{call_errors};
	}
	my $summary = join(', ', map { "$_ $expected{$_}" } grep { $expected{$_} } sort keys %STAT_OPS);
	$summary = 'no KMS call' if $summary eq '';
	is_deeply(\%emulator, { map { $_ => $expected{$_} } keys %emulator },
		"$label: emulator counters show $summary")
	  or diag(explain({ emulator => \%emulator }));
	is_deeply(\%stats, \%expected,
		"$label: kms_cache_stats shows the same"
		  . (defined $want{call_errors} ? ", call_errors $want{call_errors}" : ''))
	  or diag(explain({ kms_cache_stats => \%stats, expected => \%expected }));
	$self->mark;
	return $delta;
}

1;
