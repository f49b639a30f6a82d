#!/usr/bin/perl
# Assemble an update script from its parts (sql/update/<from>--<to>/*.sql),
# expanding "-- @install" markers with the statements of the install parts
# (sql/install/*.sql), so that an object that is new or replaced whole in the
# update is written once, in its install part.  Called by the Makefile; only
# perl-base is needed (the Debian chroots of the CI have nothing more).
#
#   perl scripts/update_expand.pl INSTALL_DIR BASE_SCRIPT PART...
#
# INSTALL_DIR  sql/install
# BASE_SCRIPT  the frozen install script of the version updated from
#              (sql/versions/kms_pg--1.0.sql): a function, procedure or view
#              it defines with the same identity is written CREATE OR REPLACE
# PART...      the update parts, concatenated to stdout in the order given
#
# Markers (a whole line of an update part):
#   -- @install FILE                 the whole install part FILE
#   -- @install FILE NAME            the function or procedure NAME of FILE
#   -- @install FILE NAME(TYPE, ...) the one of that identity (overloads)
#   -- @install FILE VIEW NAME       the view NAME of FILE
#   -- @install FILE SECTION NAME    the lines of FILE between "-- @begin NAME"
#                                    and "-- @end NAME" (for what is not a
#                                    function or view: types, casts)
# An object marker expands to the object's CREATE statement (with the comment
# lines right above it) and every COMMENT ON, GRANT, REVOKE and ALTER
# statement of FILE naming that object, in FILE's order, byte for byte but
# for "CREATE" becoming "CREATE OR REPLACE" where BASE_SCRIPT has the object.
# The build fails, naming the marker, unless the object's CREATE is found
# exactly once: a renamed object cannot silently drop out of the update.
# A whole part or a section is written as it is but for the same CREATE OR
# REPLACE rule; a section's begin and end lines must each be found exactly
# once.  A statement naming several objects (GRANT ... ON FUNCTION a(), b())
# is refused when one of them is asked for: write one statement per object.
use strict;
use warnings;

my ($install_dir, $base_script, @parts) = @ARGV;
die "usage: update_expand.pl INSTALL_DIR BASE_SCRIPT PART...\n"
    unless defined $base_script && @parts;

sub slurp
{
    my ($path, $why) = @_;
    open(my $fh, '<', $path) or die "update_expand.pl: $why: cannot read $path: $!\n";
    local $/;
    my $text = <$fh>;
    close($fh);
    return $text;
}

# Split SQL text into statements: [start offset of the comment lines right
# above, start offset of the statement, offset after its last line].  Knows
# '...', "...", $tag$...$tag$, -- and /* */ comments; skips psql
# meta-command lines (\echo ... \quit) between statements.
sub statements
{
    my ($text, $path) = @_;
    my @stmts;
    my $len = length($text);
    my $i = 0;
    my $start;              # offset of the current statement's first character
    while ($i < $len)
    {
        my $c = substr($text, $i, 1);
        if (!defined $start)
        {
            if ($c =~ /\s/) { $i++; next; }
            if (substr($text, $i, 2) eq '--' || ($c eq '\\' && ($i == 0 || substr($text, $i - 1, 1) eq "\n")))
            {
                my $nl = index($text, "\n", $i);
                $i = $nl < 0 ? $len : $nl + 1;
                next;
            }
            $start = $i;
        }
        if (substr($text, $i, 2) eq '--')
        {
            my $nl = index($text, "\n", $i);
            $i = $nl < 0 ? $len : $nl;
        }
        elsif (substr($text, $i, 2) eq '/*')
        {
            my $e = index($text, '*/', $i + 2);
            die "update_expand.pl: $path: unterminated /* comment\n" if $e < 0;
            $i = $e + 2;
        }
        elsif ($c eq "'" || $c eq '"')
        {
            my $j = $i + 1;
            while (1)
            {
                my $e = index($text, $c, $j);
                die "update_expand.pl: $path: unterminated $c quote at offset $i\n" if $e < 0;
                if (substr($text, $e + 1, 1) eq $c) { $j = $e + 2; next; }
                $i = $e + 1;
                last;
            }
        }
        elsif ($c eq '$' && substr($text, $i) =~ /^(\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$)/
               && ($i == 0 || substr($text, $i - 1, 1) !~ /[A-Za-z_0-9]/))
        {
            my $tag = $1;
            my $e = index($text, $tag, $i + length($tag));
            die "update_expand.pl: $path: unterminated $tag quote at offset $i\n" if $e < 0;
            $i = $e + length($tag);
        }
        elsif ($c eq ';')
        {
            # the statement ends with its line (a trailing comment included)
            my $nl = index($text, "\n", $i);
            my $end = $nl < 0 ? $len : $nl + 1;
            my $rest = substr($text, $i + 1, $end - $i - 1);
            die "update_expand.pl: $path: more than one statement on a line at offset $i\n"
                unless $rest =~ /^\s*(--.*)?\s*$/;
            # the comment lines right above the statement (no blank line between)
            my $lead = $start;
            $lead-- while $lead > 0 && substr($text, $lead - 1, 1) ne "\n";
            my $stmt_line = $lead;
            while ($lead > 0)
            {
                my $p = rindex($text, "\n", $lead - 2);
                my $line = substr($text, $p + 1, $lead - $p - 1);
                last unless $line =~ /^--/ && $line !~ /^--\s*\@(?:install|begin|end)\b/;
                $lead = $p + 1;
            }
            push @stmts, [$lead, $stmt_line, $end];
            undef $start;
            $i = $end;
        }
        else
        {
            $i++;
        }
    }
    die "update_expand.pl: $path: unterminated statement at offset $start\n" if defined $start;
    return @stmts;
}

# Argument list of a routine -> its identity ("type,type"), as COMMENT ON
# FUNCTION writes it: OUT arguments, names, modes and defaults dropped, type
# spellings made one.
my %alias = (integer => 'int', int4 => 'int', int8 => 'bigint', int2 => 'smallint',
             bool => 'boolean', float8 => 'double precision', float4 => 'real',
             varchar => 'character varying', decimal => 'numeric',
             timestamptz => 'timestamp with time zone', timetz => 'time with time zone');
my $multiword = qr/^(double precision|character varying|bit varying|timestamp with(out)? time zone|time with(out)? time zone)(\[\])?$/;

sub identity
{
    my ($args) = @_;
    my @out;
    my ($depth, $cur, $q) = (0, '', '');
    for my $ch (split //, $args . ',')
    {
        if ($q) { $q = '' if $ch eq $q; $cur .= $ch; next; }
        if ($ch eq '"' || $ch eq "'") { $q = $ch; $cur .= $ch; next; }
        $depth++ if $ch eq '(';
        $depth-- if $ch eq ')';
        if ($ch eq ',' && $depth == 0)
        {
            my $a = $cur;
            $cur = '';
            $a =~ s/\s+/ /g;
            $a =~ s/^ //;
            $a =~ s/ $//;
            next if $a eq '';
            $a =~ s/\s+DEFAULT\s.*$//is;
            $a =~ s/\s*=.*$//s;
            if ($a =~ s/^(IN|OUT|INOUT|VARIADIC)\s+//i)
            {
                next if uc($1) eq 'OUT';
            }
            $a = lc($a) unless $a =~ /"/;
            $a =~ s/\@extschema\@\.//g;
            $a =~ s/^\S+ // unless $a !~ / / || $a =~ $multiword;
            my ($base, $arr) = $a =~ /^(.*?)((?:\[\])*)$/;
            $base = $alias{$base} if exists $alias{$base};
            push @out, $base . $arr;
        }
        else
        {
            $cur .= $ch;
        }
    }
    return join(',', @out);
}

# The argument list that starts at offset $pos of $s (just after "name("):
# returns the text up to the matching ")".
sub arglist
{
    my ($s, $pos) = @_;
    my $depth = 1;
    my $q = '';
    for (my $i = $pos; $i < length($s); $i++)
    {
        my $ch = substr($s, $i, 1);
        if ($q) { $q = '' if $ch eq $q; next; }
        if ($ch eq '"' || $ch eq "'") { $q = $ch; next; }
        $depth++ if $ch eq '(';
        if ($ch eq ')' && --$depth == 0) { return substr($s, $pos, $i - $pos); }
    }
    return undef;
}

my $ident = qr/(?:\@extschema\@\.)?("[^"]+"|[A-Za-z_][A-Za-z_0-9]*)/;

# What a statement creates: ['routine', name, identity] or ['view', name], or
# undef.
sub creates
{
    my ($s) = @_;
    if ($s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+$ident\s*\(/is)
    {
        my $name = lc($1);
        my $args = arglist($s, $+[0]);
        return defined $args ? ['routine', $name, identity($args)] : undef;
    }
    if ($s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+$ident\b/is)
    {
        return ['view', lc($1)];
    }
    return undef;
}

# The objects a COMMENT ON / GRANT / REVOKE / ALTER statement names, in the
# same form as creates(); [] when it is none of these.
sub names
{
    my ($s) = @_;
    my @objs;
    if ($s =~ /^(?:COMMENT\s+ON|ALTER)\s+(?:FUNCTION|PROCEDURE|ROUTINE)\s+$ident\s*\(/is
        || $s =~ /^(?:GRANT|REVOKE)\s.*?\sON\s+(?:FUNCTION|PROCEDURE|ROUTINE)\s+$ident\s*\(/is)
    {
        # every name(args) of the list
        my $pos = $-[1];
        while ($pos < length($s) && substr($s, $pos) =~ /^$ident\s*\(/)
        {
            my ($name, $at) = (lc($1), $+[0]);
            my $args = arglist($s, $pos + $at);
            last unless defined $args;
            push @objs, ['routine', $name, identity($args)];
            $pos += $at + length($args) + 1;
            last unless substr($s, $pos) =~ /^\s*,\s*/;
            $pos += $+[0];
        }
    }
    elsif ($s =~ /^(?:COMMENT\s+ON|ALTER)\s+VIEW\s+$ident\b/is)
    {
        push @objs, ['view', lc($1)];
    }
    elsif ($s =~ /^(?:GRANT|REVOKE)\s.*?\sON\s+(?:TABLE\s+)?((?:$ident\s*,\s*)*$ident)\s+(?:TO|FROM)\b/is)
    {
        for my $n (split /\s*,\s*/, $1)
        {
            $n =~ s/^\@extschema\@\.//;
            push @objs, ['view', lc($n)];
        }
    }
    return \@objs;
}

sub key { my ($o) = @_; return join(' ', @$o); }

# The objects the base version has.
my %in_base;
{
    my $text = slurp($base_script, 'base version');
    for my $st (statements($text, $base_script))
    {
        my $o = creates(substr($text, $st->[1], $st->[2] - $st->[1]));
        $in_base{key($o)} = 1 if $o;
    }
}

my %install_cache;

sub install_part
{
    my ($file, $where) = @_;
    die "update_expand.pl: $where: bad install part name \"$file\"\n"
        unless $file =~ /^[A-Za-z0-9_.-]+\.sql$/;
    my $path = "$install_dir/$file";
    unless ($install_cache{$path})
    {
        my $text = slurp($path, $where);
        $install_cache{$path} = [$text, [statements($text, $path)]];
    }
    return ($path, @{$install_cache{$path}});
}

sub expand_object
{
    my ($file, $want, $where) = @_;
    my ($path, $text, $stmts) = install_part($file, $where);
    my ($kind, $name, $sig);
    if ($want =~ /^VIEW\s+(\S+)$/i)
    {
        ($kind, $name) = ('view', lc($1));
    }
    elsif ($want =~ /^([A-Za-z_][A-Za-z_0-9]*)\s*(?:\((.*)\))?$/)
    {
        ($kind, $name, $sig) = ('routine', lc($1), defined $2 ? identity($2) : undef);
    }
    else
    {
        die "update_expand.pl: $where: cannot read the object \"$want\"\n";
    }

    my @found;
    for my $st (@$stmts)
    {
        my $o = creates(substr($text, $st->[1], $st->[2] - $st->[1]));
        next unless $o && $o->[0] eq $kind && $o->[1] eq $name;
        next if defined $sig && $o->[2] ne $sig;
        push @found, [$st, $o];
    }
    die sprintf("update_expand.pl: %s: %s in %s: %s\n", $where, $want, $path,
                @found ? scalar(@found) . " CREATE statements match (give the argument types)"
                       : "no CREATE statement found (renamed or moved?)")
        unless @found == 1;
    my ($create, $obj) = @{$found[0]};
    my $k = key($obj);

    my $out = '';
    for my $st (@$stmts)
    {
        my $s = substr($text, $st->[1], $st->[2] - $st->[1]);
        if ($st == $create)
        {
            $out .= or_replace($text, $st);
            next;
        }
        my $named = names($s);
        next unless grep { key($_) eq $k } @$named;
        die sprintf("update_expand.pl: %s: %s: line %d of %s names other objects too; write it as one statement per object\n",
                    $where, $want, 1 + (substr($text, 0, $st->[1]) =~ tr/\n//), $path)
            if @$named > 1;
        $out .= substr($text, $st->[0], $st->[2] - $st->[0]);
    }
    return $out;
}

# CREATE -> CREATE OR REPLACE at the start of the statement at [lead, stmt,
# end) of $text when the base version has the object it creates.
sub or_replace
{
    my ($text, $st) = @_;
    my $chunk = substr($text, $st->[0], $st->[2] - $st->[0]);
    my $o = creates(substr($text, $st->[1], $st->[2] - $st->[1]));
    if ($o && $in_base{key($o)})
    {
        my $off = $st->[1] - $st->[0];
        substr($chunk, $off) =~ s/^CREATE(\s+)(?!OR\s+REPLACE\b)/CREATE$1OR REPLACE /i;
    }
    return $chunk;
}

# Text of an install part (or a section of one), each statement through
# or_replace().
sub rewrite_all
{
    my ($path, $text) = @_;
    my $out = '';
    my $pos = 0;
    for my $st (statements($text, $path))
    {
        $out .= substr($text, $pos, $st->[0] - $pos) . or_replace($text, $st);
        $pos = $st->[2];
    }
    $out .= substr($text, $pos);
    $out .= "\n" unless $out eq '' || $out =~ /\n\z/;
    return $out;
}

sub expand_section
{
    my ($file, $name, $where) = @_;
    my ($path, $text) = install_part($file, $where);
    my @begin = grep { /^--\s*\@begin\s+\Q$name\E(\s|$)/ } split(/^/m, $text);
    my @end = grep { /^--\s*\@end\s+\Q$name\E(\s|$)/ } split(/^/m, $text);
    die "update_expand.pl: $where: SECTION $name in $path: \"-- \@begin $name\" found " . scalar(@begin)
        . " times, \"-- \@end $name\" " . scalar(@end) . " times (each must be found once)\n"
        unless @begin == 1 && @end == 1;
    my $from = index($text, $begin[0]) + length($begin[0]);
    my $to = index($text, $end[0]);
    die "update_expand.pl: $where: SECTION $name in $path: its end comes before its begin\n"
        unless $to >= $from;
    my $body = substr($text, $from, $to - $from);
    return rewrite_all("$path (section $name)", $body);
}

for my $part (@parts)
{
    my $text = slurp($part, 'update part');
    my $n = 0;
    for my $line (split /^/, $text)
    {
        $n++;
        unless ($line =~ /^--\s*\@install\b/)
        {
            print $line;
            next;
        }
        my $where = "$part:$n";
        print $line;
        $line =~ s/\s+$//;
        if ($line =~ /^--\s*\@install\s+(\S+)$/)
        {
            print rewrite_all(install_part($1, $where));
        }
        elsif ($line =~ /^--\s*\@install\s+(\S+)\s+SECTION\s+(\S+)$/)
        {
            print expand_section($1, $2, $where);
        }
        elsif ($line =~ /^--\s*\@install\s+(\S+)\s+(.+)$/)
        {
            print expand_object($1, $2, $where);
        }
        else
        {
            die "update_expand.pl: $where: malformed marker: $line\n";
        }
    }
}
